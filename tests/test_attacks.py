import re
import sys

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from timm_tenet.robustness.attacks import NormalizedModel, autoattack, create_attack, fgsm, parse_eps, pgd, robust_accuracy

EPS = 8 / 255


def _tiny_net(num_classes: int = 4) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 64, num_classes))


@pytest.fixture
def untrained():
    torch.manual_seed(0)
    model = _tiny_net().eval()
    g = torch.Generator().manual_seed(1)
    return model, torch.rand(16, 3, 8, 8, generator=g), torch.randint(0, 4, (16,), generator=g)


def _synthetic(n: int, templates: torch.Tensor, g: torch.Generator):
    """Four classes: a fixed +-1 pattern of amplitude 0.05 on grey, buried in Gaussian noise."""
    y = torch.randint(0, len(templates), (n,), generator=g)
    return (0.5 + 0.05 * templates[y] + 0.15 * torch.randn(n, 3, 8, 8, generator=g)).clamp(0, 1), y


@pytest.fixture(scope='module')
def trained():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    templates = torch.randn(4, 3, 8, 8, generator=g).sign()
    x_train, y_train = _synthetic(1024, templates, g)
    x_test, y_test = _synthetic(256, templates, g)
    model = _tiny_net()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        idx = torch.randint(0, len(x_train), (128,), generator=g)
        loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval(), DataLoader(TensorDataset(x_test, y_test), batch_size=128)


def _reference_pgd(model, x, y, eps, step_size, steps, start):
    """Textbook PGD with a given random start: ascend the mean loss with .backward(), clip, repeat."""
    x_adv = (x + start).clamp(0, 1)
    for _ in range(steps):
        x_adv = x_adv.clone().requires_grad_(True)
        F.cross_entropy(model(x_adv), y).backward()
        x_adv = x_adv.detach() + step_size * x_adv.grad.sign()
        x_adv = torch.max(torch.min(x_adv, x + eps), x - eps).clamp(0, 1)
    model.zero_grad(set_to_none=True)
    return x_adv


def test_fgsm_matches_textbook_step(untrained):
    model, x, y = untrained
    x_ref = x.clone().requires_grad_(True)
    F.cross_entropy(model(x_ref), y).backward()
    expected = (x + EPS * x_ref.grad.sign()).clamp(0, 1)
    torch.testing.assert_close(fgsm(model, x, y, EPS), expected, rtol=0, atol=1e-6)


def test_pgd_matches_textbook_loop_with_same_random_start(untrained):
    model, x, y = untrained
    start = EPS * (2 * torch.rand(x.shape, generator=torch.Generator().manual_seed(7)) - 1)
    expected = _reference_pgd(model, x, y, EPS, 2 / 255, 5, start)
    out = pgd(model, x, y, EPS, 2 / 255, 5, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    assert not torch.equal(out, x)


def test_pgd_restarts_keep_first_successful_run(untrained):
    model, x, y = untrained
    g = torch.Generator().manual_seed(3)
    first, second = (pgd(model, x, y, 2 / 255, 1 / 255, 2, generator=g) for _ in range(2))
    fooled = model(first).argmax(1) != y
    assert 0 < fooled.sum() < len(y)  # a mix, so both branches are exercised
    expected = torch.where(fooled.view(-1, 1, 1, 1), first, second)
    out = pgd(model, x, y, 2 / 255, 1 / 255, 2, generator=torch.Generator().manual_seed(3), restarts=2)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


@pytest.mark.parametrize('attack', ['fgsm', 'pgd'])
def test_attack_stays_in_eps_ball_and_image_box(untrained, attack):
    model, x, y = untrained
    x = x.clone()
    x[:, :, :2] = 0.0  # pixels at the box edges: the projection must also clip to [0, 1]
    x[:, :, -2:] = 1.0
    out = create_attack(attack, EPS, steps=5, step_size=EPS)(model, x, y)
    assert (out - x).abs().max().item() <= EPS + 1e-6
    assert out.min().item() >= 0.0 and out.max().item() <= 1.0
    assert out.dtype == torch.float32 and not out.requires_grad


def test_attack_leaves_parameter_grads_empty(untrained):
    model, x, y = untrained
    pgd(model, x, y, EPS, 2 / 255, 3)
    fgsm(model, x, y, EPS)
    assert all(p.grad is None for p in model.parameters())


def test_attack_ignores_autocast(untrained):
    model, x, y = untrained
    expected = pgd(model, x, y, EPS, 2 / 255, 3, generator=torch.Generator().manual_seed(0))
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = pgd(model, x, y, EPS, 2 / 255, 3, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


@pytest.mark.parametrize('submodule_only', [False, True])
def test_attack_on_train_mode_model_gives_one_line_error(untrained, submodule_only):
    model, x, y = untrained
    (model[1] if submodule_only else model).train()
    for attack in (create_attack('fgsm', EPS), create_attack('pgd', EPS)):
        with pytest.raises(ValueError, match=r'call model\.eval\(\) first') as err:
            attack(model, x, y)
        assert '\n' not in str(err.value)


def test_pgd_beats_fgsm_beats_clean_on_trained_model(trained):
    model, loader = trained
    fgsm_result = robust_accuracy(model, loader, create_attack('fgsm', EPS), progress=False)
    pgd_result = robust_accuracy(
        model, loader, create_attack('pgd', EPS, steps=10, generator=torch.Generator().manual_seed(0)), progress=False)
    assert fgsm_result['clean_top1'] == pgd_result['clean_top1'] > 90
    assert pgd_result['robust_top1'] <= fgsm_result['robust_top1'] < fgsm_result['clean_top1']
    assert pgd_result['robust_err'] == pytest.approx(100 - pgd_result['robust_top1'])
    assert pgd_result['count'] == 256


def test_normalized_model_normalises_inside():
    torch.manual_seed(0)
    model = timm.create_model('test_resnet', num_classes=10).eval()
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    x = torch.rand(2, 3, 32, 32)
    expected = model((x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1))
    wrapped = NormalizedModel(model, mean, std).eval()
    torch.testing.assert_close(wrapped(x), expected)
    assert set(dict(wrapped.named_buffers())) >= {'mean', 'std'}


@pytest.mark.parametrize('text, value', [
    ('8/255', 8 / 255), ('0.03', 0.03), ('4 / 255', 4 / 255), (' 2/255 ', 2 / 255), ('0', 0.0), ('1e-2', 0.01)])
def test_parse_eps_accepts_numbers_and_fractions(text, value):
    assert parse_eps(text) == pytest.approx(value)


@pytest.mark.parametrize('text', ['abc', '8/', '/255', '8/0', '8/255/2', 'nan', ''])
def test_parse_eps_rejects_with_one_line_message(text):
    with pytest.raises(ValueError) as err:
        parse_eps(text)
    assert str(err.value) == f"cannot parse eps '{text}': give a number or a fraction such as 8/255"


@pytest.mark.parametrize('text, message', [
    ('-0.1', "eps must be >= 0, got '-0.1'"),
    ('8', "eps '8' is above 1, but radii are in [0, 1] pixel units: write 8/255 for eight grey levels"),
    ('300/255', "eps '300/255' is above 1"),
])
def test_parse_eps_refuses_negative_radii_and_grey_levels(text, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_eps(text)


def test_unknown_attack_name_lists_choices():
    with pytest.raises(ValueError, match="unknown attack 'cw'; choose one of fgsm, pgd, autoattack"):
        create_attack('cw', EPS)


def test_autoattack_missing_package_says_how_to_install(untrained, monkeypatch):
    model, x, y = untrained
    monkeypatch.setitem(sys.modules, 'pyautoattack', None)
    monkeypatch.setitem(sys.modules, 'autoattack', None)
    with pytest.raises(ImportError, match='pip install pyautoattack') as err:
        autoattack(model, x, y, EPS)
    assert '\n' not in str(err.value)
