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


# 1-3: nothing written before every setting is checked, no run overwritten, a resume continues the same run

def _train(*argv):
    from timm_tenet.training.args import parse_train_args
    from timm_tenet.training.run import run_training
    args, _ = parse_train_args(list(argv))
    return run_training(args)


def _files(folder):
    return {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir())}


TENET = ('--tenet', '--tenet-groups', '2', '--tenet-stage', '-1', '--tenet-warmup-steps', '2', '--tenet-period', '2')


def test_a_bad_setting_or_a_second_run_never_touches_an_earlier_runs_folder(data_dir, tmp_path):
    first = Path(_train(*_train_argv(data_dir, tmp_path, '--epochs', '1', experiment='exp')).output_dir)
    before = _files(first)
    bad = _script('train.py', *_train_argv(data_dir, tmp_path, *TENET, '--tenet-groups', '100000', experiment='exp'))
    assert bad.returncode == 1
    assert _error_lines(bad)[-1] == (
        'ERROR: cannot train test_resnet on 3x32x32 inputs: TENET num_groups=100000 is more than the 96 channels at '
        'stage -1 of ResNet; use at most 96 groups.'), bad.stderr[-2000:]
    assert _files(first) == before and sorted(p.name for p in tmp_path.iterdir()) == ['exp']

    again = _script('train.py', *_train_argv(data_dir, tmp_path, '--epochs', '1', experiment='exp'))
    assert again.returncode == 0, again.stderr[-2000:]
    assert (f"WARNING: '{first}' holds an earlier run, which stays as it is: this run writes to '{first}-1' (to "
            f"continue that run instead, pass --resume {first / 'last.pth.tar'})") in again.stderr
    assert _files(first) == before and (tmp_path / 'exp-1' / 'last.pth.tar').is_file()


def test_resume_with_more_epochs_trains_on_a_schedule_of_that_length_and_a_finished_run_says_so(data_dir, tmp_path):
    import torch
    run = Path(_train(*_train_argv(data_dir, tmp_path, '--epochs', '2', experiment='exp')).output_dir)
    done = _script('train.py', *_train_argv(data_dir, tmp_path, '--epochs', '2', '--resume', run / 'last.pth.tar',
                                            experiment='exp'))
    assert done.returncode == 0, done.stderr[-2000:]
    assert (f"'{run / 'last.pth.tar'}' has already finished its 2 epochs: nothing to train (pass --epochs N with "
            f"N > 2 to train longer).") in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ['exp']

    weights = torch.load(run / 'last.pth.tar', weights_only=True)['state_dict']['fc.weight']
    longer = _script('train.py', *_train_argv(data_dir, tmp_path, '--epochs', '3', '--resume', run / 'last.pth.tar',
                                              experiment='exp'))
    assert longer.returncode == 0, longer.stderr[-2000:]
    assert ('The resumed run was scheduled for 2 epochs: the learning-rate schedule is built for --epochs 3 and '
            'continues at epoch 2.') in longer.stderr
    last = torch.load(run / 'last.pth.tar', weights_only=True)
    assert last['epoch'] == 2 and not torch.equal(last['state_dict']['fc.weight'], weights)  # learning rate > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ['exp']


def test_a_run_resumed_at_an_epoch_boundary_ends_with_the_uninterrupted_runs_metrics(data_dir, tmp_path):
    full = _script('train.py', *_train_argv(data_dir, tmp_path, *TENET, '--hflip', '0.5', experiment='full'))
    assert full.returncode == 0, full.stderr[-2000:]
    (tmp_path / 'stopped').mkdir()  # what a run killed after its first epoch leaves
    (tmp_path / 'stopped' / 'last.pth.tar').write_bytes((tmp_path / 'full' / 'checkpoint-0.pth.tar').read_bytes())
    resumed = _script('train.py', *_train_argv(data_dir, tmp_path, *TENET, '--hflip', '0.5', '--resume',
                                               tmp_path / 'stopped' / 'last.pth.tar', experiment='stopped'))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    import csv
    rows = [list(csv.DictReader(open(tmp_path / name / 'summary.csv'))) for name in ('full', 'stopped')]
    assert rows[1][-1]['epoch'] == '1' and rows[1][-1] == rows[0][-1]  # losses, accuracy, lr: every digit


# 5, 6, 8, 13: validate.py scores each readable image once, of the model's classes, and fails fast

@pytest.fixture(scope='module')
def pets_run(tmp_path_factory):
    """A 1-epoch run on classes 'cat' and 'dog' (its checkpoint records their names)."""
    root = tmp_path_factory.mktemp('pets')
    data = _folder(root / 'data', train_per_class=4, val_per_class=2, classes=('cat', 'dog'))
    result = _train(*_train_argv(data, root / 'out', '--epochs', '1', experiment='pets'))
    return Path(result.output_dir)


def test_validate_refuses_data_whose_classes_differ_from_the_models_and_takes_a_class_map(pets_run, tmp_path,
                                                                                           caplog):
    import torch
    from timm_tenet.robustness.validation import main as validate_main
    assert torch.load(pets_run / 'last.pth.tar', weights_only=True)['class_names'] == ['cat', 'dog']
    cows = _folder(tmp_path / 'cows', train_per_class=0, val_per_class=2, classes=('cat', 'cow'))
    proc = _script('validate.py', '--checkpoint', pets_run, '--data-dir', cows, '-j', '0')
    assert proc.returncode == 1
    assert _error_lines(proc)[-1] == (
        "ERROR: the dataset's classes do not match the model's: 'cow' is label 1 here but not a class of the model; "
        "pass --class-map FILE (one class name per line, in the model's index order) or the matching --num-classes")

    dogs = _folder(tmp_path / 'dogs', train_per_class=0, val_per_class=2, classes=('dog',))
    assert validate_main(['--checkpoint', str(pets_run), '--data-dir', str(dogs), '-j', '0']) == 1
    assert "'dog' is label 0 here but class 1 of the model" in caplog.text
    (tmp_path / 'classes.txt').write_text('cat\ndog\n')
    assert validate_main(['--checkpoint', str(pets_run), '--data-dir', str(dogs), '-j', '0', '--class-map',
                          str(tmp_path / 'classes.txt')]) == 0


def test_resuming_on_other_classes_is_refused(pets_run, tmp_path):
    from timm_tenet.data.dataset import DataError
    cows = _folder(tmp_path / 'cows', train_per_class=4, val_per_class=2, classes=('cat', 'cow'))
    with pytest.raises(DataError, match=r"was trained on other classes than this data: .* class 1 is 'dog' there but "
                                        r"'cow' here; pass the --class-map / --num-classes of that run"):
        _train(*_train_argv(cows, tmp_path, '--resume', str(pets_run / 'last.pth.tar')))
    assert not (tmp_path / 'run').exists()


def test_validate_counts_an_unreadable_image_once_and_warns_about_workers_once(data_dir, tmp_path):
    import shutil
    data = tmp_path / 'data'
    shutil.copytree(data_dir / 'validation', data / 'validation')
    (data / 'validation' / '1' / 'broken.png').write_bytes(b'not a png')  # 5 images, one unreadable
    import timm
    import torch
    torch.save({'state_dict': timm.create_model('test_resnet', num_classes=2).state_dict(),
                'args': {'model': 'test_resnet', 'num_classes': 2}}, tmp_path / 'c.pth.tar')
    proc = _script('validate.py', '--checkpoint', tmp_path / 'c.pth.tar', '--data-dir', data, '-j', '4', '-b', '4',
                   '--img-size', '32')
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert ' on 4 images (1 that failed to decode left out; their paths are above)' in proc.stderr
    cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
    assert proc.stderr.count('This DataLoader will create 4 worker processes') == (1 if cores < 4 else 0)


def test_validate_names_a_missing_data_folder_before_the_model_and_an_unreachable_hub_fails_fast(data_dir, tmp_path):
    import time
    hub = dict(HF_ENDPOINT=_closed_port_url(), HF_HOME=str(tmp_path / 'hf'))
    proc = _script('validate.py', '--model', 'resnet18_tenet', '--data-dir', tmp_path / 'missing', env=hub)
    assert proc.returncode == 1 and _error_lines(proc) == [
        f"ERROR: data folder not found: '{tmp_path / 'missing'}' (--data-dir)"], proc.stderr[-2000:]
    start = time.time()
    proc = _script('validate.py', '--model', 'resnet18_tenet', '--data-dir', data_dir, env=hub)
    assert proc.returncode == 1 and time.time() - start < 60
    assert 'Retrying' not in proc.stderr and _error_lines(proc)[-1].startswith(
        "ERROR: cannot create model 'resnet18_tenet' with pretrained weights: the Hugging Face Hub does not answer ("), \
        proc.stderr[-2000:]
