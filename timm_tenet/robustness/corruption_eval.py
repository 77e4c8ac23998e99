"""Corruption evaluation: on-the-fly variants for :func:`~timm_tenet.robustness.variants.evaluate_variants`
(each (corruption, severity) pair drawing its noise from its own seeded generator, so results do not depend on
which other pairs are selected, and ``make_c`` writes the same images), and released CIFAR-C / ImageNet-C
folders, checked before the first pass."""
import os
import zlib
from collections import OrderedDict
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from ..utils.errors import first_line
from .c_datasets import SEVERITIES, CifarCDataset, ImageNetCDataset, find_corruptions
from .corruptions import ALEXNET_ERRORS, EXTRA_CORRUPTIONS, corrupt
from .loading import num_outputs
from .options import EvaluationError
from ..utils.progress import progress_bar
from .variants import evaluate_variants

__all__ = ['corruption_generator', 'corruption_variants', 'evaluate_corruption_dir', 'plan_corruption_dir']

# display order: ImageNet-C's noise, blur, weather, digital groups, then the extra corruptions
_ORDER = {name: i for i, name in enumerate(list(ALEXNET_ERRORS) + list(EXTRA_CORRUPTIONS))}


def _order(names: Iterable[str]) -> List[str]:
    return sorted(names, key=lambda n: (_ORDER.get(n, len(_ORDER)), n))


def corruption_generator(seed: int, name: str, severity: int, device: torch.device) -> torch.Generator:
    """The noise source of one (corruption, severity) pair: seeded from ``seed``, the name and the severity
    with crc32 (``hash()`` of a str changes between processes)."""
    return torch.Generator(device=device).manual_seed(zlib.crc32(f'{seed}/{name}/{severity}'.encode()))


def corruption_variants(
        corruptions: Sequence[str],
        severities: Sequence[int] = SEVERITIES,
        dataset: str = 'cifar',
        seed: int = 0,
        device: torch.device = torch.device('cpu'),
        released: bool = False,
) -> Dict[Tuple[str, int], Callable[[torch.Tensor], torch.Tensor]]:
    """``{(corruption, severity): fn(x)}`` for :func:`evaluate_variants`: on-the-fly corruption of [0, 1]
    batches with the CIFAR-10-C or ImageNet-C constants, each pair with its own seeded generator on ``device``;
    ``released`` stores each batch as the released files were (``corrupt(..., released=True)``).
    """
    variants = {}
    for name in corruptions:
        for severity in severities:
            generator = corruption_generator(seed, name, severity, torch.device(device))

            def fn(x, name=name, severity=severity, generator=generator):
                return corrupt(x, name, severity, generator=generator, dataset=dataset, released=released)

            variants[(name, severity)] = fn
    return variants


# ---------------------------------------------------------------------------------------------------------------
# Released -C sets

def plan_corruption_dir(
        root: str,
        fmt: Optional[str] = None,
        corruptions: Optional[Sequence[str]] = None,
        severities: Sequence[int] = SEVERITIES,
) -> Tuple[str, List[Tuple[str, int]]]:
    """Check a CIFAR-C / ImageNet-C root before evaluating it and list its (corruption, severity) pairs.

    Args:
        root: The -C folder.
        fmt: ``'cifar-c'`` or ``'imagenet-c'``; detected from ``labels.npy`` when None.
        corruptions: Subset to evaluate (default: every corruption found).
        severities: Severities to evaluate; each must be present for every selected corruption.

    Returns:
        The format and the pairs, corruptions in ImageNet-C's order.

    Raises:
        EvaluationError: one line for a missing root, a format mismatch, unknown names, missing severity
            folders, or arrays whose image and label counts differ.
    """
    try:
        found = find_corruptions(root)
    except FileNotFoundError as e:
        raise EvaluationError(first_line(e)) from None
    detected = 'cifar-c' if os.path.isfile(os.path.join(root, 'labels.npy')) else 'imagenet-c'
    if fmt is not None and fmt != detected:
        why = 'holds labels.npy (a CIFAR-C set)' if detected == 'cifar-c' else 'has no labels.npy'
        raise EvaluationError(f"--corruption-format {fmt} does not match '{root}': it {why}")
    if not found:
        expected = '<corruption>.npy files' if detected == 'cifar-c' else '<corruption>/<severity 1..5>/ folders'
        raise EvaluationError(f"no corruptions found in '{root}' (expected {expected})")
    present = ', '.join(_order(found))
    names = list(dict.fromkeys(corruptions)) if corruptions else _order(found)
    for name in names:
        if name not in found:
            raise EvaluationError(f"corruption '{name}' not found in '{root}'; present: {present}")
    for name in names:
        if detected == 'imagenet-c':
            missing = [s for s in severities if s not in found[name]]
            if missing:
                raise EvaluationError(
                    f"'{os.path.join(root, name)}' is missing severity folder(s) {','.join(map(str, missing))} "
                    f"(present: {','.join(map(str, found[name]))}); pass --severities to evaluate a subset")
        else:
            try:  # memory-mapped: checks shape, dtype and the image / label counts without reading pixels
                CifarCDataset(root, name, 1)
            except (ValueError, FileNotFoundError) as e:
                raise EvaluationError(first_line(e)) from None
    return detected, [(name, severity) for name in names for severity in severities]


def _open_c_dataset(root: str, fmt: str, name: str, severity: int):
    try:
        if fmt == 'cifar-c':
            return CifarCDataset(root, name, severity)
        return ImageNetCDataset(root, name, severity)
    except (ValueError, FileNotFoundError, OSError) as e:
        raise EvaluationError(first_line(e)) from None


def evaluate_corruption_dir(
        model: nn.Module,
        root: str,
        fmt: str,
        plan: Sequence[Tuple[str, int]],
        make_loader: Callable[[torch.utils.data.Dataset], Iterable],
        *,
        num_classes: Optional[int] = None,
        progress: Optional[bool] = None,
        **kwargs: Any,
) -> List[Dict[str, Any]]:
    """Evaluate every (corruption, severity) of a -C set (see :func:`plan_corruption_dir`).

    Args:
        model: Classifier in eval mode taking [0, 1] images.
        root: The -C folder.
        fmt: ``'cifar-c'`` or ``'imagenet-c'``.
        plan: The (corruption, severity) pairs.
        make_loader: Builds a loader of [0, 1] images from a dataset (it sets the dataset's transform);
            -C images are final-size, so it should not crop (``crop_pct=1.0``).
        num_classes: Outputs of the model, to refuse labels it cannot predict (default: read from the model).
        progress: Progress bars (None: on a terminal only).
        **kwargs: Passed to :func:`evaluate_variants` (``device``, ``amp_autocast``, ...).

    Returns:
        One row per pair: ``{'source', 'corruption', 'severity', 'top1', 'top1_err', 'top5', 'top5_err'}``.
    """
    num_classes = num_classes or num_outputs(model)
    rows, classes = [], None
    for name, severity in progress_bar(plan, progress, desc=fmt, unit='set'):
        dataset = _open_c_dataset(root, fmt, name, severity)
        where = os.path.join(root, name + '.npy' if fmt == 'cifar-c' else os.path.join(name, str(severity)))
        if fmt == 'imagenet-c':
            if classes is None:
                classes, first = dataset.classes, where
            elif dataset.classes != classes:
                extra = sorted(set(dataset.classes) ^ set(classes))
                raise EvaluationError(f"'{where}' has other class folders than '{first}' "
                                      f"({len(dataset.classes)} vs {len(classes)}; e.g. {extra[:1] or '-'})")
            top_label = len(dataset.classes) - 1
        else:
            top_label = int(dataset.targets.max()) if len(dataset) else -1
        if num_classes is not None and top_label >= num_classes:
            raise EvaluationError(f"'{where}' has labels up to {top_label} but the model predicts {num_classes} "
                                  f"classes; pass the matching --num-classes / --checkpoint")
        metrics = evaluate_variants(model, make_loader(dataset), {'c': None}, progress=progress,
                                    desc=f'{name} {severity}', **kwargs)['c']
        rows.append(OrderedDict(source=fmt, corruption=name, severity=severity,
                                **{k: metrics[k] for k in ('top1', 'top1_err', 'top5', 'top5_err')}))
    return rows
