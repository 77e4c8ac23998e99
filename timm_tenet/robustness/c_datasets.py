"""Readers for the released CIFAR-10/100-C and ImageNet-C layouts, and discovery of what a root holds.

CIFAR-C stores one ``<corruption>.npy`` array per corruption, uint8 (5N, H, W, 3), severities 1..5
stacked in blocks of N, next to ``labels.npy`` (5N,). ImageNet-C is a folder tree
``<corruption>/<severity>/<class>/<image>`` with images already at evaluation size. Both readers
return ``(image, target)`` like torchvision datasets and expose ``transform``, so timm's
``create_loader`` can set its eval transform on them. Layout mistakes fail at construction with the
offending path, not in a loader worker.
"""
import os
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
from PIL import Image
from torch.utils.data import Dataset
from torchvision.datasets import ImageFolder

__all__ = ['CifarCDataset', 'ImageNetCDataset', 'find_corruptions', 'SEVERITIES']

SEVERITIES = (1, 2, 3, 4, 5)
_LABELS = 'labels.npy'


def _check_severity(severity: int) -> None:
    if severity not in SEVERITIES:
        raise ValueError(f'corruption severity must be an integer from 1 to 5, got {severity!r}.')


def _cifar_corruptions(root: str) -> List[str]:
    return sorted(f[:-4] for f in os.listdir(root) if f.endswith('.npy') and f != _LABELS)


def _imagenet_corruptions(root: str) -> Dict[str, Tuple[int, ...]]:
    found = {}
    for name in sorted(os.listdir(root)):
        path = os.path.join(root, name)
        if os.path.isdir(path):
            severities = tuple(sorted(int(s) for s in os.listdir(path) if s.isdigit() and int(s) in SEVERITIES))
            if severities:
                found[name] = severities
    return found


def _describe(root: str) -> str:
    """What a root holds, for error messages."""
    if not os.path.isdir(root):
        return f'{root} does not exist'
    found = find_corruptions(root)
    return 'present: ' + ('; '.join(f'{name} {",".join(map(str, sev))}' for name, sev in found.items()) or 'none')


def find_corruptions(root: str) -> Dict[str, Tuple[int, ...]]:
    """Corruptions present under a CIFAR-C or ImageNet-C ``root`` and the severities each one has.

    A root with ``labels.npy`` is read as CIFAR-C (every array holds the 5 severities), otherwise as
    ImageNet-C folders.
    """
    if not os.path.isdir(root):
        raise FileNotFoundError(f'corruption dataset root {root} does not exist; point it at the folder holding '
                                f'labels.npy (CIFAR-C) or the <corruption>/<severity> folders (ImageNet-C).')
    if os.path.isfile(os.path.join(root, _LABELS)):
        return {name: SEVERITIES for name in _cifar_corruptions(root)}
    return _imagenet_corruptions(root)


class CifarCDataset(Dataset):
    """One corruption at one severity of a CIFAR-10-C / CIFAR-100-C style folder.

    Arrays are memory-mapped, so building all 75 datasets of a root reads no pixels.

    Args:
        root: Folder holding ``<corruption>.npy`` and ``labels.npy``.
        corruption: Array name without ``.npy``, e.g. ``'gaussian_noise'``.
        severity: 1..5, selecting the severity's block of N = len / 5 images.
        transform: Applied to the PIL image.

    Examples:

        ```python
        ds = CifarCDataset('data/CIFAR-10-C', 'fog', severity=5)
        image, target = ds[0]
        ```
    """

    def __init__(self, root: str, corruption: str, severity: int, transform: Optional[Callable] = None):
        _check_severity(severity)
        images_path, labels_path = os.path.join(root, corruption + '.npy'), os.path.join(root, _LABELS)
        for path in (images_path, labels_path):
            if not os.path.isfile(path):
                raise FileNotFoundError(f'{path} not found; a CIFAR-C root holds <corruption>.npy and labels.npy '
                                        f'({_describe(root)}).')
        images = np.load(images_path, mmap_mode='r')
        labels = np.load(labels_path, mmap_mode='r')
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f'{images_path} holds {images.dtype} {images.shape}; expected uint8 (5N, H, W, 3) images.')
        if len(images) % 5:
            raise ValueError(f'{images_path} has {len(images)} images, not 5 severity blocks of N; '
                             f'regenerate it with python -m timm_tenet.robustness.make_c.')
        if len(labels) != len(images):
            raise ValueError(f'{labels_path} has {len(labels)} labels but {images_path} has {len(images)} images; '
                             f'they must match one to one (labels repeated for every severity).')
        n = len(images) // 5
        block = slice((severity - 1) * n, severity * n)
        self.images, self.targets = images[block], np.asarray(labels[block], dtype=np.int64)
        self.corruption, self.severity, self.transform = corruption, severity, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        image = Image.fromarray(np.asarray(self.images[index]))
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.targets[index])


class ImageNetCDataset(ImageFolder):
    """One corruption at one severity of an ImageNet-C style tree ``<root>/<corruption>/<severity>/<class>/``.

    Classes are the sorted class folder names, as ImageNet's own validation folder gives them.

    Args:
        root: Folder holding the corruption folders.
        corruption: Corruption folder name, e.g. ``'gaussian_noise'``.
        severity: 1..5.
        transform: Applied to the PIL image (ImageNet-C images are final size: normalise only).
    """

    def __init__(self, root: str, corruption: str, severity: int, transform: Optional[Callable] = None):
        _check_severity(severity)
        path = os.path.join(root, corruption, str(severity))
        if not os.path.isdir(path):
            raise FileNotFoundError(f'{path} not found; an ImageNet-C root holds <corruption>/<severity>/<class>/ '
                                    f'folders ({_describe(root)}).')
        super().__init__(path, transform=transform)
        self.corruption, self.severity = corruption, severity
