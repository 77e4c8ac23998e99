"""What a training run is built from: the model (timm's model flags, pretrained or initial weights), its task
(``TenetTask``, ``RscTask`` or timm's ``ClassificationTask`` with the criterion timm's loss flags select) and the
loaders."""
import argparse
import os
from typing import Any, Dict, Union

import torch
import torch.nn as nn
from timm.data import AugMixDataset, FastCollateMixup, Mixup, create_loader
from timm.task import ClassificationTask
from timm.utils import is_primary

from ..config import RscConfig, TenetConfig
from ..data.dataset import DataError, concat_splits_collate
from ..models.tenet_models import create_tenet_model
from ..rsc import RscTask
from ..task import TenetTask
from ..utils.checkpoint import load_model_weights
from ..utils.errors import first_line
from .settings import TrainingError

__all__ = ['check_forward', 'create_loaders', 'create_model', 'create_task']


def create_model(args: argparse.Namespace) -> nn.Module:
    in_chans = args.in_chans or (args.input_size[0] if args.input_size is not None else 3)
    pretrained = args.pretrained or bool(args.pretrained_path)
    kwargs = dict(
        pretrained=pretrained,
        in_chans=in_chans,
        num_classes=args.num_classes,
        drop_rate=args.drop,
        drop_path_rate=args.drop_path if args.drop_path is not None else args.drop_connect,
        drop_block_rate=args.drop_block,
        global_pool=args.gp,
        bn_momentum=args.bn_momentum,
        bn_eps=args.bn_eps,
        **args.model_kwargs,
    )
    if args.pretrained_path:
        if not os.path.isfile(args.pretrained_path):
            raise TrainingError(f"--pretrained-path file not found: '{args.pretrained_path}'")
        kwargs['pretrained_cfg_overlay'] = dict(file=args.pretrained_path)
    try:
        model = create_tenet_model(args.model, **kwargs)
    except (RuntimeError, ValueError, OSError, TypeError) as e:
        what = ' with pretrained weights' if pretrained else ''
        hint = ' (no network here: use --pretrained-path FILE)' if pretrained and not args.pretrained_path else ''
        raise TrainingError(f"cannot create model '{args.model}'{what}: {first_line(e)}{hint}") from None
    if args.initial_checkpoint:
        load_model_weights(model, args.initial_checkpoint)
    if args.head_init_scale is not None:
        with torch.no_grad():
            model.get_classifier().weight.mul_(args.head_init_scale)
            model.get_classifier().bias.mul_(args.head_init_scale)
    if args.head_init_bias is not None:
        nn.init.constant_(model.get_classifier().bias, args.head_init_bias)
    if args.num_classes is None:
        args.num_classes = model.num_classes
    if args.grad_checkpointing:
        model.set_grad_checkpointing(enable=True)
    return model


def _criterion_kwargs(args: argparse.Namespace, num_aug_splits: int, mixup_active: bool) -> Dict[str, Any]:
    """``create_classification_loss`` arguments for timm's loss flags."""
    bce = dict(loss_type='bce', bce_target_thresh=args.bce_target_thresh, bce_sum=args.bce_sum,
               pos_weight=args.bce_pos_weight)
    if args.jsd_loss:
        if num_aug_splits < 2:
            raise TrainingError('--jsd-loss needs --aug-splits >= 2 (e.g. --aug-splits 3 --aa augmix-m3-w3)')
        return dict(loss_type='jsd', jsd_splits=num_aug_splits, smoothing=args.smoothing)
    if mixup_active:
        return dict(bce, soft_targets=True) if args.bce_loss else dict(soft_targets=True)
    if args.bce_loss:
        return dict(bce, smoothing=args.smoothing)
    return dict(smoothing=args.smoothing) if args.smoothing else {}


def create_task(
        args: argparse.Namespace,
        model: nn.Module,
        method_cfg: Union[TenetConfig, RscConfig, None],
        device: torch.device,
        num_aug_splits: int = 0,
        mixup_active: bool = False,
) -> ClassificationTask:
    """``TenetTask`` or ``RscTask`` for their settings, else timm's ``ClassificationTask`` (the baseline), all
    with the criterion timm's flags select (label smoothing, mixup soft targets, BCE, JSD)."""
    criterion_kwargs = _criterion_kwargs(args, num_aug_splits, mixup_active)
    verbose = is_primary(args) if hasattr(args, 'rank') else True
    if method_cfg is None:
        return ClassificationTask(model, criterion_kwargs=criterion_kwargs, device=device, verbose=verbose)
    task_cls, name = (RscTask, 'RSC') if isinstance(method_cfg, RscConfig) else (TenetTask, 'TENET')
    try:
        return task_cls(model, method_cfg, criterion_kwargs=criterion_kwargs, device=device, verbose=verbose)
    except ValueError as e:
        raise TrainingError(f'cannot train {args.model} with {name}: {first_line(e)}') from None


def create_loaders(args, data_config, dataset_train, dataset_eval, device, num_aug_splits, mixup_args):
    collate_fn = None
    mixup_fn = None
    if mixup_args is not None:
        if num_aug_splits > 1:
            raise TrainingError('mixup/cutmix cannot be combined with --aug-splits')
        if args.prefetcher:
            collate_fn = FastCollateMixup(**mixup_args)
        else:
            mixup_fn = Mixup(**mixup_args)
    if num_aug_splits > 1:
        dataset_train = AugMixDataset(dataset_train, num_splits=num_aug_splits)
        if not args.prefetcher:
            collate_fn = concat_splits_collate
    train_interpolation = args.train_interpolation
    if args.no_aug or not train_interpolation:
        train_interpolation = data_config['interpolation']
    loader_train = create_loader(
        dataset_train,
        input_size=data_config['input_size'],
        batch_size=args.batch_size,
        is_training=True,
        no_aug=args.no_aug,
        re_prob=args.reprob,
        re_mode=args.remode,
        re_count=args.recount,
        re_split=args.resplit,
        train_crop_mode=args.train_crop_mode,
        scale=args.scale,
        ratio=args.ratio,
        hflip=args.hflip,
        vflip=args.vflip,
        color_jitter=args.color_jitter,
        color_jitter_prob=args.color_jitter_prob,
        grayscale_prob=args.grayscale_prob or 0.,
        gaussian_blur_prob=args.gaussian_blur_prob or 0.,
        auto_augment=args.aa,
        num_aug_repeats=int(args.aug_repeats),
        num_aug_splits=num_aug_splits,
        interpolation=train_interpolation,
        mean=data_config['mean'],
        std=data_config['std'],
        num_workers=args.workers,
        distributed=args.distributed,
        collate_fn=collate_fn,
        pin_memory=args.pin_mem and device.type == 'cuda',
        device=device,
        use_prefetcher=args.prefetcher,
        use_multi_epochs_loader=args.use_multi_epochs_loader,
        worker_seeding=args.worker_seeding,
    )
    loader_eval = create_loader(
        dataset_eval,
        input_size=data_config['input_size'],
        batch_size=args.validation_batch_size or args.batch_size,
        is_training=False,
        interpolation=data_config['interpolation'],
        mean=data_config['mean'],
        std=data_config['std'],
        num_workers=args.workers,
        distributed=args.distributed,
        crop_pct=data_config['crop_pct'],
        pin_memory=args.pin_mem and device.type == 'cuda',
        device=device,
        use_prefetcher=args.prefetcher,
    )
    if len(loader_train) == 0:
        raise DataError(f'the training split has {len(dataset_train)} images per process, fewer than one batch of '
                        f'{args.batch_size}: lower --batch-size')
    return loader_train, loader_eval, mixup_fn


def check_forward(args: argparse.Namespace, task: ClassificationTask, data_config: Dict[str, Any],
                   device: torch.device) -> None:
    """One forward of a blank input through the module as trained (eval mode, no gradient, no random draws), so
    that what only the feature maps tell (TENET's groups against the channels at its split, an input too small
    for the model) fails before the output folder is touched instead of at the first training step."""
    module = task.get_trainable_module()
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            module(torch.zeros(1, *data_config['input_size'], device=device))
    except (ValueError, RuntimeError) as e:
        size = 'x'.join(map(str, data_config['input_size']))
        raise TrainingError(f'cannot train {args.model} on {size} inputs: {first_line(e)}') from None
    finally:
        module.train(was_training)
