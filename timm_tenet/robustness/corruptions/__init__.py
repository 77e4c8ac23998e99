"""Common corruptions of ImageNet-C / CIFAR-10-C applied on the fly to image batches, and the mCE metrics.

The released CIFAR-10-C / ImageNet-C sets are fixed files; generating the same corruptions on the fly
lets any dataset (or a validation loader) be evaluated without them. Every corruption is a batched
tensor op on the input's device, reproducing the functions of Hendrycks & Dietterich (ICLR 2019,
``make_cifar_c.py`` and ``make_imagenet_c.py``) with their severity constants: pick them with
``dataset='cifar'`` (32 px) or ``'imagenet'`` (224 px). The functions live by family in
:mod:`.noise`, :mod:`.blur`, :mod:`.weather` and :mod:`.digital`; this module holds the registry
(:data:`CORRUPTIONS`, the benchmark's 15 in its order, and :data:`EXTRA_CORRUPTIONS`, the paper's 4 others),
:func:`corrupt` and the metrics.

The released files are not the float result: CIFAR-10-C holds ``np.uint8`` of it (truncated) and every
ImageNet-C image was saved as JPEG quality 85. ``corrupt(..., released=True)`` (:func:`as_released`) stores
the result the same way, so that on-the-fly numbers can be put beside numbers from released-style files.

mCE (ImageNet-C) divides a model's summed errors by AlexNet's; only AlexNet's per-corruption mean
errors are published, so ``CE_c = sum_s E_s,c / (5 * alexnet_mean_error_c)``, which is the same number.
CIFAR papers report the plain mean error instead (:func:`mean_corruption_error`).
"""
import numbers
from typing import Callable, Dict, Mapping, NamedTuple, Optional, Sequence, Tuple

import torch

from .blur import defocus_blur, gaussian_blur, glass_blur, motion_blur, zoom_blur
from .digital import contrast, elastic_transform, jpeg_compression, pixelate, saturate
from .noise import gaussian_noise, impulse_noise, shot_noise, speckle_noise
from .weather import brightness, fog, frost, snow, spatter

__all__ = [
    'CORRUPTIONS', 'EXTRA_CORRUPTIONS', 'ALEXNET_ERRORS', 'ALEXNET_CLEAN_ERROR', 'RELEASED_JPEG_QUALITY', 'corrupt',
    'as_released', 'mce', 'relative_mce', 'mean_corruption_error']

# AlexNet's ImageNet-C error per corruption, averaged over the 5 severities (Hendrycks & Dietterich 2019).
ALEXNET_ERRORS: Dict[str, float] = {
    'gaussian_noise': 0.886428, 'shot_noise': 0.894468, 'impulse_noise': 0.922640,
    'defocus_blur': 0.819880, 'glass_blur': 0.826268, 'motion_blur': 0.785948, 'zoom_blur': 0.798360,
    'snow': 0.866816, 'frost': 0.826572, 'fog': 0.819324,
    'brightness': 0.564592, 'contrast': 0.853204, 'elastic_transform': 0.646056, 'pixelate': 0.717840,
    'jpeg_compression': 0.606500,
}
# Clean top-1 error of the AlexNet that Hendrycks' ImageNet-C test.py evaluates (torchvision's
# alexnet-owt-4df8aa71, 56.522% top-1 accuracy); the paper's table rounds it to 43.5.
ALEXNET_CLEAN_ERROR = 0.43478

_DATASETS = ('cifar', 'imagenet')
# Every ImageNet-C image was saved by PIL with quality=85 (make_imagenet_c.py).
RELEASED_JPEG_QUALITY = 85


def _scaled(size: int, fractions: Sequence[Sequence[float]]) -> Tuple[Tuple[float, ...], ...]:
    """Constants given as fractions of the image side, multiplied out as the reference writes them."""
    return tuple(tuple(size * f for f in row) for row in fractions)


class _Corruption(NamedTuple):
    fn: Callable[..., torch.Tensor]  # (x, params, generator) -> corrupted x, unclipped
    cifar: Sequence  # severity 1..5 constants of make_cifar_c.py (32 px)
    imagenet: Sequence  # severity 1..5 constants of make_imagenet_c.py (224 px)


# The benchmark's corruptions in its order (noise, blur, weather, digital).
_BENCHMARK: Dict[str, _Corruption] = {
    'gaussian_noise': _Corruption(gaussian_noise, (0.04, 0.06, 0.08, 0.09, 0.10), (0.08, 0.12, 0.18, 0.26, 0.38)),
    'shot_noise': _Corruption(shot_noise, (500, 250, 100, 75, 50), (60, 25, 12, 5, 3)),
    'impulse_noise': _Corruption(impulse_noise, (0.01, 0.02, 0.03, 0.05, 0.07), (0.03, 0.06, 0.09, 0.17, 0.27)),
    'defocus_blur': _Corruption(
        defocus_blur,
        ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)),
        ((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5))),
    'glass_blur': _Corruption(  # (sigma, max offset, passes)
        glass_blur,
        ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)),
        ((0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2))),
    'motion_blur': _Corruption(  # ImageMagick (radius, sigma)
        motion_blur, ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)), ((10, 3), (15, 5), (15, 8), (15, 12), (20, 15))),
    'zoom_blur': _Corruption(
        zoom_blur,
        ((1, 1.06, 0.01), (1, 1.11, 0.01), (1, 1.16, 0.01), (1, 1.21, 0.01), (1, 1.26, 0.01)),
        ((1, 1.11, 0.01), (1, 1.16, 0.01), (1, 1.21, 0.02), (1, 1.26, 0.02), (1, 1.31, 0.03))),
    'snow': _Corruption(  # (mean, std, zoom, threshold, blur radius, blur sigma, image weight)
        snow,
        ((0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9), (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
         (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85), (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)),
        ((0.1, 0.3, 3, 0.5, 10, 4, 0.8), (0.2, 0.3, 2, 0.5, 12, 4, 0.7), (0.55, 0.3, 4, 0.9, 12, 8, 0.7),
         (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65), (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55))),
    'frost': _Corruption(  # (image weight, frost weight, photo shrink factor: cv2.resize by 0.2 for CIFAR)
        frost,
        ((1, 0.2, 5), (1, 0.3, 5), (0.9, 0.4, 5), (0.85, 0.4, 5), (0.75, 0.45, 5)),
        ((1, 0.4, 1), (0.8, 0.6, 1), (0.7, 0.7, 1), (0.65, 0.7, 1), (0.6, 0.75, 1))),
    'fog': _Corruption(
        fog,
        ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)),
        ((1.5, 2), (2, 2), (2.5, 1.7), (2.5, 1.5), (3, 1.4))),
    'brightness': _Corruption(brightness, (0.05, 0.1, 0.15, 0.2, 0.3), (0.1, 0.2, 0.3, 0.4, 0.5)),
    'contrast': _Corruption(contrast, (0.75, 0.5, 0.4, 0.3, 0.15), (0.4, 0.3, 0.2, 0.1, 0.05)),
    'elastic_transform': _Corruption(
        elastic_transform,
        _scaled(32, ((0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05), (0.1, 0.03, 0.03))),
        # the reference's 244 (for 224) is kept: its constants are what the released set was made with
        _scaled(244, ((2, 0.7, 0.1), (2, 0.08, 0.2), (0.05, 0.01, 0.02), (0.07, 0.01, 0.02), (0.12, 0.01, 0.02)))),
    'pixelate': _Corruption(pixelate, (0.95, 0.9, 0.85, 0.75, 0.65), (0.6, 0.5, 0.4, 0.3, 0.25)),
    'jpeg_compression': _Corruption(jpeg_compression, (80, 65, 58, 50, 40), (25, 18, 15, 10, 7)),
}
# The paper's extra corruptions (not part of mCE).
_EXTRA: Dict[str, _Corruption] = {
    'speckle_noise': _Corruption(speckle_noise, (0.06, 0.1, 0.12, 0.16, 0.2), (0.15, 0.2, 0.35, 0.45, 0.6)),
    'gaussian_blur': _Corruption(gaussian_blur, (0.4, 0.6, 0.7, 0.8, 1.0), (1, 2, 3, 4, 6)),
    'spatter': _Corruption(
        spatter,  # (loc, scale, sigma, threshold, intensity, mud)
        ((0.62, 0.1, 0.7, 0.7, 0.5, 0), (0.65, 0.1, 0.8, 0.7, 0.5, 0), (0.65, 0.3, 1, 0.69, 0.5, 0),
         (0.65, 0.1, 0.7, 0.69, 0.6, 1), (0.65, 0.1, 0.5, 0.68, 0.6, 1)),
        ((0.65, 0.3, 4, 0.69, 0.6, 0), (0.65, 0.3, 3, 0.68, 0.6, 0), (0.65, 0.3, 2, 0.68, 0.5, 0),
         (0.65, 0.3, 1, 0.65, 1.5, 1), (0.67, 0.4, 1, 0.65, 1.5, 1))),
    'saturate': _Corruption(
        saturate,
        ((0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)),
        ((0.3, 0), (0.1, 0), (2, 0), (5, 0.1), (20, 0.2))),
}
_REGISTRY: Dict[str, _Corruption] = {**_BENCHMARK, **_EXTRA}
CORRUPTIONS: Tuple[str, ...] = tuple(_BENCHMARK)
EXTRA_CORRUPTIONS: Tuple[str, ...] = tuple(_EXTRA)


def corrupt(
        x: torch.Tensor,
        name: str,
        severity: int,
        generator: Optional[torch.Generator] = None,
        dataset: str = 'cifar',
        released: bool = False,
) -> torch.Tensor:
    """Apply corruption ``name`` at ``severity`` to a batch, on its device.

    Args:
        x: Float images B x C x H x W in [0, 1].
        name: One of :data:`CORRUPTIONS` or :data:`EXTRA_CORRUPTIONS`.
        severity: 1 (mild) to 5 (strong).
        generator: Random source of the random corruptions, on ``x``'s device, for reproducible output.
        dataset: Severity constants of ``'cifar'`` (CIFAR-10-C, 32 px) or ``'imagenet'`` (ImageNet-C, 224 px).
        released: Store the result as the released files of ``dataset`` were (:func:`as_released`), so that
            numbers compare with those files; off, the exact float result.

    Returns:
        Corrupted images, same shape and dtype as ``x``, in [0, 1].

    Examples:

        ```python
        g = torch.Generator().manual_seed(0)
        noisy = corrupt(torch.rand(4, 3, 32, 32), 'gaussian_noise', 3, generator=g)
        ```
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown corruption '{name}'; choose one of {', '.join(_REGISTRY)}.")
    if isinstance(severity, bool) or not isinstance(severity, numbers.Integral) or not 1 <= severity <= 5:
        raise ValueError(f'corruption severity must be an integer from 1 to 5, got {severity!r}.')
    if dataset not in _DATASETS:
        raise ValueError(f"corruption dataset must be 'cifar' or 'imagenet', got '{dataset}'.")
    if x.dim() != 4 or not x.is_floating_point():
        raise ValueError(f'corrupt() takes a float B x C x H x W batch in [0, 1], got {x.dtype} of shape '
                         f'{tuple(x.shape)}; add a batch dimension or convert with .float() / 255.')
    entry = _REGISTRY[name]
    params = (entry.cifar if dataset == 'cifar' else entry.imagenet)[severity - 1]
    with torch.autocast(x.device.type, enabled=False):  # the reference maths are float32 in any caller's AMP
        out = entry.fn(x.float(), params, generator).clamp_(0, 1)
    return (as_released(out, dataset) if released else out).to(x.dtype)


def as_released(x: torch.Tensor, dataset: str) -> torch.Tensor:
    """Corrupted images as the released files store them: ``np.uint8`` of ``255 * x`` (truncation, CIFAR-10-C
    and ImageNet-C alike), then for ``'imagenet'`` the JPEG quality 85 round trip every ImageNet-C image went
    through (:func:`.digital.jpeg_compression`, the real libjpeg).

    Args:
        x: Float images B x C x H x W in [0, 1].
        dataset: ``'cifar'`` or ``'imagenet'``.
    """
    if dataset not in _DATASETS:
        raise ValueError(f"corruption dataset must be 'cifar' or 'imagenet', got '{dataset}'.")
    truncated = torch.floor(x * 255) / 255
    return jpeg_compression(truncated, RELEASED_JPEG_QUALITY) if dataset == 'imagenet' else truncated


def _check_errors(errors: Mapping[str, Sequence[float]], known: Sequence[str], all_severities: bool = True) -> None:
    if not errors:
        raise ValueError('no corruption errors given; pass {corruption: [error at severity 1..5]}.')
    for name, errs in errors.items():
        if name not in known:
            raise ValueError(f"unknown corruption '{name}' in errors; AlexNet references exist for {', '.join(known)}.")
        if len(errs) != 5 if all_severities else not 1 <= len(errs) <= 5:
            raise ValueError(f"'{name}' has {len(errs)} errors; give one per severity 1..5.")
        if not all(0 <= e <= 1 for e in errs):
            raise ValueError(f"'{name}' errors {list(errs)} are not fractions in [0, 1]; divide percentages by 100.")


def mce(errors: Mapping[str, Sequence[float]]) -> float:
    """ImageNet-C mean Corruption Error, in percent (AlexNet = 100).

    ``CE_c = sum_s E_s,c / sum_s E^AlexNet_s,c``, averaged over the corruptions given; the published mCE
    uses the 15 of :data:`ALEXNET_ERRORS`.

    Args:
        errors: ``{corruption: [top-1 error at severity 1, ..., 5]}`` as fractions.
    """
    _check_errors(errors, tuple(ALEXNET_ERRORS))
    ces = [sum(errs) / (5 * ALEXNET_ERRORS[name]) for name, errs in errors.items()]
    return 100.0 * sum(ces) / len(ces)


def relative_mce(
        errors: Mapping[str, Sequence[float]],
        clean_error: float,
        alexnet_clean_error: float = ALEXNET_CLEAN_ERROR,
) -> float:
    """ImageNet-C relative mCE, in percent (AlexNet = 100): the degradation beyond the clean error.

    ``rCE_c = sum_s (E_s,c - E_clean) / sum_s (E^AlexNet_s,c - E^AlexNet_clean)``, averaged over corruptions.

    Args:
        errors: ``{corruption: [top-1 error at severity 1, ..., 5]}`` as fractions.
        clean_error: The model's clean top-1 error, a fraction.
        alexnet_clean_error: AlexNet's clean top-1 error.
    """
    _check_errors(errors, tuple(ALEXNET_ERRORS))
    ces = [(sum(errs) - 5 * clean_error) / (5 * (ALEXNET_ERRORS[name] - alexnet_clean_error))
           for name, errs in errors.items()]
    return 100.0 * sum(ces) / len(ces)


def mean_corruption_error(errors: Mapping[str, Sequence[float]]) -> float:
    """CIFAR-10-C / CIFAR-100-C convention: plain mean error over corruptions x severities, in percent (the
    severities given: a subset, such as ``validate.py --severities 1,5``, averages over those)."""
    _check_errors(errors, tuple(errors), all_severities=False)
    values = [e for errs in errors.values() for e in errs]
    return 100.0 * sum(values) / len(values)
