"""Filtering primitives shared by the corruptions: border-mode padding, separable filters as banded matrices,
FFT correlation, scipy's centre zoom and ImageMagick's motion blur.

Each reference corruption filters through a library with its own border rule, and the border pixels only
match when the same rule is used here, so every filter names its mode explicitly (no default):

* ``'nearest'``: edge value repeated (``aaa|abcd|ddd``), skimage ``gaussian`` / scipy ``mode='nearest'``,
  ImageMagick's edge virtual pixels.
* ``'reflect101'``: mirrored without the edge (``dcb|abcd|cba``), OpenCV's default ``BORDER_REFLECT_101``.
* ``'symmetric'``: mirrored with the edge (``cba|abcd|dcb``), scipy ``mode='reflect'``.
* ``'constant'``: zeros.

Padding wider than the image repeats the pattern, as the libraries do. On the CPU a depthwise
``conv2d`` costs tens of milliseconds per 224 px image for the large kernels of ImageNet-C, so a 1-D
filter is a matrix product (the border folded into the matrix) and a large 2-D kernel goes through the FFT.
"""
import math
from typing import Tuple

import torch
import torch.nn.functional as F

BORDER_MODES = ('nearest', 'reflect101', 'symmetric', 'constant')
# 2-D kernels with more taps than this are applied through the FFT
_DIRECT_TAPS = 25


def _pad_indices(size: int, before: int, after: int, mode: str) -> torch.Tensor:
    """Source index of every padded position along one axis of length ``size``; -1 for a zero."""
    idx = torch.arange(-before, size + after)
    if mode == 'nearest':
        return idx.clamp(0, size - 1)
    if mode == 'reflect101':
        period = max(2 * size - 2, 1)
        idx = idx.remainder(period)
        return torch.where(idx >= size, period - idx, idx)
    if mode == 'symmetric':
        period = 2 * size
        idx = idx.remainder(period)
        return torch.where(idx >= size, period - 1 - idx, idx)
    if mode == 'constant':
        return torch.where((idx >= 0) & (idx < size), idx, -1)
    raise ValueError(f"unknown border mode '{mode}'; choose one of {', '.join(BORDER_MODES)}.")


def pad(x: torch.Tensor, padding: Tuple[int, int, int, int], mode: str) -> torch.Tensor:
    """Pad the last two dimensions by ``(left, right, top, bottom)`` with border ``mode``."""
    left, right, top, bottom = padding
    h, w = x.shape[-2:]
    if mode == 'constant':
        return F.pad(x, padding)
    torch_mode = {'nearest': 'replicate', 'reflect101': 'reflect'}.get(mode)
    if torch_mode and max(top, bottom) < h and max(left, right) < w:
        return F.pad(x, padding, mode=torch_mode)
    rows = _pad_indices(h, top, bottom, mode).to(x.device)
    cols = _pad_indices(w, left, right, mode).to(x.device)
    return x.index_select(-2, rows).index_select(-1, cols)


def filter_matrix(size: int, kernel: torch.Tensor, mode: str) -> torch.Tensor:
    """``size x size`` matrix ``M`` with ``M @ v`` = correlation of ``v`` with the odd 1-D ``kernel``, borders
    ``mode`` (the padded taps folded back onto the pixels they copy)."""
    radius = len(kernel) // 2
    source = _pad_indices(size, radius, radius, mode)
    taps = torch.arange(len(kernel))
    out = torch.arange(size)[:, None].expand(-1, len(kernel))
    src = source[out + taps]
    keep = src >= 0
    matrix = torch.zeros(size, size, dtype=kernel.dtype)
    matrix.index_put_((out[keep], src[keep]), kernel.expand(size, -1)[keep], accumulate=True)
    return matrix


def separable_filter(x: torch.Tensor, kernel: torch.Tensor, mode: str) -> torch.Tensor:
    """Correlate the H and W axes of ``x`` with the same odd 1-D ``kernel``, borders ``mode``."""
    h, w = x.shape[-2:]
    rows = filter_matrix(h, kernel, mode).to(x)
    cols = rows if w == h else filter_matrix(w, kernel, mode).to(x)
    return rows @ x @ cols.T


def _fast_size(n: int) -> int:
    """The smallest 2^a 3^b 5^c >= n: pocketfft is several times faster there than at sizes with large primes."""
    while True:
        m = n
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        if m == 1:
            return n
        n += 1


def fft_correlate(planes: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Valid correlation of padded ``planes`` (B x C x Hp x Wp) with ``kernels`` (B or 1 x 1 x kh x kw)."""
    kh, kw = kernels.shape[-2:]
    hp, wp = planes.shape[-2:]
    size = (_fast_size(hp), _fast_size(wp))
    # circular convolution with the flipped kernel: the valid part never wraps around
    spectrum = torch.fft.rfft2(planes, s=size) * torch.fft.rfft2(kernels.flip(-2, -1).to(planes), s=size)
    return torch.fft.irfft2(spectrum, s=size)[..., kh - 1:hp, kw - 1:wp]


def correlate(x: torch.Tensor, kernel: torch.Tensor, mode: str) -> torch.Tensor:
    """Correlate every channel of ``x`` (B x C x H x W) with one 2-D ``kernel`` of odd sizes, borders ``mode``.

    Equal to ``cv2.filter2D`` / ``scipy.ndimage.correlate`` with the same border up to float rounding.
    """
    b, c, h, w = x.shape
    kh, kw = kernel.shape
    planes = pad(x, (kw // 2, kw // 2, kh // 2, kh // 2), mode)
    if kh * kw > _DIRECT_TAPS:
        return fft_correlate(planes, kernel[None, None])
    return F.conv2d(planes.reshape(b * c, 1, *planes.shape[-2:]), kernel.to(x)[None, None]).view(b, c, h, w)


def gaussian_kernel1d(sigma: float, radius: int) -> torch.Tensor:
    """Normalised Gaussian taps ``-radius..radius`` (float64), rounded as scipy's."""
    taps = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 / sigma ** 2 * taps ** 2)
    return kernel / kernel.sum()


def gaussian_filter(x: torch.Tensor, sigma: float, mode: str, truncate: float = 4.0) -> torch.Tensor:
    """Gaussian over H and W, truncated at ``truncate`` sigma, as ``scipy.ndimage.gaussian_filter``."""
    return separable_filter(x, gaussian_kernel1d(sigma, int(truncate * sigma + 0.5)), mode)


def gaussian_filter_scipy_order(x: torch.Tensor, sigma: float, mode: str, truncate: float = 4.0) -> torch.Tensor:
    """:func:`gaussian_filter` summed in scipy's order (rows first; per axis the centre tap, then pairs of
    symmetric taps from the outside in), so that float64 results are bit-equal to scipy's. Slower than the
    matrix form; for results that are truncated afterwards, where the last bit decides."""
    radius = int(truncate * sigma + 0.5)
    kernel = gaussian_kernel1d(sigma, radius).to(x)
    for dim in (-2, -1):
        padded = pad(x, (0, 0, radius, radius) if dim == -2 else (radius, radius, 0, 0), mode)
        size = x.shape[dim]
        out = padded.narrow(dim, radius, size) * kernel[radius]
        for j in range(radius, 0, -1):
            pair = torch.add(padded.narrow(dim, radius - j, size), padded.narrow(dim, radius + j, size))
            out.add_(pair.mul_(kernel[radius + j]))
        x = out
    return x


def _zoom_geometry(size: int, factor: float) -> Tuple[int, int, int, int]:
    """Along one axis of ``clipped_zoom``: the centre crop (length, start) that is zoomed, the zoomed length
    and the start of the kept window in it."""
    crop = math.ceil(size / factor)
    zoomed = round(crop * factor)
    return crop, (size - crop) // 2, zoomed, (zoomed - size) // 2


def clipped_zoom(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Centre zoom by ``factor`` >= 1 keeping the size, as ImageNet-C's ``clipped_zoom`` (scipy ``zoom``, order 1)."""
    (ch, top, zh, trim_top), (cw, left, zw, trim_left) = (_zoom_geometry(n, factor) for n in x.shape[-2:])
    zoomed = F.interpolate(x[..., top:top + ch, left:left + cw], size=(zh, zw), mode='bilinear', align_corners=True)
    return zoomed[..., trim_top:trim_top + x.shape[-2], trim_left:trim_left + x.shape[-1]]


def clipped_zoom_matrix(size: int, factor: float) -> torch.Tensor:
    """``clipped_zoom`` along one axis as a float64 ``size x size`` matrix (two taps a row): scipy's order-1
    ``zoom`` samples the crop at ``i * (crop - 1) / (zoomed - 1)`` for zoomed pixel ``i``."""
    crop, start, zoomed, trim = _zoom_geometry(size, factor)
    pos = torch.arange(trim, trim + size, dtype=torch.float64) * ((crop - 1) / max(zoomed - 1, 1))
    low = pos.floor().clamp(max=max(crop - 2, 0))
    frac = pos - low
    rows, low = torch.arange(size), start + low.long()
    matrix = torch.zeros(size, size, dtype=torch.float64)
    matrix[rows, low] = 1 - frac
    if crop > 1:
        matrix[rows, low + 1] += frac
    return matrix


def motion_blur_8bit(x: torch.Tensor, radius: float, sigma: float, angle: torch.Tensor) -> torch.Tensor:
    """ImageMagick 6's ``MotionBlurImage`` of 8-bit images, one ``angle`` (degrees) per image.

    ImageMagick averages ``n = 2 * ceil(radius) + 1`` pixels along a ray from each pixel with one-sided
    Gaussian weights ``exp(-i^2 / 2 sigma^2)`` (normalised), at offsets ``i * (cos, sin)(angle)`` rounded
    half down to whole pixels (x to the right, y down), reading replicated edges; the result is rounded
    to 16 bits, then truncated to 8 when written as an 8-bit PNG. Here the ray becomes one sparse
    (2n - 1)^2 kernel per image, applied through the FFT; float32 rounding then moves about one value in
    10^5 by one unit.

    Args:
        x: B x C x H x W values in [0, 1] on the 1/255 grid.
        radius: ImageMagick's radius.
        sigma: ImageMagick's sigma.
        angle: B angles in degrees.
    """
    b = x.shape[0]
    taps = torch.arange(2 * math.ceil(radius) + 1, dtype=torch.float64, device=x.device)
    weights = torch.exp(-taps ** 2 / (2 * sigma ** 2))
    weights = weights / weights.sum()
    theta = torch.deg2rad(angle.to(device=x.device, dtype=torch.float64))[:, None]
    dx = torch.ceil(taps * torch.cos(theta) - 0.5).long()  # B x taps
    dy = torch.ceil(taps * torch.sin(theta) - 0.5).long()
    reach = len(taps) - 1
    side = 2 * reach + 1
    kernels = torch.zeros(b, side * side, dtype=torch.float64, device=x.device)
    kernels.scatter_add_(1, (dy + reach) * side + dx + reach, weights.expand(b, -1))
    out = fft_correlate(pad(x, (reach,) * 4, 'nearest'), kernels.view(b, 1, side, side))
    quantum = torch.floor(out * (255 * 257) + 0.5)
    return torch.div(quantum, 257, rounding_mode='floor') / 255
