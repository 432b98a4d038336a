"""Upstream PL-CFE's pretrained embeddings as our CFE: `load_any` reads either checkpoint for cfe.encode and
cfe.quality (docs/design.md, algorithms: CFE).

Upstream (github.com/xingpingdong/PL-CFE; main_cfe_omni.py, main_cfe_im84.py, cfe/builder.py after
facebookresearch/moco) saves `checkpoint_{epoch:04d}.pth.tar` every 20 (Omniglot) or 5 (ImageNet) epochs:

    {"epoch": int (epochs done: 200 in checkpoint_0199), "arch": str, "optimizer": SGD state,
     "state_dict": {"module.encoder_q.*", "module.encoder_k.*", "module.queue" (dim x K), "module.queue_ptr" (1,)}}

`module.` because the model was wrapped in DistributedDataParallel; a file saved without the wrapper lacks it. Only
encoder_q matters for encoding (upstream's cfe/cfe_encoding.py loads it alone). Its layouts:

- Omniglot, `cfe/utils/network.py` ModelConvOmniglot: `features.layer{1..4}.conv` (3x3 conv with bias, 1 -> 64 ->
  64 channels) and `features.layer{1..4}.norm` (BatchNorm2d without running statistics: track_running_stats=False,
  so the state dict holds only its weight and bias), each block followed by ReLU and a 2x2 max-pool; 28x28 grey
  inputs end at 1x1x64. Head (`--mlp`, as scripts/train_cfe_omni.sh trains it): `fc.0` Linear(64, 64), `fc.1`
  ReLU, `fc.2` Linear(64, 64); without --mlp a single `fc` Linear.
- ImageNet (`-a resnet50`, trained at 84 px): torchvision's ResNet-50 keys as they are (`conv1`, `bn1`,
  `layer{1..4}.{block}.{conv,bn}{1,2,3}`, `layer*.0.downsample.{0,1}`), its `fc` replaced by MoCo v2's head:
  `fc.0` Linear(2048, 2048), ReLU, `fc.2` Linear(2048, 128).

Ours (cfe.model.make_encoder): encoder_q = Sequential(backbone, head), so the backbone is `encoder_q.0` (Conv4's
`blocks.{i}.{0: conv, 1: BatchNorm}`, TorchResNet's torchvision net under `net.`) and the head `encoder_q.1`,
indexed as upstream's `fc` (0, ReLU, 2). `from_upstream_key` / `to_upstream_key` translate one name either way.
"""

import re
from pathlib import Path

import torch
import torch.nn as nn

from cfe.model import CFE, load_cfe
from fewshot.errors import UserError

DDP = "module."  # DistributedDataParallel's prefix on every upstream key
Q = "encoder_q."
CONV4_KEY = re.compile(r"features\.layer([1-9][0-9]*)\.(conv|norm)\.(.+)")
OURS_CONV4_KEY = re.compile(r"0\.blocks\.([0-9]+)\.([01])\.(.+)")
CONV4_SIDE_TO_IMAGE = {1: 28, 5: 84}  # conv4 feature map side -> upstream's image size (Omniglot, mini-ImageNet)
RESNET_IMAGE_SIZE = 84  # main_cfe_im84.py trains at 84 px and cfe/cfe_encoding.py encodes at 84 px
RESNETS = {("bottleneck", (3, 4, 6, 3)): "resnet50", ("basic", (2, 2, 2, 2)): "resnet18"}  # what we build


def from_upstream_key(key: str) -> str | None:
    """An upstream state_dict key -> the key of the same tensor in our CFE's state dict, or None for a key that is
    not encoder_q's (encoder_k, queue, queue_ptr: encoding needs none of them). Pure string work:

        [module.]encoder_q.features.layer{n}.conv.P -> encoder_q.0.blocks.{n-1}.0.P   (conv4)
        [module.]encoder_q.features.layer{n}.norm.P -> encoder_q.0.blocks.{n-1}.1.P   (conv4's BatchNorm)
        [module.]encoder_q.fc.P                     -> encoder_q.1.P                  (the head: Linear or MLP)
        [module.]encoder_q.P (anything else)        -> encoder_q.0.net.P              (torchvision ResNet)
    """
    if key.startswith(DDP):
        key = key[len(DDP):]
    if not key.startswith(Q):
        return None
    rest = key[len(Q):]
    if rest.startswith("fc."):
        return f"{Q}1.{rest[len('fc.'):]}"
    m = CONV4_KEY.fullmatch(rest)
    if m:
        return f"{Q}0.blocks.{int(m[1]) - 1}.{0 if m[2] == 'conv' else 1}.{m[3]}"
    return f"{Q}0.net.{rest}"


def to_upstream_key(key: str, prefix: str = DDP) -> str | None:
    """The inverse of from_upstream_key: one of our encoder_q keys -> upstream's name for it (with `prefix`,
    DistributedDataParallel's "module." by default); None for a key outside encoder_q."""
    if not key.startswith(Q):
        return None
    rest = key[len(Q):]
    if rest.startswith("1."):
        rest = "fc." + rest[len("1."):]
    elif rest.startswith("0.net."):
        rest = rest[len("0.net."):]
    elif m := OURS_CONV4_KEY.fullmatch(rest):
        rest = f"features.layer{int(m[1]) + 1}.{'conv' if m[2] == '0' else 'norm'}.{m[3]}"
    return f"{prefix}{Q}{rest}"


def is_upstream(ckpt) -> bool:
    """Whether a loaded file is upstream's: a dict (not one of ours, which have "kind") whose "state_dict" holds
    encoder_q keys, with or without DistributedDataParallel's "module." prefix."""
    if not isinstance(ckpt, dict) or "kind" in ckpt or not isinstance(ckpt.get("state_dict"), dict):
        return False
    return any(isinstance(k, str) and k.startswith((DDP + Q, Q)) for k in ckpt["state_dict"])


def infer_arch(q: dict, path, image_size=None) -> dict:
    """CFE arguments from the shapes of upstream's encoder_q tensors `q` (keys without "[module.]encoder_q.").

    Backbone: conv4 when `features.layer1.conv.weight` is there (in_channels and hidden from its shape), else a
    torchvision ResNet (in_channels from `conv1.weight`; ResNet-50 or -18 from its block type and counts). Head:
    an MLP when `fc.2.weight` is there; dim = the last Linear's output. image_size: `image_size` when given, else
    upstream's: conv4 28 px (its feature is 1x1) or 84 px (5x5), ResNet 84 px."""
    def bad(why):
        return UserError(f"{path}: upstream CFE checkpoint whose encoder_q {why}")

    mlp = "fc.2.weight" in q
    last = q.get("fc.2.weight" if mlp else "fc.weight")
    first_fc = q.get("fc.0.weight" if mlp else "fc.weight")
    if last is None or first_fc is None or last.dim() != 2 or first_fc.dim() != 2:
        raise bad("has no projection head (fc.weight, or fc.0.weight and fc.2.weight)")
    dim, feat = int(last.shape[0]), int(first_fc.shape[1])
    if "features.layer1.conv.weight" in q:
        hidden, in_channels = (int(n) for n in q["features.layer1.conv.weight"].shape[:2])
        side = round((feat / hidden) ** 0.5) if hidden else 0
        if side < 1 or side * side * hidden != feat:
            raise bad(f"has a conv4 of {hidden} channels, which no image size turns into its head's {feat} inputs")
        size = image_size or CONV4_SIDE_TO_IMAGE.get(side, 16 * side)
        if size // 16 != side:  # Conv4's four 2x2 max-pools
            raise bad(f"has a conv4 for a {side}x{side} feature map, which {size} px images do not give")
        arch = dict(backbone="conv4", in_channels=in_channels, hidden=hidden, image_size=size)
    elif "conv1.weight" in q:
        kind = "bottleneck" if "layer1.0.conv3.weight" in q else "basic"
        blocks = tuple(len({k.split(".")[1] for k in q if k.startswith(f"layer{i}.")}) for i in range(1, 5))
        backbone = RESNETS.get((kind, blocks))
        if backbone is None:
            raise bad(f"is a ResNet with {kind} blocks {blocks}, not one this project builds "
                      f"({', '.join(RESNETS.values())})")
        arch = dict(backbone=backbone, in_channels=int(q["conv1.weight"].shape[1]), image_size=image_size or
                    RESNET_IMAGE_SIZE)
    else:
        raise bad("is neither upstream's conv4 (features.layer1.conv.weight) nor a torchvision ResNet (conv1.weight)")
    return dict(arch, dim=dim, mlp=mlp)


def without_running_stats(module: nn.Module) -> None:
    """Every BatchNorm of `module` as upstream's conv4 has them (track_running_stats=False): no running statistics
    in its state dict, and batch statistics in eval mode too."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.track_running_stats = False
            m.running_mean = m.running_var = m.num_batches_tracked = None


def _shape(value) -> str:
    return "x".join(map(str, value.shape)) if isinstance(value, torch.Tensor) else f"a {type(value).__name__}"


def _names(keys, limit=3) -> str:
    keys = list(keys)
    return ", ".join(keys[:limit]) + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def load_encoder_q(model: CFE, state: dict, path, prefix: str) -> None:
    """Upstream's encoder_q tensors into model.encoder_q, strictly: every tensor lands, with its shape; a
    mismatch is one line naming the first few keys in upstream's spelling. num_batches_tracked may be absent (it
    only counts training steps)."""
    given = {}  # our key -> (upstream key, tensor)
    for key, value in state.items():
        ours = from_upstream_key(key) if isinstance(key, str) else None
        if ours is not None:
            given[ours] = (key, value)
    expected = {f"{Q}{k}": v for k, v in model.encoder_q.state_dict().items()}
    missing = [to_upstream_key(k, prefix) for k in expected
               if k not in given and not k.endswith(".num_batches_tracked")]
    unexpected = [up for k, (up, _) in given.items() if k not in expected]
    wrong = [f"{up} is {_shape(v)}, the model's {_shape(expected[k])}" for k, (up, v) in given.items()
             if k in expected and (not isinstance(v, torch.Tensor) or v.shape != expected[k].shape)]
    problems = [f"{what}: {_names(keys)}" for what, keys in
                (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if keys]
    if problems:
        raise UserError(f"{path}: upstream CFE checkpoint whose encoder_q does not fit the "
                        f"{model.arch['backbone']} its shapes describe ({'; '.join(problems)})")
    weights = {k[len(Q):]: v for k, (_, v) in given.items()}
    weights.update({k[len(Q):]: v for k, v in expected.items() if k not in given})  # num_batches_tracked
    model.encoder_q.load_state_dict(weights, strict=True)


def load_upstream(ckpt: dict, path, device="cpu", image_size=None) -> CFE:
    """Our CFE holding an upstream checkpoint's encoder_q (see the module docstring), in eval mode, with
    load_cfe's attributes: `arch` (inferred by infer_arch), `trained_epochs` (upstream's "epoch") and
    `train_config` None. f_k is a copy of f_q and the queue is fresh: it embeds, it does not resume training.

    NOTE: upstream's conv4 BatchNorm keeps no running statistics, so, as in upstream's cfe/cfe_encoding.py, it
    normalises each forward batch with that batch's statistics and an image's embedding depends on its batch
    (upstream encodes in batches of 32 in file order: `cfe.encode --batch-size 32` reproduces it). A conv4 whose
    checkpoint does hold running statistics uses them."""
    state = ckpt["state_dict"]
    prefix = DDP if any(isinstance(k, str) and k.startswith(DDP + Q) for k in state) else ""
    q = {k[len(prefix + Q):]: v for k, v in state.items()
         if isinstance(k, str) and k.startswith(prefix + Q) and isinstance(v, torch.Tensor)}
    arch = infer_arch(q, path, image_size)
    queue = state.get(prefix + "queue")  # upstream's is dim x K
    if isinstance(queue, torch.Tensor) and queue.dim() == 2 and queue.shape[0] == arch["dim"]:
        arch["queue_size"] = int(queue.shape[1])
    model = CFE(**arch)
    if arch["backbone"] == "conv4" and "features.layer1.norm.running_mean" not in q:
        without_running_stats(model)
    load_encoder_q(model, state, path, prefix)
    model.encoder_k.load_state_dict(model.encoder_q.state_dict())
    epoch = ckpt.get("epoch")
    model.trained_epochs = epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else None
    model.train_config = None
    return model.to(device).eval()


def _peek(path):
    """The object in `path` (tensors memory-mapped when the file is a zip archive, so a large checkpoint is not
    read twice), or None when it cannot be read: load_cfe then says why, as it always has."""
    try:
        path = Path(path)
        if not path.is_file():
            return None
        with open(path, "rb") as f:
            zipped = f.read(2) == b"PK"  # torch.save's format since PyTorch 1.6; upstream's era wrote a pickle
        return torch.load(path, map_location="cpu", weights_only=True, mmap=zipped)
    except Exception:  # anything unreadable is load_cfe's to report
        return None


def load_any(path, device="cpu", image_size=None) -> CFE:
    """The CFE of a cfe checkpoint (load_cfe) or of an upstream PL-CFE checkpoint (load_upstream; `image_size`
    overrides the image size it assumes); any other file gets load_cfe's one-line error."""
    ckpt = _peek(path)
    if is_upstream(ckpt):
        return load_upstream(ckpt, path, device, image_size)
    del ckpt
    return load_cfe(path, device)
