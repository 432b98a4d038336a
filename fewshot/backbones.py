"""Backbones shared by CFE, MAML and EP.

`Conv4` is the 4-block convolutional network of the few-shot literature (Vinyals et al. 2016; the torchmeta
`ModelConvOmniglot` that upstream PL-CFE uses): each block is conv3x3 -> BatchNorm -> ReLU -> maxpool 2.
28x28 inputs end at 1x1, so the feature is `hidden` wide; 84x84 inputs end at 5x5. `ResNet12` is EP's network;
`TorchResNet` is torchvision's ResNet-18 / ResNet-50 (upstream's ImageNet CFE encoder is MoCo's ResNet-50). With
bn_splits > 1 every backbone's BatchNorm is a `SplitBatchNorm2d`.
"""

import functools

import torch
import torch.nn as nn
import torch.nn.functional as F

from fewshot.errors import UserError

MIN_SIDE = 2**4  # Conv4's four 2x2 max-pools leave nothing of a smaller image


def check_image_side(side: int, what: str) -> None:
    """A clear error, before any run folder exists, for images Conv4 cannot take."""
    if side < MIN_SIDE:
        raise UserError(f"{what}: {side}x{side} images are too small for the 4-block network "
                        f"(at least {MIN_SIDE}x{MIN_SIDE})")


class SplitBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics come from `splits` separate groups of the batch.

    Upstream trains CFE on 4 GPUs with DistributedDataParallel, so each BatchNorm normalises a quarter of the
    batch (and MoCo shuffles the keys across GPUs so that a query and its key see different statistics). This
    reproduces that in one process (the idea of the `SplitBatchNorm` in MoCo's single-GPU CIFAR-10 demo): group j
    is the j-th contiguous chunk of the batch. The running statistics become the mean of the groups' updates. In eval
    mode, and with splits = 1, it is exactly nn.BatchNorm2d; its state dict has the same keys.
    """

    def __init__(self, num_features, splits=1, **kwargs):
        super().__init__(num_features, **kwargs)
        self.splits = splits
        self.group_updates = None  # inside forward_in_groups: the running-statistics updates of the groups so far

    def forward(self, x):
        if self.group_updates is not None and self.training:  # x is one group (forward_in_groups)
            out, update = self.one_group(x)
            self.group_updates.append(update)
            return out
        s = self.splits
        if s == 1 or not self.training:
            return super().forward(x)
        assert x.shape[0] % s == 0, f"batch of {x.shape[0]} does not split into {s} equal BatchNorm groups"
        # NOTE: one F.batch_norm per contiguous chunk, then cat: chunks of a channels_last batch stay
        # channels_last, which the CPU kernels need (reshaping to (N/s)x(s*C)xHxW doubled the step time)
        out, updates = zip(*(self.one_group(chunk) for chunk in x.chunk(s)))
        self.average_updates(updates)
        return torch.cat(out)

    def one_group(self, x) -> tuple:
        """(x normalised with its own statistics, the running (mean, var) updated from them): copies, updated in
        place by batch_norm, so that the layer's own statistics change only once every group is done."""
        assert self.track_running_stats and self.momentum is not None
        mean, var = self.running_mean.clone(), self.running_var.clone()
        return F.batch_norm(x, mean, var, self.weight, self.bias, True, self.momentum, self.eps), (mean, var)

    @torch.no_grad()
    def average_updates(self, updates) -> None:
        """The running statistics become the mean of the groups' (mean, var) updates."""
        means, variances = zip(*updates)
        self.running_mean.copy_(torch.stack(means).mean(0))
        self.running_var.copy_(torch.stack(variances).mean(0))
        self.num_batches_tracked.add_(1)


def forward_in_groups(net: nn.Module, x: torch.Tensor, groups: int) -> torch.Tensor:
    """net(x) for a net whose BatchNorm layers split the batch into `groups` (SplitBatchNorm2d), computed one group
    at a time through the whole net rather than one layer at a time over the whole batch: the same numbers (every
    BatchNorm normalises each group with that group's statistics either way, and its running statistics take the
    mean of the groups' updates), but one group's activations fit the CPU's caches, which makes Conv4's forward and
    backward faster (BENCHMARKS.md). Plain net(x) in eval mode or with one group."""
    if groups == 1 or not net.training:
        return net(x)
    norms = [m for m in net.modules() if isinstance(m, SplitBatchNorm2d)]
    assert norms and all(m.splits == groups for m in norms), "forward_in_groups needs SplitBatchNorm2d(splits=groups)"
    assert x.shape[0] % groups == 0, f"batch of {x.shape[0]} does not split into {groups} equal BatchNorm groups"
    for m in norms:
        m.group_updates = []
    try:
        out = torch.cat([net(chunk) for chunk in x.chunk(groups)])
        for m in norms:
            m.average_updates(m.group_updates)
    finally:  # an exception leaves the running statistics as they were, and the layers out of group mode
        for m in norms:
            m.group_updates = None
    return out


def batch_norm(bn_splits=1):
    """The BatchNorm class for `bn_splits` (a `norm_layer` as torchvision takes it): SplitBatchNorm2d when > 1."""
    return functools.partial(SplitBatchNorm2d, splits=bn_splits) if bn_splits > 1 else nn.BatchNorm2d


def conv_block(cin, cout, track_running_stats=True, bn_splits=1):
    norm = SplitBatchNorm2d(cout, bn_splits) if bn_splits > 1 else \
        nn.BatchNorm2d(cout, track_running_stats=track_running_stats)
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1),
        norm,
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class Conv4(nn.Module):
    def __init__(self, in_channels=1, hidden=64, track_running_stats=True, bn_splits=1):
        super().__init__()
        self.in_channels, self.hidden = in_channels, hidden
        self.blocks = nn.Sequential(
            conv_block(in_channels, hidden, track_running_stats, bn_splits),
            *[conv_block(hidden, hidden, track_running_stats, bn_splits) for _ in range(3)],
        )

    def forward(self, x):  # x: NxCxHxW float
        return self.blocks(x).flatten(1)  # NxD

    def out_dim(self, image_size: int) -> int:
        side = image_size
        for _ in range(4):
            side //= 2
        assert side > 0, f"{image_size}px images vanish in Conv4 (check_image_side)"
        return self.hidden * side * side


def to_float(x_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC -> float NCHW in [0, 1] (channels_last memory, which the CPU convolutions prefer)."""
    return x_uint8.permute(0, 3, 1, 2).float().div_(255.0).contiguous(memory_format=torch.channels_last)


class ResBlock(nn.Module):
    """ResNet-12's block: three conv3x3-BatchNorm-LeakyReLU(0.1), a 1x1 shortcut, then a 2x2 max-pool."""

    def __init__(self, cin, cout, norm=nn.BatchNorm2d):
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False), norm(cout), nn.LeakyReLU(0.1),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False), norm(cout), nn.LeakyReLU(0.1),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False), norm(cout))
        self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), norm(cout))

    def forward(self, x):
        return F.max_pool2d(F.leaky_relu(self.convs(x) + self.shortcut(x), 0.1), 2)


class ResNet12(nn.Module):
    """The ResNet-12 of the few-shot literature (TADAM, MetaOptNet; upstream EP's src/models/backbones/resnet12.py):
    four residual blocks of 64, 160, 320 and 640 channels, then global average pooling (640-d at any size)."""

    def __init__(self, in_channels=3, widths=(64, 160, 320, 640), bn_splits=1):
        super().__init__()
        self.in_channels, self.hidden = in_channels, widths[-1]
        norm = batch_norm(bn_splits)
        self.blocks = nn.Sequential(*[ResBlock(a, b, norm) for a, b in zip((in_channels, *widths[:-1]), widths)])

    def forward(self, x):  # x: NxCxHxW float
        return self.blocks(x).mean((2, 3))  # NxD

    def out_dim(self, image_size: int) -> int:
        return self.hidden


class TorchResNet(nn.Module):
    """torchvision's ResNet-18 or ResNet-50 (`name`), untrained, without its classifier: the globally pooled feature,
    512- or 2048-d at any image size. As MoCo's main_moco.py builds `models.__dict__[arch]`, with the ImageNet stem
    (7x7 conv stride 2, max-pool) at every size; the projection head is the caller's (cfe.model), in place of fc.
    A conv1 for `in_channels` replaces torchvision's RGB one for other channel counts."""

    def __init__(self, name="resnet50", in_channels=3, bn_splits=1):
        super().__init__()
        import torchvision  # here, not at the top: it adds seconds to every command, and only these need it

        net = getattr(torchvision.models, name)(weights=None, norm_layer=batch_norm(bn_splits))
        if in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
            nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")  # as torchvision's init
        self.in_channels, self.hidden = in_channels, net.fc.in_features
        net.fc = nn.Identity()
        self.net = net

    def forward(self, x):  # x: NxCxHxW float
        return self.net(x)  # NxD

    def out_dim(self, image_size: int) -> int:
        return self.hidden


BACKBONES = ("conv4", "resnet12", "resnet18", "resnet50")


def make_backbone(name: str, in_channels: int, hidden: int, bn_splits: int = 1) -> nn.Module:
    """A backbone by name: conv4 (`hidden` channels; 28 px Omniglot, MAML's network), resnet12 (84 px), or
    torchvision's resnet18 / resnet50; `hidden` is conv4's alone. BatchNorm per 1/bn_splits of the batch when > 1."""
    if name == "conv4":
        return Conv4(in_channels, hidden, bn_splits=bn_splits)
    if name == "resnet12":
        return ResNet12(in_channels, bn_splits=bn_splits)
    if name in ("resnet18", "resnet50"):
        return TorchResNet(name, in_channels, bn_splits)
    raise UserError(f"unknown backbone '{name}'; known: {', '.join(BACKBONES)}")
