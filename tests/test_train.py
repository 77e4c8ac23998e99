"""train.py end to end on a tiny image folder: TENET and baseline runs, outputs, resume, failures,
and a run killed mid-epoch (SIGKILL) that resumes to the same epochs with intact checkpoints."""
import csv
import importlib.util
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from timm_tenet.training.args import parse_train_args
from timm_tenet.training.run import run_training

REPO = Path(__file__).resolve().parent.parent


def _folder(root, train_per_class=8, val_per_class=2, size=16):
    rng = np.random.default_rng(0)
    for split, n in (('train', train_per_class), ('validation', val_per_class)):
        for c in range(2):
            os.makedirs(root / split / str(c), exist_ok=True)
            for i in range(n):
                img = rng.integers(0, 100, (size, size, 3), dtype=np.uint8)
                img[..., c] += 150  # class 0 is red, class 1 green: learnable in a few steps
                Image.fromarray(img).save(root / split / str(c) / f'{i}.png')
    return root


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
    return _folder(tmp_path_factory.mktemp('data'))


def _argv(data, out, *extra, experiment='run'):
    return ['--data-dir', str(data), '--model', 'test_resnet', '--num-classes', '2', '--input-size', '3', '32', '32',
            '-b', '4', '--epochs', '2', '--lr', '0.05', '--warmup-epochs', '0', '--workers', '0', '--smoothing', '0',
            '--output', str(out), '--experiment', experiment, '--log-interval', '2', '--no-progress', *extra]


TENET = ('--tenet', '--tenet-groups', '2', '--tenet-stage', '-1', '--tenet-warmup-steps', '2', '--tenet-period', '2')


def _run(*argv):
    args, _ = parse_train_args(list(argv))
    return args, run_training(args)


def _summary(folder):
    with open(Path(folder) / 'summary.csv') as f:
        return list(csv.DictReader(f))


def _load(path):
    return torch.load(path, map_location='cpu', weights_only=True)


def test_tenet_run_writes_args_summary_and_checkpoints(data_dir, tmp_path):
    args, result = _run(*_argv(data_dir, tmp_path, *TENET))
    out = Path(result.output_dir)
    assert {'args.yaml', 'summary.csv', 'train.log', 'last.pth.tar', 'model_best.pth.tar'} <= set(os.listdir(out))
    saved = yaml.safe_load((out / 'args.yaml').read_text())
    assert (saved['tenet'], saved['tenet_num_groups'], saved['tenet_stage'], saved['tenet_period']) == (True, 2, -1, 2)
    assert saved['tenet_weight'] == 0.1  # unset flags record the value used
    rows = _summary(out)
    assert [r['epoch'] for r in rows] == ['0', '1']
    assert {'train_loss', 'train_loss_clean', 'train_loss_inhibited', 'train_loss_orth', 'train_inhibited_frac',
            'train_tenet_steps', 'eval_loss', 'eval_top1', 'eval_top5', 'lr'} == set(rows[0]) - {'epoch'}
    assert float(rows[1]['train_loss_inhibited']) > 0 and 0 < float(rows[1]['train_inhibited_frac']) <= 1
    # warm-up 2, period 2: calls 2 and 4 of the first epoch, then 6 and 8
    assert [int(float(r['train_tenet_steps'])) for r in rows] == [2, 4]
    last = _load(out / 'last.pth.tar')
    assert last['epoch'] == 1 and last['task_state']['tenet_step'] == 8  # 2 epochs x 4 steps
    assert last['args']['tenet_num_groups'] == 2 and 'scheduler' in last
    assert result.best_metric == max(float(r['eval_top1']) for r in rows)


def test_rsc_run_records_its_settings_and_follows_the_epoch_schedule(data_dir, tmp_path):
    rsc = ('--rsc', '--rsc-stage', '3', '--rsc-spatial-prob', '1', '--rsc-batch-percent', '0',  # a 2x2 map at 32 px
           '--rsc-batch-percent-step', '1', '--rsc-batch-percent-every', '1')
    args, result = _run(*_argv(data_dir, tmp_path, *rsc, experiment='rsc'))
    out = Path(result.output_dir)
    saved = yaml.safe_load((out / 'args.yaml').read_text())
    assert (saved['rsc'], saved['rsc_spatial_prob'], saved['rsc_batch_percent_every']) == (True, 1.0, 1)
    assert saved['rsc_channel_drop'] == 0.3125 and saved['tenet'] is False  # unset flags record the value used
    rows = _summary(out)
    assert {'train_loss_inhibited', 'train_inhibited_frac', 'train_spatial_frac'} <= set(rows[0])
    # the batch percentage is 0 in epoch 0 (nobody keeps a mask) and 1 from epoch 1
    assert float(rows[0]['train_inhibited_frac']) == 0 and float(rows[1]['train_inhibited_frac']) > 0
    assert float(rows[1]['train_spatial_frac']) == 1
    assert _load(out / 'last.pth.tar')['task_state']['rsc_cfg']['spatial_prob'] == 1.0


def test_no_tenet_trains_the_plain_baseline(data_dir, tmp_path):
    args, result = _run(*_argv(data_dir, tmp_path, '--epochs', '1'))
    assert args.tenet is False
    assert set(_summary(result.output_dir)[0]) == {
        'epoch', 'train_loss', 'train_loss_clean', 'eval_loss', 'eval_top1', 'eval_top5', 'lr'}
    assert 'task_state' not in _load(Path(result.output_dir) / 'last.pth.tar')


def test_accumulation_ema_mixup_clipping_and_compile_together(data_dir, tmp_path):
    _, result = _run(*_argv(data_dir, tmp_path, *TENET, '--epochs', '1', '--grad-accum-steps', '2', '--model-ema',
                            '--model-ema-decay', '0.5', '--mixup', '0.2', '--clip-grad', '1.0',
                            '--torchcompile', 'eager', '--sched-on-updates'))
    last = _load(Path(result.output_dir) / 'last.pth.tar')
    assert 'state_dict_ema' in last and last['task_state']['tenet_step'] == 4
    assert set(last['state_dict_ema']) == set(last['state_dict'])
    assert np.isfinite(float(_summary(result.output_dir)[0]['train_loss']))


def test_resume_continues_the_schedule_and_the_tenet_step(data_dir, tmp_path):
    _, full = _run(*_argv(data_dir, tmp_path, *TENET, '--epochs', '3', experiment='full'))
    os.makedirs(tmp_path / 'first')
    first = tmp_path / 'first' / 'epoch0.pth.tar'
    first.write_bytes((Path(full.output_dir) / 'checkpoint-0.pth.tar').read_bytes())
    _, resumed = _run(*_argv(data_dir, tmp_path, *TENET, '--epochs', '3', '--resume', str(first),
                             experiment='resumed'))
    rows_full, rows_resumed = _summary(full.output_dir), _summary(resumed.output_dir)
    assert [r['epoch'] for r in rows_resumed] == ['1', '2']
    assert [r['lr'] for r in rows_resumed] == [r['lr'] for r in rows_full[1:]]
    assert _load(Path(resumed.output_dir) / 'last.pth.tar')['task_state']['tenet_step'] == 12


def test_lookahead_weights_are_synced_before_evaluation_and_saving(data_dir, tmp_path):
    # 2 epochs x 4 updates with k=6: the last slow update was at update 6, so unsynced fast weights differ
    _, result = _run(*_argv(data_dir, tmp_path, *TENET, '--opt', 'lookahead_sgd'))
    last = _load(Path(result.output_dir) / 'last.pth.tar')
    slow = [s['lookahead_slow_buff'] for s in last['optimizer']['state'].values() if 'lookahead_slow_buff' in s]
    weights = list(last['state_dict'].values())
    assert slow and all(any(w.shape == b.shape and torch.equal(w, b) for w in weights) for b in slow)


def test_second_order_optimizer_gets_create_graph(data_dir, tmp_path):
    _, result = _run(*_argv(data_dir, tmp_path, '--epochs', '1', '--opt', 'adahessian', '--lr', '0.01'))
    assert np.isfinite(float(_summary(result.output_dir)[0]['train_loss']))


def test_non_finite_loss_stops_and_keeps_earlier_checkpoints(data_dir, tmp_path):
    calls = []

    def poison_second_epoch(task, input, target):
        calls.append(1)
        return input * float('nan') if len(calls) > 4 else input

    args, _ = parse_train_args(_argv(data_dir, tmp_path, *TENET, experiment='nan'))
    with pytest.raises(FloatingPointError, match='non-finite loss') as info:
        run_training(args, perturb=poison_second_epoch)
    assert '\n' not in str(info.value)
    out = tmp_path / 'nan'
    assert _load(out / 'last.pth.tar')['epoch'] == 0 and _load(out / 'model_best.pth.tar')['epoch'] == 0
    assert [r['epoch'] for r in _summary(out)] == ['0']


def _train_script():
    spec = importlib.util.spec_from_file_location('train_script', REPO / 'train.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_script_reports_setup_errors_in_one_line(tmp_path, caplog):
    script = _train_script()
    assert script.main(['--data-dir', str(tmp_path / 'missing'), '--model', 'test_resnet', '--output',
                        str(tmp_path)]) == 1
    assert "data folder not found: '" in caplog.text
    caplog.clear()
    bad = tmp_path / 'bad.pth.tar'
    bad.write_bytes(b'garbage')
    assert script.main(_argv(_folder(tmp_path / 'd', 2, 1), tmp_path, '--resume', str(bad))) == 1
    assert 'is corrupt or not a PyTorch file' in caplog.text
    caplog.clear()
    assert script.main(['--model', 'resnet50_tnet', '--data-dir', str(tmp_path)]) == 1
    assert "Unknown TENET model 'resnet50_tnet'" in caplog.text or "cannot create model 'resnet50_tnet'" in caplog.text


def _checkpoints_all_load(folder):
    names = [n for n in os.listdir(folder) if n.endswith('.pth.tar')]
    assert names and not [n for n in os.listdir(folder) if '.tmp-' in n]
    return {n: _load(Path(folder) / n)['epoch'] for n in names}


def test_killed_mid_epoch_run_resumes_to_the_same_epochs(tmp_path):
    data = _folder(tmp_path / 'data', train_per_class=24, val_per_class=2)
    argv = [sys.executable, '-u', str(REPO / 'train.py'), *_argv(data, tmp_path, *TENET, '--epochs', '3',
                                                                   '--input-size', '3', '64', '64', '--log-interval',
                                                                   '1', experiment='killed')]
    env = dict(os.environ, PYTHONUNBUFFERED='1')
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO)
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith('Train: 1 [   2/'):  # epoch 0 is checkpointed, epoch 1 is under way
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, ''.join(seen[-20:])
    out = tmp_path / 'killed'
    assert set(_checkpoints_all_load(out).values()) == {0}
    assert [r['epoch'] for r in _summary(out)] == ['0']

    done = subprocess.run(argv + ['--resume', str(out / 'last.pth.tar')], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [r['epoch'] for r in _summary(out)] == ['0', '1', '2']
    epochs = _checkpoints_all_load(out)
    assert epochs['last.pth.tar'] == 2
    best = _load(out / 'model_best.pth.tar')
    assert best['metric'] == max(float(r['eval_top1']) for r in _summary(out))
    assert _load(out / 'last.pth.tar')['task_state']['tenet_step'] == 36  # 3 epochs x 12 steps, none lost
