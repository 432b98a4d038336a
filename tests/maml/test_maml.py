"""MAML's meta-gradient (maml.maml): second order against finite differences, first order as FOMAML, `adapt`."""

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from maml.maml import MAMLNet, adapt, evaluate_task, meta_loss

N_WAY, STEPS, LR = 2, 2, 0.5


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_problem(seed=0):
    """A float64 MAMLNet (hidden 2, 16x16 input: Conv4's four pools end at 1x1) and two 2-way tasks."""
    torch.manual_seed(seed)
    model = MAMLNet(in_channels=1, hidden=2, image_size=16, n_way=N_WAY).double()
    g = torch.Generator().manual_seed(seed + 1)
    tasks = []
    for _ in range(2):
        xs = torch.randn(2 * N_WAY, 1, 16, 16, generator=g, dtype=torch.float64)
        xq = torch.randn(3 * N_WAY, 1, 16, 16, generator=g, dtype=torch.float64)
        tasks.append((xs, torch.arange(N_WAY).repeat(2), xq, torch.arange(N_WAY).repeat(3)))
    return model, tasks


def meta_grad(model, tasks, first_order):
    model.zero_grad(set_to_none=True)
    loss, _ = meta_loss(model, tasks, STEPS, LR, first_order=first_order)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters()), "some parameter got no meta-gradient"
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def finite_difference_grad(model, tasks, eps=1e-6):
    """Central differences of the meta-loss, one parameter entry at a time (perturbing the model in place)."""
    out = []
    with torch.no_grad():
        for p in model.parameters():
            flat = p.view(-1)
            for i in range(flat.numel()):
                old = flat[i].item()
                flat[i] = old + eps
                with torch.enable_grad():
                    up = meta_loss(model, tasks, STEPS, LR)[0].item()
                flat[i] = old - eps
                with torch.enable_grad():
                    down = meta_loss(model, tasks, STEPS, LR)[0].item()
                flat[i] = old
                out.append((up - down) / (2 * eps))
    return torch.tensor(out, dtype=torch.float64)


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


def hand_adapted(model, xs, ys, steps, lr):
    """The inner loop written out independently of `adapt`: on a detached copy of the initialisation, `steps`
    times w <- w - lr * dCE(f_w(xs), ys)/dw. The model's batch norms use batch statistics in either mode, as in
    `adapt`, and functional_call runs the model in its own (training) mode, as `adapt` does."""
    w = {n: p.detach().clone().requires_grad_() for n, p in model.named_parameters()}
    for _ in range(steps):
        loss = F.cross_entropy(functional_call(model, w, (xs,)), ys)
        grads = torch.autograd.grad(loss, list(w.values()))
        w = {n: (p - lr * g).detach().requires_grad_() for (n, p), g in zip(w.items(), grads)}
    return w


def test_second_order_meta_gradient_matches_finite_differences():
    model, tasks = tiny_problem()
    analytic = meta_grad(model, tasks, first_order=False)
    numeric = finite_difference_grad(model, tasks)
    assert numeric.norm() > 1e-3  # a real gradient, not a vanishing one
    assert rel_err(analytic, numeric) < 1e-5


def test_first_order_gradient_is_fomaml_and_misses_the_second_order_term():
    model, tasks = tiny_problem()
    second = meta_grad(model, tasks, first_order=False)
    first = meta_grad(model, tasks, first_order=True)
    # the second-order term is there: dropping it changes the gradient clearly
    assert rel_err(first, second) > 1e-3
    # FOMAML: the mean over tasks of the query-loss gradient at the adapted weights, applied to the initialisation
    # (the adapted weights built by hand, so that a wrong inner loop cannot make its own expectation)
    expected = torch.zeros_like(first)
    for xs, ys, xq, yq in tasks:
        adapted = hand_adapted(model, xs, ys, STEPS, LR)
        loss = F.cross_entropy(functional_call(model, adapted, (xq,)), yq)
        grads = torch.autograd.grad(loss, list(adapted.values()))
        expected += torch.cat([g.flatten() for g in grads]) / len(tasks)
    torch.testing.assert_close(first, expected, rtol=1e-10, atol=1e-12)


def test_adapt_and_meta_loss_match_the_inner_loop_written_out():
    """adapt takes exactly `steps` SGD steps of size `lr`, and meta_loss is the mean query cross-entropy (and
    accuracy) at those weights. The step size is not LR, so that a mutant's halved or doubled step shows."""
    model, tasks = tiny_problem()
    steps, lr = 2, 0.3
    params = dict(model.named_parameters())
    queries_ce, queries_acc = [], []
    for xs, ys, xq, yq in tasks:
        want = hand_adapted(model, xs, ys, steps, lr)
        for create_graph in (True, False):
            got = adapt(model, params, xs, ys, steps, lr, create_graph=create_graph)
            assert list(got) == list(want)
            for name in want:
                torch.testing.assert_close(got[name], want[name], rtol=0, atol=1e-12)
        # sanity: one step fewer lands far outside the 1e-12 tolerance above, so the comparison can tell steps apart
        one_step = hand_adapted(model, xs, ys, steps - 1, lr)
        assert max((one_step[n] - want[n]).abs().max().item() for n in want) > 1e-4
        with torch.no_grad():
            logits = functional_call(model, want, (xq,))
        queries_ce.append(F.cross_entropy(logits, yq).item())
        queries_acc.append((logits.argmax(1) == yq).double().mean().item())
    for first_order in (False, True):
        loss, acc = meta_loss(model, tasks, steps, lr, first_order=first_order)
        assert loss.item() == pytest.approx(sum(queries_ce) / len(tasks), rel=1e-12, abs=1e-12)
        assert acc == pytest.approx(sum(queries_acc) / len(tasks), abs=1e-6)  # meta_loss averages in float32


def test_first_order_training_step_moves_the_weights():
    model, tasks = tiny_problem()
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    opt.zero_grad()
    meta_loss(model, tasks, STEPS, LR, first_order=True)[0].backward()
    opt.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))


def test_adapt_without_graph_returns_leaves_with_the_same_values():
    model, tasks = tiny_problem()
    xs, ys, _, _ = tasks[0]
    params = dict(model.named_parameters())
    with_graph = adapt(model, params, xs, ys, STEPS, LR, create_graph=True)
    leaves = adapt(model, params, xs, ys, STEPS, LR, create_graph=False)
    assert list(leaves) == list(params)
    for name, p in leaves.items():
        assert p.is_leaf and p.grad_fn is None and p.requires_grad
        assert with_graph[name].grad_fn is not None  # the second-order path keeps its graph
        torch.testing.assert_close(p, with_graph[name], rtol=1e-12, atol=1e-12)
    assert not torch.equal(leaves["classifier.weight"], params["classifier.weight"].detach())  # it adapted
    # the adapted weights fit the support set better than the initialisation
    init_loss = F.cross_entropy(model(xs), ys)
    assert F.cross_entropy(functional_call(model, leaves, (xs,)), ys) < init_loss


def test_adapt_zero_steps_is_identity_and_evaluate_task_leaves_the_model_alone():
    model, tasks = tiny_problem()
    params = dict(model.named_parameters())
    assert adapt(model, params, *tasks[0][:2], 0, LR, create_graph=True) == params
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    xs, ys, xq, yq = tasks[0]
    with torch.no_grad():  # works inside no_grad (validation runs there)
        acc, logits = evaluate_task(model, xs, ys, xq, yq, steps=3, lr=LR)
    assert 0.0 <= acc <= 1.0 and logits.shape == (len(xq), N_WAY)
    assert acc == (logits.argmax(1) == yq).float().mean().item()
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())
    assert all(p.grad is None for p in model.parameters())
    _, logits0 = evaluate_task(model, xs, ys, xq, yq, steps=0, lr=LR)
    torch.testing.assert_close(logits0, model(xq).detach())
    assert not torch.allclose(logits0, logits)  # three steps changed the predictions
