import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from timm_tenet.robustness.corruptions import (
    ALEXNET_CLEAN_ERROR, ALEXNET_ERRORS, CORRUPTIONS, EXTRA_CORRUPTIONS, corrupt, mce, mean_corruption_error,
    relative_mce)

ALL = CORRUPTIONS + EXTRA_CORRUPTIONS
# Where the reference's constants do not make mean |out - clean| grow with severity (checked against the
# reference itself in test_corruptions_reference.py): glass blur's severity 3 blurs more than 4 in one pass
# instead of two; frost and snow weigh the image down as severity adds more frost or snow; elastic_transform's
# affine jitter shrinks with severity (CIFAR 2.56 -> 0.96 px; ImageNet 24 and 49 px at 1-2, 4.9 px after);
# saturate desaturates at 1-2 and oversaturates at 3-5. At one constant set only: CIFAR spatter turns from
# water (1-3) to mud (4-5); ImageNet fog 3 and 4 have the same thickness.
NOT_MONOTONE = ('glass_blur', 'frost', 'snow', 'elastic_transform', 'saturate')
NOT_MONOTONE_AT = (('spatter', 'cifar'), ('fog', 'imagenet'))
# CIFAR motion blur at severities 3 (radius 6, sigma 2) and 4 (radius 8, sigma 2) differs only in taps of
# weight below 1e-9: the same image for the same angle.
FLAT = (('motion_blur', 'cifar'),)
SIZES = {'cifar': (8, 32), 'imagenet': (2, 224)}  # batch, side: each constant set at its native resolution


def _natural_images(batch: int, size: int, seed: int = 0) -> torch.Tensor:
    """Images with a natural-like spectrum: equal-amplitude octaves of smooth noise, scaled to [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    x, side = torch.zeros(batch, 3, size, size), 2
    while side <= size:
        octave = torch.rand(batch, 3, side, side, generator=g) - 0.5
        x += F.interpolate(octave, size=size, mode='bilinear', align_corners=False)
        side *= 2
    x -= x.amin(dim=(1, 2, 3), keepdim=True)
    return x / x.amax(dim=(1, 2, 3), keepdim=True)


def _to_pil(x: torch.Tensor):
    return [Image.fromarray(im) for im in (x * 255).round().byte().permute(0, 2, 3, 1).numpy()]


def _from_pil(images) -> torch.Tensor:
    return torch.tensor(np.stack([np.asarray(im) for im in images])).permute(0, 3, 1, 2).float() / 255


@pytest.mark.parametrize('dataset', ['cifar', 'imagenet'])
@pytest.mark.parametrize('name', ALL)
def test_severity_monotonically_moves_image_away_and_stays_in_range(name, dataset):
    x = _natural_images(*SIZES[dataset])
    distances = []
    for severity in range(1, 6):
        out = corrupt(x, name, severity, generator=torch.Generator().manual_seed(0), dataset=dataset)
        assert out.shape == x.shape and out.dtype == x.dtype
        assert out.min().item() >= 0.0 and out.max().item() <= 1.0
        distances.append((out - x).abs().mean().item())
    if (name, dataset) in FLAT:
        assert all(a < b + 1e-6 for a, b in zip(distances, distances[1:])), distances
    elif name not in NOT_MONOTONE and (name, dataset) not in NOT_MONOTONE_AT:
        assert all(a < b for a, b in zip(distances, distances[1:])), distances
    assert distances[0] > 0


@pytest.mark.parametrize('name', ALL)
def test_corruption_is_deterministic_with_seeded_generator(name):
    x = _natural_images(4, 32)
    first = corrupt(x, name, 3, generator=torch.Generator().manual_seed(5))
    again = corrupt(x, name, 3, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(first, again, rtol=0, atol=0)


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
@pytest.mark.parametrize('name', ALL)
def test_corruption_is_float32_under_autocast(name, dtype):
    # a caller's autocast (e.g. corrupting inside an AMP loop) must not lower the convolutions and products
    x = _natural_images(2, 32)
    expected = corrupt(x, name, 3, generator=torch.Generator().manual_seed(5))
    with torch.autocast('cpu', dtype=dtype):
        out = corrupt(x, name, 3, generator=torch.Generator().manual_seed(5))
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


@pytest.mark.parametrize('name', ['gaussian_noise', 'shot_noise', 'impulse_noise', 'speckle_noise', 'fog',
                                  'elastic_transform', 'spatter'])
def test_noise_differs_between_seeds(name):
    x = _natural_images(4, 32)
    a = corrupt(x, name, 3, generator=torch.Generator().manual_seed(0))
    b = corrupt(x, name, 3, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(a, b)


def test_brightness_equals_hsv_value_shift():
    from matplotlib.colors import hsv_to_rgb, rgb_to_hsv
    x = _natural_images(2, 32)
    x[0, :, 0, 0] = 0.0  # black: HSV gives grey
    hsv = rgb_to_hsv(x.permute(0, 2, 3, 1).numpy())
    hsv[..., 2] = np.clip(hsv[..., 2] + 0.3, 0, 1)
    expected = torch.tensor(hsv_to_rgb(hsv)).permute(0, 3, 1, 2)
    torch.testing.assert_close(corrupt(x, 'brightness', 5), expected, rtol=0, atol=1e-5)


def test_pixelate_equals_pil_box_resize():
    x = torch.round(_natural_images(2, 32) * 255) / 255
    expected = _from_pil(im.resize((20, 20), Image.BOX).resize((32, 32), Image.BOX) for im in _to_pil(x))
    # PIL rounds to 8 bits on each resize
    torch.testing.assert_close(corrupt(x, 'pixelate', 5), expected, rtol=0, atol=1.01 / 255)


def test_gaussian_blur_equals_scipy():
    from scipy.ndimage import gaussian_filter
    x = _natural_images(2, 32).double()
    expected = gaussian_filter(x.numpy(), sigma=(0, 0, 1.0, 1.0), mode='nearest', truncate=4.0)
    torch.testing.assert_close(corrupt(x, 'gaussian_blur', 5), torch.from_numpy(expected), rtol=0, atol=1e-6)


def test_unknown_corruption_lists_valid_names():
    with pytest.raises(ValueError) as err:
        corrupt(torch.rand(1, 3, 8, 8), 'fogg', 1)
    assert str(err.value) == f"unknown corruption 'fogg'; choose one of {', '.join(ALL)}."


@pytest.mark.parametrize('severity', [0, 6, 2.5, True])
def test_bad_severity_is_rejected(severity):
    with pytest.raises(ValueError, match='severity must be an integer from 1 to 5') as err:
        corrupt(torch.rand(1, 3, 8, 8), 'contrast', severity)
    assert '\n' not in str(err.value)


def test_bad_input_is_rejected_with_hint():
    with pytest.raises(ValueError, match='add a batch dimension'):
        corrupt(torch.rand(3, 8, 8), 'contrast', 1)
    with pytest.raises(ValueError, match="must be 'cifar' or 'imagenet'"):
        corrupt(torch.rand(1, 3, 8, 8), 'contrast', 1, dataset='tiny')


def _alexnet_like(offset: float = 0.0):
    return {name: [err + offset + d for d in (-0.02, -0.01, 0.0, 0.01, 0.02)] for name, err in ALEXNET_ERRORS.items()}


def test_mce_of_alexnet_errors_is_100():
    assert len(ALEXNET_ERRORS) == 15
    assert mce(_alexnet_like()) == pytest.approx(100.0)
    assert mce(_alexnet_like(-0.1)) < 100.0


def test_relative_mce_of_alexnet_is_100():
    assert relative_mce(_alexnet_like(), ALEXNET_CLEAN_ERROR) == pytest.approx(100.0)
    # same corrupted errors but a worse clean error: less degradation, lower relative mCE
    assert relative_mce(_alexnet_like(), ALEXNET_CLEAN_ERROR + 0.1) < 100.0


def test_resnet50_like_errors_give_published_scale():
    # CE_c = E_c / alexnet_c for all c at 76.7% of AlexNet gives mCE 76.7
    errors = {name: [0.767 * err] * 5 for name, err in ALEXNET_ERRORS.items()}
    assert mce(errors) == pytest.approx(76.7)


def test_mean_corruption_error_is_plain_mean_in_percent():
    assert mean_corruption_error({'fog': [0.1, 0.2, 0.3, 0.4, 0.5], 'snow': [0.0] * 5}) == pytest.approx(15.0)


@pytest.mark.parametrize('errors, message', [
    ({'fogg': [0.5] * 5}, "unknown corruption 'fogg'"),
    ({'fog': [0.5] * 4}, 'give one per severity 1..5'),
    ({'fog': [50.0] * 5}, 'divide percentages by 100'),
    ({}, 'no corruption errors given'),
])
def test_mce_rejects_bad_errors(errors, message):
    with pytest.raises(ValueError, match=message):
        mce(errors)


@pytest.mark.parametrize('mode, numpy_mode', [('nearest', 'edge'), ('reflect101', 'reflect'),
                                              ('symmetric', 'symmetric'), ('constant', 'constant')])
def test_pad_border_modes_equal_numpy_including_wider_than_image(mode, numpy_mode):
    from timm_tenet.robustness.corruptions._filters import pad
    x = torch.arange(2 * 3 * 4, dtype=torch.float64).view(1, 2, 3, 4)
    padding = (5, 2, 7, 1)  # left, right, top, bottom; 7 rows of padding on a 3-row image
    expected = np.pad(x.numpy(), ((0, 0), (0, 0), (7, 1), (5, 2)), mode=numpy_mode)
    torch.testing.assert_close(pad(x, padding, mode), torch.from_numpy(expected), rtol=0, atol=0)
