"""The first step of an export: read a training checkpoint (``weights_only``) and rebuild its model as it was
trained (architecture, class count, model kwargs, TENET settings), weights loaded strictly."""
import logging
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import torch
import torch.nn as nn

import timm
from timm.models import get_pretrained_cfg, is_model, model_entrypoint, resolve_model_input_args
from timm.models._registry import get_arch_name

from ..config import TenetConfig
from ..models.tenet_models import TENET_BASES
from ..utils.checkpoint import CheckpointError, checkpoint_args, checkpoint_class_names, classifier_outputs, \
    extract_state_dict, is_state_dict, load_checkpoint_file, recorded_args, state_dict_mismatch
from ..utils.errors import first_line

__all__ = ['CheckpointState', 'ExportError', 'RebuiltModel', 'known_tenet_fields', 'load_checkpoint_state',
           'rebuild_model']

_logger = logging.getLogger(__name__)

# training arguments that describe preprocessing (they go to the exported pretrained_cfg)
_DATA_KEYS = ('input_size', 'img_size', 'in_chans', 'mean', 'std', 'crop_pct', 'crop_mode', 'interpolation')


class ExportError(ValueError):
    """Input that cannot be exported: the checkpoint, its class count, the repo id or the output folder."""


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
        rsc_cfg: RSC settings from ``task_state['rsc_cfg']`` (a run trained with ``--rsc``), if recorded.
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
    rsc_cfg: Optional[Dict[str, Any]] = None
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
    rsc_cfg = task_state.get('rsc_cfg')
    step = task_state.get('tenet_step')
    metric = obj.get('metric')
    return CheckpointState(
        path=path,
        state_dict=state_dict,
        weights='state_dict_ema' if use_ema else 'state_dict',
        arch=checkpoint_args(obj).get('model'),
        args=recorded_args(obj),
        tenet_cfg=dict(tenet_cfg) if isinstance(tenet_cfg, dict) else None,
        rsc_cfg=dict(rsc_cfg) if isinstance(rsc_cfg, dict) else None,
        tenet_step=int(step) if isinstance(step, (int, float)) else None,
        epoch=obj.get('epoch') if isinstance(obj.get('epoch'), int) else None,
        metric=float(metric) if isinstance(metric, (int, float)) else None,
        class_names=checkpoint_class_names(obj),
    )


@dataclass
class RebuiltModel:
    """A checkpoint's model rebuilt as trained, and what the config and card say about it."""
    state: CheckpointState
    model: nn.Module  # eval mode, checkpoint weights
    architecture: str  # the base architecture, config.json's 'architecture'
    tenet_model: Optional[str]  # the *_tenet name, if trained as one
    tenet_cfg: Optional[Dict[str, Any]]  # None for a model trained with RSC, whatever its name
    rsc_cfg: Optional[Dict[str, Any]]  # the RSC settings of a model trained with RSC
    data_config: Dict[str, Any]
    needs_timm_tenet: bool  # the base architecture is registered by timm_tenet, not by timm


def known_tenet_fields(values: Dict[str, Any]) -> Dict[str, Any]:
    """The entries of ``values`` that are :class:`~timm_tenet.config.TenetConfig` fields."""
    names = {f.name for f in fields(TenetConfig)}
    return {k: v for k, v in values.items() if k in names}


def rebuild_model(
        state: CheckpointState,
        model_name: Optional[str] = None,
        num_classes: Optional[int] = None,
        model_kwargs: Optional[Dict[str, Any]] = None,
) -> RebuiltModel:
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

    if state.rsc_cfg is not None:
        tenet_cfg = None  # a *_tenet name carries TENET defaults, but this run trained with RSC instead
    elif state.tenet_cfg is not None:
        tenet_cfg = dict(state.tenet_cfg)
    elif arch in TENET_BASES:
        tenet_cfg = getattr(model, 'tenet_cfg', TenetConfig()).replace(**known_tenet_fields(tenet_args)).to_dict()
    else:
        tenet_cfg = None
        _logger.warning(f'{state.path} records no TENET settings and {arch} is not a *_tenet model.')
    return RebuiltModel(
        state=state,
        model=model,
        architecture=base,
        tenet_model=arch if arch in TENET_BASES else None,
        tenet_cfg=tenet_cfg,
        rsc_cfg=state.rsc_cfg,
        data_config=data_config,
        needs_timm_tenet=model_entrypoint(base).__module__.split('.')[0] == 'timm_tenet',
    )
