"""One training epoch and one evaluation pass over a timm task (``task(input, target)`` -> loss dict),
with gradient accumulation, AMP, clipping, EMA, DDP, Lookahead and second-order optimizers, as timm's
``train.py`` loop runs them.

Losses are summed on the device and read back only at log intervals and at the end of the epoch
(a ``.item()`` per step would synchronise every step on a GPU); each read checks that the loss is
finite, so a diverged run stops before its weights are checkpointed. Besides ``loss`` and ``loss_clean``
the logged terms are the task's ``result_terms`` (keys of its result dict, e.g. TENET's inhibited and
orthogonality losses), so the loop works with any timm task.
"""
import logging
import time
from collections import OrderedDict
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, ContextManager, Dict, Iterable, List, Optional, Tuple

import torch
import torch.distributed as dist
from timm.utils import dispatch_clip_grad

from ..task import ensure_finite

__all__ = ['Perturb', 'evaluate_epoch', 'train_one_epoch']

_logger = logging.getLogger(__name__)

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


class _EpochLogger:
    """Progress of one training epoch: a tqdm bar (``progress``) or log lines, with throughput and ETA.
    Only the primary rank (``log``) writes; the throughput covers all ``world_size`` ranks."""

    def __init__(self, epoch: int, num_batches: int, updates_per_epoch: int, num_epochs: Optional[int],
                 world_size: int, log: bool, progress: bool):
        self.epoch, self.num_batches, self.updates_per_epoch = epoch, num_batches, updates_per_epoch
        self.world_size, self.log = world_size, log
        self.bar = None
        if progress and log:
            from tqdm import tqdm
            total = f'/{num_epochs}' if num_epochs else ''
            self.bar = tqdm(total=num_batches, desc=f'Epoch {epoch + 1}{total}', unit='batch', dynamic_ncols=True,
                            leave=True)
        self.start = self.last = time.time()
        self.samples = 0

    def batch_done(self, batch_size: int) -> None:
        self.samples += batch_size
        if self.bar is not None:
            self.bar.update(1)

    def report(self, values: Dict[str, Optional[float]], batch_idx: int, update_idx: int, batch_loss: torch.Tensor,
               lr: float) -> None:
        """One log line (or progress-bar postfix) with the running averages ``values``; ``batch_loss`` (the
        current batch's unscaled loss) is read back only when a log line is written."""
        now = time.time()
        rate = self.samples * self.world_size / max(now - self.last, 1e-9)
        self.last, self.samples = now, 0
        if not self.log:
            return
        if self.bar is not None:
            postfix = OrderedDict(loss=f"{values['loss']:.4g}")
            postfix.update((k.replace('loss_', ''), f'{v:.3g}') for k, v in values.items()
                           if k != 'loss' and v is not None)
            postfix.update(rate=f'{rate:.1f}img/s', lr=f'{lr:.2e}')
            self.bar.set_postfix(postfix, refresh=False)
            return
        done = batch_idx + 1
        eta = (now - self.start) / done * (self.num_batches - done)
        terms = '  '.join(f'{k}: {v:.4g}' for k, v in values.items() if k != 'loss' and v is not None)
        _logger.info(
            f'Train: {self.epoch} [{update_idx:>4d}/{self.updates_per_epoch} ({100. * done / self.num_batches:>3.0f}%)]  '
            f"Loss: {batch_loss.detach().float().item():.4g} ({values['loss']:.4g})  {terms}  "
            f'{rate:.1f} img/s  ETA: {timedelta(seconds=round(eta))}  LR: {lr:.3e}')

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@dataclass
class _StepSettings:
    """How one batch is differentiated and applied (fixed for the epoch)."""
    amp_autocast: Callable[[], ContextManager]
    loss_scaler: Optional[Any]
    clip_grad: Optional[float]
    clip_mode: str
    clip_params: Optional[List[torch.Tensor]]
    second_order: bool  # adahessian & co. differentiate the gradient: backward keeps its graph
    distributed: bool


def _step(task: Any, optimizer: torch.optim.Optimizer, input: torch.Tensor, target: torch.Tensor,
          settings: _StepSettings, accum_steps: int, need_update: bool) -> Dict[str, torch.Tensor]:
    """Forward, backward (scaled by ``1 / accum_steps``) and, on ``need_update``, the clipped optimizer
    step; under DDP the gradients are all-reduced only on updates. Returns the task's result dict."""
    sync = nullcontext() if need_update or not settings.distributed else task.no_sync()
    with sync:
        with settings.amp_autocast():
            result = task(input, target)
        loss = result['loss'] / accum_steps if accum_steps > 1 else result['loss']
        if settings.loss_scaler is not None:
            settings.loss_scaler(
                loss, optimizer, clip_grad=settings.clip_grad, clip_mode=settings.clip_mode,
                parameters=settings.clip_params, create_graph=settings.second_order, need_update=need_update)
        else:
            loss.backward(create_graph=settings.second_order)
            if need_update:
                if settings.clip_grad is not None:
                    dispatch_clip_grad(settings.clip_params, value=settings.clip_grad, mode=settings.clip_mode)
                optimizer.step()
    return result


def _prepare_batch(input: torch.Tensor, target: torch.Tensor, device: torch.device, channels_last: bool,
                   prefetcher: bool, mixup_fn: Optional[Callable] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Move a batch to the device and apply mixup, unless timm's prefetcher already did both."""
    if prefetcher:
        return (input.contiguous(memory_format=torch.channels_last) if channels_last else input), target
    input = input.to(device, non_blocking=True)
    target = target.to(device, non_blocking=True)
    if channels_last:
        input = input.contiguous(memory_format=torch.channels_last)
    if mixup_fn is not None:
        input, target = mixup_fn(input, target)
    return input, target


def _end_epoch(optimizer: torch.optim.Optimizer) -> None:
    """Lookahead optimizers evaluate and save their slow weights: sync them into the model. The sync comes
    before ``zero_grad``, since timm's ``Lookahead`` skips parameters whose gradient is None."""
    if hasattr(optimizer, 'sync_lookahead'):
        optimizer.sync_lookahead()
    optimizer.zero_grad()


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
        task: A timm ``TrainingTask``; the keys in its ``result_terms`` (if any) are averaged and logged too,
            and its ``set_epoch`` (if any) is called with ``epoch`` first.
        loader: Yields ``(input, target)`` batches.
        optimizer: Optimizer over ``task.get_trainable_module()``; a Lookahead optimizer's slow weights are
            synced into the model at the end of the epoch, a second-order one gets ``create_graph``.
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
        Sample-weighted epoch averages: ``loss``, ``loss_clean`` and the task's ``result_terms`` averaged
        over the steps that return them (None before the first one).

    Raises:
        FloatingPointError: the loss became non-finite (see ``ensure_finite``).
    """
    accum_steps = max(1, grad_accum_steps)
    num_batches = len(loader)
    updates_per_epoch = (num_batches + accum_steps - 1) // accum_steps
    num_updates = epoch * updates_per_epoch
    last_accum_steps = num_batches % accum_steps
    last_batch_idx_to_accum = num_batches - last_accum_steps
    sums = _RunningSums(('loss', 'loss_clean') + tuple(getattr(task, 'result_terms', ())), device)
    settings = _StepSettings(
        amp_autocast=amp_autocast, loss_scaler=loss_scaler, clip_grad=clip_grad, clip_mode=clip_mode,
        clip_params=None if clip_grad is None else list(task.get_clip_parameters(exclude_head='agc' in clip_mode)),
        second_order=bool(getattr(optimizer, 'is_second_order', False)), distributed=distributed)
    logger = _EpochLogger(epoch, num_batches, updates_per_epoch, num_epochs, world_size, log, progress)

    if hasattr(task, 'set_epoch'):
        task.set_epoch(epoch)  # epoch-scheduled tasks (RSC's batch percentage)
    task.train()
    optimizer.zero_grad()
    for batch_idx, (input, target) in enumerate(loader):
        last_batch = batch_idx == num_batches - 1
        need_update = last_batch or (batch_idx + 1) % accum_steps == 0
        update_idx = batch_idx // accum_steps
        if batch_idx >= last_batch_idx_to_accum:
            accum_steps = last_accum_steps or accum_steps
        input, target = _prepare_batch(input, target, device, channels_last, prefetcher, mixup_fn)
        if perturb is not None:
            input = perturb(task, input, target)
        result = _step(task, optimizer, input, target, settings, accum_steps, need_update)
        sums.update(result if 'loss_clean' in result else dict(result, loss_clean=result['loss']), input.shape[0])
        if synchronize_step and device.type == 'cuda':
            torch.cuda.synchronize()
        logger.batch_done(input.shape[0])
        if not need_update:
            continue

        if not last_batch:
            optimizer.zero_grad()  # the last one follows the Lookahead sync in _end_epoch
        num_updates += 1
        task.update_ema(step=num_updates)
        if lr_scheduler is not None:
            lr_scheduler.step_update(num_updates=num_updates)
        if last_batch or update_idx % max(1, log_interval) == 0:
            values, loss_avg = sums.read(distributed)
            ensure_finite(loss_avg, getattr(task, 'step', num_updates))
            logger.report(values, batch_idx, update_idx, result['loss'], optimizer.param_groups[0]['lr'])
        if recovery_fn is not None and recovery_interval and (update_idx + 1) % recovery_interval == 0:
            recovery_fn(epoch, update_idx)

    logger.close()
    _end_epoch(optimizer)
    values, loss_avg = sums.read(distributed)
    ensure_finite(loss_avg, getattr(task, 'step', num_updates))
    return OrderedDict(values)


@torch.no_grad()
def evaluate_epoch(
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
    """The evaluation that closes each training epoch: ``model`` over ``loader`` with a timm evaluator
    (``task.create_evaluator(...)``).

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
        input, target = _prepare_batch(input, target, device, channels_last, prefetcher)
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
