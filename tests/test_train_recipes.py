"""Every recipe in hparams/ parses (no unknown key) and runs one TENET or RSC step (or a plain one, for the
baselines) with its own model, optimizer, schedule and augmentation on a tiny synthetic image folder."""
import csv
import os
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import yaml
from PIL import Image

import timm_tenet  # noqa: F401
from timm_tenet.training.args import parse_train_args
from timm_tenet.training.run import run_training

HPARAMS = Path(__file__).resolve().parent.parent / 'hparams'
RECIPES = sorted(HPARAMS.glob('*.yaml'))


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp('recipe_data')
    rng = np.random.default_rng(0)
    for split in ('train', 'validation'):
        for c in range(2):
            os.makedirs(root / split / str(c))
            Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(root / split / str(c) / '0.png')
    return root


@pytest.fixture(scope='module')
def imagenet_weights(tmp_path_factory):
    """A local stand-in for the ImageNet ResNet-50 weights (nothing downloads here)."""
    path = tmp_path_factory.mktemp('weights') / 'resnet50.pth'
    torch.save(timm.create_model('resnet50').state_dict(), path)
    return path


def test_recipes_are_present():
    names = {p.stem for p in RECIPES}
    assert {'digits_resnet18_tenet', 'digits_resnet18', 'cifar10_resnext29_augmix_tenet',
            'cifar100_resnext29_augmix_tenet', 'imagenet_resnet50_tenet', 'imagenet_resnet50_augmix_tenet',
            'cub200_resnet50_tenet', 'cifar10_resnext29_adv_free_tenet', 'digits_resnet18_rsc',
            'cifar10_resnext29_augmix_rsc'} <= names


@pytest.mark.parametrize('recipe', RECIPES, ids=lambda p: p.stem)
def test_recipe_runs_one_step_on_synthetic_data(recipe, data_dir, imagenet_weights, tmp_path):
    text = recipe.read_text()
    assert text.startswith('#') and ('python train.py' in text or 'torchrun' in text)  # header says how to run it
    config = yaml.safe_load(text)
    rsc = bool(config.get('rsc'))
    tenet = config['model'].endswith('_tenet') and not rsc
    argv = ['-c', str(recipe), '--dataset', '', '--data-dir', str(data_dir), '--train-split', 'train',
            '--val-split', 'validation', '--epochs', '1', '-b', '2', '--workers', '0', '--warmup-epochs', '0',
            '--output', str(tmp_path), '--experiment', 'run', '--log-interval', '1', '--no-progress',
            '--amp-dtype', 'bfloat16']
    if tenet:
        argv += ['--tenet-warmup-steps', '0', '--tenet-period', '1']
    if config['input_size'][-1] > 64:
        argv += ['--input-size', '3', '64', '64']
    if config.get('pretrained'):
        argv += ['--pretrained-path', str(imagenet_weights)]
    args, _ = parse_train_args(argv)
    result = run_training(args)

    with open(Path(result.output_dir) / 'summary.csv') as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and np.isfinite(float(rows[0]['train_loss']))
    saved = yaml.safe_load((Path(result.output_dir) / 'args.yaml').read_text())
    assert saved['model'] == config['model'] and saved['opt'] == config['opt'] and saved['lr'] == config['lr']
    assert saved['adv_train'] == config.get('adv_train') and saved['adv_eps'] == config.get('adv_eps')
    checkpoint = torch.load(Path(result.output_dir) / 'last.pth.tar', map_location='cpu', weights_only=True)
    assert saved['tenet'] is tenet and saved['rsc'] is rsc
    # one batch, trained adv_replays times under free adversarial training
    forwards = config['adv_replays'] if config.get('adv_train') == 'free' else 1
    if tenet:
        assert float(rows[0]['train_loss_inhibited']) >= 0 and checkpoint['task_state']['tenet_step'] == forwards
    elif rsc:
        assert float(rows[0]['train_loss_inhibited']) >= 0 and checkpoint['task_state']['rsc_cfg']['stage'] == -1
    else:
        assert 'train_loss_inhibited' not in rows[0]
    assert checkpoint['state_dict']['fc.weight'].shape[0] == config['num_classes']
