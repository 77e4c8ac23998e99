"""Weather corruptions: snow (ImageMagick motion-blurred flakes), frost (photos blended in), fog (plasma
fractal), brightness, spatter (water or mud drops).

* snow: a zoomed, thresholded Gaussian layer truncated to 8 bits, motion-blurred by ImageMagick's kernel
  along an angle uniform in [-135, -45) (:func:`._filters.motion_blur_8bit`), added twice (once turned
  by 180 degrees) to the image whitened towards ``1.5 * grey + 0.5``.
* frost: a random crop of one of the reference's frost photos, ``frost1`` .. ``frost5`` (its
  ``randint(5)`` never draws ``frost6``), shipped in ``frost/`` with their licence notice; the CIFAR
  constants shrink the photos by 5 first, which OpenCV's bilinear resize does by taking every 5th pixel
  from the third.
* brightness: adding ``c`` to V in HSV (then clipping V) keeps H and S, and with them every ratio
  ``(V - channel) / V``; it is therefore exactly a rescaling of RGB by ``V' / V`` (black turns grey),
  with no colour-space round trip.
* fog and spatter draw their random fields from a ``torch.Generator`` on the input's device, one field per
  image, and given the same draws reproduce the reference value by value (the tests replay them).
"""
import functools
from importlib import resources
from typing import Optional, Tuple

import numpy as np
import torch
from PIL import Image

from ._filters import clipped_zoom, gaussian_filter, motion_blur_8bit
from ._opencv import box_sum, canny, chamfer_distance, equalize_hist, filter2d_u8

FROST_FILES = ('frost1.png', 'frost2.png', 'frost3.png', 'frost4.jpg', 'frost5.jpg')
_GREY = (0.299, 0.587, 0.114)  # cv2.COLOR_RGB2GRAY


def apply_snow(x: torch.Tensor, params: Tuple[float, ...], noise: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Snow from a given standard normal ``noise`` (B x 1 x H x W, float64) and B blur ``angle``s (degrees)."""
    mean, std, zoom, threshold, radius, sigma, weight = params
    c = x.shape[1]
    # float64 up to the 8-bit truncation, as the reference: a flake at the threshold is 0 or above 0.5
    layer = clipped_zoom(noise.double() * std + mean, zoom)
    layer = torch.where(layer < threshold, 0.0, layer)
    layer = torch.floor(layer.clamp(0, 1) * 255).to(x.dtype) / 255
    layer = motion_blur_8bit(layer, radius, sigma, angle)
    grey = x if c == 1 else torch.einsum('c,bchw->bhw', x.new_tensor(_GREY), x)[:, None]
    x = weight * x + (1 - weight) * torch.maximum(x, grey * 1.5 + 0.5)
    return x + layer + layer.flip(-2, -1)


def snow(
        x: torch.Tensor, params: Tuple[float, ...], generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """``params`` = (mean, std, zoom, threshold, blur radius, blur sigma, image weight) of the reference."""
    b, _, h, w = x.shape
    noise = torch.randn((b, 1, h, w), generator=generator, device=x.device, dtype=torch.float64)
    angle = torch.rand(b, generator=generator, device=x.device, dtype=torch.float64) * 90 - 135
    return apply_snow(x, params, noise, angle)


@functools.lru_cache(maxsize=None)
def _frost_photos(stride: int, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    """The frost photos (every ``stride``-th pixel from the centre of the first block), zero-padded to one
    5 x 3 x H x W uint8 tensor on ``device``, and their 5 x 2 sizes."""
    photos = []
    for name in FROST_FILES:
        with resources.as_file(resources.files(__package__) / 'frost' / name) as path, Image.open(path) as photo:
            photo = torch.from_numpy(np.array(photo.convert('RGB'))).permute(2, 0, 1)  # alpha dropped, as cv2
        photos.append(photo[:, stride // 2::stride, stride // 2::stride])
    sizes = torch.tensor([p.shape[-2:] for p in photos])
    h, w = sizes.amax(0).tolist()
    stack = torch.stack([torch.nn.functional.pad(p, (0, w - p.shape[-1], 0, h - p.shape[-2])) for p in photos])
    return stack.to(device), sizes.to(device)


def _check_frost_size(h: int, w: int, stride: int) -> None:
    smallest = _frost_photos(stride, torch.device('cpu'))[1].amin(0).tolist()
    if h >= smallest[0] or w >= smallest[1]:
        raise ValueError(f'frost crops {h} x {w} from photos of {smallest[0]} x {smallest[1]} pixels or more; '
                         f'resize the images below that first.')


def apply_frost(
        x: torch.Tensor, params: Tuple[float, float, int], pick: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
    """Frost from given photo indices ``pick`` (B, into :data:`FROST_FILES`) and crop corners ``start`` (B x 2,
    row and column)."""
    image_weight, frost_weight, stride = params
    b, c, h, w = x.shape
    if c != 3:
        raise ValueError(f'frost blends RGB photos and needs 3 channels, got {c}.')
    _check_frost_size(h, w, stride)
    photos = _frost_photos(stride, x.device)[0]
    rows = (start[:, 0, None] + torch.arange(h, device=x.device))[:, :, None]
    cols = (start[:, 1, None] + torch.arange(w, device=x.device))[:, None, :]
    crops = photos[pick[:, None, None], :, rows, cols].permute(0, 3, 1, 2)  # B x H x W x 3 -> B x 3 x H x W
    return image_weight * x + frost_weight * crops.to(x.dtype) / 255


def frost(
        x: torch.Tensor, params: Tuple[float, float, int], generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """``params`` = (image weight, frost weight, photo shrink factor); one photo and crop drawn per image."""
    b, _, h, w = x.shape
    _check_frost_size(h, w, params[2])
    sizes = _frost_photos(params[2], x.device)[1]
    pick = torch.randint(len(FROST_FILES), (b,), generator=generator, device=x.device)
    room = sizes[pick] - torch.tensor([h, w], device=x.device)  # numpy randint(0, room): [0, room - 1]
    start = (torch.rand((b, 2), generator=generator, device=x.device, dtype=torch.float64) * room).long()
    return apply_frost(x, params, pick, start)


def brightness(x: torch.Tensor, shift: float, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Add ``shift`` to V of HSV (clipped to 1) and convert back."""
    value = x.amax(dim=1, keepdim=True)
    brighter = (value + shift).clamp(max=1)
    return torch.where(value > 0, x * (brighter / value.clamp(min=1e-12)), brighter)


def plasma_fractal(
        batch: int,
        mapsize: int,
        decay: float,
        generator: Optional[torch.Generator] = None,
        device: Optional[torch.device] = None,
        dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``batch`` diamond-square heightmaps of ``mapsize`` x ``mapsize`` (a power of two), each scaled to [0, 1].

    ImageNet-C's ``plasma_fractal`` level by level, all images at once: at step ``s`` the square centres are
    the mean of their 4 corners, then the diamond points (on the corner rows, then on the corner columns) the
    mean of their 4 neighbours, wrapping around (``roll``); each new point adds ``wibble * U(-wibble, wibble)``
    (the reference scales by wibble twice), wibble starting at 100 and divided by ``decay`` per level. The
    uniforms are drawn per level in that order, one B x k x k tensor each.
    """
    grid = torch.zeros(batch, mapsize, mapsize, device=device, dtype=dtype)
    step, wibble = mapsize, 100.0

    def wibbled_mean(total: torch.Tensor) -> torch.Tensor:
        u = torch.rand(total.shape, generator=generator, device=device, dtype=dtype)
        return total / 4 + wibble * wibble * (2 * u - 1)

    while step >= 2:
        half = step // 2
        corners = grid[:, ::step, ::step]
        squares = corners + corners.roll(-1, 1)
        grid[:, half::step, half::step] = wibbled_mean(squares + squares.roll(-1, 2))
        centres = grid[:, half::step, half::step]
        grid[:, ::step, half::step] = wibbled_mean(centres + centres.roll(1, 1) + corners + corners.roll(-1, 2))
        grid[:, half::step, ::step] = wibbled_mean(centres + centres.roll(1, 2) + corners + corners.roll(-1, 1))
        step, wibble = half, wibble / decay
    grid -= grid.amin(dim=(1, 2), keepdim=True)
    return grid / grid.amax(dim=(1, 2), keepdim=True)


def fog(x: torch.Tensor, params: Tuple[float, float], generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Add ``thickness`` times a plasma fractal (``decay`` per level) and rescale by ``max / (max + thickness)``.

    The fractal is ``2^k`` px square, the smallest power of two covering the image (the reference's 32 for
    CIFAR and 256 for ImageNet), cropped to the image's top-left corner.
    """
    thickness, decay = params
    b, _, h, w = x.shape
    mapsize = 1 << (max(h, w, 2) - 1).bit_length()
    fractal = plasma_fractal(b, mapsize, decay, generator, x.device, x.dtype)[:, None, :h, :w]
    peak = x.amax(dim=(1, 2, 3), keepdim=True)
    return (x + thickness * fractal) * peak / (peak + thickness)


_WATER = (175 / 255, 238 / 255, 238 / 255)  # added to R, G, B (the reference's "BGR" pale turquoise on RGB)
_MUD = (63 / 255, 42 / 255, 20 / 255)
_RIM_KERNEL = torch.tensor([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]])


def _colour(rgb: Tuple[float, float, float], like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(rgb, dtype=like.dtype, device=like.device).view(1, 3, 1, 1)


def spatter(
        x: torch.Tensor,
        params: Tuple[float, float, float, float, float, int],
        generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """Water drops (``mud == 0``) or mud splashes (``mud == 1``) from a thresholded smooth Gaussian field.

    ``params = (loc, scale, sigma, threshold, intensity, mud)``: a N(loc, scale) field per image (float64,
    B x H x W), smoothed by skimage's ``gaussian(sigma)`` (nearest borders), zero below ``threshold``.
    Water lightens the image along the drops' rims: the field's 8-bit level (numpy's wrapping ``uint8``),
    its Canny edges, the distance to them (OpenCV chamfer, capped at 20), box-blurred and truncated,
    histogram-equalised, embossed by a 3 x 3 kernel and box-blurred again; times the level, normalised to
    ``intensity``, times the turquoise. Mud covers, with weight ``gaussian(field > threshold, intensity)``
    where that reaches 0.8, the image with brown.
    """
    if x.shape[1] != 3:
        raise ValueError(f'spatter needs RGB images (3 channels), got {x.shape[1]}; convert grey images to RGB.')
    loc, scale, sigma, threshold, intensity, mud = params
    b, _, h, w = x.shape
    field = loc + scale * torch.randn(b, h, w, generator=generator, device=x.device, dtype=torch.float64)
    field = gaussian_filter(field, sigma, 'nearest')
    field = torch.where(field < threshold, 0.0, field)
    if mud:
        cover = gaussian_filter((field > threshold)[:, None].to(x.dtype), intensity, 'nearest')
        cover = torch.where(cover < 0.8, 0.0, cover)
        return x * (1 - cover) + _colour(_MUD, x) * cover
    level = (field * 255).floor().long() % 256
    dist = chamfer_distance(canny(level, 50, 150), 20).clamp(max=20)
    dist = (box_sum(dist) * (1 / 9)).float().floor().long()  # cv2.blur, then astype(uint8)
    dist = filter2d_u8(equalize_hist(dist), _RIM_KERNEL)
    dist = torch.round(box_sum(dist) * (1 / 9)).float()  # cv2.blur of uint8 rounds
    rims = level.float() * dist
    rims = rims / rims.amax(dim=(1, 2), keepdim=True).clamp(min=1e-30) * intensity
    return x + rims[:, None].to(x.dtype) * _colour(_WATER, x)
