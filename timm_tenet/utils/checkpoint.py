"""Reading checkpoints: the one place that opens them (``weights_only``, one-line errors for missing, corrupt,
truncated or foreign files), picks a file from a training output folder and takes their weights and recorded
arguments. Rebuilding the model is :mod:`timm_tenet.models.loading`; resuming and atomic saving are
:mod:`timm_tenet.training.checkpoint`.
"""
import argparse
import glob
import logging
import os
import pickle
import re
import zipfile
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from timm.models import clean_state_dict
from timm.utils import unwrap_model

from .errors import first_line

__all__ = [
    'CheckpointError', 'EMA_KEYS', 'MODEL_KEYS', 'check_state_dict_fits', 'checkpoint_args', 'checkpoint_class_names',
    'classifier_outputs', 'extract_state_dict', 'is_state_dict', 'load_checkpoint_file', 'load_model_weights',
    'load_state_dict_checked', 'recorded_args', 'resolve_checkpoint_path', 'state_dict_mismatch',
]

_logger = logging.getLogger(__name__)

# where timm-style checkpoints keep the weights, in the order they are looked for
MODEL_KEYS = ('state_dict', 'model', 'module')
EMA_KEYS = ('state_dict_ema', 'model_ema')
# what a training output folder is searched for, in order (then the newest *.pth.tar)
_FOLDER_CHECKPOINTS = ('model_best.pth.tar', 'last.pth.tar')

PathLike = Union[str, 'os.PathLike[str]']


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: missing, corrupt, truncated, foreign, or for another model."""


# ---------------------------------------------------------------------------------------------------------------
# Reading


def resolve_checkpoint_path(path: PathLike) -> str:
    """A checkpoint file as given, or for a training output folder its ``model_best.pth.tar``, else
    ``last.pth.tar``, else the newest ``*.pth.tar``.

    Raises:
        CheckpointError: nothing at ``path``, or a folder without any ``*.pth.tar``.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        for name in _FOLDER_CHECKPOINTS:
            if os.path.isfile(os.path.join(path, name)):
                return os.path.join(path, name)
        candidates = [p for p in glob.glob(os.path.join(path, '*.pth.tar')) if os.path.isfile(p)]
        if not candidates:
            raise CheckpointError(f"no checkpoint in folder '{path}': no model_best.pth.tar or last.pth.tar, and no "
                                  f"other *.pth.tar")
        return max(candidates, key=os.path.getmtime)
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint not found: '{path}'")
    return path


def _describe(e: BaseException) -> str:
    return f'{type(e).__name__}: {first_line(e)}' if str(e).strip() else type(e).__name__


def _not_pytorch(path: str, detail: str) -> CheckpointError:
    return CheckpointError(f"'{path}' is not a PyTorch checkpoint: it is corrupt or not a PyTorch file ({detail})")


def load_checkpoint_file(path: PathLike) -> Any:
    """Load a checkpoint file with ``weights_only=True`` on the CPU (``.safetensors`` files too).

    ``argparse.Namespace`` is allowed (timm's ``train.py`` stores its arguments as one); any other
    Python object in the file is refused, not run.

    Raises:
        CheckpointError: one line naming the file and what is wrong with it.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint not found: '{path}'")
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint '{path}' is not a file")
    if path.endswith('.safetensors'):
        try:
            from safetensors.torch import load_file
            return load_file(path, device='cpu')
        except Exception as e:
            raise CheckpointError(f"'{path}' is not a readable safetensors file ({first_line(e)})") from None
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as e:
        foreign = re.search(r'Unsupported global: GLOBAL (\S+)', str(e))
        if foreign:
            raise CheckpointError(
                f"refusing to load '{path}': it holds a {foreign.group(1)} object, and weights_only loading does "
                f'not run code from a checkpoint (re-save it with tensors and plain values only)') from None
        # torch's message is a paragraph; the reason follows 'WeightsUnpickler error:'
        text = str(e).split('WeightsUnpickler error:', 1)[-1]
        reason = next((line.strip() for line in text.splitlines() if line.strip()), None)
        raise _not_pytorch(path, 'unreadable pickle' + (f': {reason}' if reason else '')) from None
    except (EOFError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"'{path}' is not a PyTorch checkpoint: it is truncated or corrupt ({_describe(e)})") \
            from None
    except Exception as e:  # torch.load of arbitrary bytes also raises RuntimeError, KeyError, ValueError, ...
        raise _not_pytorch(path, _describe(e)) from None


def is_state_dict(obj: Any) -> bool:
    """A non-empty dict of tensors (a bare state dict)."""
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def extract_state_dict(
        checkpoint: Any,
        path: PathLike,
        use_ema: bool = False,
        ema_fallback: bool = False,
) -> Dict[str, torch.Tensor]:
    """The model weights of a loaded checkpoint, DDP / ``torch.compile`` prefixes removed.

    Takes a timm-style checkpoint (weights under one of :data:`MODEL_KEYS`, EMA weights under one of
    :data:`EMA_KEYS`) or a bare state dict.

    Args:
        checkpoint: What :func:`load_checkpoint_file` returned.
        path: Its file, for messages.
        use_ema: Take the EMA weights; a checkpoint without them is an error...
        ema_fallback: ...unless this is set: then it gives the model weights (as timm's ``load_checkpoint``).

    Raises:
        CheckpointError: not a dict, no weights, or (``use_ema`` without ``ema_fallback``) no EMA weights.
    """
    if not isinstance(checkpoint, dict) or not checkpoint:
        what = 'an empty dict' if isinstance(checkpoint, dict) else f'a {type(checkpoint).__name__}'
        raise CheckpointError(f"'{path}' is not a checkpoint: it holds {what}, not model weights")
    need_ema = use_ema and not ema_fallback
    if is_state_dict(checkpoint):
        if need_ema:
            raise CheckpointError(f"'{path}' is a bare state dict: it has no EMA weights (state_dict_ema); drop "
                                  f'--use-ema')
        return clean_state_dict(checkpoint)
    keys = (EMA_KEYS if use_ema else ()) + (() if need_ema else MODEL_KEYS)
    for key in keys:
        if is_state_dict(checkpoint.get(key)):
            return clean_state_dict(checkpoint[key])
    if need_ema:
        raise CheckpointError(f"'{path}' has no EMA weights (state_dict_ema); drop --use-ema or train with "
                              f'--model-ema')
    shown = ', '.join(map(str, list(checkpoint)[:8]))
    raise CheckpointError(f"'{path}' is not a timm checkpoint: no 'state_dict' of tensors (top-level keys: {shown})")


def recorded_args(checkpoint: Any) -> Dict[str, Any]:
    """The training arguments a checkpoint records (``args``: a dict, or timm's ``argparse.Namespace``), else {}."""
    args = checkpoint.get('args') if isinstance(checkpoint, dict) else None
    if isinstance(args, argparse.Namespace):
        args = vars(args)
    return dict(args) if isinstance(args, Mapping) else {}


def checkpoint_args(checkpoint: Any) -> Dict[str, Any]:
    """:func:`recorded_args`, with ``model`` set from the checkpoint's ``arch`` when the arguments name none.

    ``args.model`` comes first: timm's saver records the model class (``'resnet'``) as ``arch`` and the
    model name only in ``args``.
    """
    args = recorded_args(checkpoint)
    arch = checkpoint.get('arch') if isinstance(checkpoint, dict) else None
    if not (isinstance(args.get('model'), str) and args['model']) and isinstance(arch, str) and arch:
        args['model'] = arch
    return args


def checkpoint_class_names(checkpoint: Any) -> Optional[List[str]]:
    """The class names a checkpoint records (``class_names``, index order, as ``train.py`` saves them), else None."""
    names = checkpoint.get('class_names') if isinstance(checkpoint, dict) else None
    if isinstance(names, (list, tuple)) and names and all(isinstance(n, str) for n in names):
        return list(names)
    return None


def classifier_outputs(
        state_dict: Mapping[str, torch.Tensor],
        classifier: Optional[Union[str, Sequence[str]]],
) -> Tuple[Optional[int], str]:
    """The class count a state dict's classifier weights give, and the key they were read from.

    Args:
        state_dict: Model weights.
        classifier: The model's ``pretrained_cfg['classifier']``: a module name, or several (the first with
            weights is read).

    Returns:
        ``(classes, key)``; ``classes`` is None when no classifier weights are found, and ``key`` then names the
        one looked for.
    """
    names = classifier if isinstance(classifier, (list, tuple)) else (classifier,)
    for name in names:
        weight = state_dict.get(f'{name}.weight') if name else None
        if weight is not None and weight.ndim >= 2:
            return int(weight.shape[0]), f'{name}.weight'
    return None, f'{names[0]}.weight' if names and names[0] else 'classifier weights'


# ---------------------------------------------------------------------------------------------------------------
# Loading into a model


def state_dict_mismatch(model: nn.Module, state_dict: Mapping[str, Any]) -> Optional[str]:
    """How ``state_dict`` fails to fit ``model`` (missing, unexpected, shape-mismatched keys), or None if it fits."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [k for k in own if k in state_dict and hasattr(state_dict[k], 'shape')
              and tuple(state_dict[k].shape) != tuple(own[k].shape)]
    problems = []
    for label, keys in (('missing', missing), ('unexpected', unexpected), ('shape-mismatched', shapes)):
        if keys:
            problems.append(f'{len(keys)} {label} key(s) (e.g. {keys[0]})')
    return ', '.join(problems) or None


def check_state_dict_fits(model: nn.Module, state_dict: Dict[str, Any], source: str) -> None:
    """A one-line :class:`CheckpointError` that counts the mismatches unless ``state_dict`` loads strictly."""
    problem = state_dict_mismatch(unwrap_model(model), state_dict)
    if problem:
        raise CheckpointError(f"'{source}' does not fit {type(unwrap_model(model)).__name__}: {problem}")


def load_state_dict_checked(model: nn.Module, state_dict: Dict[str, Any], source: str) -> None:
    """``model.load_state_dict(state_dict)`` (strict), failing with one line that counts the mismatches."""
    check_state_dict_fits(model, state_dict, source)
    unwrap_model(model).load_state_dict(state_dict)


def load_model_weights(model: nn.Module, path: str, use_ema: bool = False) -> None:
    """Load weights into ``model`` from a training checkpoint, a bare state dict or a ``.safetensors`` file
    (``--initial-checkpoint``), ``weights_only``, with one-line errors.

    ``use_ema`` takes the EMA weights where the checkpoint has them, else the model weights (as timm's
    ``load_checkpoint``).
    """
    state_dict = extract_state_dict(load_checkpoint_file(path), path, use_ema, ema_fallback=True)
    load_state_dict_checked(model, state_dict, path)
