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


# 9: the command-line tools end in one error line

def _images(root, broken=False):
    for label in ('0', '1'):
        (root / label).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((8, 8, 3), 40 * int(label), dtype=np.uint8)).save(root / label / 'a.png')
    if broken:
        (root / '1' / 'b.png').write_bytes(b'not a png')
    return root


def test_cam_reports_a_corrupt_checkpoint_an_empty_folder_and_a_broken_image_in_one_line(tmp_path, capsys):
    pytest.importorskip('pytorch_grad_cam')
    from timm_tenet.robustness import cam
    corrupt = tmp_path / 'model.pth.tar'
    corrupt.write_bytes(b'garbage')
    proc = _script('-m', 'timm_tenet.robustness.cam', '--models', corrupt, '--images', _images(tmp_path / 'ok'),
                   '--out', tmp_path / 'cam.png')
    assert proc.returncode == 1, proc.stderr
    assert _error_lines(proc) == [f"error: '{corrupt}' is not a PyTorch checkpoint: it is corrupt or not a PyTorch "
                                  f"file (unreadable pickle: Unsupported operand 103)"]
    (tmp_path / 'empty').mkdir()
    for images, message in ((tmp_path / 'empty', 'no images'), (_images(tmp_path / 'broken', broken=True),
                                                                 "cannot read image '")):
        with pytest.raises(SystemExit) as info:
            cam.main(['--models', 'test_resnet', '--images', str(images), '--out', str(tmp_path / 'cam.png')])
        assert str(info.value).startswith(f'error: {message}') and '\n' not in str(info.value)
    assert not (tmp_path / 'cam.png').exists()


def test_make_c_reports_a_broken_image_or_an_empty_folder_in_one_line_and_says_what_it_wrote(tmp_path, capsys):
    from timm_tenet.robustness import make_c
    proc = _script('-m', 'timm_tenet.robustness.make_c', '--data-dir', _images(tmp_path / 'broken', broken=True),
                   '--out', tmp_path / 'c', '--format', 'cifar-c', '--corruptions', 'contrast')
    assert proc.returncode == 1 and _error_lines(proc) == [
        f"error: cannot read image '{tmp_path / 'broken' / '1' / 'b.png'}': cannot identify image file "
        f"'{tmp_path / 'broken' / '1' / 'b.png'}'"], proc.stderr
    assert os.listdir(tmp_path / 'c') == []  # the temporary arrays begun are removed
    (tmp_path / 'empty').mkdir()
    assert make_c.main(['--data-dir', str(tmp_path / 'empty'), '--out', str(tmp_path / 'c'), '--format',
                        'cifar-c']) == 1
    assert capsys.readouterr().err.startswith(f"error: no images in '{tmp_path / 'empty'}'")
    assert make_c.main(['--data-dir', str(_images(tmp_path / 'ok')), '--out', str(tmp_path / 'c'), '--format',
                        'imagenet-c', '--corruptions', 'contrast', '--severities', '1', '2']) == 0
    assert capsys.readouterr().out == (f"wrote imagenet-c to {tmp_path / 'c'}: 2 images x 1 corruption(s) x 2 "
                                       f"severities (<corruption>/<severity>/<class>/ JPEG folders)\n")


# 11, 12: what the README and the model cards show runs as written

def test_hub_create_model_works_after_import_timm_tenet_alone():
    proc = _script('-c', "import timm_tenet; m = timm_tenet.hub.create_model('test_resnet', num_classes=3); "
                         "print(type(m).__name__, m.num_classes)")
    assert proc.returncode == 0 and proc.stdout.split() == ['ResNet', '3'], proc.stderr[-2000:]


def _readme_python_blocks():
    text = (REPO / 'README.md').read_text()
    return [block.split('```', 1)[0] for block in text.split('```python\n')[1:]]


def test_every_offline_python_block_of_the_readme_runs_as_written(tmp_path):
    blocks = _readme_python_blocks()
    offline = [b for b in blocks if 'hf-hub:' not in b]  # loading from the Hub needs the network
    assert len(offline) >= 1 and len(blocks) - len(offline) <= 1
    for block in offline:
        proc = subprocess.run([sys.executable, '-c', block], capture_output=True, text=True, cwd=tmp_path,
                              env=dict(os.environ, HF_HUB_OFFLINE='1', OMP_NUM_THREADS='1'), timeout=240)
        assert proc.returncode == 0, f'README block failed:\n{block}\n{proc.stderr[-2000:]}'


# 7: an unreachable Hub stops --push-to-hub before training

def _closed_port_url():
    import socket
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    return f'http://127.0.0.1:{port}'


def test_push_to_hub_with_an_unreachable_hub_fails_before_training(data_dir, tmp_path):
    endpoint = _closed_port_url()
    proc = _script('train.py', *_train_argv(data_dir, tmp_path, '--push-to-hub', 'org/x'),
                   env=dict(HF_ENDPOINT=endpoint, HF_TOKEN='hf_anything', HF_HOME=str(tmp_path / 'hf')))
    assert proc.returncode == 1
    assert _error_lines(proc) == [
        f'ERROR: --push-to-hub: cannot push to org/x: the Hugging Face Hub at {endpoint} cannot be reached within 5 s '
        f'([Errno 111] Connection refused; no network?)'], proc.stderr[-2000:]
    assert not (tmp_path / 'run').exists()


# 13: the model card says which split its results are on, names this project and hides local paths

def test_model_card_labels_the_split_names_timm_tenet_and_hides_the_config_path(tmp_path):
    import json

    import timm
    import torch
    recipe = tmp_path / 'private' / 'recipe.yaml'
    model = timm.create_model('test_resnet', num_classes=2)
    torch.save({'state_dict': model.state_dict(), 'arch': 'test_resnet', 'epoch': 1, 'class_names': ['cat', 'dog'],
                'args': {'model': 'test_resnet', 'num_classes': 2, 'config': str(recipe)}}, tmp_path / 'c.pth.tar')
    (tmp_path / 'r.json').write_text(json.dumps({'clean': {'model': 'test_resnet', 'top1': 90.0, 'top1_err': 10.0,
                                                           'split': 'test'}}))
    proc = _script('-m', 'timm_tenet.hub', 'push', '--checkpoint', tmp_path / 'c.pth.tar', '--repo-id', 'org/x',
                   '--dry-run', tmp_path / 'export', '--results-file', tmp_path / 'r.json', '--train-command',
                   f'python train.py -c {recipe} --epochs 3')
    assert proc.returncode == 0, proc.stderr[-2000:]
    card = (tmp_path / 'export' / 'README.md').read_text()
    assert '### Clean accuracy on the `test` split' in card and 'Clean validation' not in card
    assert '`timm_tenet` (this project)' in card and 'timm_tenet](https://github.com/LinusWu' not in card
    assert str(tmp_path) not in card
    assert 'config: recipe.yaml' in card and "python train.py -c '<local path>/recipe.yaml' --epochs 3" in card
    assert '  - Classes: 2 (cat, dog)' in card
    assert json.loads((tmp_path / 'export' / 'config.json').read_text())['label_names'] == ['cat', 'dog']
