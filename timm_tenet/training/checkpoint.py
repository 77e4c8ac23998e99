"""Training checkpoints: resume a run from one, and save them atomically.

Every ``*.pth.tar`` that :class:`AtomicCheckpointSaver` writes is first written completely to a
hidden temporary file in the same folder, flushed to disk and then renamed over its target, and the
ranked / ``model_best`` copies are hard links (or copies) made the same way. A process killed at any
moment leaves the previous files intact; a stale temporary file is removed by the next saver.
"""
import argparse
import glob
import logging
import os
import random
import shutil
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

import torch
from timm.models import clean_state_dict
from timm.utils import CheckpointSaver, unwrap_model

from ..data.dataset import DataError
from ..utils.checkpoint import EMA_KEYS, CheckpointError, check_state_dict_fits, checkpoint_class_names
from ..utils.errors import first_line
from ..utils.io import TMP_MARK, atomic_save, tmp_path
from ..utils.cli import args_to_dict

__all__ = ['AtomicCheckpointSaver', 'check_resumed_classes', 'get_rng_state', 'restore_training_state',
           'set_rng_state']

_logger = logging.getLogger(__name__)


def get_rng_state() -> Dict[str, Any]:
    """The random number generators that a training epoch draws from (torch CPU and CUDA: the loader's shuffle
    and workers' seeds, augmentation, k-means seeding; numpy: mixup; Python: timm's crop parameters), as tensors
    and plain values that ``weights_only`` loading accepts."""
    keys, pos, has_gauss, cached = np.random.get_state()[1:]
    version, mt, gauss_next = random.getstate()
    return {
        'torch': torch.get_rng_state(),
        'cuda': torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        'numpy': {'keys': torch.from_numpy(keys.astype(np.int64)), 'pos': int(pos), 'has_gauss': int(has_gauss),
                  'cached_gaussian': float(cached)},
        'python': {'version': version, 'state': torch.tensor(mt, dtype=torch.int64), 'gauss_next': gauss_next},
    }


def set_rng_state(state: Dict[str, Any]) -> None:
    """Restore what :func:`get_rng_state` captured (CUDA states only when the device count matches)."""
    torch.set_rng_state(state['torch'])
    cuda: List[torch.Tensor] = state.get('cuda') or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    numpy = state['numpy']
    np.random.set_state(('MT19937', numpy['keys'].numpy().astype(np.uint32), numpy['pos'], numpy['has_gauss'],
                         numpy['cached_gaussian']))
    python = state['python']
    random.setstate((python['version'], tuple(python['state'].tolist()), python['gauss_next']))


def _load_task_weights(task: Any, state_dict: Dict[str, Any], task_state: Optional[Dict[str, Any]], source: str,
                       ema: bool = False) -> None:
    """timm's ``task.load_checkpoint_state`` (strict), after checking in one line that the weights fit."""
    check_state_dict_fits(task.get_eval_model(ema=ema), state_dict, source)
    task.load_checkpoint_state(state_dict, task_state, ema=ema)


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

    Weights and task state go through timm's ``task.load_checkpoint_state`` (after a one-line check that the
    weights fit); unlike timm's ``resume_task_checkpoint`` this takes the checkpoint already read (it was checked
    before the data was prepared) and also restores the scheduler, which timm's helper leaves to the caller (the
    random generators, which timm does not save, are restored by the run with :func:`set_rng_state`).

    Returns:
        The epoch to continue at (the checkpoint's epoch + 1), or None when it records no epoch.
    """
    if not isinstance(checkpoint, dict) or not any(k in checkpoint for k in ('state_dict', 'model')):
        raise CheckpointError(f"'{path}' is not a training checkpoint (no 'state_dict'); use --initial-checkpoint "
                              f'to start from bare weights')
    key = 'state_dict' if 'state_dict' in checkpoint else 'model'
    state_dict = clean_state_dict(checkpoint[key])
    _load_task_weights(task, state_dict, checkpoint.get('task_state'), path)
    if task.has_ema():
        ema_state = next((checkpoint[k] for k in EMA_KEYS if checkpoint.get(k)), None)
        if ema_state is not None:
            _load_task_weights(task, clean_state_dict(ema_state), checkpoint.get('task_state_ema'), f'{path} (EMA)',
                               ema=True)
        else:
            _logger.warning(f"'{path}' has no EMA weights: the EMA restarts from the resumed model.")
            _load_task_weights(task, state_dict, None, path, ema=True)
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


def check_resumed_classes(path: str, checkpoint: Dict[str, Any], class_names: Optional[Sequence[str]]) -> None:
    """A resumed run must train on the classes its checkpoint (``path``) was trained on, index for index."""
    before, now = checkpoint_class_names(checkpoint), class_names
    if before is None or now is None or before == now:
        return
    i = next((i for i, (a, b) in enumerate(zip(before, now)) if a != b), min(len(before), len(now)))
    raise DataError(f"'{path}' was trained on other classes than this data: {len(before)} classes there, "
                    f"{len(now)} here, and class {i} is '{before[i] if i < len(before) else '-'}' there but "
                    f"'{now[i] if i < len(now) else '-'}' here; pass the --class-map / --num-classes of that run "
                    f'(or start from its weights with --initial-checkpoint)')


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
        class_names: Name of each output class in index order, saved as ``class_names``.
        save_rng: Save the random generators' states (:func:`get_rng_state`), so that a run resumed at an epoch
            boundary draws what the uninterrupted run would have drawn.
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
            class_names: Optional[Sequence[str]] = None,
            save_rng: bool = True,
    ):
        if isinstance(args, argparse.Namespace):
            args = args_to_dict(args)
        super().__init__(
            task.get_trainable_module(), optimizer, args=args, amp_scaler=amp_scaler,
            checkpoint_dir=checkpoint_dir, recovery_dir=recovery_dir or checkpoint_dir,
            decreasing=decreasing, max_history=max_history, unwrap_fn=unwrap_model, task=task)
        self.lr_scheduler = lr_scheduler
        self.class_names = list(class_names) if class_names is not None else None
        self.save_rng = save_rng
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
        if self.class_names is not None:
            state['class_names'] = self.class_names
        if self.save_rng:
            state['rng_state'] = get_rng_state()
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
