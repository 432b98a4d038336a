"""The upstream Omniglot augmentation, done as batched tensor ops.

Upstream (PL-CFE main_cfe_omni.py, per image with PIL): RandomResizedCrop(28, scale=(0.2, 1.1),
ratio=(0.9, 1.1), bilinear) and, with p = 0.5, GaussianBlur with sigma ~ U(0.1, 2.0). Here one `affine_grid` +
`grid_sample` crops the whole batch and one grouped convolution blurs it, which is several times faster on a CPU
than a PIL pipeline. Randomness comes only from the `generator` passed in, so a run is reproducible and
resumable without saving global RNG state.

The crop boxes are drawn as torchvision's RandomResizedCrop.get_params draws them, batched: up to 10 draws of
(area, ratio), the first integer box that fits inside the image is used, else the whole image (the centre-crop
fallback for a square image with ratio 0.9-1.1). So area fractions above 1 are never used and no view is zoomed
out: upstream's views. PIL cuts the box out before resizing, so its edge pixels are interpolated from inside the
box only; here the sampling points are clamped to the box's outermost pixel centres, which gives the same pixels
(to within PIL's rounding to uint8: tests/cfe/test_augment.py).

NOTE: the blur is a 9-tap Gaussian (cut at 4 pixels from the centre, 2 sigma at the largest sigma), not PIL's
ImageFilter.GaussianBlur that upstream calls, which approximates a Gaussian by repeated box blurs. So blurred views
are close to upstream's but not pixel-identical; unlike the crops, the blur has no pixel-level test against PIL.
"""

import math

import torch
import torch.nn.functional as F


def torchvision_crop_boxes(n, size, generator, scale=(0.2, 1.1), ratio=(0.9, 1.1), tries=10, device=None):
    """Integer crop boxes as torchvision's RandomResizedCrop.get_params draws them for a size x size image.

    Returns top, left, height, width: four int64 tensors of length n. Each image gets `tries` draws of
    (area, log-ratio); the first whose rounded box fits is used, and the whole image when none does."""
    u = torch.rand(n, tries, 2, generator=generator, device=device)
    area = size * size * (scale[0] + (scale[1] - scale[0]) * u[..., 0])  # N x tries, in pixels
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[..., 1]
    w = torch.round(torch.sqrt(area * torch.exp(log_r))).long()  # round half to even, as Python's round()
    h = torch.round(torch.sqrt(area / torch.exp(log_r))).long()
    fits = (w > 0) & (w <= size) & (h > 0) & (h <= size)
    first = fits.int().argmax(1)  # index of the first draw that fits (0 when none does)
    any_fit = fits.any(1)
    w = torch.where(any_fit, w.gather(1, first[:, None])[:, 0], size)
    h = torch.where(any_fit, h.gather(1, first[:, None])[:, 0], size)
    pos = torch.rand(n, 2, generator=generator, device=device)  # uniform over the valid integer positions
    top = (pos[:, 0] * (size - h + 1)).long().clamp(max=size - h)
    left = (pos[:, 1] * (size - w + 1)).long().clamp(max=size - w)
    return top, left, h, w


def random_resized_crop(x, generator, scale=(0.2, 1.1), ratio=(0.9, 1.1), out_size=None):
    """x: NxCxHxW float (H = W). Returns NxCxSxS crops of torchvision's boxes resized (bilinear) to out_size
    (default H)."""
    n, c, h, w = x.shape
    assert h == w, f"square images expected, got {h}x{w}"
    s = out_size or h
    top, left, ch, cw = (t.to(x.dtype) for t in torchvision_crop_boxes(n, h, generator, scale, ratio,
                                                                          device=x.device))
    # the box [left, left + cw) x [top, top + ch) in the normalised coordinates of affine_grid
    theta = torch.zeros(n, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0], theta[:, 0, 2] = cw / w, (2 * left + cw) / w - 1
    theta[:, 1, 1], theta[:, 1, 2] = ch / h, (2 * top + ch) / h - 1
    grid = F.affine_grid(theta, (n, c, s, s), align_corners=False)  # NxSxSx2, (x, y) in [-1, 1]
    # keep every sampling point between the centres of the box's outermost pixels, so that bilinear weights never
    # reach the pixels next to the box: what resizing the cut-out box (PIL, F.interpolate) reads
    lo_x, hi_x = (2 * left + 1) / w - 1, (2 * (left + cw) - 1) / w - 1  # N, pixel centres in [-1, 1]
    lo_y, hi_y = (2 * top + 1) / h - 1, (2 * (top + ch) - 1) / h - 1
    gx = torch.maximum(torch.minimum(grid[..., 0], hi_x[:, None, None]), lo_x[:, None, None])
    gy = torch.maximum(torch.minimum(grid[..., 1], hi_y[:, None, None]), lo_y[:, None, None])
    return F.grid_sample(x, torch.stack((gx, gy), dim=-1), mode="bilinear", padding_mode="zeros",
                         align_corners=False)


def random_gaussian_blur(x, generator, p=0.5, sigma=(0.1, 2.0), kernel_size=9):
    """Blur each image with probability p, sigma ~ U(sigma); one separable grouped conv for the batch."""
    n, c, h, w = x.shape
    u = torch.rand(n, 2, generator=generator, device=x.device)
    sig = sigma[0] + (sigma[1] - sigma[0]) * u[:, 0]  # N
    r = kernel_size // 2
    t = torch.arange(-r, r + 1, device=x.device, dtype=x.dtype)  # kernel_size
    k = torch.exp(-(t[None] ** 2) / (2 * sig[:, None] ** 2))
    k = k / k.sum(1, keepdim=True)  # NxKs
    identity = torch.zeros_like(k)
    identity[:, r] = 1
    k = torch.where((u[:, 1] < p)[:, None], k, identity)  # unblurred images get the identity kernel
    k = k.repeat_interleave(c, dim=0)  # (N*C)xKs, one kernel per channel of each image
    y = x.reshape(1, n * c, h, w)
    y = F.conv2d(F.pad(y, (r, r, 0, 0), mode="reflect"), k[:, None, None, :], groups=n * c)
    y = F.conv2d(F.pad(y, (0, 0, r, r), mode="reflect"), k[:, None, :, None], groups=n * c)
    return y.reshape(n, c, h, w)


def omniglot_augment(x, generator):
    """x: NxCxHxW float in [0, 1] -> one augmented view, same shape, channels_last."""
    x = random_resized_crop(x, generator)
    x = random_gaussian_blur(x, generator)
    return x.contiguous(memory_format=torch.channels_last)
