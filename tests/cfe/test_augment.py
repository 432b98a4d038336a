"""cfe.augment: shapes, determinism from the torch.Generator alone, and the identity corner cases."""

import pytest
import torch

from cfe.augment import omniglot_augment, random_gaussian_blur, random_resized_crop


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
    a = omniglot_augment(x, gen(1))
    state = torch.get_rng_state()
    torch.manual_seed(12345)  # a different global state must not change the views
    b = omniglot_augment(x, gen(1))
    assert torch.equal(a, b)
    torch.manual_seed(0)
    omniglot_augment(x, gen(1))
    assert torch.equal(torch.get_rng_state(), state)


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


def test_crop_zooms_in():
    """A crop of a fifth of the area shows a centred bright square larger than it is in the input."""
    x = torch.zeros(1, 1, 28, 28)
    x[..., 12:16, 12:16] = 1.0
    y = random_resized_crop(x, gen(0), scale=(0.2, 0.2), ratio=(1.0, 1.0))
    # the window (0.45 of the side) is centred within +-4 px of the middle, so it always holds the 4x4 square,
    # which comes out magnified ~2.2x: about 9x9 pixels
    assert (y > 0.5).sum() > 40
    y_full = random_resized_crop(x, gen(0), scale=(1.0, 1.0), ratio=(1.0, 1.0))
    assert (y_full > 0.5).sum() == 16
