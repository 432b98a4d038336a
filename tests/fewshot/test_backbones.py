"""fewshot.backbones: SplitBatchNorm2d normalises each group of the batch on its own (as per-GPU BatchNorm does)
and is plain BatchNorm2d in eval mode; every backbone by name, and the ResNets with split BatchNorm."""

import copy

import pytest
import torch
import torch.nn as nn

from fewshot.backbones import Conv4, SplitBatchNorm2d, forward_in_groups, make_backbone
from fewshot.errors import UserError


def pair(splits, channels=3):
    torch.manual_seed(0)
    split = SplitBatchNorm2d(channels, splits)
    with torch.no_grad():
        split.weight.uniform_(0.5, 1.5)
        split.bias.uniform_(-0.5, 0.5)
    return split


def test_training_output_and_running_statistics_are_those_of_separate_groups():
    s, c = 4, 3
    split = pair(s, c)
    x = torch.randn(16, c, 5, 5) * 3 + 1
    y = split(x)
    groups, means, variances = torch.zeros_like(x), [], []
    for j in range(s):  # group j: the j-th contiguous quarter of the batch
        bn = nn.BatchNorm2d(c)
        bn.load_state_dict({k: v for k, v in SplitBatchNorm2d(c).state_dict().items()})  # fresh statistics
        bn.weight.data, bn.bias.data = split.weight.data.clone(), split.bias.data.clone()
        groups[4 * j:4 * (j + 1)] = bn(x[4 * j:4 * (j + 1)])
        means.append(bn.running_mean)
        variances.append(bn.running_var)
    torch.testing.assert_close(y, groups)
    torch.testing.assert_close(split.running_mean, torch.stack(means).mean(0))
    torch.testing.assert_close(split.running_var, torch.stack(variances).mean(0))
    # one BatchNorm over the whole batch normalises differently: the groups really are separate
    whole = nn.BatchNorm2d(c)
    whole.weight.data, whole.bias.data = split.weight.data.clone(), split.bias.data.clone()
    assert not torch.allclose(whole(x), y, atol=1e-3)


def test_gradients_flow_to_input_weight_and_bias():
    split = pair(2)
    x = torch.randn(8, 3, 4, 4, requires_grad=True)
    (split(x) * torch.randn(8, 3, 4, 4)).sum().backward()
    assert x.grad.abs().sum() > 0 and split.weight.grad.abs().sum() > 0 and split.bias.grad.abs().sum() > 0


def test_eval_mode_and_state_dict_are_plain_batchnorm():
    split = pair(4)
    split(torch.randn(8, 3, 5, 5))  # move the running statistics away from 0 / 1
    split.eval()
    plain = nn.BatchNorm2d(3).eval()
    plain.load_state_dict(split.state_dict())  # strict: same keys, same shapes
    x = torch.randn(6, 3, 5, 5)  # 6 does not even divide into 4 groups: eval does not split
    torch.testing.assert_close(split(x), plain(x))


def test_conv4_with_split_batchnorm_loads_into_a_plain_conv4():
    torch.manual_seed(0)
    split, plain = Conv4(1, 8, bn_splits=4), Conv4(1, 8)
    split(torch.randn(8, 1, 28, 28))
    plain.load_state_dict(split.state_dict())
    x = torch.randn(3, 1, 28, 28)
    torch.testing.assert_close(split.eval()(x), plain.eval()(x))


def test_backbones_by_name_give_their_feature_width():
    conv4 = make_backbone("conv4", 1, 8)
    assert conv4(torch.zeros(2, 1, 28, 28)).shape == (2, conv4.out_dim(28)) == (2, 8)
    resnet = make_backbone("resnet12", 3, 0)
    assert resnet(torch.zeros(2, 3, 84, 84)).shape == (2, resnet.out_dim(84)) == (2, 640)
    assert sum(p.numel() for p in resnet.parameters()) > 12_000_000  # the standard 12.4M-parameter network
    with pytest.raises(UserError, match="unknown backbone 'vit'"):
        make_backbone("vit", 3, 0)


@pytest.mark.parametrize("name, channels, width", [("resnet18", 1, 512), ("resnet50", 3, 2048)])
def test_torchvision_resnets_give_the_pooled_feature(name, channels, width):
    net = make_backbone(name, channels, 0).eval()
    assert net(torch.zeros(2, channels, 28, 28)).shape == (2, net.out_dim(28)) == (2, width)
    assert net.net.conv1.in_channels == channels  # a conv1 of its own for grey images
    norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and all(type(m) is nn.BatchNorm2d for m in norms)  # bn_splits = 1: plain BatchNorm


@pytest.mark.parametrize("name", ["resnet12", "resnet18", "resnet50"])
def test_resnet_with_split_batchnorm_is_the_network_run_on_each_split_alone(name):
    """bn_splits = 2 in training: the output is that of a plain-BatchNorm copy run on each half of the batch by
    itself, and every running statistic is the mean of the two copies' (as two GPUs' BatchNorms would have)."""
    torch.manual_seed(0)
    split = make_backbone(name, 3, 0, bn_splits=2).train()
    norms = [m for m in split.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and all(isinstance(m, SplitBatchNorm2d) and m.splits == 2 for m in norms)
    start = copy.deepcopy(split.state_dict())
    halves, whole = [make_backbone(name, 3, 0).train() for _ in range(2)], make_backbone(name, 3, 0).train()
    for net in (*halves, whole):
        net.load_state_dict(start)  # strict: split BatchNorm keeps plain BatchNorm's keys
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        y = split(x)
        torch.testing.assert_close(y, torch.cat([halves[0](x[:2]), halves[1](x[2:])]))
        assert not torch.allclose(y, whole(x), atol=1e-3)  # one BatchNorm over the batch: other statistics
    stats = [h.state_dict() for h in halves]
    for key, value in split.state_dict().items():
        if key.endswith(("running_mean", "running_var")):
            torch.testing.assert_close(value, (stats[0][key] + stats[1][key]) / 2)


@pytest.mark.parametrize("name", ["conv4", "resnet18"])
def test_forward_in_groups_is_the_split_network_one_group_at_a_time(name):
    """Each BatchNorm group through the whole net in turn gives the split net's outputs, gradients and running
    statistics; in eval mode, and with one group, it is net(x)."""
    torch.manual_seed(0)
    layered = make_backbone(name, 1, 8, bn_splits=4).train()
    grouped = copy.deepcopy(layered)
    x = torch.randn(8, 1, 28, 28, dtype=torch.float64)
    layered.double(), grouped.double()
    y = layered(x)
    g = forward_in_groups(grouped, x, 4)
    torch.testing.assert_close(g, y, rtol=1e-12, atol=1e-12)
    (y * y.detach()).sum().backward()
    (g * g.detach()).sum().backward()
    for (key, a), b in zip(layered.state_dict().items(), grouped.state_dict().values()):
        assert torch.allclose(a.double(), b.double(), rtol=1e-12, atol=1e-12), key  # running statistics, counts
    for a, b in zip(layered.parameters(), grouped.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-10, atol=1e-12)
    assert all(m.group_updates is None for m in grouped.modules() if isinstance(m, SplitBatchNorm2d))
    grouped.eval()
    torch.testing.assert_close(forward_in_groups(grouped, x, 4), grouped(x))


def test_forward_in_groups_failing_leaves_the_statistics_as_they_were():
    torch.manual_seed(0)
    net = Conv4(1, 8, bn_splits=2).train()
    before = copy.deepcopy(net.state_dict())
    with pytest.raises(RuntimeError):
        forward_in_groups(net, torch.randn(4, 3, 28, 28), 2)  # 3 channels into a 1-channel conv: the 1st group fails
    for key, value in net.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert all(m.group_updates is None for m in net.modules() if isinstance(m, SplitBatchNorm2d))
