"""fewshot.backbones: SplitBatchNorm2d normalises each group of the batch on its own (as per-GPU BatchNorm does)
and is plain BatchNorm2d in eval mode."""

import pytest
import torch
import torch.nn as nn

from fewshot.backbones import Conv4, SplitBatchNorm2d


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
    from fewshot.backbones import make_backbone
    from fewshot.errors import UserError
    conv4 = make_backbone("conv4", 1, 8)
    assert conv4(torch.zeros(2, 1, 28, 28)).shape == (2, conv4.out_dim(28)) == (2, 8)
    resnet = make_backbone("resnet12", 3, 0)
    assert resnet(torch.zeros(2, 3, 84, 84)).shape == (2, resnet.out_dim(84)) == (2, 640)
    assert sum(p.numel() for p in resnet.parameters()) > 12_000_000  # the standard 12.4M-parameter network
    with pytest.raises(UserError, match="unknown backbone 'vit'"):
        make_backbone("vit", 3, 0)
