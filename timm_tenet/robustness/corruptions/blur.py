"""Blur corruptions: gaussian (skimage), defocus (OpenCV disk), zoom (scipy zoom).

Each reproduces the kernel and the border rule of the library the reference calls.
"""
import math
from typing import Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ._filters import correlate, gaussian_filter, gaussian_kernel1d


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
    return correlate(x, _disk_kernel(*params), 'nearest')


def _zoom(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Centre zoom by ``factor`` keeping the size, as ImageNet-C's ``clipped_zoom`` (scipy order 1)."""
    h, w = x.shape[-2:]
    ch, cw = math.ceil(h / factor), math.ceil(w / factor)
    top, left = (h - ch) // 2, (w - cw) // 2
    size = (round(ch * factor), round(cw * factor))
    zoomed = F.interpolate(x[..., top:top + ch, left:left + cw], size=size, mode='bilinear', align_corners=True)
    top, left = (size[0] - h) // 2, (size[1] - w) // 2
    return zoomed[..., top:top + h, left:left + w]


def zoom_blur(
        x: torch.Tensor, factors: Tuple[float, float, float],
        generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Average of the image and its centre zooms by ``numpy.arange(*factors)``."""
    zooms = np.arange(*factors)
    out = x.clone()
    for factor in zooms:
        out += _zoom(x, float(factor))
    return out / (len(zooms) + 1)
