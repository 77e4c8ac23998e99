"""fog, elastic_transform, spatter and saturate (and zoom_blur, deterministic) against plainly written per-image
versions of the reference functions (``make_cifar_c.py`` / ``make_imagenet_c.py``) that call the reference's own
libraries.

The random corruptions are compared value by value given the same random numbers: the tensor versions draw
from a ``torch.Generator`` in a documented order and shape, the test replays those draws from a generator
with the same seed and hands each image's share to the reference in place of ``np.random``. Their
randomness itself is then checked in distribution against the reference run on ``np.random``.
"""
import io

import cv2
import numpy as np
import pytest
import skimage as sk
import torch
from PIL import Image
from scipy.ndimage import map_coordinates
from skimage.filters import gaussian

from corruption_reference import ref_clipped_zoom, to_255, to_tensor
from timm_tenet.robustness.corruptions import _REGISTRY, corrupt
from timm_tenet.robustness.corruptions._filters import clipped_zoom
from timm_tenet.robustness.corruptions.blur import zoom_blur

SIZES = {'cifar': (3, 32), 'imagenet': (2, 224)}  # batch, side: each constant set at its native resolution
SEVERITIES = (1, 2, 3, 4, 5)


def _photos(batch: int, size: int) -> np.ndarray:
    """B x size x size x 3 uint8 crops of scikit-image's bundled photographs."""
    photos = [sk.data.astronaut(), sk.data.chelsea(), sk.data.coffee()]
    out = []
    for i in range(batch):
        photo = photos[i % len(photos)]
        side = min(photo.shape[:2])
        square = Image.fromarray(photo[:side, :side])
        out.append(np.asarray(square.resize((size, size), Image.BILINEAR)))
    return np.stack(out)


def _params(name: str, dataset: str, severity: int):
    entry = _REGISTRY[name]
    return (entry.cifar if dataset == 'cifar' else entry.imagenet)[severity - 1]


class _Draws:
    """Stands in for ``np.random.uniform`` / ``normal``: returns the next replayed array, scaled."""

    def __init__(self, arrays):
        self.arrays = iter(arrays)

    def uniform(self, low, high, size=None):
        return low + (high - low) * next(self.arrays)

    def normal(self, size=None, loc=0.0, scale=1.0):
        return loc + scale * next(self.arrays)


# ---- the reference functions, written out per image with the reference's libraries ----

def _plasma_fractal(mapsize, wibbledecay, rng):
    maparray = np.empty((mapsize, mapsize), dtype=np.float64)
    maparray[0, 0] = 0
    stepsize, wibble = mapsize, 100

    def wibbledmean(array):
        return array / 4 + wibble * rng.uniform(-wibble, wibble, array.shape)

    while stepsize >= 2:
        cornerref = maparray[0:mapsize:stepsize, 0:mapsize:stepsize]
        squareaccum = cornerref + np.roll(cornerref, shift=-1, axis=0)
        squareaccum += np.roll(squareaccum, shift=-1, axis=1)
        maparray[stepsize // 2:mapsize:stepsize, stepsize // 2:mapsize:stepsize] = wibbledmean(squareaccum)
        drgrid = maparray[stepsize // 2:mapsize:stepsize, stepsize // 2:mapsize:stepsize]
        ulgrid = maparray[0:mapsize:stepsize, 0:mapsize:stepsize]
        ltsum = drgrid + np.roll(drgrid, 1, axis=0) + ulgrid + np.roll(ulgrid, -1, axis=1)
        maparray[0:mapsize:stepsize, stepsize // 2:mapsize:stepsize] = wibbledmean(ltsum)
        ttsum = drgrid + np.roll(drgrid, 1, axis=1) + ulgrid + np.roll(ulgrid, -1, axis=0)
        maparray[stepsize // 2:mapsize:stepsize, 0:mapsize:stepsize] = wibbledmean(ttsum)
        stepsize //= 2
        wibble /= wibbledecay
    maparray -= maparray.min()
    return maparray / maparray.max()


def _fog(image, c, rng):
    size = image.shape[0]
    x = image / 255.
    max_val = x.max()
    x = x + c[0] * _plasma_fractal(32 if size == 32 else 256, c[1], rng)[:size, :size][..., np.newaxis]
    return np.clip(x * max_val / (max_val + c[0]), 0, 1) * 255


def _elastic_transform(image, c, rng):
    image = np.array(image, dtype=np.float32) / 255.
    shape = image.shape
    shape_size = shape[:2]
    center_square = np.float32(shape_size) // 2
    square_size = min(shape_size) // 3
    pts1 = np.float32([center_square + square_size,
                       [center_square[0] + square_size, center_square[1] - square_size],
                       center_square - square_size])
    pts2 = pts1 + rng.uniform(-c[2], c[2], size=pts1.shape).astype(np.float32)
    affine = cv2.getAffineTransform(pts1, pts2)
    image = cv2.warpAffine(image, affine, shape_size[::-1], borderMode=cv2.BORDER_REFLECT_101)
    dx = (gaussian(rng.uniform(-1, 1, size=shape[:2]), c[1], mode='reflect', truncate=3) * c[0]).astype(np.float32)
    dy = (gaussian(rng.uniform(-1, 1, size=shape[:2]), c[1], mode='reflect', truncate=3) * c[0]).astype(np.float32)
    dx, dy = dx[..., np.newaxis], dy[..., np.newaxis]
    x, y, z = np.meshgrid(np.arange(shape[1]), np.arange(shape[0]), np.arange(shape[2]))
    indices = np.reshape(y + dy, (-1, 1)), np.reshape(x + dx, (-1, 1)), np.reshape(z, (-1, 1))
    return np.clip(map_coordinates(image, indices, order=1, mode='reflect').reshape(shape), 0, 1) * 255


def _spatter(image, c, rng):
    x = np.array(image, dtype=np.float32) / 255.
    liquid_layer = rng.normal(size=x.shape[:2], loc=c[0], scale=c[1])
    liquid_layer = gaussian(liquid_layer, sigma=c[2])
    liquid_layer[liquid_layer < c[3]] = 0
    if c[5] == 0:
        liquid_layer = (liquid_layer * 255).astype(np.uint8)
        dist = 255 - cv2.Canny(liquid_layer, 50, 150)
        dist = cv2.distanceTransform(dist, cv2.DIST_L2, 5)
        _, dist = cv2.threshold(dist, 20, 20, cv2.THRESH_TRUNC)
        dist = cv2.blur(dist, (3, 3)).astype(np.uint8)
        dist = cv2.equalizeHist(dist)
        ker = np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]])
        dist = cv2.filter2D(dist, cv2.CV_8U, ker)
        dist = cv2.blur(dist, (3, 3)).astype(np.float32)
        m = cv2.cvtColor(liquid_layer * dist, cv2.COLOR_GRAY2BGRA)
        m /= np.max(m, axis=(0, 1))
        m *= c[4]
        color = np.concatenate((175 / 255. * np.ones_like(m[..., :1]), 238 / 255. * np.ones_like(m[..., :1]),
                                238 / 255. * np.ones_like(m[..., :1])), axis=2)
        color = cv2.cvtColor(color, cv2.COLOR_BGR2BGRA)
        x = cv2.cvtColor(x, cv2.COLOR_BGR2BGRA)
        return cv2.cvtColor(np.clip(x + m * color, 0, 1), cv2.COLOR_BGRA2BGR) * 255
    m = np.where(liquid_layer > c[3], 1, 0)
    m = gaussian(m.astype(np.float32), sigma=c[4])
    m[m < 0.8] = 0
    color = np.concatenate((63 / 255. * np.ones_like(x[..., :1]), 42 / 255. * np.ones_like(x[..., :1]),
                            20 / 255. * np.ones_like(x[..., :1])), axis=2)
    color *= m[..., np.newaxis]
    x *= (1 - m[..., np.newaxis])
    return np.clip(x + color, 0, 1) * 255


def _saturate(image, c, rng=None):
    x = sk.color.rgb2hsv(np.array(image) / 255.)
    x[:, :, 1] = np.clip(x[:, :, 1] * c[0] + c[1], 0, 1)
    return np.clip(sk.color.hsv2rgb(x), 0, 1) * 255


def _zoom_blur(image, c, rng=None):
    x = (np.array(image) / 255.).astype(np.float32)
    out = np.zeros_like(x)
    for zoom_factor in np.arange(*c):
        out += ref_clipped_zoom(x, zoom_factor)
    return np.clip((x + out) / (len(np.arange(*c)) + 1), 0, 1) * 255


REFERENCES = {'fog': _fog, 'elastic_transform': _elastic_transform, 'spatter': _spatter, 'saturate': _saturate,
              'zoom_blur': _zoom_blur}


# ---- the draws of the tensor versions, replayed (order and shapes as their docstrings state) ----

def _replayed_draws(name: str, batch: int, size: int, seed: int):
    """Per image, the arrays the reference draws, in its order, taken from the tensor version's draws."""
    g = torch.Generator().manual_seed(seed)
    if name == 'fog':  # per level: squares, then the two diamond sets, each B x k x k (float32)
        levels = []
        mapsize = 1 << (size - 1).bit_length()
        step = mapsize
        while step >= 2:
            k = mapsize // step
            levels += [torch.rand(batch, k, k, generator=g).double().numpy() for _ in range(3)]
            step //= 2
        return [[level[b] for level in levels] for b in range(batch)]
    if name == 'elastic_transform':  # affine B x 3 x 2, then the dx and dy fields as 2 x B x H x W (float64)
        affine = torch.rand(batch, 3, 2, generator=g, dtype=torch.float64).numpy()
        fields = torch.rand(2, batch, size, size, generator=g, dtype=torch.float64).numpy()
        return [[affine[b], fields[0, b], fields[1, b]] for b in range(batch)]
    if name == 'spatter':  # the standard normal field, B x H x W (float64)
        field = torch.randn(batch, size, size, generator=g, dtype=torch.float64).numpy()
        return [[field[b]] for b in range(batch)]
    return [[] for _ in range(batch)]


# Largest |reference - ours| on the 0..255 scale: float32 here against float64 / OpenCV's float32 there.
TOLERANCE = {'fog': 0.01, 'elastic_transform': 0.01, 'spatter': 0.01, 'saturate': 0.001, 'zoom_blur': 0.001}


@pytest.mark.parametrize('severity', SEVERITIES)
@pytest.mark.parametrize('dataset', ['cifar', 'imagenet'])
@pytest.mark.parametrize('name', list(REFERENCES))
def test_equals_reference_given_the_same_random_numbers(name, dataset, severity):
    batch, size = SIZES[dataset]
    images = _photos(batch, size)
    ours = to_255(corrupt(to_tensor(images), name, severity, generator=torch.Generator().manual_seed(7),
                          dataset=dataset))
    params = _params(name, dataset, severity)
    for image, out, draws in zip(images, ours, _replayed_draws(name, batch, size, seed=7)):
        reference = REFERENCES[name](image, params, _Draws(draws))
        assert np.abs(reference - out).max() <= TOLERANCE[name]
        # the stored values (np.uint8 of the float result) agree within one step
        assert np.abs(np.uint8(reference).astype(int) - np.uint8(out)).max() <= 1


def test_zoom_blur_matrix_form_equals_the_interpolated_zooms_on_non_square_images():
    """Small images are zoom-blurred by one matrix product, larger ones zoom by zoom (the form compared with
    the reference at 224 px above); both agree, rows and columns apart."""
    x = torch.rand(2, 3, 20, 28, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    factors = np.arange(*_params('zoom_blur', 'cifar', 5))
    expected = (x + sum(clipped_zoom(x, float(f)) for f in factors)) / (len(factors) + 1)
    torch.testing.assert_close(zoom_blur(x, _params('zoom_blur', 'cifar', 5)), expected, rtol=0, atol=1e-12)


def test_saturate_of_grey_and_black_follows_skimage_hue_zero():
    image = np.array([[[0, 0, 0], [128, 128, 128], [255, 255, 255], [255, 0, 0]]], dtype=np.uint8)
    for severity in SEVERITIES:
        params = _params('saturate', 'imagenet', severity)
        out = to_255(corrupt(to_tensor(image[None]), 'saturate', severity, dataset='imagenet'))[0]
        np.testing.assert_allclose(out, _saturate(image, params), atol=1e-3)
    # severity 5 adds 0.2 saturation: grey turns red (hue 0) as in skimage
    np.testing.assert_allclose(out[0, 1], [128, 128 * 0.8, 128 * 0.8], atol=1e-3)


def _stats(clean: np.ndarray, corrupted: np.ndarray) -> np.ndarray:
    """Per image: mean of out - clean, its std, and the fraction of values changed by more than half a step."""
    diff = corrupted - clean.astype(np.float64)
    return np.stack([diff.mean(axis=(1, 2, 3)), diff.std(axis=(1, 2, 3)), (np.abs(diff) > 0.5).mean(axis=(1, 2, 3))], 1)


@pytest.mark.parametrize('name', ['fog', 'elastic_transform', 'spatter'])
def test_random_draws_match_reference_in_distribution(name):
    """Ours on a torch.Generator against the reference on np.random, 48 CIFAR-size photos at severity 3:
    per-image statistics agree within 4 standard errors of the difference of means."""
    images = _photos(3, 32).repeat(16, axis=0)
    ours = _stats(images, to_255(corrupt(to_tensor(images), name, 3, generator=torch.Generator().manual_seed(0))))
    rng = np.random.RandomState(0)
    params = _params(name, 'cifar', 3)
    theirs = _stats(images, np.stack([REFERENCES[name](image, params, rng) for image in images]))
    standard_error = np.sqrt(ours.var(0, ddof=1) / len(ours) + theirs.var(0, ddof=1) / len(theirs))
    assert (np.abs(ours.mean(0) - theirs.mean(0)) <= 4 * standard_error + 1e-9).all(), (ours.mean(0), theirs.mean(0))


def test_released_cifar_is_np_uint8_of_the_float_result():
    x = to_tensor(_photos(3, 32))
    exact = corrupt(x, 'fog', 3, generator=torch.Generator().manual_seed(1))
    stored = corrupt(x, 'fog', 3, generator=torch.Generator().manual_seed(1), released=True)
    expected = np.uint8(to_255(exact))  # what make_cifar_c.py saved
    np.testing.assert_array_equal(np.round(to_255(stored)).astype(np.uint8), expected)
    assert (exact - stored).min() >= 0 and (exact - stored).max() < 1 / 255


def test_released_imagenet_is_the_pillow_jpeg_85_of_the_truncated_result():
    x = to_tensor(_photos(2, 224))
    exact = corrupt(x, 'spatter', 3, generator=torch.Generator().manual_seed(1), dataset='imagenet')
    stored = corrupt(x, 'spatter', 3, generator=torch.Generator().manual_seed(1), dataset='imagenet', released=True)
    for image, ours in zip(np.uint8(to_255(exact)), np.round(to_255(stored)).astype(np.uint8)):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format='JPEG', quality=85, optimize=True)  # make_imagenet_c.py's save
        np.testing.assert_array_equal(ours, np.asarray(Image.open(buffer).convert('RGB')))
    assert 0.5 < np.abs(to_255(stored) - to_255(exact)).mean() < 5  # JPEG moves values by a step or two
