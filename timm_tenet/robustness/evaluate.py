"""Evaluation for ``validate.py``: clean top-1/top-5, corruptions (released -C sets or generated on the fly)
with mean corruption error and ImageNet-C mCE, and accuracy under FGSM / PGD / AutoAttack, as result rows.

Every evaluation feeds [0, 1] images to the classifier wrapped with its normalisation
(:func:`wrap_for_eval`), so corruptions and attacks act in pixel space and one loader serves the clean,
corrupted and attacked passes. Corruptions generated on the fly are batched tensor ops on the model's
device, all (corruption, severity) pairs of a batch are evaluated while it is loaded, and each pair draws
its noise from its own seeded generator, so results do not depend on which other pairs are selected.
"""
import argparse
import logging
import math
import os
import zlib
from collections import OrderedDict
from contextlib import nullcontext
from typing import Any, Callable, ContextManager, Dict, Hashable, Iterable, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from timm.data import create_dataset
from tqdm import tqdm

from ..utils.errors import first_line
from .attacks import ATTACKS, NormalizedModel, create_attack, parse_eps, robust_accuracy
from .c_datasets import SEVERITIES, CifarCDataset, ImageNetCDataset, find_corruptions
from ..utils.checkpoint import checkpoint_args, extract_state_dict, load_checkpoint_file, load_state_dict_checked, \
    resolve_checkpoint_path
from .corruptions import ALEXNET_ERRORS, CORRUPTIONS, EXTRA_CORRUPTIONS, corrupt, mce, relative_mce
from ..data.digits import DIGITS_DATASET, prepare_digits
from ..models.tenet_models import create_tenet_model

__all__ = [
    'EvaluationError', 'HUB_PREFIXES', 'checkpoint_args', 'corruption_matrix', 'corruption_variants',
    'create_eval_dataset', 'create_eval_model', 'evaluate_attacks', 'evaluate_clean', 'evaluate_corruption_dir',
    'evaluate_variants', 'fill_from_checkpoint_args', 'format_eps', 'load_eval_checkpoint', 'load_valid_labels',
    'metrics_row', 'parse_attacks', 'parse_corruptions', 'parse_severities', 'plan_corruption_dir',
    'parse_eps_list', 'resolve_checkpoint_path', 'split_list', 'summarize_corruptions', 'wrap_for_eval',
]

_logger = logging.getLogger(__name__)

HUB_PREFIXES = ('hf-hub:', 'local-dir:')
_NON_FOLDER_PREFIXES = ('torch/', 'hfds/', 'hfids/', 'tfds/', 'wds/')
# display order: ImageNet-C's noise, blur, weather, digital groups, then the extra corruptions
_ORDER = {name: i for i, name in enumerate(list(ALEXNET_ERRORS) + list(EXTRA_CORRUPTIONS))}


class EvaluationError(ValueError):
    """An evaluation that cannot run as asked; the one-line message says what to change."""


def _order(names: Iterable[str]) -> List[str]:
    return sorted(names, key=lambda n: (_ORDER.get(n, len(_ORDER)), n))


# ---------------------------------------------------------------------------------------------------------------
# Options

def split_list(values: Any) -> List[str]:
    """Items of a list flag given as ``a,b``, ``a b``, or (from YAML) a list or a scalar; empty for None."""
    if values is None:
        return []
    if not isinstance(values, (list, tuple)):
        values = [values]
    return [item.strip() for value in values for item in str(value).split(',') if item.strip()]


def parse_severities(values: Optional[Sequence[Any]]) -> Tuple[int, ...]:
    """Severities from ``--severities`` items (``'1,5'``, ``['1', '5']``, ``[1, 5]``); all five when empty."""
    items = split_list(values)
    if not items:
        return SEVERITIES
    severities = set()
    for item in items:
        try:
            severity = int(item)
        except ValueError:
            severity = None
        if severity not in SEVERITIES:
            raise EvaluationError(f"corruption severity must be an integer from 1 to 5, got '{item}'")
        severities.add(severity)
    return tuple(sorted(severities))


def parse_corruptions(values: Optional[Sequence[Any]]) -> Tuple[str, ...]:
    """Names for ``--corrupt`` (``'all'`` = the on-the-fly benchmark corruptions, :data:`CORRUPTIONS`), checked
    against :data:`CORRUPTIONS` and :data:`EXTRA_CORRUPTIONS`."""
    names: List[str] = []
    for name in split_list(values):
        if name == 'all':
            names.extend(CORRUPTIONS)
        elif name not in CORRUPTIONS + EXTRA_CORRUPTIONS:
            released = f" ('{name}' exists only in the released -C sets: use --corruption-dir)" \
                if name in ALEXNET_ERRORS else ''
            raise EvaluationError(f"unknown corruption '{name}'{released}; choose one of {', '.join(CORRUPTIONS + EXTRA_CORRUPTIONS)} "
                                  f"or all")
        else:
            names.append(name)
    return tuple(dict.fromkeys(names))


def parse_attacks(values: Optional[Sequence[Any]]) -> Tuple[str, ...]:
    """Attack names for ``--attack``, checked against :data:`timm_tenet.robustness.attacks.ATTACKS`; with
    ``autoattack``, fails now (not after the clean pass) when the optional package is missing."""
    names = tuple(dict.fromkeys(split_list(values)))
    for name in names:
        if name not in ATTACKS:
            raise EvaluationError(f"unknown attack '{name}'; choose one of {', '.join(ATTACKS)}")
    if 'autoattack' in names:
        import importlib.util
        if not any(importlib.util.find_spec(m) for m in ('pyautoattack', 'autoattack')):
            raise EvaluationError('--attack autoattack needs the optional AutoAttack package: run '
                                  '`pip install pyautoattack` (a PyPI packaging of github.com/fra31/auto-attack)')
    return names


def parse_eps_list(values: Sequence[Any], flag: str = '--eps') -> Tuple[float, ...]:
    """``--eps`` items as floats (``'8/255'`` accepted), one-line error for text that does not parse."""
    try:
        return tuple(parse_eps(v) for v in split_list(values))
    except ValueError as e:
        raise EvaluationError(f'{flag}: {e}') from None


def format_eps(eps: float) -> str:
    """``8/255`` for multiples of 1/255, else the plain number."""
    grey = eps * 255
    return f'{round(grey)}/255' if eps > 0 and abs(grey - round(grey)) < 1e-6 else f'{eps:g}'


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints, models, data

def load_eval_checkpoint(path: str, use_ema: bool = False) -> Tuple[str, Dict[str, Any], Dict[str, Any]]:
    """Load a checkpoint (``weights_only``) for evaluation, through :mod:`timm_tenet.utils.checkpoint`.

    Args:
        path: File or ``train.py`` output folder (:func:`~timm_tenet.utils.checkpoint.resolve_checkpoint_path`).
        use_ema: Take ``state_dict_ema``; a checkpoint without EMA weights is an error, not a silent fallback.

    Returns:
        The file used, its model state dict (``module.`` prefixes removed) and its recorded training arguments
        (:func:`~timm_tenet.utils.checkpoint.checkpoint_args`).

    Raises:
        CheckpointError: one line for a missing, corrupt, truncated or foreign file.
    """
    path = resolve_checkpoint_path(path)
    checkpoint = load_checkpoint_file(path)
    return path, extract_state_dict(checkpoint, path, use_ema), checkpoint_args(checkpoint)


def fill_from_checkpoint_args(args: argparse.Namespace, recorded: Mapping[str, Any]) -> List[str]:
    """Set the model and input flags that ``args`` leaves unset from a checkpoint's recorded arguments.

    Size flags (``img_size``, ``input_size``, ``in_chans``) and ``mean``/``std`` are taken together, and
    only when none of the group is given, so that a given ``--img-size`` is never overridden by a recorded
    ``input_size``.

    Returns:
        The dests that were filled.
    """
    filled = []

    def take(names: Sequence[str]) -> None:
        if all(getattr(args, n, None) in (None, '', {}) for n in names) and \
                any(recorded.get(n) not in (None, '', {}) for n in names):
            for n in names:
                value = recorded.get(n)
                if value not in (None, '', {}):
                    setattr(args, n, value)
                    filled.append(n)

    for group in (('model',), ('num_classes',), ('img_size', 'input_size', 'in_chans'), ('mean', 'std'),
                  ('crop_pct',), ('interpolation',), ('gp',), ('model_kwargs',)):
        take(group)
    if 'input_size' in filled:
        args.input_size = [int(v) for v in args.input_size]
    return filled


def create_eval_model(
        model_name: str,
        pretrained: bool = False,
        state_dict: Optional[Mapping[str, torch.Tensor]] = None,
        source: str = '',
        **kwargs: Any,
) -> nn.Module:
    """Create a timm or ``_tenet`` model in eval mode and load ``state_dict`` (strict), one-line errors.

    ``hf-hub:`` / ``local-dir:`` names go to ``timm.create_model`` with ``pretrained=True`` (their weights
    are what the name points at).

    Args:
        model_name: A timm name, ``<arch>_tenet``, ``hf-hub:org/name`` or ``local-dir:/path``.
        pretrained: Load the registered pretrained weights.
        state_dict: Weights to load after creation (a checkpoint's).
        source: Where ``state_dict`` came from, for messages.
        **kwargs: ``num_classes``, ``in_chans``, ``global_pool`` and other model kwargs (None values dropped).
    """
    if not model_name:
        raise EvaluationError('no model given: pass --model NAME (or a --checkpoint written by train.py)')
    pretrained = pretrained or model_name.startswith(HUB_PREFIXES)
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    try:
        model = create_tenet_model(model_name, pretrained=pretrained, **kwargs)
    except (RuntimeError, ValueError, OSError, TypeError, ImportError) as e:
        message = first_line(e)
        if message.startswith('Unknown model'):
            import difflib
            import timm
            close = difflib.get_close_matches(model_name, timm.list_models(), n=1)
            raise EvaluationError(message + (f"; did you mean '{close[0]}'?" if close else '')) from None
        what = ' with pretrained weights' if pretrained else ''
        hint = ' (no network here? pass --checkpoint FILE instead of pretrained weights)' \
            if pretrained and state_dict is None and not model_name.startswith('local-dir:') else ''
        raise EvaluationError(f"cannot create model '{model_name}'{what}: {message}{hint}") from None
    if state_dict is not None:
        load_state_dict_checked(model, dict(state_dict), source or 'checkpoint')
    return model.eval()


def create_eval_dataset(
        name: str,
        root: Optional[str],
        split: str = 'validation',
        **kwargs: Any,
) -> torch.utils.data.Dataset:
    """timm's ``create_dataset`` for evaluation, plus ``sklearn/digits``, with one-line errors.

    Args:
        name: ``''`` / ``folder/...`` (an image folder or tar under ``root``), ``torch/...``, ``hfds/...``, ...,
            or ``sklearn/digits`` (written once under ``root`` or the cache folder).
        root: Dataset root (``--data-dir``).
        split: Split (a sub-folder of ``root`` for folders, when present).
        **kwargs: Other ``create_dataset`` arguments (``class_map``, ``download``, ``num_samples``, ...).
    """
    name = name or ''
    if name.lower() == DIGITS_DATASET:
        try:
            root = str(prepare_digits(root or None))
        except (RuntimeError, OSError) as e:
            raise EvaluationError(f'cannot prepare {DIGITS_DATASET}: {first_line(e)}') from None
        name = ''
    if not name.lower().startswith(_NON_FOLDER_PREFIXES):
        if not root:
            raise EvaluationError('no dataset given: pass --data-dir DIR (an image folder of <class>/<image>, '
                                  'optionally under <split>/) or --dataset sklearn/digits')
        if not os.path.exists(root):
            raise EvaluationError(f"data folder not found: '{root}' (--data-dir)")
    try:
        dataset = create_dataset(name, root=root, split=split, is_training=False, **kwargs)
    except (FileNotFoundError, RuntimeError, AssertionError, ValueError, OSError) as e:
        raise EvaluationError(f"cannot create the '{split}' split of dataset '{name or 'folder'}' from "
                              f"'{root}': {first_line(e)}") from None
    if hasattr(dataset, '__len__') and len(dataset) == 0:
        raise EvaluationError(f"no images in the '{split}' split of '{root}' (expected <class>/<image> files)")
    return dataset


def load_valid_labels(path: str, num_classes: int) -> List[int]:
    """Class indices of a ``--valid-labels`` file, one integer per line, each in ``[0, num_classes)``."""
    try:
        with open(path) as f:
            lines = [line.strip() for line in f if line.strip()]
    except OSError as e:
        raise EvaluationError(f"cannot read --valid-labels file '{path}': {e.strerror or e}") from None
    try:
        labels = [int(line) for line in lines]
    except ValueError:
        raise EvaluationError(f"--valid-labels file '{path}' must hold one class index per line") from None
    bad = [v for v in labels if not 0 <= v < num_classes]
    if not labels or bad:
        raise EvaluationError(f"--valid-labels file '{path}' " + (
            f'has indices outside the model\'s {num_classes} classes (e.g. {bad[0]})' if bad else 'is empty'))
    return labels


class _LogitSubset(nn.Module):
    def __init__(self, indices: Sequence[int]):
        super().__init__()
        self.register_buffer('indices', torch.as_tensor(list(indices), dtype=torch.long), persistent=False)

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.index_select(1, self.indices)


def wrap_for_eval(
        model: nn.Module,
        mean: Sequence[float],
        std: Sequence[float],
        valid_labels: Optional[Sequence[int]] = None,
) -> nn.Module:
    """The classifier as evaluated here: [0, 1] images in, normalised inside, logits restricted to
    ``valid_labels`` (as timm's ``--valid-labels``) when given."""
    wrapped = NormalizedModel(model, mean, std)
    if valid_labels is not None:
        wrapped = nn.Sequential(wrapped, _LogitSubset(valid_labels))
    device = next(model.parameters()).device
    return wrapped.to(device).train(model.training)


def _num_outputs(model: nn.Module) -> Optional[int]:
    for module in reversed(list(model.modules())):
        if isinstance(module, _LogitSubset):
            return len(module.indices)
    for module in model.modules():
        if hasattr(module, 'num_classes') and isinstance(module.num_classes, int):
            return module.num_classes
    return None


# ---------------------------------------------------------------------------------------------------------------
# Clean and on-the-fly corrupted evaluation

def metrics_row(top1: float, top5: float, digits: int = 4) -> Dict[str, float]:
    """timm's accuracy fields, percentages rounded as timm's validate.py."""
    return OrderedDict(top1=round(top1, digits), top1_err=round(100 - top1, digits),
                       top5=round(top5, digits), top5_err=round(100 - top5, digits))


def _bar(iterable, progress: Optional[bool], **kwargs):
    # progress None: tqdm decides (shown on a terminal only); True: always; False: never
    return tqdm(iterable, disable=None if progress is None else not progress, dynamic_ncols=True, **kwargs)


@torch.inference_mode()
def evaluate_variants(
        model: nn.Module,
        loader: Iterable,
        variants: Mapping[Hashable, Optional[Callable[[torch.Tensor], torch.Tensor]]],
        *,
        device: Optional[torch.device] = None,
        amp_autocast: Callable[[], ContextManager] = nullcontext,
        channels_last: bool = False,
        progress: Optional[bool] = None,
        desc: str = 'eval',
        log_freq: int = 10,
) -> Dict[Hashable, Dict[str, float]]:
    """Top-1/top-5 accuracy of several input variants of every batch, in one pass over ``loader``.

    Args:
        model: Classifier in eval mode taking [0, 1] images (:func:`wrap_for_eval`).
        loader: ``(x, y)`` batches with ``x`` in [0, 1].
        variants: ``{key: fn(x) -> x'}``; ``None`` is the clean input. Each batch is loaded once and every
            variant is evaluated on it.
        device: Where to run (default: the model's device).
        amp_autocast: Context of the forward passes (variants are computed outside it, in float32).
        channels_last: Feed channels-last inputs.
        progress: Progress bar (None: on a terminal only).
        desc: Label of the progress bar.
        log_freq: Batches between updates of the bar's running top-1 (each one waits for the device).

    Returns:
        ``{key: {'top1', 'top1_err', 'top5', 'top5_err', 'count'}}`` in percent; top-5 is top-k with
        ``k = min(5, classes)``. Hits are counted on the device, so no batch waits for a host copy.
    """
    if any(m.training for m in model.modules()):
        raise EvaluationError('evaluation needs the model in eval mode (BatchNorm/Dropout would use the batch); '
                              'call model.eval() first')
    device = device or next(model.parameters()).device
    keys = list(variants)
    hits1 = torch.zeros(len(keys), dtype=torch.long, device=device)
    hits5 = torch.zeros(len(keys), dtype=torch.long, device=device)
    count = 0
    bar = _bar(loader, progress, desc=desc, unit='batch', leave=False)
    for step, (x, y) in enumerate(bar):
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        for i, key in enumerate(keys):
            fn = variants[key]
            xv = x if fn is None else fn(x)
            if channels_last:
                xv = xv.contiguous(memory_format=torch.channels_last)
            with amp_autocast():
                output = model(xv)
            if isinstance(output, (tuple, list)):
                output = output[0]
            hit = output.topk(min(5, output.shape[1]), dim=1).indices == y[:, None]
            hits1[i] += hit[:, 0].sum()
            hits5[i] += hit.any(dim=1).sum()
        count += y.shape[0]
        if log_freq and step % log_freq == 0 and not bar.disable:
            bar.set_postfix(top1=f'{100.0 * hits1[0].item() / count:.2f}')
    bar.close()
    if count == 0:
        raise EvaluationError(f'{desc}: the loader gave no images; check the dataset path and split')
    hits1, hits5 = hits1.tolist(), hits5.tolist()
    return {key: {**metrics_row(100.0 * hits1[i] / count, 100.0 * hits5[i] / count), 'count': count}
            for i, key in enumerate(keys)}


def evaluate_clean(model: nn.Module, loader: Iterable, **kwargs: Any) -> Dict[str, float]:
    """Clean top-1/top-5 (:func:`evaluate_variants` with the identity variant only)."""
    return evaluate_variants(model, loader, {'clean': None}, **kwargs)['clean']


def _generator(seed: int, name: str, severity: int, device: torch.device) -> torch.Generator:
    # crc32 rather than hash(): str hashes change between processes; the same rule as make_c
    return torch.Generator(device=device).manual_seed(zlib.crc32(f'{seed}/{name}/{severity}'.encode()))


def corruption_variants(
        corruptions: Sequence[str],
        severities: Sequence[int] = SEVERITIES,
        dataset: str = 'cifar',
        seed: int = 0,
        device: torch.device = torch.device('cpu'),
) -> Dict[Tuple[str, int], Callable[[torch.Tensor], torch.Tensor]]:
    """``{(corruption, severity): fn(x)}`` for :func:`evaluate_variants`: on-the-fly corruption of [0, 1]
    batches with the CIFAR-10-C or ImageNet-C constants, each pair with its own seeded generator on ``device``.
    """
    variants = {}
    for name in corruptions:
        for severity in severities:
            generator = _generator(seed, name, severity, torch.device(device))

            def fn(x, name=name, severity=severity, generator=generator):
                return corrupt(x, name, severity, generator=generator, dataset=dataset)

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
    num_classes = num_classes or _num_outputs(model)
    rows, classes = [], None
    for name, severity in _bar(plan, progress, desc=fmt, unit='set'):
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


# ---------------------------------------------------------------------------------------------------------------
# Summaries

def summarize_corruptions(
        rows: Sequence[Mapping[str, Any]],
        source: str,
        clean_top1: Optional[float] = None,
) -> Dict[str, Any]:
    """Mean corruption error of ``rows`` and, for ImageNet-C, mCE and relative mCE (percent, AlexNet = 100).

    mCE uses the corruptions that have AlexNet references and all five severities; relative mCE also
    needs ``clean_top1``. Each missing ingredient leaves its field None and is logged.
    """
    errors: Dict[str, Dict[int, float]] = {}
    for row in rows:
        errors.setdefault(row['corruption'], {})[int(row['severity'])] = row['top1_err'] / 100.0
    values = [e for errs in errors.values() for e in errs.values()]
    severities = sorted({s for errs in errors.values() for s in errs})
    summary = OrderedDict(
        source=source, num_corruptions=len(errors), severities=','.join(map(str, severities)),
        mean_corruption_error=round(100.0 * sum(values) / len(values), 4) if values else None)
    if source != 'imagenet-c':
        return summary
    full = {name: [errs[s] for s in SEVERITIES] for name, errs in errors.items()
            if name in ALEXNET_ERRORS and all(s in errs for s in SEVERITIES)}
    summary.update(mce=None, relative_mce=None, mce_corruptions=len(full))
    if not full:
        _logger.warning('mCE not computed: it needs all five severities of corruptions with AlexNet references')
        return summary
    if len(full) < len(ALEXNET_ERRORS):
        _logger.warning(f'mCE over {len(full)} of the {len(ALEXNET_ERRORS)} ImageNet-C corruptions: not comparable '
                        f'with published numbers')
    summary['mce'] = round(mce(full), 4)
    if clean_top1 is None:
        _logger.warning('relative mCE not computed: it needs the clean error (pass --data-dir with the clean '
                        'validation set)')
    else:
        summary['relative_mce'] = round(relative_mce(full, 1.0 - clean_top1 / 100.0), 4)
    return summary


def corruption_matrix(rows: Sequence[Mapping[str, Any]]) -> List[Dict[str, Any]]:
    """Rows ``{'corruption', 1: err, ..., 5: err, 'mean': err}`` (top-1 error, percent) and a ``'mean'`` row."""
    severities = sorted({int(r['severity']) for r in rows})
    table: Dict[str, Dict[str, Any]] = OrderedDict()
    for row in rows:
        table.setdefault(row['corruption'], OrderedDict(corruption=row['corruption']))[str(row['severity'])] = \
            row['top1_err']
    out = []
    for entry in table.values():
        errs = [entry[str(s)] for s in severities if str(s) in entry]
        out.append(OrderedDict(entry, mean=sum(errs) / len(errs)))
    if out:
        mean_row = OrderedDict(corruption='mean')
        for column in [str(s) for s in severities] + ['mean']:
            column_values = [r[column] for r in out if column in r]
            mean_row[column] = sum(column_values) / len(column_values)
        out.append(mean_row)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Attacks

class _FirstSamples:
    """The first ``limit`` samples of a loader, batches trimmed."""

    def __init__(self, loader: Iterable, limit: int, batch_size: int):
        self.loader, self.limit, self.batch_size = loader, limit, batch_size

    def __len__(self) -> int:
        return min(len(self.loader), math.ceil(self.limit / self.batch_size))

    def __iter__(self):
        left = self.limit
        for x, y in self.loader:
            if left <= 0:
                break
            yield x[:left], y[:left]
            left -= len(y)


def evaluate_attacks(
        model: nn.Module,
        loader: Iterable,
        attacks: Sequence[str],
        eps: Sequence[float],
        *,
        steps: int = 10,
        step_size: Optional[float] = None,
        restarts: int = 1,
        seed: int = 0,
        samples: Optional[int] = None,
        batch_size: Optional[int] = None,
        device: Optional[torch.device] = None,
        progress: Optional[bool] = None,
) -> List[Dict[str, Any]]:
    """Top-1 accuracy under each attack and radius (:func:`timm_tenet.robustness.attacks.robust_accuracy`).

    Attacks run in float32 with autocast off, on [0, 1] inputs, with the model in eval mode (a model in
    train mode is refused). A sample counts as robust only when its clean prediction is right too.

    Args:
        model: Classifier taking [0, 1] images (:func:`wrap_for_eval`), in eval mode.
        loader: ``(x, y)`` batches with ``x`` in [0, 1].
        attacks: Names from :data:`timm_tenet.robustness.attacks.ATTACKS`.
        eps: L-inf radii.
        steps: PGD steps.
        step_size: PGD step (default ``eps / 4``).
        restarts: PGD restarts.
        seed: Seed of the PGD random starts (one generator per attack and radius).
        samples: Attack only the first ``samples`` images.
        batch_size: Loader batch size, for the length of the ``samples`` progress bar.
        device: Where to run (default: the model's device).
        progress: Progress bars (None: on a terminal only; False: never).

    Returns:
        Rows ``{'attack', 'eps', 'steps', 'step_size', 'restarts', 'top1', 'top1_err', 'clean_top1', 'count'}``.
    """
    device = device or next(model.parameters()).device
    if samples is not None:
        loader = _FirstSamples(loader, samples, batch_size or getattr(loader, 'batch_size', None) or 1)
    rows = []
    for name in attacks:
        for radius in eps:
            generator = torch.Generator(device=device).manual_seed(seed)
            attack = create_attack(name, radius, steps=steps, step_size=step_size, restarts=restarts,
                                   generator=generator)
            try:
                result = robust_accuracy(model, loader, attack, device=device, progress=progress is not False,
                                         desc=f'{name} eps {format_eps(radius)}')
            except ImportError as e:
                raise EvaluationError(first_line(e)) from None
            except ValueError as e:  # a model in train mode, an empty loader
                raise EvaluationError(f'{name}: {first_line(e)}') from None
            pgd = name == 'pgd'
            rows.append(OrderedDict(
                attack=name, eps=round(radius, 8), eps_text=format_eps(radius),
                steps=steps if pgd else (1 if name == 'fgsm' else None),
                step_size=(round(step_size if step_size is not None else radius / 4, 8) if pgd else None),
                restarts=restarts if pgd else None,
                top1=round(result['robust_top1'], 4), top1_err=round(result['robust_err'], 4),
                clean_top1=round(result['clean_top1'], 4), count=result['count']))
    return rows
