"""Digital corruptions: contrast, pixelate (PIL BOX resizes), jpeg_compression (libjpeg).

* pixelate: PIL's BOX resize down and up, written as one resampling matrix per axis.
* jpeg_compression: the real codec. A torch re-implementation of libjpeg's pipeline differs from it by up
  to tens of units (integer DCT, 8-bit rounding of Y/Cb/Cr, integer chroma resampling, the integer
  ``5000 / quality`` scaling below 50), while the codec itself costs about half a millisecond per 224 px
  image on the CPU.
"""
import io
from typing import Optional

import numpy as np
import torch
from PIL import Image


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


def _jpeg_round_trip(image: np.ndarray, quality: int) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, 'JPEG', quality=quality)
    return np.asarray(Image.open(buffer))


def jpeg_compression(x: torch.Tensor, quality: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Round trip of the 8-bit image through libjpeg at ``quality`` with its defaults (4:2:0 chroma, standard
    tables, integer DCT, fancy upsampling): PIL's ``save(..., 'JPEG', quality=q)`` and ``open``, the reference.

    The codec runs on the CPU, one image at a time (about half a millisecond at 224 px); torchvision's
    batched ``encode_jpeg`` is deprecated, and nvJPEG is not the reference codec.
    """
    c = x.shape[1]
    if c not in (1, 3):
        raise ValueError(f'jpeg_compression needs 1 or 3 channels, got {c}.')
    images = torch.round(x.detach().clamp(0, 1) * 255).to(device='cpu', dtype=torch.uint8)
    images = images.permute(0, 2, 3, 1).squeeze(-1).numpy()  # B x H x W (x 3)
    decoded = np.stack([_jpeg_round_trip(image, quality) for image in images])
    decoded = torch.from_numpy(decoded).view(*images.shape[:3], c).permute(0, 3, 1, 2)
    return decoded.to(device=x.device, dtype=x.dtype) / 255
