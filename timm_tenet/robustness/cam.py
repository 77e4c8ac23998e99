"""Grad-CAM comparisons: where two (or more) models look on the same images (the paper's Figure 2).

TENET is meant to widen a network's evidence beyond its most discriminative region; a grid of
input | model A heatmap | model B heatmap for the same images and the same target class shows that
at a glance. Heatmaps come from the ``grad-cam`` package (an optional extra) on each model's last
stage (or last block, with a token reshape, for ViT-style models).

    python -m timm_tenet.robustness.cam --models output/train/baseline output/train/tenet --images DIR --out cam.png
"""
import argparse
import math
import os
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from timm.data import resolve_data_config

from ..models import model_from_checkpoint
from ..utils.checkpoint import CheckpointError
from ..utils.errors import first_line
from ..utils.images import open_rgb
from ..split import stage_modules
from ..models.tenet_models import create_tenet_model

__all__ = ['cam_target', 'grad_cams', 'load_images', 'render_cam_grid', 'main']

_IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.webp', '.tif', '.tiff')


def _grad_cam_class():
    try:
        from pytorch_grad_cam import GradCAM
    except ImportError:
        raise ImportError(
            "Grad-CAM comparisons need the grad-cam package: pip install 'timm_tenet[cam]' (or pip install grad-cam)"
        ) from None
    return GradCAM


def cam_target(model: nn.Module) -> Tuple[nn.Module, Optional[Callable]]:
    """The layer to explain and, for token outputs, the reshape to B x C x H x W.

    CNN families with known stages use their last stage; ViT-style models their last block (prefix
    tokens dropped, patch tokens laid out on the patch grid); anything else the last ``feature_info`` module.
    """
    stages = stage_modules(model)
    if stages:
        return stages[-1], None
    if hasattr(model, 'blocks') and hasattr(model, 'patch_embed'):
        prefix = getattr(model, 'num_prefix_tokens', 0)
        grid = model.patch_embed.grid_size

        def tokens_to_maps(tokens: torch.Tensor) -> torch.Tensor:
            patches = tokens[:, prefix:]
            height, width = grid if patches.shape[1] == grid[0] * grid[1] else (int(math.isqrt(patches.shape[1])),) * 2
            return patches.reshape(patches.shape[0], height, width, -1).permute(0, 3, 1, 2)
        return model.blocks[-1], tokens_to_maps
    return model.get_submodule(model.feature_info[-1]['module']), None


def grad_cams(model: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> np.ndarray:
    """Grad-CAM maps (B x H x W, each scaled to [0, 1]) of ``model`` for normalised ``images`` and classes."""
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    layer, reshape = cam_target(model)
    with _grad_cam_class()(model=model.eval(), target_layers=[layer], reshape_transform=reshape) as cam:
        return cam(input_tensor=images, targets=[ClassifierOutputTarget(int(t)) for t in targets])


def load_images(paths: Sequence[str], size: Tuple[int, int], limit: int = 8) -> Tuple[torch.Tensor, List[Optional[int]], List[str]]:
    """Images as B x 3 x H x W in [0, 1] resized to ``size``, with labels where a class folder gives them.

    A folder with class subfolders (an ImageFolder, classes in sorted order as timm's loaders use) gives
    ground-truth labels; loose files or a flat folder give none.
    """
    files: List[Tuple[str, Optional[int]]] = []
    for path in paths:
        if os.path.isdir(path):
            classes = sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d)))
            if classes:
                per_class = [sorted(os.listdir(os.path.join(path, c))) for c in classes]
                # take images round-robin over classes so a small grid shows several classes
                for row in range(max(map(len, per_class))):
                    files += [(os.path.join(path, c, names[row]), i)
                              for i, (c, names) in enumerate(zip(classes, per_class)) if row < len(names)]
            else:
                files += [(os.path.join(path, name), None) for name in sorted(os.listdir(path))]
        elif os.path.isfile(path):
            files.append((path, None))
        else:
            raise FileNotFoundError(f"no image or folder at '{path}'")
    files = [(f, label) for f, label in files if f.lower().endswith(_IMAGE_EXTENSIONS)][:limit]
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(_IMAGE_EXTENSIONS)}) found in {list(paths)}")
    pixels = [torch.from_numpy(np.asarray(open_rgb(f).resize(size[::-1], Image.BILINEAR), dtype=np.float32))
              for f, _ in files]
    images = torch.stack(pixels).permute(0, 3, 1, 2) / 255
    return images, [label for _, label in files], [os.path.basename(f) for f, _ in files]


def _normalise_for(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    cfg = resolve_data_config(model=model)
    images = F.interpolate(images, size=cfg['input_size'][1:], mode='bilinear', align_corners=False)
    mean = torch.tensor(cfg['mean']).view(1, -1, 1, 1)
    std = torch.tensor(cfg['std']).view(1, -1, 1, 1)
    return (images - mean) / std


def render_cam_grid(
        images: torch.Tensor,
        cams: Sequence[np.ndarray],
        titles: Sequence[str],
        row_labels: Sequence[str],
        cell_notes: Sequence[Sequence[str]],
        out: str,
) -> None:
    """Save a grid: one row per image, columns input | one heatmap per model, titled and annotated."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    rows, cols = images.shape[0], 1 + len(cams)
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.2 * rows + 0.6), squeeze=False,
                             layout='constrained')
    for r in range(rows):
        rgb = images[r].permute(1, 2, 0).numpy()
        axes[r][0].imshow(rgb)
        axes[r][0].set_ylabel(row_labels[r], fontsize=9)
        for c, cam in enumerate(cams, start=1):
            heat = F.interpolate(torch.from_numpy(cam[r])[None, None], size=rgb.shape[:2], mode='bilinear')[0, 0]
            axes[r][c].imshow(rgb)
            axes[r][c].imshow(heat.numpy(), cmap='jet', alpha=0.5, vmin=0, vmax=1)
            axes[r][c].set_xlabel(cell_notes[c - 1][r], fontsize=8)
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    for c, title in enumerate(['input', *titles]):
        axes[0][c].set_title(title, fontsize=10)
    # constrained layout reserves room for the suptitle (tight_layout lets it run into the column titles)
    fig.suptitle('Grad-CAM of the target class\n(ground truth where known, else the first model\'s prediction)',
                 fontsize=9)
    fig.savefig(out, dpi=100)
    plt.close(fig)


def _load_model(spec: str, use_ema: bool) -> nn.Module:
    """A checkpoint file or training output folder, or a model name (``hf-hub:``/``local-dir:`` load weights)."""
    if os.path.exists(spec):
        return model_from_checkpoint(spec, use_ema=use_ema)
    try:
        return create_tenet_model(spec, pretrained=spec.startswith(('hf-hub:', 'local-dir:')))
    except (RuntimeError, ValueError, OSError) as e:
        raise ValueError(f"'{spec}' is neither a checkpoint, a train.py output folder nor a model that loads: "
                         f'{first_line(e)}') from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description='Grad-CAM grid: input | model A | model B ... on the same images.')
    parser.add_argument('--models', nargs='+', required=True,
                        help='checkpoint files, train.py output folders, or model names (hf-hub:org/name, local-dir:...)')
    parser.add_argument('--titles', nargs='+', default=None, help='column titles (default: the --models values)')
    parser.add_argument('--images', nargs='+', required=True,
                        help='image files, a flat folder, or a class-folder dataset (gives ground-truth targets)')
    parser.add_argument('--num-images', type=int, default=8, help='rows in the grid (default: 8)')
    parser.add_argument('--use-ema', action='store_true', help='use the EMA weights of checkpoints')
    parser.add_argument('--out', default='cam.png', help='output PNG (default: cam.png)')
    return parser


def main(argv: Optional[Sequence[str]] = None) -> str:
    """Render the grid; returns the PNG written. A bad input (no images, an image that does not decode, a
    corrupt checkpoint, an unknown model) exits with status 1 and one ``error:`` line on stderr."""
    args = _parser().parse_args(argv)
    try:
        return _render(args)
    except (CheckpointError, FileNotFoundError, ValueError, ImportError) as e:
        raise SystemExit(f'error: {first_line(e)}') from None


def _render(args: argparse.Namespace) -> str:
    titles = args.titles or [os.path.basename(os.path.normpath(m)) for m in args.models]
    if len(titles) != len(args.models):
        raise ValueError(f'--titles gives {len(titles)} names for {len(args.models)} models; give one per model')
    _grad_cam_class()  # the optional package, before any model is loaded
    models = [_load_model(spec, args.use_ema).eval() for spec in args.models]
    size = tuple(resolve_data_config(model=models[0])['input_size'][1:])
    images, labels, names = load_images(args.images, size, args.num_images)

    with torch.no_grad():
        probs = [model(_normalise_for(model, images)).softmax(-1) for model in models]
    targets = torch.tensor([p if label is None else label for label, p in zip(labels, probs[0].argmax(-1).tolist())])
    cams = [grad_cams(model, _normalise_for(model, images), targets) for model in models]
    notes = [[f'pred {int(p.argmax())} ({float(p.max()):.2f})' for p in prob] for prob in probs]
    row_labels = [f'{name}\ntarget {int(t)}' + ('' if label is not None else ' (pred)')
                  for name, t, label in zip(names, targets, labels)]
    render_cam_grid(images, cams, titles, row_labels, notes, args.out)
    print(f'wrote {args.out}: {len(names)} images x {len(models)} models')
    return args.out


if __name__ == '__main__':
    main()
