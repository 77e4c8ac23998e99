"""Digital corruptions: contrast, pixelate (PIL BOX resizes), jpeg_compression.

* pixelate: PIL's BOX resize down and up, written as one resampling matrix per axis.
* jpeg_compression: libjpeg's pipeline in torch: YCbCr, 4:2:0 chroma averaging, 8x8 orthonormal DCT,
  quantisation with the standard (ITU T.81 Annex K) tables scaled by the IJG quality rule, and
  'fancy' (bilinear) chroma upsampling. It matches a real codec up to rounding and entropy-coding details.
"""
import math
from typing import Optional

import torch
import torch.nn.functional as F

# Standard JPEG quantisation tables, ITU T.81 Annex K.1 (luminance) and K.2 (chrominance).
_JPEG_LUMA = (
    (16, 11, 10, 16, 24, 40, 51, 61), (12, 12, 14, 19, 26, 58, 60, 55),
    (14, 13, 16, 24, 40, 57, 69, 56), (14, 17, 22, 29, 51, 87, 80, 62),
    (18, 22, 37, 56, 68, 109, 103, 77), (24, 35, 55, 64, 81, 104, 113, 92),
    (49, 64, 78, 87, 103, 121, 120, 101), (72, 92, 95, 98, 112, 100, 103, 99),
)
_JPEG_CHROMA = (
    (17, 18, 24, 47, 99, 99, 99, 99), (18, 21, 26, 66, 99, 99, 99, 99),
    (24, 26, 56, 99, 99, 99, 99, 99), (47, 66, 99, 99, 99, 99, 99, 99),
) + ((99,) * 8,) * 4
_RGB_TO_YCBCR = (
    (0.299, 0.587, 0.114), (-0.168736, -0.331264, 0.5), (0.5, -0.418688, -0.081312))


def contrast(x: torch.Tensor, factor: float, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    mean = x.mean(dim=(2, 3), keepdim=True)
    return (x - mean) * factor + mean


def _box_resize_matrix(size_in: int, size_out: int) -> torch.Tensor:
    """size_out x size_in matrix of PIL's BOX resize: each output pixel averages the input pixels whose
    centres fall in its footprint (one pixel, the nearest, when upscaling)."""
    scale = size_in / size_out
    footprint = max(scale, 1.0)
    centres = (torch.arange(size_out, dtype=torch.float64) + 0.5) * scale
    offsets = (torch.arange(size_in, dtype=torch.float64) + 0.5 - centres[:, None]) / footprint
    weights = ((offsets >= -0.5) & (offsets < 0.5)).double()
    return weights / weights.sum(dim=1, keepdim=True)


def _pixelate_matrix(size: int, factor: float) -> torch.Tensor:
    small = max(int(size * factor), 1)
    return _box_resize_matrix(small, size) @ _box_resize_matrix(size, small)


def pixelate(x: torch.Tensor, factor: float, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    h, w = x.shape[-2:]
    rows, cols = _pixelate_matrix(h, factor).to(x), _pixelate_matrix(w, factor).to(x)
    return rows @ x @ cols.T


def _jpeg_table(table, quality: int) -> torch.Tensor:
    """Quantisation table of the IJG quality scaling (libjpeg ``jpeg_quality_scaling``)."""
    scale = 5000 / quality if quality < 50 else 200 - 2 * quality
    return ((torch.tensor(table, dtype=torch.float64) * scale + 50) // 100).clamp(1, 255)


def _dct_matrix() -> torch.Tensor:
    n = torch.arange(8, dtype=torch.float64)
    basis = torch.cos((2 * n[None, :] + 1) * n[:, None] * math.pi / 16) * math.sqrt(2 / 8)
    basis[0] /= math.sqrt(2)
    return basis


def _dct_quantise(planes: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Round the 8x8 block DCT coefficients of ``planes`` (B x C x H x W, multiples of 8, level-shifted
    0..255 values) to multiples of ``table`` and transform back."""
    b, c, h, w = planes.shape
    dct, table = _dct_matrix().to(planes), table.to(planes)
    blocks = planes.reshape(b, c, h // 8, 8, w // 8, 8).transpose(3, 4)  # B C by bx 8 8
    coeffs = dct @ blocks @ dct.T
    coeffs = torch.round(coeffs / table) * table
    return (dct.T @ coeffs @ dct).transpose(3, 4).reshape(b, c, h, w)


def jpeg_compression(x: torch.Tensor, quality: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """JPEG round trip at ``quality`` (1..100) with 4:2:0 chroma, in torch; see the module docstring."""
    _, c, h, w = x.shape
    if c not in (1, 3):
        raise ValueError(f'jpeg_compression needs 1 or 3 channels, got {c}.')
    pad = (0, -w % 16, 0, -h % 16)
    x = F.pad(torch.round(x.clamp(0, 1) * 255), pad, mode='replicate')
    luma_table = _jpeg_table(_JPEG_LUMA, quality)
    if c == 1:
        out = _dct_quantise(x - 128, luma_table) + 128
    else:
        to_ycbcr = torch.tensor(_RGB_TO_YCBCR).to(x)
        ycbcr = torch.einsum('oc,bchw->bohw', to_ycbcr, x - 128)  # level shift; Cb, Cr rows sum to 0
        luma = _dct_quantise(ycbcr[:, :1], luma_table)
        chroma = _dct_quantise(F.avg_pool2d(ycbcr[:, 1:], 2), _jpeg_table(_JPEG_CHROMA, quality))
        chroma = F.interpolate(chroma, scale_factor=2, mode='bilinear', align_corners=False)
        out = torch.einsum('oc,bchw->bohw', torch.linalg.inv(to_ycbcr), torch.cat([luma, chroma], dim=1)) + 128
    return torch.round(out[..., :h, :w]) / 255
