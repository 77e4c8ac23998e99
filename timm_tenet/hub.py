"""Share TENET weights on the Hugging Face Hub: export a training checkpoint as timm's hub files, push them
in one commit, and load them with or without ``timm_tenet``.

An export holds ``model.safetensors`` (no pickle), timm's ``config.json`` and a ``README.md`` model card.
``config.json`` names the BASE architecture (``resnet50_tenet`` -> ``resnet50``), so stock timm loads the
files and gives the same logits; the TENET model name and settings are in the card and in the extra
``tenet`` field of ``config.json``. The CIFAR bases (``cifar_resnet18``, ``cifar_resnext29_4x32d``) are
registered by ``timm_tenet`` itself: their exports load only after ``import timm_tenet``.

Command line::

    python -m timm_tenet.hub push --checkpoint output/train/exp/model_best.pth.tar \\
        --repo-id org/resnet50_tenet.in1k [--use-ema] [--private] [--results-file results.json] [--dry-run DIR]
"""
import argparse
import csv
import io
import json
import logging
import math
import os
import pickle
import shlex
import shutil
import socket
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import yaml

import timm
from timm.models import clean_state_dict, get_pretrained_cfg, is_model, model_entrypoint, parse_model_name, \
    resolve_model_input_args, save_for_hf
from timm.models._registry import get_arch_name
from timm.utils import ParseKwargs

from . import __version__
from .config import TenetConfig
from .tenet_models import TENET_BASES

__all__ = [
    'CARD_TAGS', 'CheckpointState', 'EXPORT_FILES', 'ExportError', 'HubError', 'check_push_ready', 'check_repo_id',
    'create_model', 'export_to_folder', 'load_checkpoint_state', 'main', 'model_card', 'push', 'push_after_training',
    'read_results',
]

_logger = logging.getLogger(__name__)

WEIGHTS_NAME = 'model.safetensors'
CONFIG_NAME = 'config.json'
CARD_NAME = 'README.md'
EXPORT_FILES = (WEIGHTS_NAME, CONFIG_NAME, CARD_NAME)
CARD_TAGS = ('image-classification', 'timm', 'tenet', 'robustness')
DEFAULT_LICENSE = 'apache-2.0'

_PAPER = dict(
    paper_name='Group-wise Inhibition based Feature Regularization for Robust Classification',
    paper_ids='arXiv:2103.02152',
    origin_url='https://github.com/LinusWu/TENET_Training',
)
_CITATION = """@inproceedings{liu2021tenet,
  title={Group-wise Inhibition based Feature Regularization for Robust Classification},
  author={Liu, Haozhe and Wu, Haoqian and Xie, Weicheng and Liu, Feng and Shen, Linlin},
  booktitle={Proceedings of the IEEE/CVF International Conference on Computer Vision (ICCV)},
  year={2021}
}"""
# training arguments that describe preprocessing (they go to the exported pretrained_cfg)
_DATA_KEYS = ('input_size', 'img_size', 'in_chans', 'mean', 'std', 'crop_pct', 'crop_mode', 'interpolation')
# training arguments that hold local paths: the public card shows that they were set, not where
_LOCAL_PATH_KEYS = ('data', 'data_dir', 'output', 'resume', 'initial_checkpoint', 'pretrained_path', 'class_map')
# result keys, in the order the card's tables show them
_CLEAN_KEYS = ('model', 'top1', 'top1_err', 'top5', 'top5_err', 'param_count', 'img_size', 'crop_pct', 'interpolation')
_ATTACK_KEYS = ('attack', 'eps', 'steps', 'step_size', 'restarts', 'top1', 'top1_err')
_SUMMARY_KEYS = ('mce', 'relative_mce', 'mean_corruption_error', 'mean_corruption_acc')
_CORRUPTION_METRICS = ('top1_err', 'top1', 'error', 'err', 'acc', 'accuracy')
_TIMM_DATASETS = {'torch/cifar10': 'cifar10', 'torch/cifar100': 'cifar100', 'torch/imagenet': 'imagenet-1k',
                  'torch/mnist': 'mnist', 'torch/fashion_mnist': 'fashion_mnist', 'torch/stl10': 'stl10'}


class ExportError(ValueError):
    """Input that cannot be exported: the checkpoint, its class count, the repo id or the output folder."""


class HubError(RuntimeError):
    """The Hub cannot be reached, refuses the credentials, or refuses the upload or download."""


def _first_line(e: Union[BaseException, str]) -> str:
    text = str(e).strip()
    return ' '.join(text.splitlines()[0].split()) if text else type(e).__name__


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints


@dataclass
class CheckpointState:
    """What an export needs from a timm-style training checkpoint.

    Args:
        path: The checkpoint file.
        state_dict: Model weights, with DDP / ``torch.compile`` prefixes removed.
        weights: Where they came from: ``'state_dict'``, ``'state_dict_ema'`` or ``'bare'`` (a plain state dict).
        arch: Model name it was trained as (``arch``, else ``args['model']``), None if not recorded.
        args: Training arguments as a dict (``argparse.Namespace`` or dict in the checkpoint), else empty.
        tenet_cfg: TENET settings from ``task_state['tenet_cfg']``, if recorded.
        tenet_step: Training forward calls counted by the TENET task, if recorded.
        epoch: Epoch of the checkpoint, if recorded.
        metric: Evaluation metric the checkpoint saver ranked it by, if recorded.
    """
    path: Path
    state_dict: Dict[str, torch.Tensor]
    weights: str = 'state_dict'
    arch: Optional[str] = None
    args: Dict[str, Any] = field(default_factory=dict)
    tenet_cfg: Optional[Dict[str, Any]] = None
    tenet_step: Optional[int] = None
    epoch: Optional[int] = None
    metric: Optional[float] = None


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _read_checkpoint_file(path: Path) -> Any:
    if path.suffix == '.safetensors':
        try:
            from safetensors.torch import load_file
            return load_file(str(path), device='cpu')
        except Exception as e:
            raise ExportError(f"'{path}' is not a readable safetensors file ({_first_line(e)})") from None
    try:
        # timm's checkpoint saver stores the training args as an argparse.Namespace
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's message is a paragraph; the reason follows 'WeightsUnpickler error:'
        text = str(e).split('WeightsUnpickler error:', 1)[-1]
        reason = next((line.strip() for line in text.splitlines() if line.strip()), 'unreadable pickle')
        if 'Unsupported global' in reason:
            raise ExportError(
                f"refusing to load '{path}': it holds Python objects that weights_only loading does not run "
                f"({reason.split(' was not')[0]})") from None
        raise ExportError(f"'{path}' is not a PyTorch checkpoint ({reason})") from None
    except Exception as e:
        raise ExportError(f"'{path}' is not a PyTorch checkpoint ({type(e).__name__}: {_first_line(e)})") from None


def load_checkpoint_state(checkpoint: Union[str, Path], use_ema: bool = False) -> CheckpointState:
    """Read a checkpoint with ``torch.load(weights_only=True)`` (``.safetensors`` files too).

    Takes what timm's checkpoint saver writes (a dict with ``state_dict``, ``arch``, optionally
    ``state_dict_ema``, ``args``, ``epoch``, ``metric``, ``task_state``) or a bare state dict.

    Args:
        checkpoint: Path of the checkpoint file.
        use_ema: Take ``state_dict_ema``; a checkpoint without EMA weights is an error.

    Raises:
        ExportError: One line naming the file and what is wrong with it.
    """
    path = Path(checkpoint)
    if not path.exists():
        raise ExportError(f"checkpoint not found: '{path}'")
    if not path.is_file():
        raise ExportError(f"checkpoint '{path}' is not a file")
    obj = _read_checkpoint_file(path)
    if not isinstance(obj, dict) or not obj:
        what = 'an empty dict' if isinstance(obj, dict) else f'a {type(obj).__name__}'
        raise ExportError(f"'{path}' is not a checkpoint: it holds {what}, not model weights")
    if _is_state_dict(obj):
        if use_ema:
            raise ExportError(f"'{path}' is a bare state dict without EMA weights: drop --use-ema")
        return CheckpointState(path=path, state_dict=clean_state_dict(obj), weights='bare')

    key = 'state_dict_ema' if use_ema else 'state_dict'
    if use_ema and obj.get(key) is None:
        raise ExportError(f"'{path}' has no EMA weights ('state_dict_ema'): drop --use-ema")
    if not _is_state_dict(obj.get(key)):
        keys = ', '.join(map(str, list(obj)[:8]))
        raise ExportError(f"'{path}' is not a timm checkpoint: no '{key}' of tensors (top-level keys: {keys})")
    args = obj.get('args')
    args = vars(args) if isinstance(args, argparse.Namespace) else dict(args) if isinstance(args, dict) else {}
    task_state = obj.get('task_state') if isinstance(obj.get('task_state'), dict) else {}
    tenet_cfg = task_state.get('tenet_cfg')
    step = task_state.get('tenet_step')
    metric = obj.get('metric')
    return CheckpointState(
        path=path,
        state_dict=clean_state_dict(obj[key]),
        weights=key,
        arch=obj.get('arch') or args.get('model'),
        args=args,
        tenet_cfg=dict(tenet_cfg) if isinstance(tenet_cfg, dict) else None,
        tenet_step=int(step) if isinstance(step, (int, float)) else None,
        epoch=obj.get('epoch') if isinstance(obj.get('epoch'), int) else None,
        metric=float(metric) if isinstance(metric, (int, float)) else None,
    )


def _classifier_outputs(state_dict: Dict[str, torch.Tensor], classifier: Any) -> Tuple[Optional[int], str]:
    names = classifier if isinstance(classifier, (list, tuple)) else (classifier,)
    for name in names:
        weight = state_dict.get(f'{name}.weight') if name else None
        if weight is not None and weight.ndim >= 2:
            return int(weight.shape[0]), f'{name}.weight'
    return None, f'{names[0]}.weight' if names and names[0] else 'classifier weights'


@dataclass
class _Export:
    """A checkpoint's model rebuilt as trained, and what the config and card say about it."""
    state: CheckpointState
    model: nn.Module  # eval mode, checkpoint weights
    architecture: str  # the base architecture, config.json's 'architecture'
    tenet_model: Optional[str]  # the *_tenet name, if trained as one
    tenet_cfg: Optional[Dict[str, Any]]
    data_config: Dict[str, Any]
    needs_timm_tenet: bool  # the base architecture is registered by timm_tenet, not by timm


def _known_tenet_fields(values: Dict[str, Any]) -> Dict[str, Any]:
    names = {f.name for f in fields(TenetConfig)}
    return {k: v for k, v in values.items() if k in names}


def _rebuild(
        state: CheckpointState,
        model_name: Optional[str] = None,
        num_classes: Optional[int] = None,
        model_kwargs: Optional[Dict[str, Any]] = None,
) -> _Export:
    """Build the checkpoint's architecture with its number of classes and load its weights (strict)."""
    name = model_name or state.arch
    if not name:
        raise ExportError(f"'{state.path}' does not name its architecture (no 'arch'): pass --model")
    if ':' in name:
        raise ExportError(
            f"the checkpoint's architecture is '{name}', a {name.split(':')[0]} name: pass --model with the "
            f"timm architecture it stands for")
    arch = get_arch_name(name)
    if not is_model(arch):
        where = '' if model_name else f" (recorded in '{state.path}')"
        raise ExportError(f"unknown architecture '{arch}'{where}: pass --model with a timm or *_tenet model name")
    base = TENET_BASES.get(arch, arch)

    cfg = get_pretrained_cfg(arch)
    found, key = _classifier_outputs(state.state_dict, cfg.classifier if cfg is not None else None)
    if found is not None and num_classes is not None and found != num_classes:
        raise ExportError(
            f"--num-classes {num_classes} does not match the checkpoint: its classifier '{key}' has {found} outputs")
    classes = found if found is not None else num_classes if num_classes is not None else state.args.get('num_classes')
    if classes is None:
        raise ExportError(f"cannot read the number of classes: the checkpoint has no '{key}': pass --num-classes")

    kwargs = dict(state.args.get('model_kwargs') or {})
    kwargs.update(model_kwargs or {})
    tenet_args = {k[len('tenet_'):]: kwargs.pop(k) for k in [k for k in kwargs if k.startswith('tenet_')]}
    for arg, kwarg in (('gp', 'global_pool'), ('bn_eps', 'bn_eps')):
        if state.args.get(arg) is not None:
            kwargs.setdefault(kwarg, state.args[arg])
    data_config = {k: state.args[k] for k in _DATA_KEYS if state.args.get(k) not in (None, '', [], ())}
    try:
        model = timm.create_model(**resolve_model_input_args(arch, args=data_config, num_classes=classes, **kwargs))
    except (TypeError, ValueError, RuntimeError, AssertionError, KeyError) as e:
        raise ExportError(
            f"cannot build {arch} with {classes} classes ({_first_line(e)}): pass the --model / --model-kwargs "
            f"of the training run") from None

    own = model.state_dict()
    problems = []
    for label, keys in (
            ('missing', [k for k in own if k not in state.state_dict]),
            ('unexpected', [k for k in state.state_dict if k not in own]),
            ('shape-mismatched', [k for k in own if k in state.state_dict
                                  and tuple(state.state_dict[k].shape) != tuple(own[k].shape)]),
    ):
        if keys:
            problems.append(f'{len(keys)} {label} (e.g. {keys[0]})')
    if problems:
        raise ExportError(
            f"the checkpoint's weights do not fit {arch} with {classes} classes: {', '.join(problems)}; "
            f"pass the --model / --model-kwargs of the training run")
    model.load_state_dict(state.state_dict)
    model.eval()

    if state.tenet_cfg is not None:
        tenet_cfg = dict(state.tenet_cfg)
    elif arch in TENET_BASES:
        tenet_cfg = getattr(model, 'tenet_cfg', TenetConfig()).replace(**_known_tenet_fields(tenet_args)).to_dict()
    else:
        tenet_cfg = None
        _logger.warning(f'{state.path} records no TENET settings and {arch} is not a *_tenet model.')
    return _Export(
        state=state,
        model=model,
        architecture=base,
        tenet_model=arch if arch in TENET_BASES else None,
        tenet_cfg=tenet_cfg,
        data_config=data_config,
        needs_timm_tenet=model_entrypoint(base).__module__.split('.')[0] == 'timm_tenet',
    )


# ---------------------------------------------------------------------------------------------------------------
# Results files


def _is_value(v: Any) -> bool:
    if isinstance(v, (list, tuple)):
        return len(v) <= 4 and all(isinstance(x, (str, int, float, bool)) or x is None for x in v)
    return isinstance(v, (str, int, float, bool)) or v is None


def _json_rows(obj: Any) -> Iterator[Dict[str, Any]]:
    """Every dict of plain values in a JSON document, nested lists and dicts included, outer first."""
    if isinstance(obj, list):
        for item in obj:
            yield from _json_rows(item)
    elif isinstance(obj, dict):
        row = {str(k): v for k, v in obj.items() if _is_value(v) and v is not None}
        if row:
            yield row
        for v in obj.values():
            if not _is_value(v):
                yield from _json_rows(v)


def _csv_value(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _csv_rows(text: str) -> List[Dict[str, Any]]:
    return [
        {k.strip(): _csv_value(v.strip()) for k, v in row.items() if k and v is not None and v.strip() != ''}
        for row in csv.DictReader(io.StringIO(text))
    ]


def read_results(path: Union[str, Path]) -> List[Dict[str, Any]]:
    """The result rows of a ``validate.py`` results file: JSON (a dict, a list of dicts, or nested) or CSV.

    Raises:
        ExportError: The file is missing, unreadable, or holds no rows.
    """
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"results file not found: '{path}'")
    try:
        text = path.read_text(encoding='utf-8')
    except (OSError, UnicodeDecodeError) as e:
        raise ExportError(f"cannot read results file '{path}' ({_first_line(e)})") from None
    suffix = path.suffix.lower()
    rows: List[Dict[str, Any]] = []
    if suffix != '.csv':
        try:
            rows = list(_json_rows(json.loads(text)))
        except json.JSONDecodeError as e:
            if suffix == '.json':
                raise ExportError(f"results file '{path}' is not valid JSON ({_first_line(e)})") from None
    if not rows and suffix != '.json':
        try:
            rows = _csv_rows(text)
        except csv.Error as e:
            raise ExportError(f"results file '{path}' is neither JSON nor CSV ({_first_line(e)})") from None
    rows = [r for r in rows if r]
    if not rows:
        raise ExportError(f"results file '{path}' holds no results")
    return rows


# ---------------------------------------------------------------------------------------------------------------
# Model card


def _fmt(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, float):
        return 'nan' if math.isnan(v) else f'{v:.10g}'
    if isinstance(v, (list, tuple)):
        return '(' + ', '.join(_fmt(x) for x in v) + ')'
    return str(v).replace('|', '\\|').replace('\n', ' ')


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ['| ' + ' | '.join(_fmt(h) for h in header) + ' |', '|' + '---|' * len(header)]
    lines += ['| ' + ' | '.join(_fmt(c) if c is not None else '' for c in row) + ' |' for row in rows]
    return '\n'.join(lines) + '\n'


def _columns(rows: Sequence[Dict[str, Any]], preferred: Sequence[str]) -> List[str]:
    seen = [k for k in preferred if any(k in r for r in rows)]
    for r in rows:
        seen += [k for k in r if k not in seen]
    return seen


def _generic_table(rows: Sequence[Dict[str, Any]], preferred: Sequence[str] = ()) -> str:
    cols = _columns(rows, preferred)
    return _table(cols, [[r.get(c) for c in cols] for r in rows])


def _corruption_table(rows: Sequence[Dict[str, Any]]) -> str:
    """Corruption x severity of the first metric every row has, with the mean per corruption."""
    metric = next((m for m in _CORRUPTION_METRICS if all(isinstance(r.get(m), (int, float)) for r in rows)), None)
    cells = {(str(r['corruption']), r.get('severity')) for r in rows}
    if metric is None or any('severity' not in r for r in rows) or len(cells) != len(rows):
        return _generic_table(rows, ('corruption', 'severity') + _CORRUPTION_METRICS)
    names = list(dict.fromkeys(str(r['corruption']) for r in rows))
    severities = sorted({r['severity'] for r in rows}, key=lambda s: (not isinstance(s, (int, float)), str(s)))
    values = {(str(r['corruption']), r['severity']): r[metric] for r in rows}
    body = []
    for name in names:
        found = [values[(name, s)] for s in severities if (name, s) in values]
        body.append([name] + [values.get((name, s)) for s in severities] + [sum(found) / len(found)])
    return f'`{metric}` per severity:\n\n' + _table(['corruption'] + [f'severity {s}' for s in severities] + ['mean'],
                                                     body)


def _public_row(row: Dict[str, Any]) -> Dict[str, Any]:
    """A result row for a public card: no CSV ``section`` column, local paths shortened to their file name."""
    shown = {}
    for k, v in row.items():
        if k == 'section':
            continue
        if isinstance(v, str) and (k in _LOCAL_PATH_KEYS or k in ('checkpoint', 'corruption_dir')) and v:
            v = os.path.basename(v.rstrip('/')) or v
        elif isinstance(v, str) and v.startswith('local-dir:'):
            v = 'local-dir:' + os.path.basename(v[len('local-dir:'):].rstrip('/'))
        shown[k] = v
    return shown


def _results_markdown(rows: Sequence[Dict[str, Any]]) -> str:
    """Tables of clean, corruption, summary, adversarial and any other result rows."""
    groups: Dict[str, List[Dict[str, Any]]] = {'clean': [], 'corruption': [], 'summary': [], 'attack': [], 'other': []}
    for row in map(_public_row, rows):
        if not row:
            continue
        if 'attack' in row:
            groups['attack'].append(row)
        elif 'corruption' in row:
            groups['corruption'].append(row)
        elif any(k in _SUMMARY_KEYS or k.endswith('_mce') for k in row):
            groups['summary'].append(row)
        elif any(k in row for k in ('top1', 'top1_err', 'top5', 'top5_err')):
            groups['clean'].append(row)
        else:
            groups['other'].append(row)
    parts = []
    if groups['clean']:
        parts.append('### Clean validation\n\n' + _generic_table(groups['clean'], _CLEAN_KEYS))
    if groups['summary']:
        summary = [(k, v) for row in groups['summary'] for k, v in row.items()]
        summary.sort(key=lambda kv: (kv[0] not in _SUMMARY_KEYS, _SUMMARY_KEYS.index(kv[0])
                                     if kv[0] in _SUMMARY_KEYS else 0))
        parts.append('### Corruption summary\n\n' + _table(['metric', 'value'], summary))
    if groups['corruption']:
        parts.append('### Corruptions\n\n' + _corruption_table(groups['corruption']))
    if groups['attack']:
        parts.append('### Adversarial attacks\n\n' + _generic_table(groups['attack'], _ATTACK_KEYS))
    if groups['other']:
        parts.append('### Other results\n\n' + _generic_table(groups['other']))
    return '\n'.join(parts)


def _plain(v: Any) -> Any:
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    return str(v)


def _public_args(args: Dict[str, Any]) -> Dict[str, Any]:
    """Training arguments for a public card: unset ones dropped, local paths replaced by a marker."""
    shown = {}
    for k, v in args.items():
        if v is None or v == '' or v == [] or v == {}:
            continue
        shown[k] = '<local path>' if k in _LOCAL_PATH_KEYS and isinstance(v, str) else _plain(v)
    return shown


def _dataset_ids(args: Dict[str, Any]) -> List[str]:
    """Hub dataset ids for the card's metadata, from timm's ``--dataset`` ('hfds/<id>', 'torch/cifar10', ...)."""
    name = str(args.get('dataset') or '').strip()
    if name in _TIMM_DATASETS:
        return [_TIMM_DATASETS[name]]
    kind, _, rest = name.partition('/')
    if kind in ('hfds', 'hfids', 'tfds', 'wds') and rest:
        return [rest]
    return []


def model_card(
        config: Dict[str, Any],
        repo_id: str,
        results: Sequence[Dict[str, Any]] = (),
        train_command: Optional[str] = None,
        train_args: Optional[Dict[str, Any]] = None,
        license: str = DEFAULT_LICENSE,
        datasets: Sequence[str] = (),
        param_count: Optional[float] = None,
        epoch: Optional[int] = None,
        metric: Optional[float] = None,
        weights: str = 'state_dict',
) -> str:
    """The ``README.md`` of an export: timm's metadata block, then TENET settings, training and results.

    Args:
        config: The export's ``config.json`` (architecture, num_classes, pretrained_cfg, tenet).
        repo_id: Hub repository the card is for (``namespace/name``).
        results: Result rows (see :func:`read_results`), shown in tables.
        train_command: The command line that trained the model.
        train_args: Training arguments, shown as YAML (unset values dropped, local paths hidden).
        license: License of the weights (metadata ``license``).
        datasets: Hub dataset ids (metadata ``datasets``).
        param_count: Parameters in millions.
        epoch: Epoch of the exported checkpoint.
        metric: Evaluation metric the checkpoint was selected by.
        weights: ``'state_dict_ema'`` for EMA weights.
    """
    arch = config['architecture']
    tenet = config.get('tenet') or {}
    pcfg = config.get('pretrained_cfg') or {}
    name = repo_id.split('/')[-1]
    trained_as = tenet.get('model') or arch
    front = dict(tags=list(CARD_TAGS), library_name='timm', pipeline_tag='image-classification', license=license)
    if datasets:
        front['datasets'] = list(datasets)
    lines = ['---', yaml.safe_dump(front, sort_keys=False).rstrip(), '---', f'# Model card for {name}', '']
    lines += [
        f'A `{arch}` image classification model trained with TENET (group-wise inhibition feature '
        f'regularization, ICCV 2021) as `{trained_as}`. TENET changes training only: the weights are plain '
        f'`{arch}` weights, with the same inference cost.',
        '',
    ]
    if tenet.get('requires') == 'timm_tenet':
        lines += [
            f'`{arch}` is registered by [timm_tenet](https://github.com/LinusWu/TENET_Training), not by timm: '
            f'install `timm_tenet` and `import timm_tenet` before loading these weights.', '']

    lines += ['## Model Details', '- **Model Type:** Image classification / feature backbone',
              f'- **Architecture:** `{arch}`' + (f' (trained as `{trained_as}`)' if trained_as != arch else ''),
              '- **Model Stats:**']
    if param_count is not None:
        lines.append(f'  - Params (M): {param_count:.2f}')
    lines.append(f"  - Classes: {config.get('num_classes')}")
    if pcfg.get('input_size'):
        lines.append(f"  - Image size: {' x '.join(map(str, pcfg['input_size'][1:]))}")
    preprocessing = {k: pcfg[k] for k in ('crop_pct', 'crop_mode', 'interpolation', 'mean', 'std') if k in pcfg}
    if preprocessing:
        lines.append('- **Preprocessing:** ' + ', '.join(f'{k} {_fmt(v)}' for k, v in preprocessing.items()))
    source = 'EMA weights' if weights == 'state_dict_ema' else 'Weights'
    if epoch is not None or metric is not None:
        lines.append(f'- **Checkpoint:** {source}' + (f' of epoch {epoch}' if epoch is not None else '')
                     + (f' (evaluation metric {_fmt(metric)})' if metric is not None else ''))
    if datasets:
        lines.append(f"- **Dataset:** {', '.join(datasets)}")
    lines += ['- **Papers:**', f"  - {_PAPER['paper_name']}: https://arxiv.org/abs/2103.02152",
              f"- **Original:** {_PAPER['origin_url']} (TENET reference code), "
              f"https://github.com/huggingface/pytorch-image-models", '']

    lines += ['## TENET settings', '']
    if tenet.get('config'):
        rows = list(tenet['config'].items())
        if tenet.get('step') is not None:
            rows.append(('training steps counted', tenet['step']))
        lines += [_table(['setting', 'value'], rows)]
    else:
        lines += ['The checkpoint records no TENET settings.', '']

    if train_command or train_args:
        lines += ['## Training', '']
        if train_command:
            lines += ['```bash', train_command, '```', '']
        if train_args:
            lines += ['<details>', '<summary>Training arguments</summary>', '', '```yaml',
                      yaml.safe_dump(_public_args(train_args), sort_keys=True).rstrip(), '```', '', '</details>', '']

    if results:
        lines += ['## Evaluation', '', _results_markdown(results)]

    imports = ['import timm']
    if tenet.get('requires') == 'timm_tenet':
        imports.append(f'import timm_tenet  # registers {arch}, which stock timm does not have')
    else:
        imports[0] += '  # stock timm is enough, timm_tenet is not needed'
    lines += [
        '## Model Usage', '', '### Image Classification', '```python', 'from urllib.request import urlopen',
        'from PIL import Image', *imports, '',
        "img = Image.open(urlopen('https://huggingface.co/datasets/huggingface/documentation-images/resolve/main/"
        "beignets-task-guide.png'))",
        f"model = timm.create_model('hf-hub:{repo_id}', pretrained=True).eval()",
        'data_config = timm.data.resolve_model_data_config(model)',
        'transforms = timm.data.create_transform(**data_config, is_training=False)',
        'output = model(transforms(img).unsqueeze(0))  # unsqueeze single image into batch of 1',
        'top5_probabilities, top5_class_indices = output.softmax(dim=1).topk(5)', '```', '',
        f"To fine-tune with TENET again, `timm_tenet.hub.create_model('hf-hub:{repo_id}', pretrained=True)` "
        f'returns the model with these TENET settings as `model.tenet_cfg`.', '',
        '## Citation', '```bibtex', _CITATION, '```', '',
    ]
    return '\n'.join(lines)


# ---------------------------------------------------------------------------------------------------------------
# Export


def check_repo_id(repo_id: str) -> str:
    """``repo_id`` if it is a valid ``namespace/name`` Hub model id.

    Raises:
        ExportError: One line saying what is wrong with it.
    """
    from huggingface_hub.utils import HFValidationError, validate_repo_id
    if not isinstance(repo_id, str) or repo_id.count('/') != 1:
        raise ExportError(f"malformed repo id '{repo_id}': expected 'namespace/name', e.g. 'org/resnet50_tenet.in1k'")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise ExportError(f"malformed repo id '{repo_id}': {_first_line(e)}") from None
    return repo_id


def _check_target(folder: Path, overwrite: bool) -> None:
    """Refuse a non-empty folder, and with ``overwrite`` one that holds anything but a previous export."""
    if folder.exists() and not folder.is_dir():
        raise ExportError(f"'{folder}' exists and is not a folder")
    if not folder.is_dir():
        return
    entries = sorted(p.name for p in folder.iterdir())
    if not entries:
        return
    if not overwrite:
        raise ExportError(f"'{folder}' is not empty ({len(entries)} entries): pass --overwrite to replace a "
                          f"previous export, or choose a new folder")
    foreign = [e for e in entries if e not in EXPORT_FILES or not (folder / e).is_file()]
    if foreign:
        raise ExportError(f"--overwrite replaces only a previous export, and '{folder}' also holds "
                          f"{', '.join(foreign[:5])}: remove them or choose a new folder")


def _tag(repo_id: str) -> str:
    name = repo_id.split('/')[-1]
    return name.rsplit('.', 1)[1] if '.' in name else 'tenet'


def _write_files(export: _Export, folder: Path, repo_id: str, card: Dict[str, Any]) -> None:
    """Write ``model.safetensors``, ``config.json`` and ``README.md`` into the existing folder ``folder``."""
    tenet = {
        'model': export.tenet_model,
        'architecture': export.architecture,
        'config': export.tenet_cfg,
        'step': export.state.tenet_step,
        'timm_tenet_version': __version__,
        'paper': _PAPER['paper_ids'],
    }
    if export.needs_timm_tenet:
        tenet['requires'] = 'timm_tenet'
    notes = f"Trained with TENET as {export.tenet_model or export.architecture}; exported by timm_tenet {__version__}."
    model_config = dict(
        pretrained_cfg=dict(architecture=export.architecture, tag=_tag(repo_id), license=card['license'],
                            notes=(notes,), **_PAPER),
        tenet=tenet,
    )
    save_for_hf(export.model, folder, model_config=model_config, safe_serialization=True,
                data_config=export.data_config)
    config = json.loads((folder / CONFIG_NAME).read_text(encoding='utf-8'))
    text = model_card(
        config, repo_id,
        param_count=sum(p.numel() for p in export.model.parameters()) / 1e6,
        train_args=export.state.args, epoch=export.state.epoch, metric=export.state.metric,
        weights=export.state.weights, **card,
    )
    (folder / CARD_NAME).write_text(text, encoding='utf-8')
    for name in EXPORT_FILES:
        os.chmod(folder / name, 0o644)


def _verify(folder: Path, export: _Export) -> None:
    """Load ``folder`` as timm does (``local-dir:``) and require the checkpoint model's logits exactly."""
    config = json.loads((folder / CONFIG_NAME).read_text(encoding='utf-8'))
    timm_logger = logging.getLogger('timm')
    level = timm_logger.level
    timm_logger.setLevel(logging.WARNING)  # timm logs the temporary path it loads from
    try:
        loaded = timm.create_model(f'local-dir:{folder}', pretrained=True).eval()
    finally:
        timm_logger.setLevel(level)
    x = torch.randn(2, *config['pretrained_cfg']['input_size'], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, got = export.model(x), loaded(x)
    if not torch.equal(expected, got):
        diff = (expected - got).abs().max().item() if expected.shape == got.shape else 'shape'
        raise ExportError(f"the exported files do not reproduce the checkpoint's logits (difference {diff})")


def _prepare(
        checkpoint: Union[str, Path],
        use_ema: bool,
        model_name: Optional[str],
        num_classes: Optional[int],
        model_kwargs: Optional[Dict[str, Any]],
        results_files: Sequence[Union[str, Path]],
        train_command: Optional[str],
        license: str,
        datasets: Optional[Sequence[str]],
) -> Tuple[_Export, Dict[str, Any]]:
    results = [row for path in results_files for row in read_results(path)]
    export = _rebuild(load_checkpoint_state(checkpoint, use_ema=use_ema), model_name, num_classes, model_kwargs)
    card = dict(results=results, train_command=train_command, license=license,
                datasets=list(datasets) if datasets is not None else _dataset_ids(export.state.args))
    return export, card


def _write_folder(export: _Export, folder: Path, repo_id: str, card: Dict[str, Any], verify: bool) -> Path:
    """Build the export in a temporary sibling of ``folder``, then move it into place (replacing an export)."""
    folder = folder.absolute()
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f'.{folder.name}.tmp-', dir=folder.parent))
    old = None
    try:
        os.chmod(tmp, 0o755)
        _write_files(export, tmp, repo_id, card)
        if verify:
            _verify(tmp, export)
        if folder.exists():
            old = folder.parent / f'.{folder.name}.old-{os.getpid()}'
            os.replace(folder, old)
        os.replace(tmp, folder)
    except BaseException:
        if old is not None and not folder.exists():
            os.replace(old, folder)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return folder


def export_to_folder(
        checkpoint: Union[str, Path],
        folder: Union[str, Path],
        repo_id: str,
        use_ema: bool = False,
        overwrite: bool = False,
        model_name: Optional[str] = None,
        num_classes: Optional[int] = None,
        model_kwargs: Optional[Dict[str, Any]] = None,
        results_files: Sequence[Union[str, Path]] = (),
        train_command: Optional[str] = None,
        license: str = DEFAULT_LICENSE,
        datasets: Optional[Sequence[str]] = None,
        verify: bool = True,
) -> Path:
    """Write exactly the files :func:`push` uploads (``model.safetensors``, ``config.json``, ``README.md``).

    The folder appears complete or not at all: the files are written into a temporary sibling, checked,
    and moved into place.

    Args:
        checkpoint: A timm-style training checkpoint, a bare state dict, or a ``.safetensors`` file.
        folder: Output folder; it must be empty or absent (``overwrite`` replaces a previous export).
        repo_id: The ``namespace/name`` the files are meant for (the card's usage names it).
        use_ema: Export ``state_dict_ema`` instead of ``state_dict``.
        overwrite: Replace a folder that holds a previous export.
        model_name: Architecture, when the checkpoint records none (or another one) in ``arch``.
        num_classes: Expected number of classes; it must match the classifier weights.
        model_kwargs: Architecture arguments on top of the checkpoint's ``args['model_kwargs']``.
        results_files: ``validate.py`` results (JSON or CSV) for the card.
        train_command: The command line that trained the model, for the card.
        license: License of the weights.
        datasets: Hub dataset ids for the card metadata; default from the checkpoint's ``args['dataset']``.
        verify: Reload the files with ``local-dir:`` and require the checkpoint's logits exactly.

    Examples:

        ```python
        export_to_folder('output/train/exp/model_best.pth.tar', 'export/', repo_id='org/resnet50_tenet.in1k')
        model = timm.create_model('local-dir:export/', pretrained=True)
        ```
    """
    repo_id = check_repo_id(repo_id)
    folder = Path(folder)
    _check_target(folder, overwrite)
    export, card = _prepare(checkpoint, use_ema, model_name, num_classes, model_kwargs, results_files,
                            train_command, license, datasets)
    return _write_folder(export, folder, repo_id, card, verify)


# ---------------------------------------------------------------------------------------------------------------
# Hub


def _exception_chain(e: BaseException) -> Iterator[BaseException]:
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def _is_network_error(e: BaseException) -> bool:
    if isinstance(e, (ConnectionError, TimeoutError, socket.gaierror)):
        return True
    kind = type(e)
    return kind.__module__.split('.')[0] in ('httpx', 'httpx2', 'httpcore', 'requests', 'urllib3') and any(
        word in kind.__name__ for word in ('Connect', 'Timeout', 'Network', 'Proxy'))


def _explain(e: BaseException, action: str, target: str, endpoint: str, upload: bool) -> Optional[str]:
    """One line for a Hub failure (offline, unreachable, credentials, refused), or None for anything else."""
    from huggingface_hub import constants
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError, \
        OfflineModeIsEnabled, RepositoryNotFoundError
    chain = list(_exception_chain(e))
    offline = any(isinstance(x, OfflineModeIsEnabled) for x in chain) or (
        isinstance(e, LocalEntryNotFoundError) and constants.is_offline_mode())
    if offline:
        if upload:
            return f'cannot {action}: HF_HUB_OFFLINE=1 is set and uploads need the network (unset it, or use ' \
                   f'--dry-run DIR to write the files only); nothing was uploaded'
        return f'cannot {action}: HF_HUB_OFFLINE=1 is set and {target} is not in the local Hugging Face cache ' \
               f'(download it once with network, or use local-dir:/path)'
    if any(_is_network_error(x) for x in chain) or isinstance(e, LocalEntryNotFoundError):
        hint = 'nothing was uploaded (--dry-run DIR writes the files only)' if upload else \
            'with HF_HUB_OFFLINE=1 a model already in the cache loads, as does local-dir:/path'
        return f'cannot {action}: the Hugging Face Hub at {endpoint} cannot be reached (no network?); {hint}'
    http = next((x for x in chain if isinstance(x, HfHubHTTPError) and getattr(x, 'response', None) is not None),
                None)
    if http is None:
        return None
    code = http.response.status_code
    server = _first_line(getattr(http, 'server_message', None) or http)
    if code == 401 and (upload or not isinstance(http, (RepositoryNotFoundError, GatedRepoError))):
        return f'cannot {action}: the Hub rejected the token (401 Unauthorized): it is invalid or expired; ' \
               f'run `hf auth login` or set HF_TOKEN to a valid token'
    if code == 403:
        need = f'a token with write access to {target}' if upload else f'access to {target}'
        return f'cannot {action}: the token is not allowed to (403 Forbidden: {server}); it needs {need}'
    if isinstance(http, (RepositoryNotFoundError, GatedRepoError)) or code == 404:
        return f'cannot {action}: {target} was not found on the Hub, or the token cannot see it ({code})'
    return f'cannot {action}: the Hub answered {code} ({server})'


@contextmanager
def _hub_errors(action: str, target: str, endpoint: str, upload: bool) -> Iterator[None]:
    try:
        yield
    except (ExportError, HubError):
        raise
    except Exception as e:
        message = _explain(e, action, target, endpoint, upload)
        if message is None:
            raise
        raise HubError(message) from e


def _create_repo(api: Any, repo_id: str, private: bool) -> bool:
    """Create ``repo_id``; True if it is new, False if it existed."""
    from huggingface_hub.errors import HfHubHTTPError
    try:
        api.create_repo(repo_id, private=private, exist_ok=False)
        return True
    except HfHubHTTPError as e:
        if getattr(e, 'response', None) is not None and e.response.status_code == 409:
            return False
        raise


def _push_token(repo_id: str, token: Optional[str]) -> str:
    from huggingface_hub import constants, get_token
    if constants.is_offline_mode():
        raise HubError(f'cannot push to {repo_id}: HF_HUB_OFFLINE=1 is set and uploads need the network (unset it, '
                       f'or use --dry-run DIR to write the files only); nothing was uploaded')
    token = token or get_token()
    if not token:
        raise HubError(f'cannot push to {repo_id}: no Hugging Face token; run `hf auth login` or set HF_TOKEN to a '
                       f'token with write access (--dry-run DIR needs none)')
    return token


def check_push_ready(repo_id: str, token: Optional[str] = None) -> str:
    """Fail fast, without network, if a later :func:`push` to ``repo_id`` cannot work: a malformed id,
    ``HF_HUB_OFFLINE=1``, or no token. ``train.py --push-to-hub`` calls it before training. Returns ``repo_id``.

    Raises:
        ExportError: Malformed repo id.
        HubError: Offline mode or no token.
    """
    repo_id = check_repo_id(repo_id)
    _push_token(repo_id, token)
    return repo_id


def push(
        checkpoint: Union[str, Path],
        repo_id: str,
        use_ema: bool = False,
        private: bool = False,
        dry_run: Optional[Union[str, Path]] = None,
        overwrite: bool = False,
        model_name: Optional[str] = None,
        num_classes: Optional[int] = None,
        model_kwargs: Optional[Dict[str, Any]] = None,
        results_files: Sequence[Union[str, Path]] = (),
        train_command: Optional[str] = None,
        license: str = DEFAULT_LICENSE,
        datasets: Optional[Sequence[str]] = None,
        revision: Optional[str] = None,
        create_pr: bool = False,
        commit_message: Optional[str] = None,
        token: Optional[str] = None,
        endpoint: Optional[str] = None,
        verify: bool = True,
) -> str:
    """Export ``checkpoint`` and upload the files to ``repo_id`` in one commit (or, with ``dry_run``, only write them).

    The files are built and checked in a temporary folder first; the repository is created only then, and
    deleted again if it was new and the commit fails, so a failed push leaves nothing behind.

    Args:
        checkpoint: A timm-style training checkpoint, a bare state dict, or a ``.safetensors`` file.
        repo_id: ``namespace/name`` of the Hub model repository.
        use_ema: Export ``state_dict_ema`` instead of ``state_dict``.
        private: Create the repository as private (an existing one keeps its visibility).
        dry_run: Write the files into this folder instead of uploading them; no network, no token.
        overwrite: With ``dry_run``, replace a folder that holds a previous export.
        model_name, num_classes, model_kwargs, results_files, train_command, license, datasets, verify:
            As for :func:`export_to_folder`.
        revision: Branch to commit to (default ``main``).
        create_pr: Open a pull request instead of committing to the branch.
        commit_message: Commit message (default ``Add <architecture> weights trained with TENET``).
        token: Hub token (default ``HF_TOKEN`` or the one saved by ``hf auth login``).
        endpoint: Hub URL (default ``HF_ENDPOINT`` or https://huggingface.co).

    Returns:
        The commit (or pull request) URL, or with ``dry_run`` the folder written.

    Raises:
        ExportError: Bad checkpoint, class count, repo id or folder.
        HubError: Offline, unreachable Hub, missing or refused token, refused upload (one line each).
    """
    repo_id = check_repo_id(repo_id)
    if dry_run is not None:
        return str(export_to_folder(
            checkpoint, dry_run, repo_id, use_ema=use_ema, overwrite=overwrite, model_name=model_name,
            num_classes=num_classes, model_kwargs=model_kwargs, results_files=results_files,
            train_command=train_command, license=license, datasets=datasets, verify=verify))
    export, card = _prepare(checkpoint, use_ema, model_name, num_classes, model_kwargs, results_files,
                            train_command, license, datasets)

    from huggingface_hub import CommitOperationAdd, HfApi
    action = f'push to {repo_id}'
    token = _push_token(repo_id, token)
    api = HfApi(endpoint=endpoint, token=token, library_name='timm_tenet', library_version=__version__)
    with _hub_errors(action, repo_id, api.endpoint, upload=True):
        api.whoami()
    with tempfile.TemporaryDirectory(prefix='timm_tenet_push_') as tmp:
        folder = Path(tmp)
        _write_files(export, folder, repo_id, card)
        if verify:
            _verify(folder, export)
        operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(folder / name))
                      for name in EXPORT_FILES]
        with _hub_errors(action, repo_id, api.endpoint, upload=True):
            created = _create_repo(api, repo_id, private)
            try:
                info = api.create_commit(
                    repo_id=repo_id, operations=operations, revision=revision, create_pr=create_pr,
                    commit_message=commit_message or f'Add {export.architecture} weights trained with TENET',
                )
            except BaseException:
                if created:
                    try:
                        api.delete_repo(repo_id)
                    except Exception as e:
                        _logger.warning(f'could not delete the new, empty repository {repo_id}: {_first_line(e)}')
                raise
    url = info.pr_url or info.commit_url
    _logger.info(f'Pushed {", ".join(EXPORT_FILES)} to {repo_id}: {url}')
    return url


def push_after_training(
        repo_id: str,
        checkpoint: Union[str, Path],
        use_ema: bool = False,
        private: bool = False,
        results_files: Sequence[Union[str, Path]] = (),
        train_command: Optional[str] = None,
) -> str:
    """What ``train.py --push-to-hub NAMESPACE/NAME`` runs once training is done.

    Call :func:`check_push_ready` when parsing the arguments, so that a malformed id, offline mode or a
    missing token fail before training rather than after it.

    Args:
        repo_id: ``namespace/name`` of the Hub model repository.
        checkpoint: The checkpoint to push, or the run's output folder (``model_best.pth.tar``, else
            ``last.pth.tar``).
        use_ema: Push the EMA weights.
        private: Create the repository as private.
        results_files: ``validate.py`` results (JSON or CSV) for the card.
        train_command: The training command line; default ``python`` + ``sys.argv``.
    """
    path = Path(checkpoint)
    if path.is_dir():
        found = [path / n for n in ('model_best.pth.tar', 'last.pth.tar') if (path / n).is_file()]
        if not found:
            raise ExportError(f"'{path}' holds neither model_best.pth.tar nor last.pth.tar")
        path = found[0]
    if train_command is None:
        train_command = 'python ' + shlex.join(sys.argv)
    return push(path, repo_id, use_ema=use_ema, private=private, results_files=results_files,
                train_command=train_command)


def _exported_config(model_name: str, cache_dir: Optional[Union[str, Path]]) -> Dict[str, Any]:
    """The ``config.json`` behind an ``hf-hub:`` (from the cache) or ``local-dir:`` name, else {}."""
    source, model_id = parse_model_name(model_name)
    path = None
    if source == 'local-dir':
        path = Path(model_id) / CONFIG_NAME
    elif source == 'hf-hub':
        from huggingface_hub import try_to_load_from_cache
        repo, _, rev = model_id.partition('@')
        cached = try_to_load_from_cache(repo, CONFIG_NAME, cache_dir=cache_dir, revision=rev or None)
        path = Path(cached) if isinstance(cached, str) else None
    if path is None or not path.is_file():
        return {}
    return json.loads(path.read_text(encoding='utf-8'))


def create_model(model_name: str, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """``timm.create_model`` with one-line errors for Hub failures, and the TENET settings of exports.

    A model loaded from an export (``hf-hub:`` / ``local-dir:``) is its base architecture; this sets its
    ``tenet_cfg`` from the export's ``config.json``, so that TENET fine-tuning continues with them.

    Examples:

        ```python
        model = create_model('local-dir:export/', pretrained=True)
        model.tenet_cfg  # TenetConfig(num_groups=6, stage=3, ...)
        ```

    Raises:
        HubError: Offline without the files in the cache, unreachable Hub, refused token, unknown repository.
    """
    from huggingface_hub import constants
    with _hub_errors(f'load {model_name}', model_name.partition(':')[2] or model_name, constants.ENDPOINT,
                     upload=False):
        model = timm.create_model(model_name, pretrained=pretrained, **kwargs)
    tenet = (_exported_config(model_name, kwargs.get('cache_dir')).get('tenet') or {}).get('config')
    if tenet:
        model.tenet_cfg = TenetConfig(**_known_tenet_fields(tenet))
    return model


# ---------------------------------------------------------------------------------------------------------------
# Command line


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='python -m timm_tenet.hub', description='Share TENET weights on the Hugging Face Hub.')
    commands = parser.add_subparsers(dest='command', required=True)
    p = commands.add_parser(
        'push', help='export a checkpoint and upload it (or write the files with --dry-run DIR)',
        description='Export a checkpoint as model.safetensors, config.json and README.md and upload them in one '
                    'commit. The token comes from HF_TOKEN or `hf auth login`.')
    p.add_argument('--checkpoint', required=True, metavar='PATH',
                   help='timm-style checkpoint (model_best.pth.tar, ...), bare state dict, or .safetensors file')
    p.add_argument('--repo-id', required=True, metavar='NAMESPACE/NAME', help='Hub model repository')
    p.add_argument('--use-ema', action='store_true', help='export the EMA weights (state_dict_ema)')
    p.add_argument('--private', action='store_true', help='create the repository as private')
    p.add_argument('--dry-run', metavar='DIR', default=None,
                   help='write exactly what would be uploaded into DIR and upload nothing')
    p.add_argument('--overwrite', action='store_true', help='with --dry-run: replace a previous export in DIR')
    p.add_argument('--model', default=None, metavar='MODEL',
                   help="architecture, when the checkpoint's 'arch' is missing or wrong (e.g. a bare state dict)")
    p.add_argument('--num-classes', type=int, default=None, metavar='N',
                   help='expected number of classes (default: read from the classifier weights)')
    p.add_argument('--model-kwargs', nargs='*', default={}, action=ParseKwargs,
                   help="architecture arguments (key=value), on top of the checkpoint's args.model_kwargs")
    p.add_argument('--results-file', action='append', default=[], metavar='PATH',
                   help='validate.py results (JSON or CSV) for the card; repeat for several files')
    p.add_argument('--train-command', default=None, metavar='TEXT', help='training command line for the card')
    p.add_argument('--license', default=DEFAULT_LICENSE, help=f'license of the weights (default: {DEFAULT_LICENSE})')
    p.add_argument('--dataset', action='append', default=None, metavar='ID',
                   help="Hub dataset id for the card metadata; repeatable (default: from the checkpoint's args)")
    p.add_argument('--revision', default=None, help='branch to commit to (default: main)')
    p.add_argument('--create-pr', action='store_true', help='open a pull request instead of committing')
    p.add_argument('--commit-message', default=None)
    p.add_argument('--endpoint', default=None, help='Hub URL (default: HF_ENDPOINT or https://huggingface.co)')
    p.add_argument('--no-verify', action='store_true',
                   help='skip reloading the files and comparing logits with the checkpoint model')
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    try:
        where = push(
            args.checkpoint, args.repo_id, use_ema=args.use_ema, private=args.private, dry_run=args.dry_run,
            overwrite=args.overwrite, model_name=args.model, num_classes=args.num_classes,
            model_kwargs=args.model_kwargs, results_files=args.results_file, train_command=args.train_command,
            license=args.license, datasets=args.dataset, revision=args.revision, create_pr=args.create_pr,
            commit_message=args.commit_message, endpoint=args.endpoint, verify=not args.no_verify,
        )
    except (ExportError, HubError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    print(where)
    return 0


if __name__ == '__main__':
    sys.exit(main())
