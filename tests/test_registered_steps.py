"""A TENET step on every registered ``*_tenet`` model at a small input, with its own default stage."""
import copy

import pytest
import timm
import torch

import timm_tenet
from timm_tenet import TenetTask


pytestmark = pytest.mark.usefixtures('one_thread')


@pytest.mark.parametrize('name', timm.list_models('*_tenet'))
def test_tenet_step_on_registered_model(name):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=5, tenet_warmup_steps=0, tenet_period=1, tenet_only_correct=False)
    size = 32 if name.startswith('cifar_') else 64
    x, y = torch.randn(4, 3, size, size), torch.randint(0, 5, (4,))
    clean_only = copy.deepcopy(model).train()
    task = TenetTask(model, verbose=False).train()
    assert task.cfg == timm_tenet.get_tenet_config(model)

    result = task(x, y)
    result['loss_inhibited'].backward(retain_graph=True)
    stem_weight = next(model.parameters())
    assert stem_weight.grad is not None and stem_weight.grad.abs().sum() > 0  # inhibition trains F
    assert all(torch.isfinite(result[k]) for k in ('loss', 'loss_clean', 'loss_inhibited', 'loss_orth'))

    clean_only(x)
    expected = {k: v for k, v in clean_only.state_dict().items() if 'running_' in k or 'num_batches' in k}
    actual = model.state_dict()
    for key, value in expected.items():
        torch.testing.assert_close(actual[key], value, msg=f'{name}: {key} moved in the masked pass')
