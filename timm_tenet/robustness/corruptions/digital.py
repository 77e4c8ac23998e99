"""Digital corruptions: contrast, elastic_transform, pixelate (PIL BOX resizes), jpeg_compression (libjpeg),
saturate.

* elastic_transform: ``cv2.warpAffine`` and ``scipy.ndimage.map_coordinates`` are both bilinear resampling
  (:func:`._warp.sample` with each one's border rule); the displacement fields are smoothed by the matrix
  form of the Gaussian filter, whose cost does not grow with sigma (170 px at ImageNet severity 1).
* saturate: scaling S in HSV keeps H and V, so each channel moves along ``V - (V - channel) * S' / S``
  without a colour-space round trip; grey pixels get skimage's hue 0 (red) when S' > 0.
* pixelate: PIL's BOX resize down and up, written as one resampling matrix per axis.
* jpeg_compression: the real codec. A torch re-implementation of libjpeg's pipeline differs from it by up
  to tens of units (integer DCT, 8-bit rounding of Y/Cb/Cr, integer chroma resampling, the integer
  ``5000 / quality`` scaling below 50), while the codec itself costs about half a millisecond per 224 px
  image on the CPU.
"""
import io
from typing import Optional, Tuple

import numpy as np
import torch
from PIL import Image

from ._filters import gaussian_filter
from ._warp import sample


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


def _affine_sources(
        b: int, h: int, w: int, jitter: float, generator: Optional[torch.Generator], device: torch.device,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Source (x, y) of every output pixel of the reference's random affine warp, B x H x W each (float64).

    The reference moves three points around the centre (built from ``(h // 2, w // 2)`` and ``min(h, w) // 3``
    in float32, as it does) by ``U(-jitter, jitter)`` and warps by the affine map taking the old points to
    the new; ``cv2.warpAffine`` reads each output pixel at the inverse map, the new points to the old.
    """
    centre = torch.tensor([h // 2, w // 2], dtype=torch.float32)
    side = min(h, w) // 3
    old = torch.stack([centre + side, centre + torch.tensor([side, -side]), centre - side]).to(device)
    u = torch.rand(b, 3, 2, generator=generator, device=device, dtype=torch.float64)
    new = (old + (jitter * (2 * u - 1)).float()).double()
    homogeneous = torch.cat([new, torch.ones(b, 3, 1, dtype=torch.float64, device=device)], dim=2)
    inverse = torch.linalg.solve(homogeneous, old.double().expand(b, 3, 2))  # B x 3 x 2: [x y 1] -> source
    rows = torch.arange(h, dtype=torch.float64, device=device)[:, None]
    cols = torch.arange(w, dtype=torch.float64, device=device)[None, :]
    source = [inverse[:, 0, k, None, None] * cols + inverse[:, 1, k, None, None] * rows + inverse[:, 2, k, None, None]
              for k in range(2)]
    return source[0], source[1]


def elastic_transform(
        x: torch.Tensor, params: Tuple[float, float, float], generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """Random affine warp, then a smooth random displacement, as the reference's ``elastic_transform``.

    ``params = (amplitude, sigma, jitter)``: the affine moves three points by ``U(-jitter, jitter)`` (read
    with OpenCV's reflect-101 border); each displacement field is ``amplitude`` times ``U(-1, 1)`` noise
    smoothed by skimage's ``gaussian(sigma, mode='reflect', truncate=3)``, read with scipy's ``'reflect'``
    (``'symmetric'`` here). Draws, in the reference's order: B x 3 x 2 affine uniforms, then the column and
    row displacement fields together as 2 x B x H x W (float64).
    """
    amplitude, sigma, jitter = params
    b, _, h, w = x.shape
    source_x, source_y = _affine_sources(b, h, w, jitter, generator, x.device)
    warped = sample(x, source_y, source_x, 'reflect101')
    noise = 2 * torch.rand(2, b, h, w, generator=generator, device=x.device, dtype=torch.float64) - 1
    if sigma > 0:  # sigma 0 (CIFAR severity 1) comes with amplitude 0: no displacement
        noise = gaussian_filter(noise, sigma, 'symmetric', truncate=3.0)
    dx, dy = (amplitude * noise).float()
    rows = torch.arange(h, device=x.device, dtype=torch.float64)[:, None]
    cols = torch.arange(w, device=x.device, dtype=torch.float64)[None, :]
    return sample(warped, rows + dy, cols + dx, 'symmetric')


def saturate(x: torch.Tensor, params: Tuple[float, float], generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Scale HSV saturation by ``factor`` and add ``shift`` (clipped to [0, 1]), as skimage's HSV round trip."""
    if x.shape[1] != 3:
        raise ValueError(f'saturate needs RGB images (3 channels), got {x.shape[1]}; convert grey images to RGB.')
    factor, shift = params
    value = x.amax(dim=1, keepdim=True)
    spread = value - x.amin(dim=1, keepdim=True)
    sat = spread / value.clamp(min=1e-30)
    new_sat = (sat * factor + shift).clamp(0, 1)
    coloured = value - (value - x) * (new_sat / sat.clamp(min=1e-30))
    grey = value * torch.cat([torch.ones_like(new_sat), 1 - new_sat, 1 - new_sat], dim=1)  # hue 0: red
    return torch.where(spread > 0, coloured, grey)
