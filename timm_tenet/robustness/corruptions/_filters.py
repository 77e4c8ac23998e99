"""Filtering primitives shared by the corruptions: padding with a named border mode and depthwise convolution.

Each reference corruption filters through a library with its own border rule, and the border pixels only
match when the same rule is used here, so every filter names its mode explicitly (no default):

* ``'nearest'``: edge value repeated (``aaa|abcd|ddd``), skimage ``gaussian`` / scipy ``mode='nearest'``,
  ImageMagick's edge virtual pixels.
* ``'reflect101'``: mirrored without the edge (``dcb|abcd|cba``), OpenCV's default ``BORDER_REFLECT_101``.
* ``'symmetric'``: mirrored with the edge (``cba|abcd|dcb``), scipy ``mode='reflect'``.
* ``'constant'``: zeros.

Padding wider than the image is applied in rounds, as the libraries extend the pattern periodically.
"""
from typing import Tuple

import torch
import torch.nn.functional as F

BORDER_MODES = ('nearest', 'reflect101', 'symmetric', 'constant')


def _pad_indices(size: int, before: int, after: int, mode: str) -> torch.Tensor:
    """Source index of every padded position along one axis of length ``size``."""
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
    raise ValueError(f"unknown border mode '{mode}'; choose one of {', '.join(BORDER_MODES)}.")


def pad(x: torch.Tensor, padding: Tuple[int, int, int, int], mode: str) -> torch.Tensor:
    """Pad the last two dimensions by ``(left, right, top, bottom)`` with border ``mode``."""
    left, right, top, bottom = padding
    if mode == 'constant':
        return F.pad(x, padding)
    h, w = x.shape[-2:]
    rows = _pad_indices(h, top, bottom, mode).to(x.device)
    cols = _pad_indices(w, left, right, mode).to(x.device)
    return x.index_select(-2, rows).index_select(-1, cols)


def correlate(x: torch.Tensor, kernel: torch.Tensor, mode: str) -> torch.Tensor:
    """Correlate every channel of ``x`` (B x C x H x W) with one 2-D ``kernel`` of odd sizes, borders ``mode``."""
    b, c, h, w = x.shape
    kh, kw = kernel.shape
    planes = pad(x.reshape(b * c, 1, h, w), (kw // 2, kw // 2, kh // 2, kh // 2), mode)
    return F.conv2d(planes, kernel.to(x)[None, None]).view(b, c, h, w)


def gaussian_kernel1d(sigma: float, radius: int) -> torch.Tensor:
    """Normalised Gaussian taps ``-radius..radius`` (float64)."""
    taps = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
    return kernel / kernel.sum()


def gaussian_filter(x: torch.Tensor, sigma: float, mode: str, truncate: float = 4.0) -> torch.Tensor:
    """Separable Gaussian over H and W, truncated at ``truncate`` sigma, as ``scipy.ndimage.gaussian_filter``."""
    kernel = gaussian_kernel1d(sigma, int(truncate * sigma + 0.5))
    return correlate(correlate(x, kernel[:, None], mode), kernel[None, :], mode)
