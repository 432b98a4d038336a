"""Speed and memory of a MAML meta-iteration: ours (maml.maml) against the clone-and-update of learn2learn / higher.

    python bench/maml_step.py                         # 5-way 1- and 5-shot, meta-batch 8, 1 step, both orders
    python bench/maml_step.py --shots 1 --order second --iterations 50
    python bench/maml_step.py --steps 5 --meta-batch 4 --threads 1
    python bench/maml_step.py --device cuda           # peak memory from torch.cuda.max_memory_allocated

One meta-iteration is maml.train's: the meta-batch's inner loops (--steps SGD steps of --inner-lr on the support
loss) and query losses, backward of their mean, one Adam step (lr 1e-3), on MAMLNet (Conv4 with batch statistics
only + linear head), 5-way tasks of seeded random 28x28 grey images (--queries per way: maml.train's default 5),
the same tensors for every method. `ours` is maml.maml.meta_loss: torch.func.functional_call on a dict of the
model's parameters, torch.autograd.grad(create_graph=not first_order), first order keeping the adapted weights'
dependence on the initialisation through the identity alone. `clone-update` re-states the approach of learn2learn's
MAML (its `clone_module` and `update_module`), which higher's `monkeypatch` shares: per task a copy of the module
whose parameter slots hold `p.clone()` (non-leaf tensors depending on the initialisation); each inner step takes
g = autograd.grad(loss, slots, create_graph=not first_order) and puts p - lr * g in every slot; first order's g
carries no graph (learn2learn's first_order), so the query gradient reaches the initialisation through the identity.

Every (method, shots, order) is timed in one process, their meta-iterations interleaved (after one warm-up each) so
that a slowdown of the machine hits all alike: median meta-iterations/s and its ratio to ours at the same shots and
order (above 1: faster than ours). Peak memory, measured first: each (method, shots, order) runs in a fresh
subprocess; on CPU the increase of its ru_maxrss over the value just before its first meta-iteration, after 3
meta-iterations (no warm-up); on CUDA torch.cuda.max_memory_allocated over the memory allocated before them. Then,
before timing, both methods' meta-gradients (every parameter's .grad after backward of the mean query loss) are
compared in float64, from the same initial weights on the same tasks, for each --shots in second and first order
alike (whatever --order times): the max abs difference, and whether they are equal at rtol 1e-9.
"""

import argparse
import json
import resource
import statistics
import subprocess
import sys

import torch
import torch.nn.functional as F

from fewshot.backbones import to_float
from fewshot.cli import THREADS_HELP, HelpFormatter, nonneg_int, positive_float, positive_int
from fewshot.errors import cli_main
from fewshot.runtime import pick_device, set_threads
from fewshot.timing import device_name, timed
from maml.maml import MAMLNet, meta_loss

WAYS, SIDE, META_LR, MEMORY_ITERATIONS, RTOL = 5, 28, 1e-3, 3, 1e-9
METHODS = ("ours", "clone-update")


def clone_module(module):
    """learn2learn's clone_module, re-stated: a copy sharing the module's code, hooks and buffers, with new slot dicts
    whose parameters are clones, non-leaf tensors, so the copy's losses backpropagate to the originals."""
    clone = module.__new__(type(module))
    clone.__dict__.update(module.__dict__)
    clone.__dict__.update(
        _parameters={n: None if p is None else p.clone() for n, p in module._parameters.items()},
        _modules={n: None if m is None else clone_module(m) for n, m in module._modules.items()})
    return clone


def update_module(module, updates) -> None:
    """learn2learn's update_module, re-stated: every parameter slot p (in .parameters() order) becomes p + update."""
    updates = iter(updates)
    for m in module.modules():
        for n, p in m._parameters.items():
            if p is not None:  # same keys, new values: safe while iterating
                m._parameters[n] = p + next(updates)


def clone_update_loss(model, tasks, steps: int, lr: float, first_order: bool = False):
    """meta_loss's (mean query loss, accuracy) by clone-and-update, task after task."""
    losses, accs = [], []
    for xs, ys, xq, yq in tasks:
        learner = clone_module(model)
        for _ in range(steps):
            loss = F.cross_entropy(learner(xs), ys)
            # first order: g carries no graph (and the support graph is freed), as learn2learn's MAML(first_order=True)
            grads = torch.autograd.grad(loss, list(learner.parameters()), create_graph=not first_order,
                                        retain_graph=not first_order)
            update_module(learner, [-lr * g for g in grads])
        logits = learner(xq)
        losses.append(F.cross_entropy(logits, yq))
        accs.append((logits.argmax(1) == yq).float().mean())  # meta_loss's accuracy too: the same work
    return torch.stack(losses).mean(), torch.stack(accs).mean().item()


LOSSES = {"ours": meta_loss, "clone-update": clone_update_loss}


def make_tasks(meta_batch, shots, queries, device, dtype, seed=0) -> list:
    """meta_batch tasks (xs, ys, xq, yq) of random uint8 images made float as maml.train's (channels_last)."""
    gen = torch.Generator().manual_seed(seed)

    def part(per_way):
        x = torch.randint(0, 256, (WAYS * per_way, SIDE, SIDE, 1), dtype=torch.uint8, generator=gen)
        return to_float(x).to(device, dtype), torch.arange(WAYS, device=device).repeat_interleave(per_way)

    return [(*part(shots), *part(queries)) for _ in range(meta_batch)]


def make_model(device, dtype):
    torch.manual_seed(0)  # every method starts from the same weights
    return MAMLNet(n_way=WAYS).to(device, dtype)


def make_iteration(method, tasks, args, first_order, device):
    """A closure running one meta-iteration of a fresh model (seeded) with this method, as maml.train's train_epoch."""
    model = make_model(device, torch.float32)
    opt = torch.optim.Adam(model.parameters(), META_LR)

    def iteration():
        loss, _ = LOSSES[method](model, tasks, args.steps, args.inner_lr, first_order)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return iteration


def meta_gradients(method, tasks, steps, lr, first_order, device) -> list:
    """Every parameter's .grad after backward of the mean query loss, in float64, from the seeded weights."""
    model = make_model(device, torch.float64)
    LOSSES[method](model, tasks, steps, lr, first_order)[0].backward()
    return [p.grad for p in model.parameters()]


def gradient_check(args, shots, order, device) -> dict:
    tasks = make_tasks(args.meta_batch, shots, args.queries, device, torch.float64, seed=1)
    ours, theirs = (meta_gradients(m, tasks, args.steps, args.inner_lr, order == "first", device) for m in METHODS)
    diff = max((a - b).abs().max().item() for a, b in zip(ours, theirs))
    scale = max(a.abs().max().item() for a in ours)
    equal = all(torch.allclose(a, b, rtol=RTOL, atol=RTOL * scale) for a, b in zip(ours, theirs))
    return {"shots": shots, "order": order, "max_abs_diff": diff, "max_abs_grad": scale, "equal": equal}


def peak_memory_mib(iteration, device) -> float:
    """Memory the first MEMORY_ITERATIONS meta-iterations add (no warm-up: the first one's allocations count)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    else:  # peak resident set of the process: only a fresh process per setting measures that setting
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(MEMORY_ITERATIONS):
        iteration()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (after - before) / (2**20 if sys.platform == "darwin" else 2**10)  # bytes on macOS, KiB on Linux


def memory_in_subprocess(args, method, shots, order) -> float:
    cmd = [sys.executable, __file__, "--memory-of", f"{method}:{shots}:{order}", "--meta-batch", str(args.meta_batch),
           "--queries", str(args.queries), "--steps", str(args.steps), "--inner-lr", repr(args.inner_lr),
           "--threads", str(args.threads), "--device", args.device]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:  # a bug, not bad input: keep its traceback
        raise RuntimeError(f"memory run of {method} {shots}-shot {order} order failed:\n{r.stderr}")
    return json.loads(r.stdout)


def get_parser():
    p = argparse.ArgumentParser(prog="python bench/maml_step.py", allow_abbrev=False,
                                description=__doc__.split("\n")[0], formatter_class=HelpFormatter)
    p.add_argument("--shots", type=positive_int, nargs="+", default=[1, 5], help="support images per way to time")
    p.add_argument("--order", choices=("second", "first"), nargs="+", default=["second", "first"],
                   help="MAML (second) and first-order MAML")
    p.add_argument("--queries", type=positive_int, default=5, help="query images per way (default: 5, maml.train's)")
    p.add_argument("--meta-batch", type=positive_int, default=8, help="tasks per meta-iteration")
    p.add_argument("--steps", type=positive_int, default=1, help="inner-loop SGD steps")
    p.add_argument("--inner-lr", type=positive_float, default=0.1, help="inner-loop step size")
    p.add_argument("--iterations", type=positive_int, default=20, help="timed meta-iterations per setting")
    p.add_argument("--threads", type=nonneg_int, default=0, help=THREADS_HELP)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--memory-of", help=argparse.SUPPRESS)  # METHOD:SHOTS:ORDER, the subprocess measuring memory
    return p


def main(argv=None):
    args = get_parser().parse_args(argv)
    set_threads(args.threads)
    device = pick_device(args.device)
    if args.memory_of:
        method, shots, order = args.memory_of.split(":")
        tasks = make_tasks(args.meta_batch, int(shots), args.queries, device, torch.float32)
        print(json.dumps(peak_memory_mib(make_iteration(method, tasks, args, order == "first", device), device)))
        return
    settings = [(m, s, o) for s in dict.fromkeys(args.shots) for o in dict.fromkeys(args.order) for m in METHODS]
    # NOTE: first, while this process holds little beyond its imports: Linux carries the peak RSS of the process
    # that spawns a child into the child's ru_maxrss (through fork/vfork and exec), which would hide the increase
    memory = {setting: memory_in_subprocess(args, *setting) for setting in settings}
    check_device = torch.device("cpu") if device.type == "mps" else device  # MPS has no float64
    checks = [gradient_check(args, s, o, check_device) for s in dict.fromkeys(args.shots) for o in ("second", "first")]
    tasks = {s: make_tasks(args.meta_batch, s, args.queries, device, torch.float32) for s in dict.fromkeys(args.shots)}
    iterations = [make_iteration(m, tasks[s], args, o == "first", device) for m, s, o in settings]
    for iteration in iterations:  # warm-up (allocator, oneDNN primitive caches)
        iteration()
    times = [[] for _ in settings]
    for _ in range(args.iterations):
        for iteration, ts in zip(iterations, times):
            ts.append(timed(iteration, device))
    rates = {setting: 1 / statistics.median(ts) for setting, ts in zip(settings, times)}
    rows = [{"method": m, "shots": s, "order": o, "iterations_per_s": round(rates[m, s, o], 3),
             "ratio_to_ours": round(rates[m, s, o] / rates["ours", s, o], 3),
             "seconds_median": round(1 / rates[m, s, o], 4), "seconds_min": round(min(ts), 4),
             "peak_memory_mib": round(memory[m, s, o], 1)}
            for (m, s, o), ts in zip(settings, times)]
    how = (f"fresh subprocess per row, run before anything else, {MEMORY_ITERATIONS} meta-iterations without "
           "warm-up: " + ("torch.cuda.max_memory_allocated minus memory_allocated before them" if device.type == "cuda"
                          else "increase of resource.getrusage(RUSAGE_SELF).ru_maxrss over its value before them"))
    print(json.dumps({"rows": rows, "gradient_check": checks, "gradient_check_rtol": RTOL, "memory_method": how,
                      "ways": WAYS, "image_size": SIDE, "queries": args.queries,
                      "meta_batch": args.meta_batch, "steps": args.steps, "inner_lr": args.inner_lr,
                      "meta_lr": META_LR, "iterations": args.iterations, "threads": torch.get_num_threads(),
                      "torch": str(torch.__version__), "device": str(device), "machine": device_name(device)},
                     indent=2))


if __name__ == "__main__":
    cli_main(main)
