"""MoCo v2's colour augmentation (facebookresearch/moco main_moco.py, --aug-plus), done as batched tensor ops.

Upstream, per image with PIL:

    RandomResizedCrop(224, scale=(0.2, 1.0)),
    RandomApply([ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
    RandomGrayscale(p=0.2),
    RandomApply([GaussianBlur([0.1, 2.0])], p=0.5),
    RandomHorizontalFlip(),

Here every step works on the whole NxCxHxW batch with per-image random parameters, and, as in cfe.augment, all
randomness comes from the `generator` passed in (no global RNG), so runs are reproducible and resumable. The crop
and the blur are cfe.augment's. The colour ops follow the tensor kernels of torchvision.transforms.v2.functional
(adjust_brightness / contrast / saturation / hue, rgb_to_grayscale), with a factor per image instead of one per
call, and clamp to [0, 1] after each op as those do; tests/cfe/test_colour.py checks them against torchvision.

NOTE: upstream runs these on PIL uint8 images, which round to whole grey levels after every op; here the views stay
float. The grey weights are torchvision's tensor ones (0.2989, 0.587, 0.114); PIL's are 299/1000, 587/1000,
114/1000, at most 1e-4 apart, well under one grey level (1/255).

NOTE: upstream's blur is PIL's GaussianBlur(radius=sigma), sigma ~ U(0.1, 2.0) in pixels whatever the image size.
The sigma range is kept, but the kernel is cfe.augment's truncated Gaussian with a size that scales with the image,
as torchvision's SimCLR recipe does: the odd number nearest 10% of the side (blur_kernel_size: 23 taps at 224 px,
9 at 84 px, 5 at 32 px, at least 3). At 84 px and up it reaches 2 sigma at the largest sigma, like cfe.augment's
9 taps at 28 px; at 32 px the 5 taps cut the larger sigmas at about 1 sigma, so small colour images are blurred
less than PIL would blur them.
"""

from typing import NamedTuple

import torch

from cfe.augment import omniglot_augment, random_gaussian_blur, random_resized_crop

GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision's _rgb_to_grayscale_image
JITTER = ((0.6, 1.4), (0.6, 1.4), (0.6, 1.4), (-0.1, 0.1))  # ColorJitter(0.4, 0.4, 0.4, 0.1): b, c, s, h ranges


# ---- colour ops: x is Nx3xHxW float in [0, 1], f holds one factor per image (a length-N tensor) ----

def _per_image(f, x):
    return f.to(x.dtype).reshape(-1, 1, 1, 1)  # N -> Nx1x1x1, broadcasts over C, H, W


def _blend(x, other, f):
    """f * x + (1 - f) * other, clamped to [0, 1]: torchvision's _blend with a factor per image."""
    f = _per_image(f, x)
    return (x * f + other * (1 - f)).clamp(0, 1)


def rgb_to_grayscale(x):
    """Nx3xHxW -> Nx1xHxW luma."""
    r, g, b = x.unbind(1)
    return (GRAY_WEIGHTS[0] * r + GRAY_WEIGHTS[1] * g + GRAY_WEIGHTS[2] * b).unsqueeze(1)


def adjust_brightness(x, f):
    """Blend with black: x * f."""
    return (x * _per_image(f, x)).clamp(0, 1)


def adjust_contrast(x, f):
    """Blend with the image's mean grey level (one scalar per image)."""
    return _blend(x, rgb_to_grayscale(x).mean(dim=(1, 2, 3), keepdim=True), f)


def adjust_saturation(x, f):
    """Blend with the image's own greyscale."""
    return _blend(x, rgb_to_grayscale(x), f)


def rgb_to_hsv(x):
    """Nx3xHxW RGB -> Nx3xHxW HSV, all in [0, 1]; torchvision's _rgb_to_hsv (after Pillow's Convert.c)."""
    r, g, b = x.unbind(1)
    maxc, minc = x.amax(1), x.amin(1)  # NxHxW
    delta = maxc - minc
    gray = delta == 0  # hue and saturation are 0 there; the divisors are set to 1 so nothing is NaN
    s = delta / torch.where(gray, torch.ones_like(maxc), maxc)
    d = torch.where(gray, torch.ones_like(delta), delta)
    # sector by the largest channel, ties going to red, then green, as torchvision's masks do
    h = torch.where(maxc == r, (g - b) / d, torch.where(maxc == g, 2 + (b - r) / d, 4 + (r - g) / d))
    h = (h / 6 + 1).fmod(1)
    return torch.stack((h, s, maxc), dim=1)


def hsv_to_rgb(x):
    """Nx3xHxW HSV -> RGB. The closed form c = v - v s clamp(min(k, 4 - k), 0, 1), k = (n + 6h) mod 6 with
    n = 5, 3, 1 for r, g, b; the same values as torchvision's sector table, without its gather."""
    h, s, v = (t.unsqueeze(1) for t in x.unbind(1))  # Nx1xHxW each
    n = torch.tensor([5.0, 3.0, 1.0], dtype=x.dtype, device=x.device).reshape(1, 3, 1, 1)
    k = (n + 6 * h).remainder(6)  # Nx3xHxW
    return v - v * s * torch.minimum(k, 4 - k).clamp(0, 1)


def adjust_hue(x, f):
    """Rotate the hue by f (in turns, [-0.5, 0.5]) in HSV space."""
    h, s, v = rgb_to_hsv(x).unbind(1)
    h = (h + f.to(x.dtype).reshape(-1, 1, 1)).remainder(1)
    return hsv_to_rgb(torch.stack((h, s, v), dim=1)).clamp(0, 1)


COLOUR_OPS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)  # torchvision's fn_idx order


def colour_jitter(x, factors, order, apply):
    """ColorJitter with per-image parameters: factors Nx4 (brightness, contrast, saturation, hue), order Nx4 (a
    permutation of 0..3 per image: the op indices in COLOUR_OPS, in the order applied), apply N bool (images not
    jittered are returned unchanged). In round r each op runs on just the images whose r-th op it is, so every
    image pays for its four ops once, as with torchvision, rather than 16 times under torch.where."""
    y = x.clone()
    for r in range(4):
        for k, op in enumerate(COLOUR_OPS):
            m = apply & (order[:, r] == k)  # N
            y[m] = op(y[m], factors[m, k])
    return y


def grayscale_where(x, mask):
    """RandomGrayscale's output (the luma in all 3 channels) where mask (N bool) is set, else x."""
    return torch.where(mask.reshape(-1, 1, 1, 1), rgb_to_grayscale(x).expand_as(x), x)


def hflip_where(x, mask):
    """x mirrored left-right where mask (N bool) is set."""
    return torch.where(mask.reshape(-1, 1, 1, 1), x.flip(-1), x)


# ---- the random parameters and the pipeline ----

class ColourParams(NamedTuple):
    jitter: torch.Tensor  # N bool: ColorJitter applied
    factors: torch.Tensor  # Nx4: brightness, contrast, saturation, hue factors
    order: torch.Tensor  # Nx4 int64: a permutation of the four ops per image
    gray: torch.Tensor  # N bool: RandomGrayscale applied
    flip: torch.Tensor  # N bool: RandomHorizontalFlip applied


def draw_colour_params(n, generator, device=None, p_jitter=0.8, p_gray=0.2, p_flip=0.5):
    """The per-image parameters of the jitter, greyscale and flip steps, drawn from `generator` alone."""
    u = torch.rand(n, 11, generator=generator, device=device)
    lo = torch.tensor([a for a, _ in JITTER], device=device)
    hi = torch.tensor([b for _, b in JITTER], device=device)
    factors = lo + (hi - lo) * u[:, :4]  # each uniform on its range, as ColorJitter._generate_value
    order = u[:, 4:8].argsort(dim=1)  # the ranks of 4 iid uniforms: a uniformly random permutation (randperm(4))
    return ColourParams(u[:, 8] < p_jitter, factors, order, u[:, 9] < p_gray, u[:, 10] < p_flip)


def blur_kernel_size(side):
    """The odd number nearest 10% of the side, at least 3 (see the module's NOTE)."""
    return max(3, 2 * int(side / 20 + 0.5) + 1)


def moco_v2_augment(x, generator, out_size=None, p_jitter=0.8, p_gray=0.2, p_blur=0.5, p_flip=0.5):
    """x: Nx3xHxW float in [0, 1] (H = W) -> one MoCo v2 view, NxCxSxS (S = out_size, default H), same dtype and
    device, channels_last. The p_* are upstream's probabilities; tests change them to isolate a step."""
    assert x.shape[1] == 3, f"RGB images expected, got {x.shape[1]} channels"
    x = random_resized_crop(x, generator, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3), out_size=out_size)
    p = draw_colour_params(x.shape[0], generator, x.device, p_jitter, p_gray, p_flip)
    x = colour_jitter(x, p.factors, p.order, p.jitter)
    x = grayscale_where(x, p.gray)
    x = random_gaussian_blur(x, generator, p=p_blur, sigma=(0.1, 2.0), kernel_size=blur_kernel_size(x.shape[-1]))
    x = hflip_where(x, p.flip)
    return x.contiguous(memory_format=torch.channels_last)


def augment_for(channels):
    """The view function for a dataset: Omniglot's for greyscale images, MoCo v2's for RGB ones."""
    return {1: omniglot_augment, 3: moco_v2_augment}[channels]
