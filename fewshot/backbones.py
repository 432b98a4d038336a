"""Backbones shared by CFE, MAML and EP.

`Conv4` is the 4-block convolutional network of the few-shot literature (Vinyals et al. 2016; the torchmeta
`ModelConvOmniglot` that upstream PL-CFE uses): each block is conv3x3 -> BatchNorm -> ReLU -> maxpool 2.
28x28 inputs end at 1x1, so the feature is `hidden` wide; 84x84 inputs end at 5x5.
"""

import torch
import torch.nn as nn


def conv_block(cin, cout, track_running_stats=True):
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1),
        nn.BatchNorm2d(cout, track_running_stats=track_running_stats),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class Conv4(nn.Module):
    def __init__(self, in_channels=1, hidden=64, track_running_stats=True):
        super().__init__()
        self.in_channels, self.hidden = in_channels, hidden
        self.blocks = nn.Sequential(
            conv_block(in_channels, hidden, track_running_stats),
            *[conv_block(hidden, hidden, track_running_stats) for _ in range(3)],
        )

    def forward(self, x):  # x: NxCxHxW float
        return self.blocks(x).flatten(1)  # NxD

    def out_dim(self, image_size: int) -> int:
        side = image_size
        for _ in range(4):
            side //= 2
        return self.hidden * side * side


def to_float(x_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC -> float NCHW in [0, 1] (channels_last memory, which the CPU convolutions prefer)."""
    return x_uint8.permute(0, 3, 1, 2).float().div_(255.0).contiguous(memory_format=torch.channels_last)
