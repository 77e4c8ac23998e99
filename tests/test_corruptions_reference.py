"""The corruptions against plainly written per-image versions of Hendrycks & Dietterich's ``make_cifar_c.py`` /
``make_imagenet_c.py``, on real photos, through the libraries those use (OpenCV, scikit-image, Pillow,
ImageMagick via ``wand``).

Deterministic corruptions are compared value by value. Random ones are compared twice: value by value
given the same random draws (the ``apply_*`` functions), and in distribution against the reference
drawing from numpy, by per-image statistics of ``out - clean`` (overall and per clean intensity band) with
tolerances from their standard errors.
"""
import ctypes
import io
import math

import numpy as np
import pytest
import torch
from PIL import Image

from corruption_reference import ref_clipped_zoom, to_255, to_tensor
from timm_tenet.robustness.corruptions import corrupt
from timm_tenet.robustness.corruptions.blur import apply_glass_blur, apply_motion_blur
from timm_tenet.robustness.corruptions.weather import FROST_FILES, apply_frost, apply_snow

cv2 = pytest.importorskip('cv2')
skimage_data = pytest.importorskip('skimage.data')
from skimage.filters import gaussian  # noqa: E402

SEVERITIES = (1, 2, 3, 4, 5)
DATASETS = ('cifar', 'imagenet')
PHOTOS = ('astronaut', 'chelsea', 'coffee', 'rocket', 'immunohistochemistry')
FROST_DIR = 'timm_tenet/robustness/corruptions/frost'


def _photos(dataset: str) -> np.ndarray:
    """Uint8 N x H x W x 3 photos: 5 at 224 px (ImageNet), or 80 tiles of 32 px cut from them at 128 px (CIFAR)."""
    images = []
    for name in PHOTOS:
        photo = Image.fromarray(getattr(skimage_data, name)())
        side = min(photo.size)
        photo = photo.crop(((photo.width - side) // 2, (photo.height - side) // 2,
                            (photo.width + side) // 2, (photo.height + side) // 2))
        if dataset == 'imagenet':
            images.append(np.asarray(photo.resize((224, 224), Image.BILINEAR)))
        else:
            small = np.asarray(photo.resize((128, 128), Image.BOX))
            images.extend(small[r:r + 32, c:c + 32] for r in range(0, 128, 32) for c in range(0, 128, 32))
    return np.stack(images)


_PHOTO_CACHE = {}


def photos(dataset: str, count: int) -> np.ndarray:
    if dataset not in _PHOTO_CACHE:
        _PHOTO_CACHE[dataset] = _photos(dataset)
    return _PHOTO_CACHE[dataset][:count]


# ---- the reference, one image at a time (uint8 H x W x 3 in, float 0..255 out) ----

def ref_disk(radius, alias_blur):
    if radius <= 8:
        taps, ksize = np.arange(-8, 8 + 1), (3, 3)
    else:
        taps, ksize = np.arange(-radius, radius + 1), (5, 5)
    xx, yy = np.meshgrid(taps, taps)
    disk = np.array((xx ** 2 + yy ** 2) <= radius ** 2, dtype=np.float32)
    disk /= np.sum(disk)
    return cv2.GaussianBlur(disk, ksize=ksize, sigmaX=alias_blur)


def ref_defocus_blur(img, c):
    x = np.array(img) / 255.
    kernel = ref_disk(radius=c[0], alias_blur=c[1])
    channels = np.array([cv2.filter2D(x[:, :, d], -1, kernel) for d in range(3)]).transpose((1, 2, 0))
    return np.clip(channels, 0, 1) * 255


def ref_jpeg_compression(img, quality):
    output = io.BytesIO()
    Image.fromarray(img).save(output, 'JPEG', quality=quality)
    return np.asarray(Image.open(output)).astype(np.float64)


def ref_glass_blur(img, c, offsets):
    """``offsets[p, h - d - 1, w - d - 1] = (dx, dy)`` stands for the reference's ``randint`` draw at (h, w)."""
    sigma, d, passes = c
    size_h, size_w = img.shape[:2]
    x = np.uint8(gaussian(np.array(img) / 255., sigma=sigma, channel_axis=-1) * 255)
    for p in range(passes):
        for h in range(size_h - d, d, -1):
            for w in range(size_w - d, d, -1):
                dx, dy = offsets[p, h - d - 1, w - d - 1]
                h_prime, w_prime = h + dy, w + dx
                x[h, w], x[h_prime, w_prime] = x[h_prime, w_prime], x[h, w]
    return np.clip(gaussian(x / 255., sigma=sigma, channel_axis=-1), 0, 1) * 255


def _magick_motion_blur(img, radius, sigma, angle):
    from wand.api import library
    from wand.image import Image as WandImage
    library.MagickMotionBlurImage.argtypes = (ctypes.c_void_p, ctypes.c_double, ctypes.c_double, ctypes.c_double)
    output = io.BytesIO()
    Image.fromarray(img).save(output, format='PNG')
    image = WandImage(blob=output.getvalue())
    library.MagickMotionBlurImage(image.wand, radius, sigma, angle)
    return cv2.imdecode(np.frombuffer(image.make_blob(), np.uint8), cv2.IMREAD_UNCHANGED)


def ref_motion_blur(img, c, angle):
    x = _magick_motion_blur(img, c[0], c[1], angle)
    if x.ndim == 3:
        return np.clip(x[..., [2, 1, 0]], 0, 255).astype(np.float64)  # BGR to RGB
    return np.clip(np.stack([x, x, x], axis=-1), 0, 255).astype(np.float64)  # greyscale to RGB


def ref_snow(img, c, noise, angle):
    """``noise``: the standard normal draw of the reference's ``normal(loc=c[0], scale=c[1])``."""
    x = np.array(img, dtype=np.float32) / 255.
    snow_layer = noise * c[1] + c[0]
    snow_layer = ref_clipped_zoom(snow_layer[..., np.newaxis], c[2])
    snow_layer[snow_layer < c[3]] = 0
    snow_layer = (np.clip(snow_layer.squeeze(), 0, 1) * 255).astype(np.uint8)
    snow_layer = _magick_motion_blur(snow_layer, c[4], c[5], angle) / 255.
    snow_layer = snow_layer[..., np.newaxis]
    grey = cv2.cvtColor(x, cv2.COLOR_RGB2GRAY).reshape(*x.shape[:2], 1)
    x = c[6] * x + (1 - c[6]) * np.maximum(x, grey * 1.5 + 0.5)
    return np.clip(x + snow_layer + np.rot90(snow_layer, k=2), 0, 1) * 255


def ref_frost_photo(index, dataset):
    photo = cv2.imread(f'{FROST_DIR}/{FROST_FILES[index]}')
    return cv2.resize(photo, (0, 0), fx=0.2, fy=0.2) if dataset == 'cifar' else photo


def ref_frost(img, c, photo, x_start, y_start):
    size_h, size_w = img.shape[:2]
    crop = photo[x_start:x_start + size_h, y_start:y_start + size_w][..., [2, 1, 0]]
    return np.clip(c[0] * np.array(img) + c[1] * crop, 0, 255)


# severity constants of the reference, written out again (ours live in the registry)
CONSTANTS = {
    'cifar': {
        'defocus_blur': [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)],
        'jpeg_compression': [80, 65, 58, 50, 40],
        'glass_blur': [(0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)],
        'motion_blur': [(6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)],
        'snow': [(0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
                 (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9), (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
                 (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)],
        'frost': [(1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)],
    },
    'imagenet': {
        'defocus_blur': [(3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)],
        'jpeg_compression': [25, 18, 15, 10, 7],
        'glass_blur': [(0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)],
        'motion_blur': [(10, 3), (15, 5), (15, 8), (15, 12), (20, 15)],
        'snow': [(0.1, 0.3, 3, 0.5, 10, 4, 0.8), (0.2, 0.3, 2, 0.5, 12, 4, 0.7), (0.55, 0.3, 4, 0.9, 12, 8, 0.7),
                 (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65), (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55)],
        'frost': [(1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75)],
    },
}
EXACT_COUNT = {'cifar': 4, 'imagenet': 1}  # photos per value-by-value comparison


def _wand():
    return pytest.importorskip(
        'wand.image', reason='ImageMagick reference needs the MagickWand library: apt-get install libmagickwand-6.q16-6')


def assert_within(ours: np.ndarray, reference: np.ndarray, atol: float, changed_at_most: float = 0.0):
    """All values within ``atol`` (0..255 units), and at most a fraction ``changed_at_most`` beyond 1e-3."""
    diff = np.abs(ours - reference)
    assert diff.max() <= atol, f'max |ours - reference| = {diff.max():.4f} > {atol}'
    assert (diff > 1e-3).mean() <= changed_at_most, f'{(diff > 1e-3).mean():.5f} of the values differ'


# ---- deterministic: value by value ----

@pytest.mark.parametrize('dataset', DATASETS)
@pytest.mark.parametrize('severity', SEVERITIES)
def test_defocus_blur_equals_opencv_filter2d_with_reflect101_border(dataset, severity):
    images = photos(dataset, EXACT_COUNT[dataset])
    ours = to_255(corrupt(to_tensor(images), 'defocus_blur', severity, dataset=dataset))
    reference = np.stack([ref_defocus_blur(im, CONSTANTS[dataset]['defocus_blur'][severity - 1]) for im in images])
    assert_within(ours, reference, atol=2e-3, changed_at_most=1.0)


@pytest.mark.parametrize('dataset', DATASETS)
@pytest.mark.parametrize('severity', SEVERITIES)
def test_jpeg_compression_equals_pil_bit_for_bit(dataset, severity):
    images = photos(dataset, EXACT_COUNT[dataset])
    ours = to_255(corrupt(to_tensor(images), 'jpeg_compression', severity, dataset=dataset))
    reference = np.stack([ref_jpeg_compression(im, CONSTANTS[dataset]['jpeg_compression'][severity - 1])
                          for im in images])
    assert_within(ours, reference, atol=1e-3)


# ---- random: value by value given the same draws ----

@pytest.mark.parametrize('dataset', DATASETS)
@pytest.mark.parametrize('severity', SEVERITIES)
def test_glass_blur_equals_sequential_copies_given_offsets(dataset, severity):
    images = photos(dataset, EXACT_COUNT[dataset])
    sigma, d, passes = c = CONSTANTS[dataset]['glass_blur'][severity - 1]
    n, h, w = images.shape[:3]
    offsets = torch.randint(-d, d, (n, passes, h - 2 * d, w - 2 * d, 2),
                            generator=torch.Generator().manual_seed(severity))
    ours = to_255(apply_glass_blur(to_tensor(images), sigma, offsets).clamp(0, 1))
    reference = np.stack([ref_glass_blur(im, c, o.numpy()) for im, o in zip(images, offsets)])
    # the second blur runs in float32 here, float64 there
    assert_within(ours, reference, atol=1e-3)


@pytest.mark.parametrize('dataset', DATASETS)
@pytest.mark.parametrize('severity', SEVERITIES)
def test_motion_blur_equals_imagemagick_given_angle(dataset, severity):
    _wand()
    images = photos(dataset, EXACT_COUNT[dataset])
    c = CONSTANTS[dataset]['motion_blur'][severity - 1]
    angles = torch.linspace(-45, 44, len(images), dtype=torch.float64) + 0.3
    ours = to_255(apply_motion_blur(to_tensor(images), c, angles))
    reference = np.stack([ref_motion_blur(im, c, a.item()) for im, a in zip(images, angles)])
    assert_within(ours, reference, atol=1 + 1e-3, changed_at_most=1e-3)


@pytest.mark.parametrize('dataset', DATASETS)
@pytest.mark.parametrize('severity', SEVERITIES)
def test_snow_equals_reference_given_noise_and_angle(dataset, severity):
    _wand()
    images = photos(dataset, EXACT_COUNT[dataset])
    c = CONSTANTS[dataset]['snow'][severity - 1]
    n, h, w = images.shape[:3]
    noise = torch.randn(n, 1, h, w, generator=torch.Generator().manual_seed(severity), dtype=torch.float64)
    angles = torch.linspace(-135, -46, n, dtype=torch.float64) + 0.3
    ours = to_255(apply_snow(to_tensor(images), c, noise, angles).clamp(0, 1))
    reference = np.stack([ref_snow(im, c, z[0].numpy(), a.item()) for im, z, a in zip(images, noise, angles)])
    # the flakes are 8-bit after ImageMagick, added twice: a one-unit flip there moves the output by 1 or 2
    assert_within(ours, reference, atol=2 + 1e-3, changed_at_most=1e-3)


@pytest.mark.parametrize('dataset', DATASETS)
@pytest.mark.parametrize('severity', SEVERITIES)
def test_frost_equals_reference_given_photo_and_crop(dataset, severity):
    images = photos(dataset, EXACT_COUNT[dataset])
    c = CONSTANTS[dataset]['frost'][severity - 1]
    n, h, w = images.shape[:3]
    pick = torch.arange(n) % len(FROST_FILES) if n > 1 else torch.tensor([severity - 1])
    reference, starts = [], []
    for im, index in zip(images, pick.tolist()):
        photo = ref_frost_photo(index, dataset)
        start = ((photo.shape[0] - h - 1) * severity // 5, (photo.shape[1] - w - 1) * (5 - severity) // 5)
        reference.append(ref_frost(im, c, photo, *start))
        starts.append(start)
    params = (*c, 5 if dataset == 'cifar' else 1)
    ours = to_255(apply_frost(to_tensor(images), params, pick, torch.tensor(starts)).clamp(0, 1))
    assert_within(ours, np.stack(reference), atol=1e-3)


# ---- random: in distribution against the reference drawing from numpy ----

def _ref_random(name, img, c, dataset, rng):
    h, w = img.shape[:2]
    if name == 'glass_blur':
        d = c[1]
        return ref_glass_blur(img, c, rng.randint(-d, d, size=(c[2], h - 2 * d, w - 2 * d, 2)))
    if name == 'motion_blur':
        return ref_motion_blur(img, c, rng.uniform(-45, 45))
    if name == 'snow':
        noise = rng.normal(size=(h, w))
        return ref_snow(img, c, noise, rng.uniform(-135, -45))
    photo = ref_frost_photo(rng.randint(5), dataset)
    return ref_frost(img, c, photo, rng.randint(0, photo.shape[0] - h), rng.randint(0, photo.shape[1] - w))


BANDS = ((0, 85), (85, 170), (170, 256))  # clean intensity bands


def _statistics(out: np.ndarray, clean: np.ndarray) -> np.ndarray:
    """Per image: mean and std of out - clean, fraction of values changed by more than half a unit, and the
    mean of out - clean over the clean values in each intensity band (NaN where an image has none)."""
    diff = (out - clean.astype(np.float64)).reshape(len(out), -1)
    flat = clean.reshape(len(clean), -1)
    bands = []
    for low, high in BANDS:
        inside = (flat >= low) & (flat < high)
        with np.errstate(invalid='ignore'):
            bands.append(np.where(inside, diff, 0).sum(1) / inside.sum(1))
    return np.stack([diff.mean(1), diff.std(1), (np.abs(diff) > 0.5).mean(1), *bands], axis=1)


# photos per severity; the reference's glass blur at 224 px (a Python loop) is left to the test above
DISTRIBUTION = {('cifar', 'glass_blur'): 40, ('cifar', 'motion_blur'): 40, ('cifar', 'snow'): 40,
                ('cifar', 'frost'): 40, ('imagenet', 'motion_blur'): 5, ('imagenet', 'snow'): 5,
                ('imagenet', 'frost'): 5}


@pytest.mark.parametrize('severity', SEVERITIES)
@pytest.mark.parametrize('dataset, name', list(DISTRIBUTION))
def test_random_corruption_matches_reference_in_distribution(dataset, name, severity):
    if name in ('motion_blur', 'snow'):
        _wand()
    images = photos(dataset, DISTRIBUTION[dataset, name])
    batch = np.concatenate([images] * (1 if dataset == 'cifar' else 2))  # few ImageNet photos: two draws each
    c = CONSTANTS[dataset][name][severity - 1]
    out = corrupt(to_tensor(batch), name, severity, generator=torch.Generator().manual_seed(severity), dataset=dataset)
    ours = _statistics(to_255(out), batch)
    rng = np.random.RandomState(severity)
    reference = _statistics(np.stack([_ref_random(name, im, c, dataset, rng) for im in batch]), batch)
    # both run on the same photos: compare per photo, so that the photos' own spread cancels; the draws are
    # independent, so the mean paired gap must be within 4 standard errors, plus a quarter unit (0.01 of
    # the fraction changed) for the 8-bit steps of the reference
    gap = ours - reference
    count = np.sum(~np.isnan(gap), axis=0)
    mean, error = np.nanmean(gap, axis=0), np.sqrt(np.nanvar(gap, axis=0, ddof=1) / count)
    slack = np.array([0.25, 0.25, 0.01] + [0.25] * len(BANDS))
    assert np.all(np.abs(mean) <= 4 * error + slack), (
        f'ours {np.nanmean(ours, 0).round(3)}, reference {np.nanmean(reference, 0).round(3)}, '
        f'standard error of the gap {error.round(3)}')
