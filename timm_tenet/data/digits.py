"""scikit-learn's bundled handwritten digits as a 32x32 RGB image folder, written once under a cache
directory with a fixed, seeded, stratified train/validation/test split.

The validation split selects checkpoints and settings; the test split is touched only by final
evaluations (the robustness study), so no reported number is tuned on the data it is measured on."""
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
_VERSION = 2
_SPLITS = ('train', 'validation', 'test')
_MANIFEST = 'manifest.json'


def default_cache_dir() -> Path:
    """``$TIMM_TENET_CACHE`` if set, else ``~/.cache/timm_tenet``."""
    return Path(os.environ.get('TIMM_TENET_CACHE') or Path.home() / '.cache' / 'timm_tenet')


def _split_indices(labels: np.ndarray, val_fraction: float, test_fraction: float, seed: int):
    """Stratified split: the same ``round(fraction * n_c)`` held-out images of every class for a seed."""
    rng = np.random.default_rng(seed)
    splits = {name: [] for name in _SPLITS}
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val, n_test = int(round(val_fraction * len(idx))), int(round(test_fraction * len(idx)))
        splits['validation'].extend(idx[:n_val].tolist())
        splits['test'].extend(idx[n_val:n_val + n_test].tolist())
        splits['train'].extend(idx[n_val + n_test:].tolist())
    return {name: sorted(indices) for name, indices in splits.items()}


def _settings(size: int, val_fraction: float, test_fraction: float, seed: int) -> dict:
    return dict(version=_VERSION, size=size, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)


def _read_manifest(root: Path) -> Optional[dict]:
    try:
        return json.loads((root / _MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def _is_complete(root: Path, settings: dict) -> bool:
    manifest = _read_manifest(root)
    return manifest is not None and {k: manifest.get(k) for k in settings} == settings


def prepare_digits(
        root: Optional[Union[str, Path]] = None,
        size: int = 32,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        seed: int = 0,
) -> Path:
    """Write the digits image folder once and return its root (``root/{train,validation,test}/<digit>/*.png``).

    The 1797 8x8 grey images (values 0..16) are scaled to 0..255, upscaled bicubically to ``size`` x ``size``
    and stored as RGB PNGs. The split is stratified and depends only on ``seed``. The folder is built in a
    temporary directory beside ``root`` and renamed into place, so an interrupted or concurrent call
    (e.g. every rank of a DDP run) never leaves a half-written dataset; a complete folder is reused and
    one written by other settings or an older version of this function is replaced.

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
    settings = _settings(size, val_fraction, test_fraction, seed)
    if _is_complete(root, settings):
        return root
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise RuntimeError(
            "the digits dataset needs scikit-learn (pip install 'timm_tenet[digits]' or scikit-learn)") from None
    if root.exists() and any(root.iterdir()) and _read_manifest(root) is None:
        raise RuntimeError(f"'{root}' exists and is not a digits folder written by timm_tenet; "
                           f'remove it or pick another --data-dir')
    digits = load_digits()
    images = (digits.images * (255.0 / 16.0)).round().clip(0, 255).astype(np.uint8)
    labels = digits.target
    splits = _split_indices(labels, val_fraction, test_fraction, seed)

    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f'.{root.name}.tmp-', dir=root.parent))
    try:
        for split, indices in splits.items():
            for c in range(10):
                (tmp / split / str(c)).mkdir(parents=True)
            for i in indices:
                img = Image.fromarray(images[i]).resize((size, size), Image.BICUBIC).convert('RGB')
                img.save(tmp / split / str(labels[i]) / f'{i:04d}.png')
        counts = {split: len(indices) for split, indices in splits.items()}
        (tmp / _MANIFEST).write_text(json.dumps(dict(settings, **counts), indent=1))
        if _is_complete(root, settings):  # another process (a DDP rank) finished first
            shutil.rmtree(tmp)
            return root
        if root.exists():  # empty, or our own folder from other settings: os.rename cannot replace a directory
            shutil.rmtree(root)
        os.rename(tmp, root)
        _logger.info(f'Wrote the digits image folder to {root} ({counts}).')
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if _is_complete(root, settings):  # another process finished first
            return root
        raise
    return root
