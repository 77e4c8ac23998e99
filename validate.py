#!/usr/bin/env python3
"""Evaluate a timm or TENET model: clean top-1/top-5, common corruptions, adversarial attacks.

Takes timm's ``validate.py`` command line (``-c FILE.yaml`` for defaults) and adds corruption and attack
evaluation; plain timm models, ``<arch>_tenet`` models, ``hf-hub:``/``local-dir:`` names and checkpoints
written by ``train.py`` (file or output folder) all work.

    python validate.py --model resnet50 --pretrained --data-dir /data/imagenet
    python validate.py --checkpoint output/digits_resnet18_tenet --dataset sklearn/digits --corrupt all \\
        --attack fgsm pgd --eps 8/255 --results-file results.json --results-format json
    python validate.py --model resnet50_tenet --checkpoint model_best.pth.tar --data-dir /data/imagenet \\
        --corruption-dir /data/ImageNet-C --corruption-format imagenet-c
"""
import sys

from timm_tenet.robustness.validation import main, run_validation, summary_text

__all__ = ['main', 'run_validation', 'summary_text']

if __name__ == '__main__':
    sys.exit(main())
