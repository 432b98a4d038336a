"""cfe.augment: shapes, determinism from the torch.Generator alone, and the identity corner cases."""

import numpy as np
import pytest
import torch

from cfe.augment import omniglot_augment, random_gaussian_blur, random_resized_crop, torchvision_crop_boxes


def images(n=6, c=1, size=28, seed=0):
    return torch.rand(n, c, size, size, generator=torch.Generator().manual_seed(seed))


def gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("c", [1, 3])
def test_shapes_range_and_memory_format(c):
    x = images(c=c)
    y = omniglot_augment(x, gen(0))
    assert y.shape == x.shape and y.dtype == x.dtype
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert y.min() >= -1e-6 and y.max() <= 1 + 1e-6  # bilinear crop + normalised blur stay in [0, 1]
    assert random_resized_crop(x, gen(0), out_size=14).shape == (6, c, 14, 14)


def test_same_seed_same_views_different_seed_different_views():
    x = images()
    a, b = omniglot_augment(x, gen(7)), omniglot_augment(x, gen(7))
    assert torch.equal(a, b)
    assert not torch.equal(a, omniglot_augment(x, gen(8)))


def test_two_draws_from_one_generator_differ_and_replay_from_the_seed():
    """cfe.train draws the two views from one generator in sequence; replaying the seed replays both."""
    x = images()
    g = gen(3)
    v1, v2 = omniglot_augment(x, g), omniglot_augment(x, g)
    assert not torch.equal(v1, v2)
    g = gen(3)
    assert torch.equal(omniglot_augment(x, g), v1) and torch.equal(omniglot_augment(x, g), v2)


def test_global_rng_is_neither_used_nor_changed():
    x = images()
    torch.manual_seed(0)
    state = torch.get_rng_state()
    a = omniglot_augment(x, gen(1))
    assert torch.equal(torch.get_rng_state(), state)  # not changed: the call drew nothing from the global RNG
    # not used either (not even under a saved-and-restored global state): another global seed, the same views
    torch.manual_seed(12345)
    assert torch.equal(omniglot_augment(x, gen(1)), a)


def test_full_crop_with_square_ratio_is_the_identity():
    x = images()
    y = random_resized_crop(x, gen(0), scale=(1.0, 1.0), ratio=(1.0, 1.0))
    torch.testing.assert_close(y, x, atol=1e-5, rtol=0)


def test_blur_with_p_zero_is_the_identity_and_with_p_one_smooths():
    x = images()
    torch.testing.assert_close(random_gaussian_blur(x, gen(0), p=0.0), x, atol=1e-6, rtol=0)
    blurred = random_gaussian_blur(x, gen(0), p=1.0, sigma=(1.5, 2.0))
    assert blurred.shape == x.shape
    assert blurred.std() < 0.5 * x.std()  # uniform noise loses most of its variance
    torch.testing.assert_close(blurred.mean(dim=(2, 3)), x.mean(dim=(2, 3)), atol=0.02, rtol=0)


def test_blur_keeps_a_constant_image_constant():
    x = torch.full((3, 1, 28, 28), 0.4)
    torch.testing.assert_close(random_gaussian_blur(x, gen(0), p=1.0), x, atol=1e-6, rtol=0)


def test_torchvision_boxes_fit_and_follow_torchvisions_distribution():
    """Same distribution as torchvision's RandomResizedCrop.get_params (Monte Carlo, 20,000 draws each)."""
    from torchvision.transforms import RandomResizedCrop

    top, left, h, w = torchvision_crop_boxes(20000, 28, gen(0))
    assert ((h >= 1) & (w >= 1) & (top >= 0) & (left >= 0) & (top + h <= 28) & (left + w <= 28)).all()
    with torch.random.fork_rng():  # torchvision draws from the global RNG; leave it as it was
        torch.manual_seed(0)
        ref = torch.tensor([RandomResizedCrop.get_params(torch.zeros(1, 28, 28), [0.2, 1.1], [0.9, 1.1])
                            for _ in range(20000)]).float()  # rows: top, left, h, w
    ours = torch.stack([top, left, h, w], 1).float()
    torch.testing.assert_close(ours.mean(0), ref.mean(0), atol=0.15, rtol=0)  # sd of each mean is below 0.05
    area, ref_area = (h * w).float() / 784, ref[:, 2] * ref[:, 3] / 784
    assert abs(area.mean() - ref_area.mean()) < 0.01
    whole, ref_whole = ((h == 28) & (w == 28)).float().mean(), ((ref[:, 2] == 28) & (ref[:, 3] == 28)).float().mean()
    assert abs(whole - ref_whole) < 0.006  # the whole image (fallback or a fitting draw): about 1.6%


def test_torchvision_crop_resamples_exactly_the_box():
    """The crop is the box cut out and resized bilinearly, rim included: no pixel next to the box is read."""
    x = images(n=8, size=28, seed=3)
    y = random_resized_crop(x, gen(5))
    top, left, h, w = torchvision_crop_boxes(8, 28, gen(5))  # the same generator state gives the same boxes
    assert ((h < 28) | (w < 28)).sum() >= 4  # most boxes have a rim inside the image to get wrong
    for i in range(8):
        box = x[i:i + 1, :, top[i]:top[i] + h[i], left[i]:left[i] + w[i]]
        ref = torch.nn.functional.interpolate(box, size=(28, 28), mode="bilinear", align_corners=False)
        torch.testing.assert_close(y[i], ref[0], atol=1e-5, rtol=0)


def test_torchvision_crop_matches_torchvision_on_pil_images():
    """Upstream's views: torchvision's resized_crop of a PIL uint8 image, to within PIL's rounding."""
    tf = pytest.importorskip("torchvision.transforms.functional")
    from PIL import Image

    x = (images(n=8, size=28, seed=4) * 255).round()
    y = random_resized_crop(x / 255, gen(6)) * 255
    top, left, h, w = torchvision_crop_boxes(8, 28, gen(6))
    for i in range(8):
        pil = Image.fromarray(x[i, 0].to(torch.uint8).numpy(), mode="L")
        ref = tf.resized_crop(pil, int(top[i]), int(left[i]), int(h[i]), int(w[i]), [28, 28],
                              interpolation=tf.InterpolationMode.BILINEAR)
        ref = torch.tensor(np.asarray(ref), dtype=torch.float32)
        torch.testing.assert_close(y[i, 0], ref, atol=1.01, rtol=0)  # PIL rounds to whole grey levels
