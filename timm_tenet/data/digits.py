"""scikit-learn's bundled handwritten digits (1797 8x8 images) as a 32x32 RGB image folder: the quick demo's data.

``--dataset sklearn/digits``; written once under the cache directory by :mod:`.bundled`."""
from pathlib import Path
from typing import Optional, Union

import numpy as np
from PIL import Image

from .bundled import default_cache_dir, register_bundled, write_image_folder

__all__ = ['DIGITS_DATASET', 'prepare_digits']

DIGITS_DATASET = 'sklearn/digits'
_VERSION = 2


def _load_digits():
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise RuntimeError(
            "the digits dataset needs scikit-learn (pip install 'timm_tenet[digits]' or scikit-learn)") from None
    digits = load_digits()
    return (digits.images * (255.0 / 16.0)).round().clip(0, 255).astype(np.uint8), digits.target


@register_bundled(DIGITS_DATASET)
def prepare_digits(
        root: Optional[Union[str, Path]] = None,
        size: int = 32,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        seed: int = 0,
) -> Path:
    """Write the digits image folder once and return its root (``root/{train,validation,test}/<digit>/*.png``).

    The 1797 8x8 grey images (values 0..16) are scaled to 0..255, upscaled bicubically to ``size`` x ``size``
    and stored as RGB PNGs.

    Args:
        root: Target folder; default ``default_cache_dir() / f'digits{size}'``.
        size: Output side length in pixels.
        val_fraction: Fraction of every class held out for validation.
        test_fraction: Fraction of every class held out for testing.
        seed: Seed of the split.

    Examples:

        ```python
        root = prepare_digits()  # ~/.cache/timm_tenet/digits32: train/ (1259), validation/ (269), test/ (269)
        dataset = timm.data.create_dataset('', root=str(root), split='validation')
        ```
    """
    root = Path(root) if root is not None else default_cache_dir() / f'digits{size}'
    return write_image_folder(
        root, _load_digits, dict(version=_VERSION, size=size),
        lambda image: Image.fromarray(image).resize((size, size), Image.BICUBIC).convert('RGB'),
        val_fraction, test_fraction, seed)
