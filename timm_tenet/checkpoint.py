"""Training checkpoints that are never half-written, and loading them (``weights_only``) with one-line
errors for corrupt, truncated or foreign files.

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
from typing import Any, Dict, Optional

import torch
import torch.nn as nn
from timm.models import clean_state_dict
from timm.utils import CheckpointSaver, unwrap_model

__all__ = [
    'AtomicCheckpointSaver', 'CheckpointError', 'atomic_save', 'load_checkpoint_file', 'load_model_weights',
    'load_state_dict_checked', 'model_from_checkpoint', 'restore_training_state',
]

_logger = logging.getLogger(__name__)

_TMP_MARK = '.tmp-'


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: missing, corrupt, truncated, foreign, or for another model."""


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _tmp_path(path: str) -> str:
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.join(folder, f'.{name}{_TMP_MARK}{os.getpid()}')


def atomic_save(obj: Any, path: str) -> None:
    """``torch.save(obj, path)`` through a temporary file, fsync and rename: ``path`` is either its old
    content or the complete new one, whenever the process dies."""
    tmp = _tmp_path(path)
    try:
        with open(tmp, 'wb') as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    _fsync_dir(os.path.dirname(os.path.abspath(path)))


def atomic_write_text(text: str, path: str) -> None:
    """Write a text file (``args.yaml``) through a temporary file and rename."""
    tmp = _tmp_path(path)
    with open(tmp, 'w') as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def load_checkpoint_file(path: str) -> Any:
    """Load a checkpoint with ``weights_only=True`` on the CPU (``.safetensors`` files too).

    Raises:
        CheckpointError: one line naming the file and what is wrong with it.
    """
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: '{path}'")
    if path.endswith('.safetensors'):
        try:
            from safetensors.torch import load_file
            return load_file(path, device='cpu')
        except Exception as e:
            raise CheckpointError(f"cannot read safetensors checkpoint '{path}': {_one_line(e)}") from None
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):  # timm's train.py stores args as a Namespace
            return torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as e:
        foreign = re.search(r'Unsupported global: GLOBAL (\S+)', str(e))
        if foreign:
            raise CheckpointError(
                f"refusing to load '{path}': it holds a {foreign.group(1)} object, and weights_only loading runs "
                f'no code from a checkpoint (re-save it with tensors and plain values only)') from None
        raise CheckpointError(f"checkpoint '{path}' is corrupt or not a PyTorch file (unreadable pickle)") from None
    except (EOFError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"checkpoint '{path}' is truncated or corrupt ({_one_line(e)})") from None
    except Exception as e:  # torch.load of arbitrary bytes also raises RuntimeError, KeyError, ValueError, ...
        raise CheckpointError(f"checkpoint '{path}' is corrupt or not a PyTorch file "
                              f'({type(e).__name__}: {_one_line(e)})') from None


def _summarise_mismatch(model: nn.Module, state_dict: Dict[str, Any]) -> Optional[str]:
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
    problem = _summarise_mismatch(unwrap_model(model), state_dict)
    if problem:
        raise CheckpointError(f"'{source}' does not fit {type(unwrap_model(model)).__name__}: {problem}")
    unwrap_model(model).load_state_dict(state_dict)


def _extract_state_dict(checkpoint: Any, path: str, use_ema: bool = False) -> Dict[str, Any]:
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"'{path}' is not a checkpoint: it holds a {type(checkpoint).__name__}, not a dict")
    keys = (('state_dict_ema', 'model_ema') if use_ema else ()) + ('state_dict', 'model', 'module')
    for key in keys:
        if isinstance(checkpoint.get(key), dict):
            return clean_state_dict(checkpoint[key])
    if checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        return clean_state_dict(checkpoint)
    keys = ', '.join(map(str, list(checkpoint)[:8]))
    raise CheckpointError(f"'{path}' holds no model weights (top-level keys: {keys})")


def load_model_weights(model: nn.Module, path: str, use_ema: bool = False) -> None:
    """Load weights into ``model`` from a training checkpoint, a bare state dict or a ``.safetensors`` file
    (``--initial-checkpoint``), ``weights_only``, with one-line errors."""
    load_state_dict_checked(model, _extract_state_dict(load_checkpoint_file(path), path, use_ema), path)


def _resolve_checkpoint(path: str) -> str:
    if os.path.isdir(path):
        for name in ('model_best.pth.tar', 'last.pth.tar'):
            if os.path.isfile(os.path.join(path, name)):
                return os.path.join(path, name)
        raise CheckpointError(f"no model_best.pth.tar or last.pth.tar in folder '{path}'")
    return path


def model_from_checkpoint(path: str, use_ema: bool = False, **kwargs: Any) -> nn.Module:
    """The model a ``train.py`` checkpoint holds, in eval mode: created from the architecture, class count,
    input channels and model kwargs it records, then loaded (``weights_only``, strict).

    Args:
        path: A checkpoint file, or a ``train.py`` output folder (its ``model_best.pth.tar``, else ``last.pth.tar``).
        use_ema: Load the EMA weights (an error if the checkpoint has none).
        **kwargs: Extra ``create_model`` arguments.

    Raises:
        CheckpointError: one line for a missing, corrupt, foreign or mismatched checkpoint.
    """
    from .tenet_models import create_tenet_model
    path = _resolve_checkpoint(path)
    checkpoint = load_checkpoint_file(path)
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"'{path}' is not a checkpoint: it holds a {type(checkpoint).__name__}, not a dict")
    if use_ema and not any(isinstance(checkpoint.get(k), dict) for k in ('state_dict_ema', 'model_ema')):
        raise CheckpointError(f"'{path}' has no EMA weights (state_dict_ema); train with --model-ema")
    args = checkpoint.get('args')
    args = vars(args) if isinstance(args, argparse.Namespace) else (args if isinstance(args, dict) else {})
    name = args.get('model') or checkpoint.get('arch')
    if not isinstance(name, str):
        raise CheckpointError(f"'{path}' does not record its model architecture (no args.model or arch)")
    input_size = args.get('input_size')
    create_kwargs = dict(num_classes=args.get('num_classes'),
                         in_chans=args.get('in_chans') or (input_size[0] if input_size else None),
                         **(args.get('model_kwargs') or {}))
    create_kwargs.update(kwargs)
    state_dict = _extract_state_dict(checkpoint, path, use_ema)

    def create(**extra):
        try:
            return create_tenet_model(name, **{k: v for k, v in {**create_kwargs, **extra}.items() if v is not None})
        except (RuntimeError, ValueError, TypeError) as e:
            raise CheckpointError(f"cannot create model '{name}' recorded in '{path}': {_one_line(e)}") from None

    model = create()
    if create_kwargs.get('num_classes') is None:  # no recorded class count: read it off the classifier weights
        classifier = (getattr(model, 'pretrained_cfg', None) or {}).get('classifier') or 'fc'
        weight = state_dict.get(f'{classifier}.weight')
        if weight is not None and weight.shape[0] != getattr(model, 'num_classes', weight.shape[0]):
            model = create(num_classes=weight.shape[0])
    load_state_dict_checked(model, state_dict, path)
    return model.eval()


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
        ema_state = checkpoint.get('state_dict_ema') or checkpoint.get('model_ema')
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
                              f'({_one_line(e)}); pass --no-resume-opt to restore the weights only') from None
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
            for stale in glob.glob(os.path.join(folder, f'.*{_TMP_MARK}*')):
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
        tmp = _tmp_path(dst)
        if os.path.exists(tmp):
            os.remove(tmp)
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
