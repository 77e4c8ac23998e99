"""How far storing the corruptions as the released files did moves them: released-style against float.

CIFAR-10-C holds ``np.uint8`` of the float result (truncation: values drop by half a step on average),
and ImageNet-C stored every image as JPEG quality 85 on top. ``corrupt(..., released=True)`` reproduces
both; this prints, per corruption, the mean and the largest ``|released - float|`` in uint8 steps over
severities 1..5 on crops of scikit-image's bundled photographs (CIFAR constants at 32 px, ImageNet
constants at 224 px). For the gap in top-1 error, run ``validate.py --corrupt all extra`` with and without
``--corrupt-released`` on the same images.

    python benchmarks/released_gap.py
"""
import argparse

import numpy as np
import skimage.data
import torch
from PIL import Image

from timm_tenet.robustness.corruptions import CORRUPTIONS, EXTRA_CORRUPTIONS, corrupt
from timm_tenet.robustness.results import format_table

_PHOTOS = ('astronaut', 'chelsea', 'coffee', 'rocket')


def photos(size: int) -> torch.Tensor:
    """The bundled photographs, centre-cropped square and resized to ``size``, as a float batch."""
    out = []
    for name in _PHOTOS:
        photo = getattr(skimage.data, name)()
        h, w = photo.shape[:2]
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        square = Image.fromarray(photo[top:top + side, left:left + side]).resize((size, size), Image.BICUBIC)
        out.append(torch.from_numpy(np.array(square)).permute(2, 0, 1))
    return torch.stack(out).float() / 255


def gaps(dataset: str, size: int, seed: int):
    x = photos(size)
    rows = []
    for name in CORRUPTIONS + EXTRA_CORRUPTIONS:
        mean, largest = [], 0.0
        for severity in range(1, 6):
            exact = corrupt(x, name, severity, torch.Generator().manual_seed(seed), dataset)
            stored = corrupt(x, name, severity, torch.Generator().manual_seed(seed), dataset, released=True)
            gap = (stored - exact).abs() * 255
            mean.append(gap.mean().item())
            largest = max(largest, gap.max().item())
        rows.append(dict(corruption=name, **{f's{s}': m for s, m in zip(range(1, 6), mean)}, max=largest))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()
    for dataset, size in (('cifar', 32), ('imagenet', 224)):
        print(format_table(gaps(dataset, size, args.seed), floatfmt='.2f', title=(
            f'\n{dataset} constants at {size} px, {len(_PHOTOS)} photos: mean |released - float| per severity and '
            f'the largest, in uint8 steps')))


if __name__ == '__main__':
    main()
