"""Write a corrupted copy of an image folder in the CIFAR-10-C (``.npy``) or ImageNet-C (folder) layout.

The released -C sets exist only for CIFAR and ImageNet. This builds a fixed, reproducible -C set for
any ``<class>/<image>`` folder with the on-the-fly corruptions of :mod:`timm_tenet.robustness.corruptions`, so
that every model of a study is scored on the very same corrupted pixels and the result is read back
by :mod:`timm_tenet.robustness.c_datasets` exactly like the released sets. Each (corruption, severity) draws its
noise from its own seeded generator, so a subset of corruptions reproduces the same pixels as a full
run. Outputs are written under temporary names and renamed when complete: a failed or interrupted run
removes what it had started and leaves no half-written array or severity folder behind.

By default the files are stored as the released ones were: CIFAR-10-C arrays hold ``np.uint8`` of the float
result (truncated), ImageNet-C images are that truncation saved as JPEG quality 85 by Pillow. Reading them
back gives exactly ``corrupt(..., released=True)``. ``--no-released`` rounds instead and writes lossless PNG.

Usage:
    python -m timm_tenet.robustness.make_c --data-dir DIR --out OUT --format cifar-c|imagenet-c \\
        [--corruptions NAME ...] [--severities 1 2 ...] [--dataset cifar|imagenet] [--seed 0] [--no-released]
"""
import argparse
import os
import shutil
import sys
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import transforms
from torchvision.datasets import ImageFolder
from tqdm import tqdm

from ..utils.errors import first_line
from ..utils.images import open_rgb
from .c_datasets import SEVERITIES
from .corruption_eval import corruption_generator
from .corruptions import CORRUPTIONS, EXTRA_CORRUPTIONS, RELEASED_JPEG_QUALITY, corrupt

__all__ = ['make_c', 'main']

FORMATS = ('cifar-c', 'imagenet-c')


def _image_folder(data_dir: str, img_size: Optional[int]) -> ImageFolder:
    """The class-folder dataset as float tensors, all resized to ``img_size`` or to the first image's size."""
    if not os.path.isdir(data_dir):
        raise ValueError(f"data folder not found: '{data_dir}' (--data-dir)")
    try:
        dataset = ImageFolder(data_dir, loader=open_rgb)
    except FileNotFoundError as e:  # no class folder, or no image in any of them
        raise ValueError(f"no images in '{data_dir}': expected <class>/<image> files ({first_line(e)})") from None
    size = (img_size, img_size) if img_size else open_rgb(dataset.samples[0][0]).size[::-1]
    dataset.transform = transforms.Compose([transforms.Resize(size), transforms.ToTensor()])
    return dataset


def _to_uint8(x: torch.Tensor, truncate: bool) -> np.ndarray:
    """B x C x H x W floats in [0, 1] -> B x H x W x C uint8 on the host, truncated (``np.uint8``) or rounded."""
    x = x * 255
    x = x.floor_() if truncate else x.round_()
    return x.clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


class _CifarCWriter:
    """One memory-mapped ``<corruption>.npy`` (5N, H, W, 3) per corruption plus ``labels.npy`` (5N,)."""

    def __init__(self, out: str, corruptions: Sequence[str], targets: Sequence[int], height: int, width: int):
        n = len(targets)
        self.out, self.n = out, n
        self.arrays = {
            name: np.lib.format.open_memmap(
                self._tmp(name + '.npy'), mode='w+', dtype=np.uint8, shape=(5 * n, height, width, 3))
            for name in corruptions}
        self.labels = np.tile(np.asarray(targets, dtype=np.uint8 if max(targets) < 256 else np.int64), 5)

    def _tmp(self, filename: str) -> str:
        return os.path.join(self.out, f'.{filename}.tmp')

    def write(self, name: str, severity: int, start: int, images: np.ndarray, paths: Sequence[str]) -> None:
        offset = (severity - 1) * self.n + start
        self.arrays[name][offset:offset + len(images)] = images

    def commit(self) -> None:
        with open(self._tmp('labels.npy'), 'wb') as f:
            np.save(f, self.labels)
        for name, array in self.arrays.items():
            array.flush()
            os.replace(self._tmp(name + '.npy'), os.path.join(self.out, name + '.npy'))
        self.arrays = {}
        os.replace(self._tmp('labels.npy'), os.path.join(self.out, 'labels.npy'))

    def discard(self) -> None:
        names = list(self.arrays) + ['labels']
        self.arrays = {}  # closes the memory maps
        for name in names:
            if os.path.exists(self._tmp(name + '.npy')):
                os.remove(self._tmp(name + '.npy'))


class _ImageNetCWriter:
    """Image files under ``<corruption>/<severity>/<class>/``: JPEG quality 85 as released (``released``), else
    lossless PNG."""

    def __init__(self, out: str, data_dir: str, released: bool):
        self.out, self.data_dir, self.written = out, data_dir, set()
        self.extension, self.options = ('.JPEG', dict(quality=RELEASED_JPEG_QUALITY, optimize=True)) if released \
            else ('.png', {})

    def _tmp(self, name: str, severity: int) -> str:
        return os.path.join(self.out, name, f'.{severity}.tmp')

    def write(self, name: str, severity: int, start: int, images: np.ndarray, paths: Sequence[str]) -> None:
        folder = self._tmp(name, severity)
        if (name, severity) not in self.written:
            shutil.rmtree(folder, ignore_errors=True)  # left over from an interrupted run
            self.written.add((name, severity))
        for image, path in zip(images, paths):
            target = os.path.join(folder, os.path.splitext(os.path.relpath(path, self.data_dir))[0] + self.extension)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            Image.fromarray(image).save(target, **self.options)

    def commit(self) -> None:
        for name, severity in sorted(self.written):
            final = os.path.join(self.out, name, str(severity))
            shutil.rmtree(final, ignore_errors=True)
            os.replace(self._tmp(name, severity), final)

    def discard(self) -> None:
        for name, severity in self.written:
            shutil.rmtree(self._tmp(name, severity), ignore_errors=True)


def make_c(
        data_dir: str,
        out: str,
        layout: str = 'cifar-c',
        corruptions: Sequence[str] = CORRUPTIONS + EXTRA_CORRUPTIONS,
        severities: Sequence[int] = SEVERITIES,
        dataset: Optional[str] = None,
        seed: int = 0,
        img_size: Optional[int] = None,
        batch_size: int = 64,
        device: str = 'cpu',
        progress: bool = True,
        released: bool = True,
) -> int:
    """Corrupt every image of ``data_dir`` (``<class>/<image>``) and write the -C layout to ``out``.

    Args:
        data_dir: Image folder with one sub-folder per class.
        out: Output folder (created).
        layout: ``'cifar-c'`` (``.npy`` arrays, all 5 severities) or ``'imagenet-c'`` (image folders).
        corruptions: Names from :data:`timm_tenet.robustness.corruptions.CORRUPTIONS` or ``EXTRA_CORRUPTIONS``
            (default: all 19, as the released CIFAR-10-C holds).
        severities: Severities to write (``'cifar-c'`` stacks all five).
        dataset: Severity constants, ``'cifar'`` or ``'imagenet'``; by default those matching ``layout``.
        seed: Base seed of the noise.
        img_size: Square size every image is resized to; the first image's size when not given.
        batch_size: Images corrupted at once.
        device: Where the corruptions run.
        progress: Show a tqdm bar.
        released: Store as the released files: truncated to uint8, ImageNet-C images as JPEG quality 85
            (reading them back gives ``corrupt(..., released=True)``); else rounded, PNG.

    Returns:
        The number of images corrupted.

    Raises:
        ValueError: one line for bad options, a missing or empty folder, or an image that does not decode.
    """
    if layout not in FORMATS:
        raise ValueError(f"unknown -C layout '{layout}'; choose one of {', '.join(FORMATS)}.")
    unknown = [name for name in corruptions if name not in CORRUPTIONS + EXTRA_CORRUPTIONS]
    if unknown:
        raise ValueError(f"unknown corruption(s) {', '.join(unknown)}; "
                         f"choose from {', '.join(CORRUPTIONS + EXTRA_CORRUPTIONS)}.")
    if any(s not in SEVERITIES for s in severities):
        raise ValueError(f'severities must be integers from 1 to 5, got {list(severities)}.')
    if layout == 'cifar-c' and sorted(severities) != list(SEVERITIES):
        raise ValueError('the CIFAR-C layout stacks all 5 severities in one array; drop --severities '
                         'or use --format imagenet-c.')
    dataset = dataset or ('cifar' if layout == 'cifar-c' else 'imagenet')
    images = _image_folder(data_dir, img_size)
    os.makedirs(out, exist_ok=True)
    if layout == 'cifar-c':
        height, width = images[0][0].shape[-2:]
        writer = _CifarCWriter(out, corruptions, images.targets, height, width)
    else:
        writer = _ImageNetCWriter(out, data_dir, released)
    device = torch.device(device)
    generators = {(c, s): corruption_generator(seed, c, s, device) for c in corruptions for s in severities}
    loader = DataLoader(images, batch_size=batch_size, shuffle=False)
    start, committed = 0, False
    try:
        for x, _ in tqdm(loader, desc=f'make {layout}', disable=None if progress else True):
            x = x.to(device)
            paths = [path for path, _ in images.samples[start:start + len(x)]]
            for (name, severity), generator in generators.items():
                corrupted = corrupt(x, name, severity, generator=generator, dataset=dataset)
                writer.write(name, severity, start, _to_uint8(corrupted, truncate=released), paths)
            start += len(x)
        writer.commit()
        committed = True
    finally:
        if not committed:  # a failure or an interrupt: remove the temporary arrays / folders begun
            writer.discard()
    return start


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description='Write a corrupted copy of an image folder in a -C layout.')
    parser.add_argument('--data-dir', required=True, help='image folder with one sub-folder per class')
    parser.add_argument('--out', required=True, help='output folder')
    parser.add_argument('--format', dest='layout', required=True, choices=FORMATS,
                        help='CIFAR-10-C .npy arrays or ImageNet-C folders')
    parser.add_argument('--corruptions', nargs='+', default=list(CORRUPTIONS + EXTRA_CORRUPTIONS), metavar='NAME',
                        choices=CORRUPTIONS + EXTRA_CORRUPTIONS,
                        help='corruptions to write (default: all 19, the benchmark\'s 15 and the 4 extra, as the '
                             'released CIFAR-10-C holds)')
    parser.add_argument('--severities', nargs='+', type=int, default=list(SEVERITIES), choices=SEVERITIES,
                        help='severities to write (default: 1 2 3 4 5)')
    parser.add_argument('--dataset', choices=('cifar', 'imagenet'), default=None,
                        help='severity constants (default: cifar for cifar-c, imagenet for imagenet-c)')
    parser.add_argument('--seed', type=int, default=0, help='base seed of the noise (default: 0)')
    parser.add_argument('--img-size', type=int, default=None, help='resize every image to this square size '
                                                                   '(default: the first image\'s size)')
    parser.add_argument('--batch-size', type=int, default=64, help='images corrupted at once (default: 64)')
    parser.add_argument('--device', default='cpu', help='device the corruptions run on (default: cpu)')
    parser.add_argument('--released', action=argparse.BooleanOptionalAction, default=True,
                        help='store as the released files: uint8 truncation, ImageNet-C images as JPEG quality '
                             '85 (default); --no-released rounds and writes PNG')
    args = parser.parse_args(argv)
    try:
        count = make_c(args.data_dir, args.out, layout=args.layout, corruptions=args.corruptions,
                       severities=args.severities, dataset=args.dataset, seed=args.seed, img_size=args.img_size,
                       batch_size=args.batch_size, device=args.device, released=args.released)
    except ValueError as e:
        print(f'error: {first_line(e)}', file=sys.stderr)
        return 1
    what = '<corruption>.npy arrays and labels.npy' if args.layout == 'cifar-c' else \
        f"<corruption>/<severity>/<class>/ {'JPEG' if args.released else 'PNG'} folders"
    print(f'wrote {args.layout} to {args.out}: {count} images x {len(args.corruptions)} corruption(s) x '
          f'{len(args.severities)} severities ({what})')
    return 0


if __name__ == '__main__':
    sys.exit(main())
