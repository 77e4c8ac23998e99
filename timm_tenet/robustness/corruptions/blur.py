"""Blur corruptions: gaussian (skimage), glass (skimage + local pixel copies), defocus (OpenCV disk), motion
(ImageMagick), zoom (scipy zoom).

Each reproduces the kernel and the border rule of the library the reference calls. The random ones draw
from a ``torch.Generator`` on the input's device (their draws match the reference's in distribution) and
hand the draws to an ``apply_*`` function, which equals the reference given the same draws.
"""
import functools
import math
from typing import Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ._filters import (
    clipped_zoom, clipped_zoom_matrix, correlate, gaussian_filter, gaussian_filter_scipy_order, gaussian_kernel1d,
    motion_blur_8bit)


def gaussian_blur(x: torch.Tensor, sigma: float, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """``skimage.filters.gaussian``: separable, truncated at 4 sigma, nearest borders."""
    return gaussian_filter(x, sigma, 'nearest')


def _disk_kernel(radius: float, alias_blur: float) -> torch.Tensor:
    """The anti-aliased disk of ImageNet-C's defocus blur, cropped to its non-zero support."""
    half = 8 if radius <= 8 else int(radius)
    smooth = 1 if radius <= 8 else 2  # OpenCV GaussianBlur ksize 3 or 5
    taps = torch.arange(-half, half + 1, dtype=torch.float64)
    disk = ((taps[:, None] ** 2 + taps[None, :] ** 2) <= radius ** 2).double()
    disk = F.pad((disk / disk.sum())[None, None], (smooth,) * 4, mode='reflect')[0, 0]  # cv2 BORDER_REFLECT_101
    g = gaussian_kernel1d(alias_blur, smooth)
    disk = F.conv2d(F.conv2d(disk[None, None], g.view(1, 1, -1, 1)), g.view(1, 1, 1, -1))[0, 0]
    keep = min(half, math.floor(radius) + smooth)
    return disk[half - keep:half + keep + 1, half - keep:half + keep + 1]


def defocus_blur(
        x: torch.Tensor, params: Tuple[float, float], generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """``cv2.filter2D`` with the anti-aliased disk ``(radius, alias_blur)`` and OpenCV's reflect-101 border."""
    return correlate(x, _disk_kernel(*params), 'reflect101')


# Images of up to this many pixels are zoom-blurred by one dense matrix product (see zoom_blur)
_DENSE_ZOOM_PIXELS = 48 * 48


@functools.lru_cache(maxsize=5)  # one per severity
def _zoom_blur_operator(
        h: int, w: int, factors: Tuple[float, float, float], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The (h * w) x (h * w) matrix ``A`` with ``zoom_blur(x) = x.flatten(-2) @ A``: the mean over the image
    (its zoom by 1) and its zooms of ``R_z ⊗ C_z``, the row and column interpolations, built in float64."""
    zooms = [1.0] + [float(f) for f in np.arange(*factors)]
    rows = torch.stack([clipped_zoom_matrix(h, z) for z in zooms])
    cols = torch.stack([clipped_zoom_matrix(w, z) for z in zooms])
    operator = torch.einsum('zik,zjl->klij', rows, cols).reshape(h * w, h * w) / len(zooms)
    with torch.inference_mode(False):  # usable outside inference mode too, e.g. under autograd
        return operator.to(device, dtype)


def zoom_blur(
        x: torch.Tensor, factors: Tuple[float, float, float],
        generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Average of the image and its centre zooms by ``numpy.arange(*factors)``.

    The average is linear in the image, so up to ``_DENSE_ZOOM_PIXELS`` pixels it is one product with a cached
    (h * w) x (h * w) matrix (4 MB at 32 px in float32): at 32 px with 26 zooms (CIFAR severity 5) that one
    well-shaped GEMM runs about 3.5x faster on the CPU than 26 bilinear interpolations of the batch, though it
    multiplies mostly zeros. Its cost grows with the square of the pixel count and the interpolations' only
    linearly; on the CPU both cost about the same at 56 px, so larger images, ImageNet's 224 px among them (a
    50176-square matrix), are zoomed one interpolation at a time. Two stacked matrix products (every zoom's
    columns at once, then their rows) were slower than both, at 32 and at 224 px.
    """
    h, w = x.shape[-2:]
    if h * w <= _DENSE_ZOOM_PIXELS:
        operator = _zoom_blur_operator(h, w, tuple(factors), x.device, x.dtype)
        return (x.reshape(-1, h * w) @ operator).view(x.shape)
    zooms = np.arange(*factors)
    out = x.clone()
    for factor in zooms:
        out += clipped_zoom(x, float(factor))
    return out / (len(zooms) + 1)


def glass_index(h: int, w: int, offsets: torch.Tensor) -> torch.Tensor:
    """Where each pixel's value comes from after the reference's sequential pixel "swaps", flattened to ``h * w``.

    The reference walks rows ``h - d .. d + 1`` and, in each, columns ``w - d .. d + 1`` (both descending),
    and runs ``x[r, c], x[r + dy, c + dx] = x[r + dy, c + dx], x[r, c]`` on numpy views: a copy from the
    source into ``(r, c)``, not a swap. A source already visited holds its own copied value, so each pixel's
    final source is found by following links to earlier-visited sources; the map does not depend on the
    image, and pointer jumping resolves all chains at once (log2 of the longest chain rounds).

    Args:
        h: Image height.
        w: Image width.
        offsets: B x passes x (h - 2d) x (w - 2d) x 2 integers ``(dx, dy)`` in ``[-d, d - 1]``; index
            ``[:, p, i, j]`` is drawn for row ``d + 1 + i`` and column ``d + 1 + j`` in pass ``p``.

    Returns:
        B x (h * w) indices into the flattened image.
    """
    b, passes, rows, cols, _ = offsets.shape
    d = (h - rows) // 2
    device = offsets.device
    identity = torch.arange(h * w, device=device).expand(b, -1)
    visited = torch.zeros(h, w, dtype=torch.bool, device=device)
    visited[d + 1:h - d + 1, d + 1:w - d + 1] = True
    visited = visited.flatten()
    r = torch.arange(d + 1, h - d + 1, device=device)[:, None]
    c = torch.arange(d + 1, w - d + 1, device=device)[None, :]
    total = identity
    for step in range(passes):
        dx, dy = offsets[:, step].unbind(-1)
        src = identity.clone()
        src[:, visited] = ((r + dy) * w + (c + dx)).reshape(b, -1)
        # visited earlier = later in row-major order, the walk being descending
        linked = visited & visited[src] & (src > identity)
        pointer = torch.where(linked, src, identity)
        while True:  # chains are short, so a few rounds; each round halves the longest
            jumped = pointer.gather(1, pointer)
            if torch.equal(jumped, pointer):
                break
            pointer = jumped
        source = src.gather(1, pointer)
        total = total.gather(1, source)  # the image after this pass reads the previous one at source
    return total


def apply_glass_blur(x: torch.Tensor, sigma: float, offsets: torch.Tensor) -> torch.Tensor:
    """Glass blur with given copy ``offsets`` (see :func:`glass_index`): skimage ``gaussian`` (nearest
    borders) of the 8-bit image, truncation to 8 bits, the copies as one gather, ``gaussian`` again. The
    first blur runs in float64 in scipy's order so that the truncation falls as the reference's."""
    b, c, h, w = x.shape
    image = torch.round(x.double().clamp(0, 1) * 255) / 255
    blurred = torch.floor(gaussian_filter_scipy_order(image, sigma, 'nearest') * 255).to(x.dtype) / 255
    index = glass_index(h, w, offsets)[:, None].expand(-1, c, -1)
    shuffled = blurred.flatten(2).gather(2, index).view(b, c, h, w)
    return gaussian_filter(shuffled, sigma, 'nearest')


def glass_blur(
        x: torch.Tensor, params: Tuple[float, int, int], generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """``params`` = (sigma, max offset d, passes); offsets uniform on ``[-d, d - 1]``, numpy's ``randint(-d, d)``."""
    sigma, delta, passes = params
    b, _, h, w = x.shape
    offsets = torch.randint(-delta, delta, (b, passes, h - 2 * delta, w - 2 * delta, 2),
                            generator=generator, device=x.device)
    return apply_glass_blur(x, sigma, offsets)


def apply_motion_blur(x: torch.Tensor, params: Tuple[float, float], angle: torch.Tensor) -> torch.Tensor:
    """ImageMagick's motion blur ``params`` = (radius, sigma) of the image rounded to 8 bits, at B ``angle``s."""
    radius, sigma = params
    return motion_blur_8bit(torch.round(x.clamp(0, 1) * 255) / 255, radius, sigma, angle)


def motion_blur(
        x: torch.Tensor, params: Tuple[float, float], generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Motion blur along an angle uniform in [-45, 45) degrees per image."""
    angle = torch.rand(x.shape[0], generator=generator, device=x.device, dtype=torch.float64) * 90 - 45
    return apply_motion_blur(x, params, angle)
