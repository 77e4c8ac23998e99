"""A careless user cannot lose work or get a silently wrong number (issue 12): each finding of a new user's
trial, reproduced through the scripts as a user runs them (a subprocess where the behaviour is the script's)."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parent.parent


def _folder(root, train_per_class=8, val_per_class=2, size=16, classes=('0', '1')):
    rng = np.random.default_rng(0)
    for split, n in (('train', train_per_class), ('validation', val_per_class)):
        for c, name in enumerate(classes):
            os.makedirs(root / split / name, exist_ok=True)
            for i in range(n):
                img = rng.integers(0, 100, (size, size, 3), dtype=np.uint8)
                img[..., c % 3] += 150
                Image.fromarray(img).save(root / split / name / f'{i}.png')
    return root


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
    return _folder(tmp_path_factory.mktemp('data'))


def _train_argv(data, out, *extra, experiment='run'):
    return ['--data-dir', str(data), '--model', 'test_resnet', '--num-classes', '2', '--input-size', '3', '32', '32',
            '-b', '4', '--epochs', '2', '--lr', '0.05', '--warmup-epochs', '0', '--workers', '0', '--smoothing', '0',
            '--output', str(out), '--experiment', experiment, '--log-interval', '2', '--no-progress', *extra]


def _script(*argv, timeout=240, env=None):
    """Run ``python <argv>`` from the repository root as a user would; returns the completed process."""
    env = dict(os.environ, PYTHONUNBUFFERED='1', OMP_NUM_THREADS='1', **(env or {}))
    return subprocess.run([sys.executable, *map(str, argv)], capture_output=True, text=True, cwd=REPO, env=env,
                          timeout=timeout)


def _error_lines(proc):
    return [line for line in proc.stderr.splitlines() if line.strip()]


# 4, 10: one rule for every radius, and a value starting with '-' reaches it

def test_adv_eps_and_eps_refuse_a_radius_above_one_with_the_same_hint(tmp_path):
    train = _script('train.py', *_train_argv(tmp_path / 'data', tmp_path, '--adv-train', 'fgsm', '--adv-eps', '8'))
    validate = _script('validate.py', '--model', 'test_resnet', '--dataset', 'sklearn/digits', '--attack', 'fgsm',
                       '--eps', '8')
    hint = "eps '8' is above 1, but radii are in [0, 1] pixel units: write 8/255 for eight grey levels"
    for proc, flag in ((train, '--adv-eps'), (validate, '--eps')):
        assert proc.returncode == 1, proc.stderr[-2000:]
        assert _error_lines(proc) == [f'ERROR: {flag}: {hint}'], proc.stderr[-2000:]
    assert not (tmp_path / 'run').exists()


def test_a_negative_adv_eps_is_parsed_and_refused_in_one_line(tmp_path):
    proc = _script('train.py', *_train_argv(tmp_path / 'data', tmp_path, '--adv-train', 'pgd', '--adv-eps', '-8/255'))
    assert proc.returncode == 1
    assert _error_lines(proc) == [
        "ERROR: --adv-eps: eps must be >= 0, got '-8/255' (a radius is a size: write 8/255, not -8/255)"]
    assert not (tmp_path / 'run').exists()
