"""``train.py``'s run: timm's training recipe (model, data, optimizer, schedule, AMP, EMA, DDP,
checkpoints, summary) wired to a ``TenetTask``, an ``RscTask`` or, for the baseline, timm's
``ClassificationTask``."""
import argparse
import logging
import os
import sys
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable, ContextManager, Dict, List, Optional, Tuple, Union

import torch
from timm.data import Mixup, resolve_data_config
from timm.layers import convert_sync_batchnorm
from timm.models import safe_model_name
from timm.optim import create_optimizer_v2, optimizer_kwargs
from timm.scheduler import create_scheduler_v2, scheduler_kwargs
from timm.task import ClassificationTask, evaluation_sample_limit
from timm.utils import distribute_bn, get_outdir, init_distributed_device, is_primary, random_seed, trim_summary, \
    update_summary

from ..config import RscConfig, TenetConfig
from ..data.dataset import DataError, class_names, count_skipped, create_train_eval_datasets
from ..utils.checkpoint import CheckpointError, load_checkpoint_file, recorded_args
from ..utils.cli import ConfigError, args_to_dict, args_to_yaml, config_dests
from ..utils.errors import first_line
from ..utils.io import atomic_write_text
from ..split_task import EAGER_BACKEND_LIMIT, compile_backend_fails
from ..task import TenetTask
from .adversarial import AdversarialConfig, adversarial_training
from .args import build_train_parser
from .checkpoint import AtomicCheckpointSaver, check_resumed_classes, restore_training_state, set_rng_state
from .engine import Perturb, evaluate_epoch, train_one_epoch
from .factory import check_forward, create_loaders, create_model, create_task
from .settings import TrainingError, resolve_adversarial_config, resolve_amp, resolve_lr, \
    resolve_push_settings, resolve_rsc_config, resolve_tenet_config

__all__ = ['TrainResult', 'run_training', 'training_errors']

_logger = logging.getLogger('train')

@dataclass
class TrainResult:
    """What a finished run reports."""
    output_dir: Optional[str]
    best_metric: Optional[float]
    best_epoch: Optional[int]
    eval_metrics: Dict[str, float] = field(default_factory=dict)
    train_metrics: Dict[str, Optional[float]] = field(default_factory=dict)
    epochs: int = 0


def _push_trained(args: argparse.Namespace, output_dir: str) -> str:
    from ..hub import ExportError, HubError, push_after_training
    weights = 'EMA weights' if args.push_use_ema else 'weights'
    _logger.info(f"Pushing the {weights} of '{output_dir}' to the Hugging Face Hub as {args.push_to_hub}")
    try:
        return push_after_training(args.push_to_hub, output_dir, use_ema=args.push_use_ema,
                                   private=args.push_private)
    except (ExportError, HubError) as e:
        raise TrainingError(
            f'training finished (checkpoints in {output_dir}) but the push failed: {first_line(e)}; retry with '
            f'python -m timm_tenet.hub push --checkpoint {os.path.join(output_dir, "model_best.pth.tar")} '
            f"--repo-id {args.push_to_hub}{' --use-ema' if args.push_use_ema else ''}") from None


def _method_summary(cfg: Union[TenetConfig, RscConfig, None]) -> str:
    if cfg is None:
        return 'TENET: off, RSC: off (plain training, the baseline)'
    name = 'RSC' if isinstance(cfg, RscConfig) else 'TENET'
    return f'{name}: on (' + ', '.join(f'{k}={v}' for k, v in cfg.to_dict().items()) + ')'


@dataclass
class _Runtime:
    """Where and how the run computes: device, rank, mixed precision, and the settings checked up front."""
    device: torch.device
    primary: bool
    amp_autocast: Callable[[], ContextManager]
    loss_scaler: Optional[Any]
    adv_cfg: Optional[AdversarialConfig]
    progress: bool


@dataclass
class _Training:
    """What the run trains with: the task and its optimizer, the data, and the schedule over it."""
    task: ClassificationTask
    optimizer: torch.optim.Optimizer
    data_config: Dict[str, Any]
    num_aug_splits: int
    dataset_train: Any = None
    loader_train: Any = None
    train_batches: Any = None  # loader_train, or its adversarial wrapper
    loader_eval: Any = None
    mixup_fn: Optional[Mixup] = None
    perturb: Optional[Perturb] = None
    lr_scheduler: Optional[Any] = None
    num_epochs: int = 0
    updates_per_epoch: int = 0
    class_names: Optional[List[str]] = None  # of the training data, index order


@dataclass
class _Output:
    """The primary rank's experiment folder, checkpoint saver and summary file (all None on other ranks)."""
    output_dir: Optional[str] = None
    saver: Optional[AtomicCheckpointSaver] = None
    summary_path: Optional[str] = None


def run_training(
        args: argparse.Namespace,
        perturb: Optional[Perturb] = None,
) -> TrainResult:
    """Train as ``train.py`` does with parsed ``args`` (see ``timm_tenet.training.args``).

    Args:
        args: Parsed arguments; updated in place with resolved values (device, lr, TENET settings, ...).
        perturb: Optional per-batch input hook passed to ``train_one_epoch`` (not with ``--adv-train``, which
            brings its own).

    Returns:
        Output folder, best metric and epoch, and the last epoch's metrics.

    Raises:
        TrainingError, DataError, CheckpointError, ConfigError: set-up problems, one-line messages.
        FloatingPointError: the loss became non-finite (no checkpoint of that epoch is written).
    """
    with ExitStack() as stack:
        return _run_training(args, perturb, stack)


def _run_training(args: argparse.Namespace, perturb: Optional[Perturb], stack: ExitStack) -> TrainResult:
    runtime = _setup_runtime(args, perturb)
    training = _build_task(args, runtime)
    checkpoint = load_checkpoint_file(args.resume) if args.resume else None  # read before any data is prepared
    _build_data_and_schedule(args, runtime, training, perturb)
    start_epoch = _resume(args, runtime, training, checkpoint)
    if checkpoint is not None and start_epoch >= training.num_epochs:
        if runtime.primary:
            _logger.info(f"'{args.resume}' has already finished its {training.num_epochs} epochs: nothing to train "
                         f'(pass --epochs N with N > {training.num_epochs} to train longer).')
        return TrainResult(output_dir=None, best_metric=None, best_epoch=None, epochs=start_epoch)
    # every setting is checked by now: only from here on is anything written
    output = _open_output(args, runtime, training, start_epoch, checkpoint, stack)
    del checkpoint  # free the resumed tensors

    result = TrainResult(output_dir=output.output_dir, best_metric=None, best_epoch=None)
    for epoch in range(start_epoch, training.num_epochs):
        train_metrics = _train_epoch(args, runtime, training, output, epoch)
        eval_metrics = _evaluate_epoch(args, runtime, training)
        if training.lr_scheduler is not None:
            training.lr_scheduler.step(epoch + 1, eval_metrics[args.eval_metric])
        if output.saver is not None:
            lrs = [group['lr'] for group in training.optimizer.param_groups]
            update_summary(epoch, train_metrics, eval_metrics, filename=output.summary_path, lr=sum(lrs) / len(lrs))
            result.best_metric, result.best_epoch = output.saver.save_checkpoint(
                epoch, metric=eval_metrics[args.eval_metric])
        result.train_metrics, result.eval_metrics, result.epochs = dict(train_metrics), dict(eval_metrics), epoch + 1
    return _finish(args, output, result)


def _setup_runtime(args: argparse.Namespace, perturb: Optional[Perturb]) -> _Runtime:
    """Check the run's adversarial and Hub settings, then set up the device (and DDP), AMP and the seed."""
    adv_cfg = resolve_adversarial_config(args)
    if adv_cfg is not None and perturb is not None:
        raise TrainingError(f'--adv-train {adv_cfg.method} replaces the batches: do not pass a perturb hook as well')
    resolve_push_settings(args)
    args.device = args.device or ('cuda' if torch.cuda.is_available() else 'cpu')
    args.grad_accum_steps = max(1, args.grad_accum_steps)
    try:
        device = init_distributed_device(args)
    except AssertionError as e:
        raise TrainingError(f"device '{args.device}' is not available: {first_line(e)}") from None
    primary = is_primary(args)
    args.prefetcher = not args.no_prefetcher and device.type == 'cuda'
    if args.distributed and primary:
        _logger.info(f'Training in distributed mode with {args.world_size} processes, device {device}.')
    elif primary:
        _logger.info(f'Training with a single process on 1 device ({device}).')
    if device.type == 'cuda':
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    amp_autocast, loss_scaler = resolve_amp(args, device)
    random_seed(args.seed, args.rank)
    progress = args.progress if args.progress is not None else sys.stderr.isatty()
    return _Runtime(device, primary, amp_autocast, loss_scaler, adv_cfg, progress)


def _build_task(args: argparse.Namespace, runtime: _Runtime) -> _Training:
    """The model, its TENET, RSC (or plain) task with EMA, and the optimizer."""
    if args.torchcompile_mode and not args.torchcompile:
        raise TrainingError('--torchcompile-mode needs --torchcompile [BACKEND]')
    model = create_model(args)
    if args.torchcompile and compile_backend_fails(model, args.torchcompile):
        raise TrainingError(f'--torchcompile {args.torchcompile} cannot train {args.model} with --grad-checkpointing '
                            f'({EAGER_BACKEND_LIMIT}): use --torchcompile aot_eager (debugging) or inductor, or drop '
                            f'--grad-checkpointing')
    tenet_cfg = resolve_tenet_config(args, model)
    method_cfg = resolve_rsc_config(args, tenet_cfg) or tenet_cfg
    if runtime.primary:
        _logger.info(f'Model {safe_model_name(args.model)} created, param count: '
                     f'{sum(p.numel() for p in model.parameters())}')
        _logger.info(_method_summary(method_cfg))
        if runtime.adv_cfg is not None:
            _logger.info(runtime.adv_cfg.summary())
    data_config = resolve_data_config(vars(args), model=model, verbose=runtime.primary)
    if 0 < args.aug_splits < 2:
        raise TrainingError('--aug-splits must be 0 or >= 2')

    device = runtime.device
    model.to(device=device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    if args.distributed and args.sync_bn:
        if device.type != 'cuda':
            raise TrainingError('--sync-bn needs CUDA devices (torch SyncBatchNorm); on CPU use --dist-bn reduce')
        args.dist_bn = ''
        model = convert_sync_batchnorm(model)

    num_aug_splits = max(args.aug_splits, 0)
    task = create_task(args, model, method_cfg, device, num_aug_splits, _mixup_active(args))
    resolve_lr(args)
    optimizer = create_optimizer_v2(task.get_trainable_module(), **optimizer_kwargs(cfg=args), **args.opt_kwargs)
    if args.model_ema:
        task.setup_ema(decay=args.model_ema_decay, use_warmup=args.model_ema_warmup,
                       device=torch.device('cpu') if args.model_ema_force_cpu else None)
    check_forward(args, task, data_config, device)
    return _Training(task, optimizer, data_config, num_aug_splits)


def _mixup_active(args: argparse.Namespace) -> bool:
    return args.mixup > 0 or args.cutmix > 0. or args.cutmix_minmax is not None


def _build_data_and_schedule(
        args: argparse.Namespace, runtime: _Runtime, training: _Training, perturb: Optional[Perturb]) -> None:
    """Datasets, loaders (with mixup and adversarial batches) and the learning-rate schedule over them."""
    training.dataset_train, dataset_eval = create_train_eval_datasets(args)
    training.class_names = class_names(training.dataset_train)
    if training.class_names is not None and len(training.class_names) > args.num_classes:
        raise DataError(f'the training data has {len(training.class_names)} classes but {args.model} predicts '
                        f'{args.num_classes}: pass --num-classes {len(training.class_names)}, or --class-map FILE to '
                        f'train on a subset')
    mixup_args = None
    if _mixup_active(args):
        mixup_args = dict(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, cutmix_minmax=args.cutmix_minmax,
                          prob=args.mixup_prob, switch_prob=args.mixup_switch_prob, mode=args.mixup_mode,
                          label_smoothing=args.smoothing, num_classes=args.num_classes)
    training.loader_train, training.loader_eval, training.mixup_fn = create_loaders(
        args, training.data_config, training.dataset_train, dataset_eval, runtime.device, training.num_aug_splits,
        mixup_args)

    # free adversarial training trains on each batch adv_replays times: an epoch has that many more updates
    training.train_batches, adv_perturb = adversarial_training(
        runtime.adv_cfg, training.loader_train, training.data_config['mean'], training.data_config['std'],
        device=runtime.device, seed=args.seed + args.rank)
    training.perturb = perturb or adv_perturb
    training.updates_per_epoch = (len(training.train_batches) + args.grad_accum_steps - 1) // args.grad_accum_steps
    training.lr_scheduler, training.num_epochs = create_scheduler_v2(
        training.optimizer, **scheduler_kwargs(args, decreasing_metric='loss' in args.eval_metric),
        updates_per_epoch=training.updates_per_epoch)


def _resume(args: argparse.Namespace, runtime: _Runtime, training: _Training,
            checkpoint: Optional[Dict[str, Any]]) -> int:
    """Restore ``--resume``'s state (unless ``--no-resume-opt``: weights and task state only), position the
    schedule at the start epoch, then compile and wrap for DDP. Returns the start epoch."""
    task, lr_scheduler = training.task, training.lr_scheduler
    resume_epoch = None
    if checkpoint is not None:
        check_resumed_classes(args.resume, checkpoint, training.class_names)
        restore_opt = not args.no_resume_opt
        # as timm: the schedule comes from this run's arguments (a new --epochs gives a schedule of that length)
        # and is stepped to the start epoch below; only plateau's metric history needs the saved state
        resume_epoch = restore_training_state(
            task, checkpoint, args.resume,
            optimizer=training.optimizer if restore_opt else None,
            loss_scaler=runtime.loss_scaler if restore_opt else None,
            lr_scheduler=lr_scheduler if restore_opt and args.sched == 'plateau' else None)
        if runtime.primary:
            step = f', TENET step {task.step}' if isinstance(task, TenetTask) else ''
            _logger.info(f"Resumed from '{args.resume}' (epoch {checkpoint.get('epoch')}{step})")
            epochs_before = recorded_args(checkpoint).get('epochs')
            if isinstance(epochs_before, int) and epochs_before != args.epochs:
                _logger.info(f'The resumed run was scheduled for {epochs_before} epochs: the learning-rate schedule '
                             f'is built for --epochs {args.epochs} and continues at epoch {resume_epoch}.')
    start_epoch = args.start_epoch if args.start_epoch is not None else (resume_epoch or 0)
    if lr_scheduler is not None and start_epoch > 0:
        if args.sched_on_updates:
            lr_scheduler.step_update(start_epoch * training.updates_per_epoch)
        else:
            lr_scheduler.step(start_epoch)

    if args.torchcompile:
        task.compile(backend=args.torchcompile, mode=args.torchcompile_mode)
        task.compile_ema(backend=args.torchcompile, mode=args.torchcompile_mode)
    if args.distributed:
        ddp_kwargs = dict(broadcast_buffers=False) if args.no_ddp_bb else {}
        task.prepare_distributed(device_ids=[runtime.device] if runtime.device.type == 'cuda' else None, **ddp_kwargs)
    rng_state = checkpoint.get('rng_state') if isinstance(checkpoint, dict) else None
    if rng_state and not args.distributed and resume_epoch == start_epoch:
        # last: the next draw is the one the uninterrupted run made at the start of this epoch (data order,
        # augmentation, k-means seeding); a checkpoint holds the primary rank's generators only
        set_rng_state(rng_state)
    return start_epoch


def _open_output(args: argparse.Namespace, runtime: _Runtime, training: _Training, start_epoch: int,
                 checkpoint: Optional[Dict[str, Any]], stack: ExitStack) -> _Output:
    """On the primary rank: the experiment folder with ``train.log`` receiving every log record until the run
    ends, ``args.yaml``, the checkpoint saver (its ranking resumed when resuming in the same folder) and
    ``summary.csv`` trimmed to the epochs before ``start_epoch``."""
    if not runtime.primary:
        return _Output()
    exp_name = args.experiment or '-'.join([
        datetime.now().strftime('%Y%m%d-%H%M%S'), safe_model_name(args.model),
        str(training.data_config['input_size'][-1])])
    output_dir = _experiment_folder(args, args.output or './output/train', exp_name)
    handler = logging.FileHandler(os.path.join(output_dir, 'train.log'))
    handler.setFormatter(logging.Formatter('%(asctime)s %(name)s [%(levelname)s] %(message)s'))
    root = logging.getLogger()
    root.addHandler(handler)
    stack.callback(handler.close)
    stack.callback(root.removeHandler, handler)

    atomic_write_text(args_to_yaml(args, config_dests(build_train_parser())), os.path.join(output_dir, 'args.yaml'))
    saver = AtomicCheckpointSaver(
        training.task, training.optimizer, args=args_to_dict(args), amp_scaler=runtime.loss_scaler,
        lr_scheduler=training.lr_scheduler, checkpoint_dir=output_dir, decreasing='loss' in args.eval_metric,
        max_history=args.checkpoint_hist, class_names=training.class_names)
    if _resumes_in(args, output_dir) and isinstance(checkpoint, dict) and checkpoint.get('saver'):
        saver.load_state_dict(checkpoint['saver'])
    summary_path = os.path.join(output_dir, 'summary.csv')
    trim_summary(summary_path, start_epoch)
    _logger.info(f'Output folder: {output_dir}')
    _logger.info(f'Scheduled epochs: {training.num_epochs} ({training.updates_per_epoch} updates per epoch), '
                 f'starting at epoch {start_epoch}.')
    return _Output(output_dir, saver, summary_path)


def _resumes_in(args: argparse.Namespace, folder: str) -> bool:
    return bool(args.resume) and os.path.dirname(os.path.abspath(args.resume)) == os.path.abspath(folder)


def _experiment_folder(args: argparse.Namespace, root: str, name: str) -> str:
    """``root/name``, created; a run that does not resume from a checkpoint in it never writes into a folder that
    holds an earlier run's files: it takes ``name-1``, ``name-2``, ... (timm's ``get_outdir(..., inc=True)``)."""
    folder = os.path.join(root, name)
    if _resumes_in(args, folder) or not os.path.isdir(folder) or not os.listdir(folder):
        return get_outdir(root, name)
    new = get_outdir(root, name, inc=True)
    _logger.warning(f"'{folder}' holds an earlier run, which stays as it is: this run writes to '{new}' "
                    f'(to continue that run instead, pass --resume {os.path.join(folder, "last.pth.tar")})')
    return new


def _train_epoch(args: argparse.Namespace, runtime: _Runtime, training: _Training, output: _Output,
                 epoch: int) -> Dict[str, Optional[float]]:
    """One epoch of ``train_one_epoch`` (mixup switched off from ``--mixup-off-epoch``), then a warning
    that counts the training images skipped as undecodable."""
    loader_train = training.loader_train
    if hasattr(loader_train, 'sampler') and hasattr(loader_train.sampler, 'set_epoch'):
        loader_train.sampler.set_epoch(epoch)
    if args.mixup_off_epoch and epoch >= args.mixup_off_epoch:
        if args.prefetcher and getattr(loader_train, 'mixup_enabled', False):
            loader_train.mixup_enabled = False
        elif training.mixup_fn is not None:
            training.mixup_fn.mixup_enabled = False
    recovery_fn = output.saver.save_recovery if output.saver is not None and args.recovery_interval else None
    skipped_before = count_skipped(training.dataset_train)
    train_metrics = train_one_epoch(
        epoch, training.task, training.train_batches, training.optimizer,
        device=runtime.device, lr_scheduler=training.lr_scheduler, loss_scaler=runtime.loss_scaler,
        amp_autocast=runtime.amp_autocast, mixup_fn=training.mixup_fn, perturb=training.perturb,
        grad_accum_steps=args.grad_accum_steps, clip_grad=args.clip_grad, clip_mode=args.clip_mode,
        channels_last=args.channels_last, prefetcher=args.prefetcher, distributed=args.distributed,
        world_size=args.world_size, log_interval=args.log_interval, log=runtime.primary, progress=runtime.progress,
        num_epochs=training.num_epochs, recovery_fn=recovery_fn, recovery_interval=args.recovery_interval,
        synchronize_step=args.synchronize_step)
    if isinstance(training.task, TenetTask):  # so summary.csv shows how much TENET a run really made
        train_metrics['tenet_steps'] = training.task.cfg.count_tenet_steps(training.task.step)
    skipped = count_skipped(training.dataset_train) - skipped_before
    if skipped:
        _logger.warning(f'Epoch {epoch}: skipped {skipped} training image(s) that failed to decode '
                        f'(their paths are in the warnings above); each was replaced by the next image.')
    return train_metrics


def _evaluate_epoch(args: argparse.Namespace, runtime: _Runtime, training: _Training) -> Dict[str, float]:
    """The epoch-end evaluation (of the EMA weights when they are kept on the device), after synchronising
    BatchNorm statistics across ranks with ``--dist-bn``."""
    task = training.task
    sync_bn = args.distributed and args.dist_bn in ('broadcast', 'reduce')
    if sync_bn:
        distribute_bn(task.get_trainable_module(), args.world_size, args.dist_bn == 'reduce')
    evaluator = task.create_evaluator(max_samples=evaluation_sample_limit(training.loader_eval))
    eval_kwargs = dict(device=runtime.device, amp_autocast=runtime.amp_autocast, channels_last=args.channels_last,
                       prefetcher=args.prefetcher, distributed=args.distributed, log=runtime.primary,
                       progress=runtime.progress)
    eval_metrics = evaluate_epoch(task.get_eval_model(), training.loader_eval, evaluator, **eval_kwargs)
    if task.has_ema() and not args.model_ema_force_cpu:
        if sync_bn:
            distribute_bn(task.get_trainable_module(ema=True), args.world_size, args.dist_bn == 'reduce')
        eval_metrics = evaluate_epoch(task.get_eval_model(ema=True), training.loader_eval, evaluator,
                                      log_suffix=' (EMA)', **eval_kwargs)
    if args.eval_metric not in eval_metrics:
        raise TrainingError(f"--eval-metric '{args.eval_metric}' is not one of {list(eval_metrics)}")
    return eval_metrics


def _finish(args: argparse.Namespace, output: _Output, result: TrainResult) -> TrainResult:
    """The best epoch over the whole run (resumed ranking included), then ``--push-to-hub``."""
    if output.saver is not None and output.saver.best_metric is not None:
        result.best_metric, result.best_epoch = output.saver.best_metric, output.saver.best_epoch
    if output.output_dir is not None and result.best_metric is not None:
        _logger.info(f'*** Best metric: {result.best_metric} (epoch {result.best_epoch})')
    if output.output_dir is not None and args.push_to_hub:
        _logger.info(f'Pushed to the Hub: {_push_trained(args, output.output_dir)}')
    return result


def training_errors() -> Tuple[type, ...]:
    """Exceptions ``train.py`` reports as one-line errors (exit status 1) rather than tracebacks."""
    return TrainingError, DataError, CheckpointError, ConfigError, FloatingPointError
