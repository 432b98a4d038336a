"""cfe.colour: the batched colour ops against torchvision's kernels, and the MoCo v2 pipeline's randomness."""

import pytest
import torch

from cfe.augment import omniglot_augment
from cfe.colour import (
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    augment_for,
    blur_kernel_size,
    colour_jitter,
    draw_colour_params,
    grayscale_where,
    hflip_where,
    hsv_to_rgb,
    moco_v2_augment,
    rgb_to_grayscale,
    rgb_to_hsv,
)

tvF = pytest.importorskip("torchvision.transforms.v2.functional")


def images(n=6, size=12, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def gen(seed):
    return torch.Generator().manual_seed(seed)


def with_special_pixels(x):
    """Add the HSV corner cases: grey pixels (hue undefined), black, white, and ties for the largest channel."""
    x = x.clone()
    x[:, :, 0, 0] = 0.5
    x[:, :, 0, 1] = 0.0
    x[:, :, 0, 2] = 1.0
    x[:, :, 0, 3] = torch.tensor([0.8, 0.8, 0.2])
    x[:, :, 0, 4] = torch.tensor([0.3, 0.9, 0.9])
    x[:, :, 0, 5] = torch.tensor([0.7, 0.1, 0.7])
    return x


BLENDS = [(adjust_brightness, tvF.adjust_brightness), (adjust_contrast, tvF.adjust_contrast),
          (adjust_saturation, tvF.adjust_saturation)]


@pytest.mark.parametrize("ours, ref", BLENDS, ids=["brightness", "contrast", "saturation"])
def test_blend_ops_match_torchvision_per_image(ours, ref):
    x = with_special_pixels(images())
    f = torch.tensor([0.0, 0.3, 0.6, 1.0, 1.4, 2.5])  # includes the identity and factors that clamp
    y = ours(x, f)
    for i in range(len(x)):
        torch.testing.assert_close(y[i], ref(x[i], float(f[i])), atol=1e-5, rtol=0)


def test_hue_matches_torchvision_per_image():
    x = with_special_pixels(images())
    f = torch.tensor([-0.5, -0.1, 0.0, 0.05, 0.1, 0.5])
    y = adjust_hue(x, f)
    for i in range(len(x)):
        torch.testing.assert_close(y[i], tvF.adjust_hue(x[i], float(f[i])), atol=1e-4, rtol=0)


def test_hsv_round_trip_is_the_identity():
    x = with_special_pixels(images())
    torch.testing.assert_close(hsv_to_rgb(rgb_to_hsv(x)), x, atol=1e-5, rtol=0)


def test_grayscale_matches_torchvision():
    x = images()
    torch.testing.assert_close(rgb_to_grayscale(x), tvF.rgb_to_grayscale(x), atol=1e-6, rtol=0)
    mask = torch.tensor([True, False, True, False, False, True])
    y = grayscale_where(x, mask)
    torch.testing.assert_close(y[mask], tvF.rgb_to_grayscale(x[mask], num_output_channels=3), atol=1e-6, rtol=0)
    assert torch.equal(y[~mask], x[~mask])


def test_jitter_applies_each_images_ops_in_its_own_order():
    """Each image as torchvision's ColorJitter.transform runs it: its four ops one after another, in its order."""
    x = with_special_pixels(images(n=8))
    g = gen(1)
    factors = torch.stack([torch.empty(8).uniform_(0.6, 1.4, generator=g) for _ in range(3)]
                          + [torch.empty(8).uniform_(-0.1, 0.1, generator=g)], dim=1)
    order = torch.stack([torch.randperm(4, generator=g) for _ in range(8)])
    apply = torch.tensor([True] * 6 + [False] * 2)
    y = colour_jitter(x, factors, order, apply)
    refs = (tvF.adjust_brightness, tvF.adjust_contrast, tvF.adjust_saturation, tvF.adjust_hue)
    for i in range(8):
        ref = x[i]
        if apply[i]:
            for k in order[i].tolist():
                ref = refs[k](ref, float(factors[i, k]))
        torch.testing.assert_close(y[i], ref, atol=1e-4, rtol=0)
    assert torch.equal(y[~apply], x[~apply])
    # the order matters (so the test above would catch a fixed order)
    flipped = colour_jitter(x, factors, order.flip(1), apply)
    assert (flipped[:6] - y[:6]).abs().amax() > 1e-3


def test_drawn_parameters_follow_moco_v2s_distribution():
    p = draw_colour_params(4000, gen(0))
    assert abs(p.jitter.float().mean() - 0.8) < 0.03
    assert abs(p.gray.float().mean() - 0.2) < 0.03
    assert abs(p.flip.float().mean() - 0.5) < 0.03
    lo, hi = p.factors.amin(0), p.factors.amax(0)
    assert (lo[:3] >= 0.6).all() and (hi[:3] <= 1.4).all() and lo[3] >= -0.1 and hi[3] <= 0.1
    assert (lo[:3] < 0.61).all() and (hi[:3] > 1.39).all()  # the whole range is used
    assert torch.equal(p.order.sort(1).values, torch.arange(4).expand(4000, 4))  # a permutation per image
    at_each_place = torch.stack([(p.order == k).float().mean(0) for k in range(4)])  # op x position
    torch.testing.assert_close(at_each_place, torch.full((4, 4), 0.25), atol=0.03, rtol=0)


def test_hflip_where_mirrors_exactly_the_masked_images():
    x = images(n=4)
    mask = torch.tensor([True, False, False, True])
    y = hflip_where(x, mask)
    assert torch.equal(y[mask], x[mask].flip(-1)) and torch.equal(y[~mask], x[~mask])


def test_blur_kernel_scales_with_the_side():
    assert [blur_kernel_size(s) for s in (224, 84, 32, 28, 8)] == [23, 9, 5, 3, 3]


@pytest.mark.parametrize("out_size", [None, 64])
def test_shapes_dtype_range_and_memory_format(out_size):
    x = images(n=4, size=84)
    y = moco_v2_augment(x, gen(0), out_size=out_size)
    s = out_size or 84
    assert y.shape == (4, 3, s, s) and y.dtype == x.dtype and y.device == x.device
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert y.min() >= 0 and y.max() <= 1
    assert torch.isfinite(y).all()


def test_same_seed_same_views_different_seed_different_views():
    x = images(n=8, size=16)
    a, b = moco_v2_augment(x, gen(7)), moco_v2_augment(x, gen(7))
    assert torch.equal(a, b)
    assert not torch.equal(a, moco_v2_augment(x, gen(8)))
    g = gen(3)
    assert not torch.equal(moco_v2_augment(x, g), moco_v2_augment(x, g))  # two views from one generator differ


def test_global_rng_is_neither_used_nor_changed():
    x = images(n=4, size=16)
    torch.manual_seed(0)
    state = torch.get_rng_state()
    a = moco_v2_augment(x, gen(1))
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(12345)
    assert torch.equal(moco_v2_augment(x, gen(1)), a)


def test_gray_fraction_of_the_views():
    """About 20% of the views have three equal channels (random colour images otherwise never do)."""
    x = images(n=2000, size=8)
    y = moco_v2_augment(x, gen(0), p_jitter=0.0)
    gray = (y[:, 0] == y[:, 1]).all(dim=(1, 2)) & (y[:, 1] == y[:, 2]).all(dim=(1, 2))
    assert abs(gray.float().mean() - 0.2) < 0.05


def test_flip_fraction_of_the_views():
    """A grey ramp rising left to right still rises after any crop, jitter or blur; only a flip reverses it.
    (Crops of an 8 px side at scale >= 0.2 and ratio <= 4/3 are at least 3 px wide, so the ramp never vanishes.)"""
    ramp = torch.linspace(0.1, 0.5, 8)
    x = ramp.expand(2000, 3, 8, 8).contiguous()
    y = moco_v2_augment(x, gen(0))
    rising, falling = y[..., 0] < y[..., -1], y[..., 0] > y[..., -1]  # NxCxH
    assert (rising.all(dim=(1, 2)) | falling.all(dim=(1, 2))).all()
    assert abs(falling.all(dim=(1, 2)).float().mean() - 0.5) < 0.05


def test_all_probabilities_zero_leaves_only_the_crop():
    """With every random step off, the view is the crop alone: cfe.augment's crop at MoCo v2's scale and ratio."""
    from cfe.augment import random_resized_crop

    x = images(n=4, size=16)
    y = moco_v2_augment(x, gen(2), p_jitter=0, p_gray=0, p_blur=0, p_flip=0)
    ref = random_resized_crop(x, gen(2), scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3))
    torch.testing.assert_close(y, ref, atol=1e-6, rtol=0)


def test_augment_for():
    assert augment_for(1) is omniglot_augment and augment_for(3) is moco_v2_augment
