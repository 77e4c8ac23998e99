"""scikit-learn's bundled handwritten digits as a 32x32 RGB image folder, written once under a cache
directory with a fixed, seeded, stratified train/validation split."""
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional, Union

import numpy as np
from PIL import Image

__all__ = ['DIGITS_DATASET', 'default_cache_dir', 'prepare_digits']

_logger = logging.getLogger(__name__)

DIGITS_DATASET = 'sklearn/digits'
_VERSION = 1
_MANIFEST = 'manifest.json'


def default_cache_dir() -> Path:
    """``$TIMM_TENET_CACHE`` if set, else ``~/.cache/timm_tenet``."""
    return Path(os.environ.get('TIMM_TENET_CACHE') or Path.home() / '.cache' / 'timm_tenet')


def _split_indices(labels: np.ndarray, val_fraction: float, seed: int):
    """Stratified split: the same ``round(val_fraction * n_c)`` validation images of every class for a seed."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val = int(round(val_fraction * len(idx)))
        val.extend(idx[:n_val].tolist())
        train.extend(idx[n_val:].tolist())
    return sorted(train), sorted(val)


def _manifest(size: int, val_fraction: float, seed: int, num_train: int, num_val: int) -> dict:
    return dict(version=_VERSION, size=size, val_fraction=val_fraction, seed=seed, train=num_train, validation=num_val)


def _is_complete(root: Path, size: int, val_fraction: float, seed: int) -> bool:
    try:
        manifest = json.loads((root / _MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    expected = {k: manifest.get(k) for k in ('version', 'size', 'val_fraction', 'seed')}
    return expected == dict(version=_VERSION, size=size, val_fraction=val_fraction, seed=seed)


def prepare_digits(
        root: Optional[Union[str, Path]] = None,
        size: int = 32,
        val_fraction: float = 0.2,
        seed: int = 0,
) -> Path:
    """Write the digits image folder once and return its root (``root/train/<digit>/*.png``, ``root/validation/...``).

    The 1797 8x8 grey images (values 0..16) are scaled to 0..255, upscaled bicubically to ``size`` x ``size``
    and stored as RGB PNGs. The split is stratified and depends only on ``seed``. The folder is built in a
    temporary directory beside ``root`` and renamed into place, so an interrupted or concurrent call
    (e.g. every rank of a DDP run) never leaves a half-written dataset; a complete folder is reused.

    Args:
        root: Target folder; default ``default_cache_dir() / f'digits{size}'``.
        size: Output side length in pixels.
        val_fraction: Fraction of every class held out for validation.
        seed: Seed of the split.

    Examples:

        ```python
        root = prepare_digits()  # ~/.cache/timm_tenet/digits32 with train/ (1437) and validation/ (360)
        dataset = timm.data.create_dataset('', root=str(root), split='validation')
        ```
    """
    root = Path(root) if root is not None else default_cache_dir() / f'digits{size}'
    if _is_complete(root, size, val_fraction, seed):
        return root
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise RuntimeError(
            "the digits dataset needs scikit-learn (pip install 'timm_tenet[digits]' or scikit-learn)") from None
    if root.exists() and any(root.iterdir()):
        raise RuntimeError(f"'{root}' exists but is not a digits folder written with size={size}, "
                           f'val_fraction={val_fraction}, seed={seed}; remove it or pick another --data-dir')
    digits = load_digits()
    images = (digits.images * (255.0 / 16.0)).round().clip(0, 255).astype(np.uint8)
    labels = digits.target
    train_idx, val_idx = _split_indices(labels, val_fraction, seed)

    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f'.{root.name}.tmp-', dir=root.parent))
    try:
        for split, indices in (('train', train_idx), ('validation', val_idx)):
            for c in range(10):
                (tmp / split / str(c)).mkdir(parents=True)
            for i in indices:
                img = Image.fromarray(images[i]).resize((size, size), Image.BICUBIC).convert('RGB')
                img.save(tmp / split / str(labels[i]) / f'{i:04d}.png')
        manifest = _manifest(size, val_fraction, seed, len(train_idx), len(val_idx))
        (tmp / _MANIFEST).write_text(json.dumps(manifest, indent=1))
        if root.exists():
            root.rmdir()  # empty (checked above); os.rename cannot replace a directory
        os.rename(tmp, root)
        _logger.info(f'Wrote the digits image folder to {root} ({len(train_idx)} train, {len(val_idx)} validation).')
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if _is_complete(root, size, val_fraction, seed):  # another process finished first
            return root
        raise
    return root
