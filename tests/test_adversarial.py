"""Adversarial training: FGSM/PGD examples within eps in pixel space made in eval mode, free adversarial
training's replays and persistent perturbation, train.py runs with TENET, one-line errors, and --push-to-hub."""
import csv
import importlib.util
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
import yaml
from PIL import Image
from huggingface_hub import constants as hf_constants
from safetensors.torch import load
from timm.task import ClassificationTask

from timm_tenet import TenetConfig, TenetTask
from timm_tenet.training.adversarial import AdversarialConfig, AdversarialExamples, FreeAdversarialBatches, \
    adversarial_training
from timm_tenet.training.args import parse_train_args
from timm_tenet.training.run import run_training
from timm_tenet.training.settings import TrainingError
from test_hub import MiniHub, closed_port_url, hub_env

REPO = Path(__file__).resolve().parent.parent
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
EPS = 8 / 255
TOL = 1e-5


pytestmark = pytest.mark.usefixtures('one_thread')


def _normalise(pixels):
    return (pixels - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def _pixels(input):
    return input * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)


@pytest.fixture
def batch():
    generator = torch.Generator().manual_seed(0)
    clean = torch.rand(4, 3, 32, 32, generator=generator)
    clean[0] = 0.  # pixels on the box's faces, where [0, 1] clipping matters
    clean[1] = 1.
    return clean, torch.tensor([0, 1, 0, 1])


def _task(tenet=False):
    torch.manual_seed(0)
    model = timm.create_model('test_resnet', num_classes=2)
    if tenet:
        return TenetTask(model, TenetConfig(num_groups=2, stage=-1, warmup_steps=0, period=1), verbose=False)
    return ClassificationTask(model, verbose=False)


def _modes(module):
    return [m.training for m in module.modules()]


# ---------------------------------------------------------------------------------------------------------------
# FGSM / PGD examples


@pytest.mark.parametrize('cfg', [AdversarialConfig('fgsm', EPS), AdversarialConfig('pgd', EPS, steps=3)],
                         ids=['fgsm', 'pgd'])
def test_examples_lie_within_eps_of_the_clean_pixels_and_in_the_image_box(cfg, batch):
    clean, target = batch
    task = _task()
    task.train()
    x_adv = AdversarialExamples(cfg, MEAN, STD, seed=0)(task, _normalise(clean), target)
    pixels = _pixels(x_adv)
    change = (pixels - clean).abs()
    assert change.max().item() <= EPS + TOL
    assert pixels.min().item() >= -TOL and pixels.max().item() <= 1 + TOL
    assert change[2:].max().item() == pytest.approx(EPS, abs=TOL)  # the attack uses its budget
    if cfg.method == 'fgsm':  # one signed step of eps: every pixel moves by eps unless the box stops it
        assert (change[2:] > EPS - TOL).float().mean().item() > 0.9


@pytest.mark.parametrize('method', ['fgsm', 'pgd'])
def test_examples_are_made_in_eval_mode_and_leave_modes_statistics_and_gradients_alone(method, batch):
    clean, target = batch
    task = _task()
    task.train()
    model = task.get_trainable_module()
    model.layer1.eval()  # a frozen part stays frozen, the rest goes back to train mode
    modes = _modes(model)
    stats = {k: v.clone() for k, v in model.state_dict().items() if 'running' in k or 'num_batches' in k}
    perturb = AdversarialExamples(AdversarialConfig(method, EPS, steps=2), MEAN, STD)
    seen = []
    handle = model.register_forward_pre_hook(lambda m, args: seen.append(m.training))
    perturb(task, _normalise(clean), target)
    handle.remove()
    assert seen and not any(seen)  # every attack forward ran in eval mode
    assert _modes(model) == modes
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in stats.items())
    assert all(p.grad is None for p in model.parameters())


def test_fgsm_examples_raise_the_loss_of_the_model(batch):
    clean, target = batch
    task = _task()
    x_adv = AdversarialExamples(AdversarialConfig('fgsm', EPS), MEAN, STD)(task, _normalise(clean), target)
    model = task.get_trainable_module().eval()
    with torch.no_grad():
        assert F.cross_entropy(model(x_adv), target) > F.cross_entropy(model(_normalise(clean)), target)


def test_pgd_examples_are_reproducible_from_the_seed(batch):
    clean, target = batch
    task = _task()
    cfg = AdversarialConfig('pgd', EPS, steps=2)
    first = AdversarialExamples(cfg, MEAN, STD, seed=3)(task, _normalise(clean), target)
    second = AdversarialExamples(cfg, MEAN, STD, seed=3)(task, _normalise(clean), target)
    other = AdversarialExamples(cfg, MEAN, STD, seed=4)(task, _normalise(clean), target)
    assert torch.equal(first, second) and not torch.equal(first, other)


def test_tenet_task_is_attacked_through_its_bare_model_without_a_tenet_step(batch):
    clean, target = batch
    task = _task(tenet=True)
    task.train()
    AdversarialExamples(AdversarialConfig('fgsm', EPS), MEAN, STD)(task, _normalise(clean), target)
    assert task.step == 0


# ---------------------------------------------------------------------------------------------------------------
# Free adversarial training


def test_free_training_replays_every_batch_with_a_perturbation_that_persists_and_stays_within_eps():
    # loss = sum of the pixels: the input gradient is positive, so each replay adds one step until eps
    step, eps, replays = 1 / 255, 3 / 255, 2
    clean = torch.full((2, 3, 4, 4), 0.5)
    loader = [(_normalise(clean), torch.tensor([k, k])) for k in range(3)]
    batches = FreeAdversarialBatches(loader, AdversarialConfig('free', eps, step_size=step, replays=replays),
                                     MEAN, STD)
    assert len(batches) == 6
    changes, targets = [], []
    for input, target in batches:
        assert input.requires_grad
        _pixels(input).sum().backward()
        changes.append(round(((_pixels(input.detach()) - clean) * 255).mean().item(), 4))
        targets.append(target[0].item())
    assert targets == [0, 0, 1, 1, 2, 2]
    assert changes == [0, 1, 2, 3, 3, 3]  # carried across replays and batches, clipped at eps


def test_free_perturbation_of_a_model_loss_stays_within_eps_and_in_the_box(batch):
    clean, target = batch
    task = _task()
    task.train()
    eps, step = 4 / 255, 3 / 255
    batches = FreeAdversarialBatches([(_normalise(clean), target), (_normalise(clean[:2]), target[:2])],
                                     AdversarialConfig('free', eps, step_size=step, replays=3), MEAN, STD)
    deltas = []
    for input, target_ in batches:
        delta = batches.delta[:len(input)].clone()  # the perturbation this replay trains on
        pixels = _pixels(input.detach())
        assert torch.allclose(pixels, (clean[:len(input)] + delta).clamp(0, 1), atol=TOL)
        task(input, target_)['loss'].backward()
        deltas.append(delta.abs().amax(dim=(1, 2, 3)))
    assert len(deltas) == 6 and all(d.max().item() <= eps + TOL for d in deltas)
    assert deltas[0].max().item() == 0  # starts at zero
    # interior images: one step, then two steps clipped to eps (on the box's faces the clamp can stop the gradient)
    assert torch.allclose(deltas[1][2:], torch.full((2,), step))
    assert torch.allclose(deltas[2][2:], torch.full((2,), eps))
    assert deltas[3].max().item() > 0  # the next, smaller batch goes on from the stored perturbation, not zero
    assert task.get_trainable_module().training


def test_free_update_ignores_non_finite_gradients():
    clean = torch.full((1, 3, 2, 2), 0.5)
    batches = FreeAdversarialBatches([(_normalise(clean), torch.tensor([0]))] * 2,
                                     AdversarialConfig('free', 2 / 255, replays=1), MEAN, STD)
    for input, _ in batches:
        (_pixels(input) * float('nan')).sum().backward()
    assert torch.equal(batches.delta, torch.zeros_like(clean))


def test_adversarial_training_picks_the_hook_or_the_loader_wrapper():
    loader = [(torch.zeros(1, 3, 2, 2), torch.tensor([0]))]
    assert adversarial_training(None, loader, MEAN, STD) == (loader, None)
    batches, perturb = adversarial_training(AdversarialConfig('pgd', EPS), loader, MEAN, STD)
    assert batches is loader and isinstance(perturb, AdversarialExamples)
    batches, perturb = adversarial_training(AdversarialConfig('free', EPS), loader, MEAN, STD)
    assert isinstance(batches, FreeAdversarialBatches) and perturb is None and len(batches) == 4


# ---------------------------------------------------------------------------------------------------------------
# train.py


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp('adv_data')
    rng = np.random.default_rng(0)
    for split, n in (('train', 4), ('validation', 1)):
        for c in range(2):
            os.makedirs(root / split / str(c))
            for i in range(n):
                img = rng.integers(0, 100, (16, 16, 3), dtype=np.uint8)
                img[..., c] += 150
                Image.fromarray(img).save(root / split / str(c) / f'{i}.png')
    return root


def _argv(data, out, *extra, experiment='run'):
    return ['--data-dir', str(data), '--model', 'test_resnet', '--num-classes', '2', '--input-size', '3', '32', '32',
            '-b', '4', '--epochs', '1', '--lr', '0.05', '--warmup-epochs', '0', '--workers', '0', '--output', str(out),
            '--experiment', experiment, '--log-interval', '1', '--no-progress', '--tenet', '--tenet-groups', '2',
            '--tenet-stage', '-1', '--tenet-warmup-steps', '0', '--tenet-period', '1', *extra]


def _run(*argv):
    args, _ = parse_train_args(list(argv))
    return args, run_training(args)


def _outputs(result):
    out = Path(result.output_dir)
    with open(out / 'summary.csv') as f:
        rows = list(csv.DictReader(f))
    checkpoint = torch.load(out / 'last.pth.tar', map_location='cpu', weights_only=True)
    return rows, yaml.safe_load((out / 'args.yaml').read_text()), checkpoint


def test_pgd_training_with_tenet_finishes_with_finite_losses_and_records_the_setting(data_dir, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger='train')
    args, result = _run(*_argv(data_dir, tmp_path, '--adv-train', 'pgd', '--adv-eps', '8/255', '--adv-steps', '2'))
    rows, saved, checkpoint = _outputs(result)
    assert len(rows) == 1
    assert all(np.isfinite(float(rows[0][k])) for k in ('train_loss', 'train_loss_clean', 'train_loss_inhibited'))
    assert (saved['adv_train'], saved['adv_eps'], saved['adv_steps'], saved['adv_step_size']) == \
        ('pgd', '8/255', 2, '2/255')
    assert saved['adv_replays'] is None and checkpoint['task_state']['tenet_step'] == 2  # 2 batches
    assert 'Adversarial training: pgd, eps 8/255, 2 steps of 2/255 from a random start' in caplog.text


def test_free_training_makes_replays_times_the_updates_of_an_epoch(data_dir, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger='train')
    args, result = _run(*_argv(data_dir, tmp_path, '--adv-train', 'free', '--adv-eps', '4/255', '--adv-replays', '3',
                               '--sched-on-updates'))
    rows, saved, checkpoint = _outputs(result)
    assert np.isfinite(float(rows[0]['train_loss']))
    assert (saved['adv_eps'], saved['adv_step_size'], saved['adv_replays'], saved['adv_steps']) == \
        ('4/255', '4/255', 3, None)
    assert checkpoint['task_state']['tenet_step'] == 6  # 2 batches x 3 replays
    assert 'Scheduled epochs: 1 (6 updates per epoch)' in caplog.text


@pytest.mark.parametrize('extra, message', [
    (('--adv-train', 'pgd', '--adv-eps', 'abc'), "--adv-eps: cannot parse eps 'abc'"),
    (('--adv-train', 'free', '--adv-eps', '4/255', '--adv-replays', '0'), 'replays must be >= 1, got 0'),
    (('--adv-train', 'pgd', '--adv-eps', '2'), r"--adv-eps: eps '2' is above 1"),
    (('--adv-train', 'pgd', '--adv-eps', '0'), r'eps must be in \(0, 1\]'),
    (('--adv-train', 'pgd', '--adv-eps', '8/255', '--adv-step-size', '1/0'), "--adv-step-size: cannot parse eps"),
    (('--adv-train', 'mim', '--adv-eps', '8/255'), "--adv-train must be one of fgsm, pgd, free, got 'mim'"),
    (('--adv-train', 'pgd'), '--adv-train pgd needs --adv-eps'),
    (('--adv-eps', '8/255'), '--adv-eps given without --adv-train'),
    (('--adv-train', 'pgd', '--adv-eps', '8/255', '--adv-replays', '2'), '--adv-replays does not apply to'),
    (('--adv-train', 'fgsm', '--adv-eps', '8/255', '--adv-step-size', '1/255'), '--adv-step-size does not apply'),
    (('--adv-train', 'free', '--adv-eps', '8/255', '--mixup', '0.2'), 'free cannot be combined with mixup'),
    (('--push-to-hub', 'no-namespace'), "--push-to-hub: malformed repo id 'no-namespace'"),
    (('--push-use-ema',), '--push-private and --push-use-ema need --push-to-hub'),
])
def test_bad_settings_fail_before_training_in_one_line(extra, message, data_dir, tmp_path):
    with pytest.raises(TrainingError, match=message) as e:
        _run(*_argv(data_dir, tmp_path, *extra))
    assert '\n' not in str(e.value)
    assert not (tmp_path / 'run').exists()  # nothing was trained or written


def test_train_script_reports_a_bad_eps_as_one_error_line(data_dir, tmp_path, caplog):
    spec = importlib.util.spec_from_file_location('train_script', REPO / 'train.py')
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main(_argv(data_dir, tmp_path, '--adv-train', 'fgsm', '--adv-eps', 'abc')) == 1
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == ["--adv-eps: cannot parse eps 'abc': give a number or a fraction such as 8/255"]


def test_push_to_hub_offline_or_without_token_fails_before_training(data_dir, tmp_path):
    with hub_env(closed_port_url(), tmp_path / 'hf-cache') as mp:
        with pytest.raises(TrainingError, match='--push-to-hub: cannot push to org/adv: no Hugging Face token'):
            _run(*_argv(data_dir, tmp_path, '--push-to-hub', 'org/adv'))
        mp.setenv('HF_TOKEN', 'hf_write')
        mp.setattr(hf_constants, 'HF_HUB_OFFLINE', True)
        with pytest.raises(TrainingError, match='HF_HUB_OFFLINE=1 is set'):
            _run(*_argv(data_dir, tmp_path, '--push-to-hub', 'org/adv'))
    assert not (tmp_path / 'run').exists()


def test_push_to_hub_uploads_the_ema_weights_of_the_run_when_training_ends(data_dir, tmp_path):
    server = MiniHub()
    try:
        with hub_env(server.url, tmp_path / 'hf-cache') as mp:
            mp.setenv('HF_TOKEN', 'hf_write')
            args, result = _run(*_argv(data_dir, tmp_path, '--model-ema', '--push-to-hub', 'org/adv_tenet',
                                       '--push-private'))
        assert args.push_use_ema is True  # the default with --model-ema
        repo = server.repos['org/adv_tenet']
        assert repo['private'] and {'model.safetensors', 'config.json', 'README.md'} <= set(repo['files'])
        assert len(server.commits) == 1
        pushed = load(repo['files']['model.safetensors'])
        checkpoint = torch.load(Path(result.output_dir) / 'model_best.pth.tar', map_location='cpu', weights_only=True)
        assert torch.equal(pushed['fc.weight'], checkpoint['state_dict_ema']['fc.weight'])
        assert not torch.equal(pushed['fc.weight'], checkpoint['state_dict']['fc.weight'])
        saved = yaml.safe_load((Path(result.output_dir) / 'args.yaml').read_text())
        assert (saved['push_to_hub'], saved['push_use_ema'], saved['push_private']) == ('org/adv_tenet', True, True)
    finally:
        server.close()
