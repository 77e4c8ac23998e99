"""Export a TENET training checkpoint as timm's Hugging Face Hub files, without uploading them.

An export holds ``model.safetensors`` (no pickle), timm's ``config.json`` and a ``README.md`` model card
(:mod:`timm_tenet.hub.model_card`). ``config.json`` names the BASE architecture (``resnet50_tenet`` ->
``resnet50``), so stock timm loads the files and gives the same logits; the TENET model name and settings are
in the card and in the extra ``tenet`` field of ``config.json``. The CIFAR bases (``cifar_resnet18``,
``cifar_resnext29_4x32d``) are registered by ``timm_tenet`` itself: their exports load only after
``import timm_tenet``. :mod:`timm_tenet.hub` uploads the files.
"""
import csv
import io
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Union

import torch
import torch.nn as nn

import timm
from timm.models import get_pretrained_cfg, is_model, model_entrypoint, resolve_model_input_args, save_for_hf
from timm.models._registry import get_arch_name

from .. import __version__
from ..utils.errors import first_line
from ..utils.checkpoint import CheckpointError, checkpoint_args, checkpoint_class_names, classifier_outputs, \
    extract_state_dict, is_state_dict, load_checkpoint_file, recorded_args, state_dict_mismatch
from ..config import TenetConfig
from .model_card import DEFAULT_LICENSE, PAPER, dataset_ids, model_card
from ..models.tenet_models import TENET_BASES

__all__ = [
    'CONFIG_NAME', 'CheckpointState', 'EXPORT_FILES', 'ExportError', 'check_repo_id', 'export_to_folder',
    'known_tenet_fields', 'load_checkpoint_state', 'read_results',
]

_logger = logging.getLogger(__name__)

WEIGHTS_NAME = 'model.safetensors'
CONFIG_NAME = 'config.json'
CARD_NAME = 'README.md'
EXPORT_FILES = (WEIGHTS_NAME, CONFIG_NAME, CARD_NAME)

# training arguments that describe preprocessing (they go to the exported pretrained_cfg)
_DATA_KEYS = ('input_size', 'img_size', 'in_chans', 'mean', 'std', 'crop_pct', 'crop_mode', 'interpolation')


class ExportError(ValueError):
    """Input that cannot be exported: the checkpoint, its class count, the repo id or the output folder."""


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints


@dataclass
class CheckpointState:
    """What an export needs from a timm-style training checkpoint.

    Args:
        path: The checkpoint file.
        state_dict: Model weights, with DDP / ``torch.compile`` prefixes removed.
        weights: Where they came from: ``'state_dict'``, ``'state_dict_ema'`` or ``'bare'`` (a plain state dict).
        arch: Model name it was trained as (``args['model']``, else ``arch``), None if not recorded.
        args: Training arguments as a dict (``argparse.Namespace`` or dict in the checkpoint), else empty.
        tenet_cfg: TENET settings from ``task_state['tenet_cfg']``, if recorded.
        tenet_step: Training forward calls counted by the TENET task, if recorded.
        epoch: Epoch of the checkpoint, if recorded.
        metric: Evaluation metric the checkpoint saver ranked it by, if recorded.
        class_names: Name of each output class in index order (the training folders), if recorded.
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
    class_names: Optional[List[str]] = None


def load_checkpoint_state(checkpoint: Union[str, Path], use_ema: bool = False) -> CheckpointState:
    """Read a checkpoint with ``torch.load(weights_only=True)`` (``.safetensors`` files too), through
    :mod:`timm_tenet.utils.checkpoint`.

    Takes what timm's checkpoint saver writes (a dict with ``state_dict``, ``arch``, optionally
    ``state_dict_ema``, ``args``, ``epoch``, ``metric``, ``task_state``) or a bare state dict.

    Args:
        checkpoint: Path of the checkpoint file.
        use_ema: Take ``state_dict_ema``; a checkpoint without EMA weights is an error.

    Raises:
        ExportError: One line naming the file and what is wrong with it.
    """
    path = Path(checkpoint)
    try:
        obj = load_checkpoint_file(path)
        state_dict = extract_state_dict(obj, path, use_ema)
    except CheckpointError as e:
        raise ExportError(str(e)) from None
    if is_state_dict(obj):
        return CheckpointState(path=path, state_dict=state_dict, weights='bare')
    task_state = obj.get('task_state') if isinstance(obj.get('task_state'), dict) else {}
    tenet_cfg = task_state.get('tenet_cfg')
    step = task_state.get('tenet_step')
    metric = obj.get('metric')
    return CheckpointState(
        path=path,
        state_dict=state_dict,
        weights='state_dict_ema' if use_ema else 'state_dict',
        arch=checkpoint_args(obj).get('model'),
        args=recorded_args(obj),
        tenet_cfg=dict(tenet_cfg) if isinstance(tenet_cfg, dict) else None,
        tenet_step=int(step) if isinstance(step, (int, float)) else None,
        epoch=obj.get('epoch') if isinstance(obj.get('epoch'), int) else None,
        metric=float(metric) if isinstance(metric, (int, float)) else None,
        class_names=checkpoint_class_names(obj),
    )


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
    card: Dict[str, Any] = field(default_factory=dict)  # model_card() arguments: results, train_command, ...


def known_tenet_fields(values: Dict[str, Any]) -> Dict[str, Any]:
    """The entries of ``values`` that are :class:`~timm_tenet.config.TenetConfig` fields."""
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
    found, key = classifier_outputs(state.state_dict, cfg.classifier if cfg is not None else None)
    if found is not None and num_classes is not None and found != num_classes:
        raise ExportError(
            f"--num-classes {num_classes} does not match the checkpoint: its classifier '{key}' has {found} outputs")
    classes = found if found is not None else num_classes if num_classes is not None else state.args.get('num_classes')
    if classes is None:
        raise ExportError(f"cannot read the number of classes: the checkpoint has no '{key}': pass --num-classes")

    if state.class_names is not None and len(state.class_names) != classes:
        raise ExportError(f"'{state.path}' records {len(state.class_names)} class names for a classifier of {classes} "
                          f'outputs: it is not a checkpoint train.py wrote for this model')

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
            f"cannot build {arch} with {classes} classes ({first_line(e)}): pass the --model / --model-kwargs "
            f"of the training run") from None

    problem = state_dict_mismatch(model, state.state_dict)
    if problem:
        raise ExportError(
            f"the checkpoint's weights do not fit {arch} with {classes} classes: {problem}; "
            f"pass the --model / --model-kwargs of the training run")
    model.load_state_dict(state.state_dict)
    model.eval()

    if state.tenet_cfg is not None:
        tenet_cfg = dict(state.tenet_cfg)
    elif arch in TENET_BASES:
        tenet_cfg = getattr(model, 'tenet_cfg', TenetConfig()).replace(**known_tenet_fields(tenet_args)).to_dict()
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
        raise ExportError(f"cannot read results file '{path}' ({first_line(e)})") from None
    suffix = path.suffix.lower()
    rows: List[Dict[str, Any]] = []
    if suffix != '.csv':
        try:
            rows = list(_json_rows(json.loads(text)))
        except json.JSONDecodeError as e:
            if suffix == '.json':
                raise ExportError(f"results file '{path}' is not valid JSON ({first_line(e)})") from None
    if not rows and suffix != '.json':
        try:
            rows = _csv_rows(text)
        except csv.Error as e:
            raise ExportError(f"results file '{path}' is neither JSON nor CSV ({first_line(e)})") from None
    rows = [r for r in rows if r]
    if not rows:
        raise ExportError(f"results file '{path}' holds no results")
    return rows


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
        raise ExportError(f"malformed repo id '{repo_id}': {first_line(e)}") from None
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


def _write_files(export: _Export, folder: Path, repo_id: str, verify: bool) -> None:
    """Write ``model.safetensors``, ``config.json`` and ``README.md`` into the existing folder ``folder``, and with
    ``verify`` load them as timm does and require the checkpoint model's logits exactly."""
    tenet = {
        'model': export.tenet_model,
        'architecture': export.architecture,
        'config': export.tenet_cfg,
        'step': export.state.tenet_step,
        'timm_tenet_version': __version__,
        'paper': PAPER['paper_ids'],
    }
    if export.needs_timm_tenet:
        tenet['requires'] = 'timm_tenet'
    notes = f"Trained with TENET as {export.tenet_model or export.architecture}; exported by timm_tenet {__version__}."
    model_config = dict(
        pretrained_cfg=dict(architecture=export.architecture, tag=_tag(repo_id), license=export.card['license'],
                            notes=(notes,), **PAPER),
        tenet=tenet,
    )
    if export.state.class_names:
        model_config['label_names'] = list(export.state.class_names)  # timm's field: index -> class name
    save_for_hf(export.model, folder, model_config=model_config, safe_serialization=True,
                data_config=export.data_config)
    config = json.loads((folder / CONFIG_NAME).read_text(encoding='utf-8'))
    text = model_card(
        config, repo_id,
        param_count=sum(p.numel() for p in export.model.parameters()) / 1e6,
        train_args=export.state.args, epoch=export.state.epoch, metric=export.state.metric,
        weights=export.state.weights, **export.card,
    )
    (folder / CARD_NAME).write_text(text, encoding='utf-8')
    for name in EXPORT_FILES:
        os.chmod(folder / name, 0o644)
    if verify:
        _verify(folder, config, export.model)


def _verify(folder: Path, config: Dict[str, Any], model: nn.Module) -> None:
    """Load ``folder`` as timm does (``local-dir:``) and require ``model``'s logits exactly."""
    timm_logger = logging.getLogger('timm')
    level = timm_logger.level
    timm_logger.setLevel(logging.WARNING)  # timm logs the temporary path it loads from
    try:
        loaded = timm.create_model(f'local-dir:{folder}', pretrained=True).eval()
    finally:
        timm_logger.setLevel(level)
    x = torch.randn(2, *config['pretrained_cfg']['input_size'], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, got = model(x), loaded(x)
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
) -> _Export:
    """Read the results files and the checkpoint and rebuild its model: every input error comes before any
    file is written."""
    results = [row for path in results_files for row in read_results(path)]
    export = _rebuild(load_checkpoint_state(checkpoint, use_ema=use_ema), model_name, num_classes, model_kwargs)
    export.card = dict(results=results, train_command=train_command, license=license,
                       datasets=list(datasets) if datasets is not None else dataset_ids(export.state.args))
    return export


def _write_folder(export: _Export, folder: Path, repo_id: str, verify: bool) -> Path:
    """Build the export in a temporary sibling of ``folder``, then move it into place (replacing an export)."""
    folder = folder.absolute()
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f'.{folder.name}.tmp-', dir=folder.parent))
    old = None
    try:
        os.chmod(tmp, 0o755)
        _write_files(export, tmp, repo_id, verify)
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
    export = _prepare(checkpoint, use_ema, model_name, num_classes, model_kwargs, results_files, train_command,
                      license, datasets)
    return _write_folder(export, folder, repo_id, verify)
