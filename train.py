#!/usr/bin/env python3
"""Train a timm model with TENET (group-wise inhibition feature regularisation, ICCV 2021).

Takes timm's ``train.py`` command line (``-c hparams/<recipe>.yaml`` for a recipe) plus ``--tenet``/
``--no-tenet`` and ``--tenet-*``; ``<arch>_tenet`` models train with TENET by default, so the same
command with ``--no-tenet`` trains the baseline. Distributed: ``torchrun --nproc_per_node=N train.py ...``.
``--adv-train fgsm|pgd|free`` trains on adversarial examples (with TENET or without), and
``--push-to-hub NAMESPACE/NAME`` uploads the best checkpoint when training ends (checked before it starts).

    python train.py -c hparams/digits_resnet18_tenet.yaml
    python train.py --data-dir /data/imagenet --model resnet50_tenet --amp --model-ema -b 256
    python train.py -c hparams/cifar10_resnext29_adv_free_tenet.yaml --data-dir data/cifar10
"""
import logging
import sys

import torch.distributed as dist
from timm.utils import setup_default_logging

from timm_tenet.training.args import parse_train_args
from timm_tenet.training.run import run_training, training_errors
from timm_tenet.utils.cli import warn_once_about_workers

_logger = logging.getLogger('train')


def main(argv=None) -> int:
    if not logging.root.handlers:
        setup_default_logging()
    warn_once_about_workers()
    try:
        args, _ = parse_train_args(argv)
        result = run_training(args)
    except training_errors() as e:
        _logger.error(str(e))
        return 1
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if result.output_dir and result.best_metric is not None:  # the primary process
        shown = ', '.join(f'{k} {v:.2f}' for k, v in result.eval_metrics.items())
        _logger.info(f'Final validation ({result.epochs} epochs): {shown}; best {args.eval_metric} '
                     f'{result.best_metric:.2f} at epoch {result.best_epoch}. Output: {result.output_dir}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
