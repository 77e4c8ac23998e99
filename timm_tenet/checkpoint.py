"""Training checkpoints: the one place that reads them (``weights_only``, one-line errors for missing, corrupt,
truncated or foreign files), picks a file from a training output folder, takes their weights and recorded
arguments, rebuilds their model, resumes training from them, and saves them atomically.

Every ``*.pth.tar`` that :class:`AtomicCheckpointSaver` writes is first written completely to a
hidden temporary file in the same folder, flushed to disk and then renamed over its target, and the
ranked / ``model_best`` copies are hard links (or copies) made the same way. A process killed at any
moment leaves the previous files intact; a stale temporary file is removed by the next saver.
"""
import argparse
import glob
import logging
import os
import pickle
import re
import shutil
import zipfile
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from timm.models import clean_state_dict
from timm.utils import CheckpointSaver, unwrap_model

from ._errors import first_line
from ._io import TMP_MARK, atomic_save, atomic_write_text, tmp_path

__all__ = [
    'AtomicCheckpointSaver', 'CheckpointError', 'EMA_KEYS', 'MODEL_KEYS', 'atomic_save', 'atomic_write_text',
    'checkpoint_args', 'classifier_outputs', 'extract_state_dict', 'is_state_dict', 'load_checkpoint_file',
    'load_model_weights', 'load_state_dict_checked', 'model_from_checkpoint', 'recorded_args',
    'resolve_checkpoint_path', 'restore_training_state', 'state_dict_mismatch',
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


def load_state_dict_checked(model: nn.Module, state_dict: Dict[str, Any], source: str) -> None:
    """``model.load_state_dict(state_dict)`` (strict), failing with one line that counts the mismatches."""
    problem = state_dict_mismatch(unwrap_model(model), state_dict)
    if problem:
        raise CheckpointError(f"'{source}' does not fit {type(unwrap_model(model)).__name__}: {problem}")
    unwrap_model(model).load_state_dict(state_dict)


def load_model_weights(model: nn.Module, path: str, use_ema: bool = False) -> None:
    """Load weights into ``model`` from a training checkpoint, a bare state dict or a ``.safetensors`` file
    (``--initial-checkpoint``), ``weights_only``, with one-line errors.

    ``use_ema`` takes the EMA weights where the checkpoint has them, else the model weights (as timm's
    ``load_checkpoint``).
    """
    state_dict = extract_state_dict(load_checkpoint_file(path), path, use_ema, ema_fallback=True)
    load_state_dict_checked(model, state_dict, path)


def model_from_checkpoint(path: str, use_ema: bool = False, **kwargs: Any) -> nn.Module:
    """The model a ``train.py`` checkpoint holds, in eval mode: created from the architecture, class count,
    input channels and model kwargs it records, then loaded (``weights_only``, strict).

    Args:
        path: A checkpoint file, or a ``train.py`` output folder (:func:`resolve_checkpoint_path`).
        use_ema: Load the EMA weights (an error if the checkpoint has none).
        **kwargs: Extra ``create_model`` arguments.

    Raises:
        CheckpointError: one line for a missing, corrupt, foreign or mismatched checkpoint.
    """
    from .tenet_models import create_tenet_model
    path = resolve_checkpoint_path(path)
    checkpoint = load_checkpoint_file(path)
    state_dict = extract_state_dict(checkpoint, path, use_ema)
    args = checkpoint_args(checkpoint)
    name = args.get('model')
    if not isinstance(name, str):
        raise CheckpointError(f"'{path}' does not record its model architecture (no args.model or arch)")
    input_size = args.get('input_size')
    create_kwargs = dict(num_classes=args.get('num_classes'),
                         in_chans=args.get('in_chans') or (input_size[0] if input_size else None),
                         **(args.get('model_kwargs') or {}))
    create_kwargs.update(kwargs)

    def create(**extra):
        try:
            return create_tenet_model(name, **{k: v for k, v in {**create_kwargs, **extra}.items() if v is not None})
        except (RuntimeError, ValueError, TypeError) as e:
            raise CheckpointError(f"cannot create model '{name}' recorded in '{path}': {first_line(e)}") from None

    model = create()
    if create_kwargs.get('num_classes') is None:  # no recorded class count: read it off the classifier weights
        classes, _ = classifier_outputs(state_dict, (getattr(model, 'pretrained_cfg', None) or {}).get('classifier')
                                        or 'fc')
        if classes is not None and classes != getattr(model, 'num_classes', classes):
            model = create(num_classes=classes)
    load_state_dict_checked(model, state_dict, path)
    return model.eval()


# ---------------------------------------------------------------------------------------------------------------
# Training state


def restore_training_state(
        task: Any,
        checkpoint: Dict[str, Any],
        path: str,
        optimizer: Optional[torch.optim.Optimizer] = None,
        loss_scaler: Optional[Any] = None,
        lr_scheduler: Optional[Any] = None,
) -> Optional[int]:
    """Restore model, TENET task state (the step counter), EMA, optimizer, AMP scaler and scheduler from
    a checkpoint written by :class:`AtomicCheckpointSaver` (or by timm's ``train.py``).

    Returns:
        The epoch to continue at (the checkpoint's epoch + 1), or None when it records no epoch.
    """
    if not isinstance(checkpoint, dict) or not any(k in checkpoint for k in ('state_dict', 'model')):
        raise CheckpointError(f"'{path}' is not a training checkpoint (no 'state_dict'); use --initial-checkpoint "
                              f'to start from bare weights')
    key = 'state_dict' if 'state_dict' in checkpoint else 'model'
    state_dict = clean_state_dict(checkpoint[key])
    load_state_dict_checked(task.get_eval_model(), state_dict, path)
    task.load_task_state(checkpoint.get('task_state'))
    if task.has_ema():
        ema_state = next((checkpoint[k] for k in EMA_KEYS if checkpoint.get(k)), None)
        if ema_state is not None:
            load_state_dict_checked(task.get_eval_model(ema=True), clean_state_dict(ema_state), f'{path} (EMA)')
            task.load_task_state(checkpoint.get('task_state_ema'), ema=True)
        else:
            _logger.warning(f"'{path}' has no EMA weights: the EMA restarts from the resumed model.")
            load_state_dict_checked(task.get_eval_model(ema=True), state_dict, path)
    try:
        if optimizer is not None and 'optimizer' in checkpoint:
            optimizer.load_state_dict(checkpoint['optimizer'])
        if loss_scaler is not None and loss_scaler.state_dict_key in checkpoint:
            loss_scaler.load_state_dict(checkpoint[loss_scaler.state_dict_key])
        if lr_scheduler is not None and checkpoint.get('scheduler'):
            lr_scheduler.load_state_dict(checkpoint['scheduler'])
    except (ValueError, KeyError, RuntimeError) as e:
        raise CheckpointError(f"optimizer/scaler/scheduler state in '{path}' does not fit this run "
                              f'({first_line(e)}); pass --no-resume-opt to restore the weights only') from None
    if 'epoch' not in checkpoint:
        return None
    epoch = int(checkpoint['epoch'])
    return epoch + 1 if checkpoint.get('version', 1) > 1 else epoch


class AtomicCheckpointSaver(CheckpointSaver):
    """timm's ``CheckpointSaver`` (``last``, ``model_best``, top-k ``checkpoint-N``, recovery files and the
    resumable ranking history) with every file written atomically, and the scheduler and the task
    state (TENET step counter) in the checkpoint.

    Args:
        task: The training task; its ``get_checkpoint_state`` gives model, EMA and task state.
        optimizer: Optimizer whose state is saved.
        args: Plain dict of the run's arguments (saved as ``args``; a ``Namespace`` is converted).
        amp_scaler: AMP loss scaler, if any.
        lr_scheduler: timm scheduler, if any.
        checkpoint_dir: Folder of the checkpoints.
        recovery_dir: Folder of recovery checkpoints (default: ``checkpoint_dir``).
        decreasing: A lower metric is better.
        max_history: Ranked checkpoints kept.
    """

    def __init__(
            self,
            task: Any,
            optimizer: torch.optim.Optimizer,
            args: Optional[Dict[str, Any]] = None,
            amp_scaler: Optional[Any] = None,
            lr_scheduler: Optional[Any] = None,
            checkpoint_dir: str = '',
            recovery_dir: str = '',
            decreasing: bool = False,
            max_history: int = 10,
    ):
        if isinstance(args, argparse.Namespace):
            from .train_args import args_to_dict
            args = args_to_dict(args)
        super().__init__(
            task.get_trainable_module(), optimizer, args=args, amp_scaler=amp_scaler,
            checkpoint_dir=checkpoint_dir, recovery_dir=recovery_dir or checkpoint_dir,
            decreasing=decreasing, max_history=max_history, unwrap_fn=unwrap_model, task=task)
        self.lr_scheduler = lr_scheduler
        for folder in {self.checkpoint_dir, self.recovery_dir}:
            for stale in glob.glob(os.path.join(folder, f'.*{TMP_MARK}*')):
                _logger.info(f'Removing unfinished temporary checkpoint {stale}')
                os.remove(stale)

    def _save(self, save_path, epoch, metric=None):
        state = {
            'epoch': epoch,
            'arch': (self.args or {}).get('model') or type(unwrap_model(self.model)).__name__.lower(),
            'optimizer': self.optimizer.state_dict(),
            'version': 2,  # the epoch stored is complete: resume continues at epoch + 1
        }
        if self.args is not None:
            state['args'] = self.args
        if self.amp_scaler is not None:
            state[self.amp_scaler.state_dict_key] = self.amp_scaler.state_dict()
        if self.lr_scheduler is not None:
            state['scheduler'] = self.lr_scheduler.state_dict()
        state.update(self.task.get_checkpoint_state(unwrap_fn=self.unwrap_fn))
        state.update(self.task.get_checkpoint_state(ema=True, unwrap_fn=self.unwrap_fn))
        if metric is not None:
            state['metric'] = metric
        state['saver'] = self.state_dict(epoch, metric)
        atomic_save(state, save_path)

    def _replace(self, src, dst):
        os.replace(src, dst)  # atomic on POSIX and Windows; never unlink dst first

    def _duplicate(self, src, dst):
        tmp = tmp_path(dst)  # a fresh name: nothing to clear first
        if self.can_hardlink:
            try:
                os.link(src, tmp)
            except (OSError, NotImplementedError):
                self.can_hardlink = False
        if not self.can_hardlink:
            shutil.copy2(src, tmp)
        os.replace(tmp, dst)
        if os.path.exists(tmp):  # rename() between two links of one file does nothing
            os.remove(tmp)
