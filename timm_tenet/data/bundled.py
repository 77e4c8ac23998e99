"""Small labelled datasets that ship inside Python packages, written once as image folders under a cache
directory with a fixed, seeded, stratified train/validation/test split.

The validation split selects checkpoints and settings; the test split is touched only by final
evaluations (the robustness study), so no reported number is tuned on the data it is measured on.
Each dataset module (``digits``, ``mnist5k``) loads its arrays and registers a ``prepare`` function
here under its ``--dataset`` name; :func:`write_image_folder` does the splitting and the atomic writing.
"""
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Dict, List, Optional, Union

import numpy as np
from PIL import Image

__all__ = ['BUNDLED_DATASETS', 'default_cache_dir', 'prepare_bundled', 'register_bundled', 'write_image_folder']

_logger = logging.getLogger(__name__)

SPLITS = ('train', 'validation', 'test')
_MANIFEST = 'manifest.json'

# --dataset name -> prepare(root or None) -> image folder root
BUNDLED_DATASETS: Dict[str, Callable[[Optional[Union[str, Path]]], Path]] = {}


def register_bundled(name: str) -> Callable:
    """Decorator: make ``prepare(root=None)`` the writer of ``--dataset name``."""
    def register(prepare: Callable) -> Callable:
        BUNDLED_DATASETS[name] = prepare
        return prepare
    return register


def prepare_bundled(name: str, root: Optional[Union[str, Path]] = None) -> Optional[Path]:
    """The image folder of bundled dataset ``name`` (written on first use), or None if ``name`` is not one."""
    prepare = BUNDLED_DATASETS.get((name or '').lower())
    return None if prepare is None else prepare(root or None)


def default_cache_dir() -> Path:
    """``$TIMM_TENET_CACHE`` if set, else ``~/.cache/timm_tenet``."""
    return Path(os.environ.get('TIMM_TENET_CACHE') or Path.home() / '.cache' / 'timm_tenet')


def _split_indices(labels: np.ndarray, val_fraction: float, test_fraction: float, seed: int) -> Dict[str, List[int]]:
    """Stratified split: the same ``round(fraction * n_c)`` held-out images of every class for a seed."""
    rng = np.random.default_rng(seed)
    splits = {name: [] for name in SPLITS}
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val, n_test = int(round(val_fraction * len(idx))), int(round(test_fraction * len(idx)))
        splits['validation'].extend(idx[:n_val].tolist())
        splits['test'].extend(idx[n_val:n_val + n_test].tolist())
        splits['train'].extend(idx[n_val + n_test:].tolist())
    return {name: sorted(indices) for name, indices in splits.items()}


def _read_manifest(root: Path) -> Optional[dict]:
    try:
        return json.loads((root / _MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def is_complete(root: Path, settings: dict) -> bool:
    """Whether ``root`` is a finished folder written with ``settings``."""
    manifest = _read_manifest(root)
    return manifest is not None and {k: manifest.get(k) for k in settings} == settings


def write_image_folder(
        root: Path,
        load: Callable[[], tuple],
        settings: dict,
        to_image: Callable[[np.ndarray], Image.Image],
        val_fraction: float,
        test_fraction: float,
        seed: int,
) -> Path:
    """Write ``root/{train,validation,test}/<class>/<index>.png`` once and return ``root``.

    ``load()`` returns ``(images, labels)`` (called only when the folder must be written); ``to_image``
    turns one array into the stored PIL image. The split is stratified and depends only on ``seed``.
    The folder is built in a temporary directory beside ``root`` and renamed into place, so an
    interrupted or concurrent call (e.g. every rank of a DDP run) never leaves a half-written dataset;
    a complete folder is reused and one written by other ``settings`` is replaced.
    """
    settings = dict(settings, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
    if is_complete(root, settings):
        return root
    if root.exists() and any(root.iterdir()) and _read_manifest(root) is None:
        raise RuntimeError(f"'{root}' exists and is not a dataset folder written by timm_tenet; "
                           f'remove it or pick another --data-dir')
    images, labels = load()
    splits = _split_indices(labels, val_fraction, test_fraction, seed)

    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f'.{root.name}.tmp-', dir=root.parent))
    try:
        for split, indices in splits.items():
            for c in np.unique(labels):
                (tmp / split / str(c)).mkdir(parents=True)
            for i in indices:
                to_image(images[i]).save(tmp / split / str(labels[i]) / f'{i:05d}.png')
        counts = {split: len(indices) for split, indices in splits.items()}
        (tmp / _MANIFEST).write_text(json.dumps(dict(settings, **counts), indent=1))
        if is_complete(root, settings):  # another process (a DDP rank) finished first
            shutil.rmtree(tmp)
            return root
        if root.exists():  # empty, or our own folder from other settings: os.rename cannot replace a directory
            shutil.rmtree(root)
        os.rename(tmp, root)
        _logger.info(f'Wrote the image folder {root} ({counts}).')
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if is_complete(root, settings):  # another process finished first
            return root
        raise
    return root
