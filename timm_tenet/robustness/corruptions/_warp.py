"""Bilinear resampling of a batch at arbitrary source coordinates, with a library's border rule.

The reference's geometric corruptions go through ``cv2.warpAffine`` (border ``BORDER_REFLECT_101``) and
``scipy.ndimage.map_coordinates(order=1, mode='reflect')``. Both interpolate linearly between the four
neighbours of a source point and map every neighbour outside the image back in by their border rule. For
linear interpolation that is the same as reflecting the source coordinate itself and clamping it into
``[0, size - 1]`` (reflection maps the integer grid onto itself), so one ``grid_sample`` call on reflected
coordinates reproduces either library up to float rounding.
"""
import torch
import torch.nn.functional as F

from ._filters import BORDER_MODES


def reflect_coordinates(coords: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    """Source coordinates (pixel units) brought into ``[0, size - 1]`` by the border ``mode`` of :mod:`._filters`."""
    if mode == 'reflect101':  # mirror about 0 and size - 1
        period = max(2 * (size - 1), 1)
        coords = coords.remainder(period)
        return torch.where(coords > size - 1, period - coords, coords)
    if mode == 'symmetric':  # mirror about -0.5 and size - 0.5, then the half pixel beyond the centres is flat
        period = 2 * size
        coords = (coords + 0.5).remainder(period)
        coords = torch.where(coords > size, period - coords, coords) - 0.5
        return coords.clamp(0, size - 1)
    if mode == 'nearest':
        return coords.clamp(0, size - 1)
    raise ValueError(f"border mode '{mode}' cannot resample; choose one of {', '.join(BORDER_MODES[:3])}.")


def sample(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, mode: str) -> torch.Tensor:
    """Bilinear samples of ``x`` (B x C x H x W) at source ``rows``, ``cols`` (B x H' x W', pixel units)."""
    h, w = x.shape[-2:]
    rows = reflect_coordinates(rows, h, mode)
    cols = reflect_coordinates(cols, w, mode)
    # align_corners=True: -1 and 1 are the centres of the first and last pixels
    grid = torch.stack([cols * (2 / max(w - 1, 1)) - 1, rows * (2 / max(h - 1, 1)) - 1], dim=-1).to(x.dtype)
    return F.grid_sample(x, grid, mode='bilinear', padding_mode='border', align_corners=True)
