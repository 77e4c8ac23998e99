"""``torchrun --nproc_per_node=2 train.py`` on CPU (gloo): DDP with TENET trains, rank 0 writes the outputs."""
import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parent.parent


def _folder(root):
    rng = np.random.default_rng(0)
    for split, n in (('train', 8), ('validation', 3)):
        for c in range(2):
            os.makedirs(root / split / str(c), exist_ok=True)
            for i in range(n):
                img = rng.integers(0, 100, (16, 16, 3), dtype=np.uint8)
                img[..., c] += 150
                Image.fromarray(img).save(root / split / str(c) / f'{i}.png')
    return root


def test_torchrun_two_processes_train_with_tenet_on_gloo(tmp_path):
    data = _folder(tmp_path / 'data')
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', str(REPO / 'train.py'),
           '--data-dir', str(data), '--model', 'test_resnet', '--num-classes', '2', '--input-size', '3', '32', '32',
           '-b', '2', '--epochs', '1', '--lr', '0.05', '--warmup-epochs', '0', '--workers', '0', '--device', 'cpu',
           '--tenet', '--tenet-groups', '2', '--tenet-stage', '-1', '--tenet-warmup-steps', '0', '--tenet-period', '2',
           '--dist-bn', 'reduce', '--output', str(tmp_path), '--experiment', 'ddp', '--no-progress',
           '--log-interval', '1']
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1')
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-4000:]
    assert 'Training in distributed mode with 2 processes' in log
    out = tmp_path / 'ddp'
    with open(out / 'summary.csv') as f:
        rows = list(csv.DictReader(f))
    assert [r['epoch'] for r in rows] == ['0'] and float(rows[0]['train_loss_inhibited']) > 0
    # 16 images over 2 ranks x batch 2 = 4 steps per rank, every 2nd a TENET step
    checkpoint = torch.load(out / 'last.pth.tar', map_location='cpu', weights_only=True)
    assert checkpoint['task_state']['tenet_step'] == 4 and checkpoint['args']['world_size'] == 2
    assert not any(k.startswith('module.') for k in checkpoint['state_dict'])
    assert os.listdir(tmp_path) == ['data', 'ddp'] or sorted(os.listdir(tmp_path)) == ['data', 'ddp']
