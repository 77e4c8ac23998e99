"""One training epoch and one validation pass over a timm task (``task(input, target)`` -> loss dict),
with gradient accumulation, AMP, clipping, EMA, DDP and TENET's loss terms in the logs.

Losses are summed on the device and read back only at log intervals and at the end of the epoch
(a ``.item()`` per step would synchronise every step on a GPU); each read checks that the loss is
finite, so a diverged run stops before its weights are checkpointed.
"""
import logging
import time
from collections import OrderedDict
from contextlib import nullcontext
from datetime import timedelta
from typing import Any, Callable, ContextManager, Dict, Iterable, Optional, Tuple

import torch
import torch.distributed as dist
from timm.utils import dispatch_clip_grad

from ..task import TenetTask, ensure_finite

__all__ = ['TENET_TERMS', 'Perturb', 'train_one_epoch', 'validate']

_logger = logging.getLogger(__name__)

TENET_TERMS = ('loss_inhibited', 'loss_orth', 'inhibited_frac')

# Optional input transformation run on every training batch before the task's forward, e.g. an
# adversarial example generator: perturb(task, input, target) -> input.
Perturb = Callable[[Any, torch.Tensor, torch.Tensor], torch.Tensor]


class _RunningSums:
    """Sample-weighted loss sums kept on the device (no host sync per step); ``read`` syncs once (and
    all-reduces under DDP)."""

    def __init__(self, keys: Iterable[str], device: torch.device):
        self.keys = tuple(keys)
        self.device = device
        self.sums = {k: torch.zeros((), dtype=torch.float64, device=device) for k in self.keys}
        self.counts = dict.fromkeys(self.keys, 0.)

    def update(self, result: Dict[str, torch.Tensor], batch_size: int) -> None:
        for k in self.keys:
            if k in result:
                self.sums[k].add_(result[k].detach().reshape(()).to(torch.float64), alpha=batch_size)
                self.counts[k] += batch_size

    def read(self, distributed: bool = False) -> Tuple[Dict[str, Optional[float]], torch.Tensor]:
        sums = torch.stack([self.sums[k] for k in self.keys])
        counts = torch.tensor([self.counts[k] for k in self.keys], dtype=torch.float64, device=self.device)
        if distributed:
            dist.all_reduce(sums)
            dist.all_reduce(counts)
        averages = sums / counts.clamp_min(1)
        values, seen = averages.tolist(), counts.tolist()
        return {k: (v if c > 0 else None) for k, v, c in zip(self.keys, values, seen)}, averages[0]


def _to_device(input, target, device: torch.device, channels_last: bool):
    input = input.to(device, non_blocking=True)
    target = target.to(device, non_blocking=True)
    if channels_last:
        input = input.contiguous(memory_format=torch.channels_last)
    return input, target


def _format_terms(values: Dict[str, Optional[float]]) -> str:
    names = dict(loss_clean='Clean', loss_inhibited='Inhibited', loss_orth='Orth', inhibited_frac='InhFrac')
    return '  '.join(f'{names[k]}: {v:.4g}' for k, v in values.items() if k in names and v is not None)


def train_one_epoch(
        epoch: int,
        task: Any,
        loader: Iterable,
        optimizer: torch.optim.Optimizer,
        *,
        device: torch.device,
        lr_scheduler: Optional[Any] = None,
        loss_scaler: Optional[Any] = None,
        amp_autocast: Callable[[], ContextManager] = nullcontext,
        mixup_fn: Optional[Callable] = None,
        perturb: Optional[Perturb] = None,
        grad_accum_steps: int = 1,
        clip_grad: Optional[float] = None,
        clip_mode: str = 'norm',
        channels_last: bool = False,
        prefetcher: bool = False,
        distributed: bool = False,
        world_size: int = 1,
        log_interval: int = 50,
        log: bool = True,
        progress: bool = False,
        num_epochs: Optional[int] = None,
        recovery_fn: Optional[Callable[[int, int], None]] = None,
        recovery_interval: int = 0,
        synchronize_step: bool = False,
) -> 'OrderedDict[str, Optional[float]]':
    """Train ``task`` for one pass over ``loader``.

    Args:
        epoch: 0-based epoch index (sets the scheduler's update count, so resumed runs keep the schedule).
        task: A timm ``TrainingTask``; ``TenetTask`` results add the TENET terms to the metrics.
        loader: Yields ``(input, target)`` batches.
        optimizer: Optimizer over ``task.get_trainable_module()``.
        device: Device of the model (inputs are moved there unless ``prefetcher``).
        lr_scheduler: timm scheduler, stepped per optimizer update (``step_update``).
        loss_scaler: timm ``NativeScaler`` for float16 AMP, else None.
        amp_autocast: Context factory for mixed precision.
        mixup_fn: timm ``Mixup`` applied to each batch (when not done in the collate).
        perturb: Hook run on each batch before the forward, ``perturb(task, input, target) -> input``
            (adversarial training plugs in here).
        grad_accum_steps: Batches per optimizer update.
        clip_grad: Gradient clipping value (None: off).
        clip_mode: ``'norm'``, ``'value'`` or ``'agc'``.
        channels_last: Convert inputs to channels-last.
        prefetcher: Batches come from timm's ``PrefetchLoader`` (already on the device).
        distributed: Under DDP (updates without sync while accumulating, losses reduced for logs).
        world_size: DDP world size (for throughput).
        log_interval: Optimizer updates between log lines / progress updates.
        log: Write log lines (the primary rank).
        progress: Show a tqdm progress bar instead of log lines.
        num_epochs: Total epochs (for the progress description).
        recovery_fn: ``recovery_fn(epoch, update_idx)`` writes a recovery checkpoint.
        recovery_interval: Updates between recovery checkpoints (0: off).
        synchronize_step: ``torch.cuda.synchronize()`` after every step.

    Returns:
        Sample-weighted epoch averages: ``loss``, ``loss_clean`` and, for TENET tasks, the TENET terms
        averaged over TENET steps (None before the first one).

    Raises:
        FloatingPointError: the loss became non-finite (see ``ensure_finite``).
    """
    accum_steps = max(1, grad_accum_steps)
    num_batches = len(loader)
    updates_per_epoch = (num_batches + accum_steps - 1) // accum_steps
    num_updates = epoch * updates_per_epoch
    last_accum_steps = num_batches % accum_steps
    last_batch_idx = num_batches - 1
    last_batch_idx_to_accum = num_batches - last_accum_steps
    keys = ('loss', 'loss_clean') + (TENET_TERMS if isinstance(task, TenetTask) else ())
    sums = _RunningSums(keys, device)
    clip_params = None
    if clip_grad is not None:
        clip_params = list(task.get_clip_parameters(exclude_head='agc' in clip_mode))

    bar = None
    if progress and log:
        from tqdm import tqdm
        total = f'/{num_epochs}' if num_epochs else ''
        bar = tqdm(total=num_batches, desc=f'Epoch {epoch + 1}{total}', unit='batch', dynamic_ncols=True, leave=True)

    task.train()
    optimizer.zero_grad()
    epoch_start = last_log = time.time()
    samples_since_log = 0
    for batch_idx, (input, target) in enumerate(loader):
        last_batch = batch_idx == last_batch_idx
        need_update = last_batch or (batch_idx + 1) % accum_steps == 0
        update_idx = batch_idx // accum_steps
        if batch_idx >= last_batch_idx_to_accum:
            accum_steps = last_accum_steps or accum_steps
        if not prefetcher:
            input, target = _to_device(input, target, device, channels_last)
            if mixup_fn is not None:
                input, target = mixup_fn(input, target)
        elif channels_last:
            input = input.contiguous(memory_format=torch.channels_last)
        if perturb is not None:
            input = perturb(task, input, target)

        sync = nullcontext() if need_update or not distributed else task.no_sync()
        with sync:
            with amp_autocast():
                result = task(input, target)
            loss = result['loss'] / accum_steps if accum_steps > 1 else result['loss']
            if loss_scaler is not None:
                loss_scaler(loss, optimizer, clip_grad=clip_grad, clip_mode=clip_mode, parameters=clip_params,
                            need_update=need_update)
            else:
                loss.backward()
                if need_update:
                    if clip_grad is not None:
                        dispatch_clip_grad(clip_params, value=clip_grad, mode=clip_mode)
                    optimizer.step()
        if 'loss_clean' not in result:
            result = dict(result, loss_clean=result['loss'])
        sums.update(result, input.shape[0])
        samples_since_log += input.shape[0]
        if synchronize_step and device.type == 'cuda':
            torch.cuda.synchronize()
        if bar is not None:
            bar.update(1)
        if not need_update:
            continue

        optimizer.zero_grad()
        num_updates += 1
        task.update_ema(step=num_updates)
        if lr_scheduler is not None:
            lr_scheduler.step_update(num_updates=num_updates)

        if last_batch or update_idx % max(1, log_interval) == 0:
            values, loss_avg = sums.read(distributed)
            ensure_finite(loss_avg, getattr(task, 'step', num_updates))
            now = time.time()
            rate = samples_since_log * world_size / max(now - last_log, 1e-9)
            last_log, samples_since_log = now, 0
            if log:
                lr = optimizer.param_groups[0]['lr']
                terms = _format_terms(values)
                if bar is not None:
                    postfix = OrderedDict(loss=f"{values['loss']:.4g}")
                    postfix.update((k.replace('loss_', ''), f'{v:.3g}') for k, v in values.items()
                                   if k != 'loss' and v is not None)
                    postfix.update(rate=f'{rate:.1f}img/s', lr=f'{lr:.2e}')
                    bar.set_postfix(postfix, refresh=False)
                else:
                    done = batch_idx + 1
                    eta = (now - epoch_start) / done * (num_batches - done)
                    _logger.info(
                        f'Train: {epoch} [{update_idx:>4d}/{updates_per_epoch} ({100. * done / num_batches:>3.0f}%)]  '
                        f"Loss: {loss.detach().float().item() * accum_steps:.4g} ({values['loss']:.4g})  {terms}  "
                        f'{rate:.1f} img/s  ETA: {timedelta(seconds=round(eta))}  LR: {lr:.3e}')

        if recovery_fn is not None and recovery_interval and (update_idx + 1) % recovery_interval == 0:
            recovery_fn(epoch, update_idx)

    if bar is not None:
        bar.close()
    values, loss_avg = sums.read(distributed)
    ensure_finite(loss_avg, getattr(task, 'step', num_updates))
    return OrderedDict(values)


@torch.no_grad()
def validate(
        model: torch.nn.Module,
        loader: Iterable,
        evaluator: Any,
        *,
        device: torch.device,
        amp_autocast: Callable[[], ContextManager] = nullcontext,
        channels_last: bool = False,
        prefetcher: bool = False,
        distributed: bool = False,
        log: bool = True,
        progress: bool = False,
        log_suffix: str = '',
) -> 'OrderedDict[str, float]':
    """Evaluate ``model`` over ``loader`` with a timm evaluator (``task.create_evaluator(...)``).

    Returns:
        The evaluator's metrics (``loss``, ``top1``, ``top5`` for classification), reduced over ranks.
    """
    model.eval()
    evaluator.reset()
    batches = loader
    if progress and log:
        from tqdm import tqdm
        batches = tqdm(loader, desc=f'Eval{log_suffix}', unit='batch', dynamic_ncols=True, leave=False)
    start = time.time()
    for input, target in batches:
        if not prefetcher:
            input, target = _to_device(input, target, device, channels_last)
        elif channels_last:
            input = input.contiguous(memory_format=torch.channels_last)
        with amp_autocast():
            output = model(input)
        if isinstance(output, (tuple, list)):
            output = output[0]
        evaluator.update(output, target)
    metrics = evaluator.compute(distributed=distributed)
    if log:
        shown = '  '.join(f'{k}: {v:.4f}' for k, v in metrics.items())
        _logger.info(f'Eval{log_suffix}: {shown}  ({time.time() - start:.1f}s)')
    return metrics
