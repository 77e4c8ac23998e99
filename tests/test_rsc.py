"""RscTask: the masks and sample choice against a per-sample loop, the schedule, BatchNorm hygiene, bad input."""
import copy
import math

import pytest
import timm
import torch
import torch.nn as nn

from timm_tenet import RscConfig, RscTask
from timm_tenet.rsc import challenged_samples
from timm_tenet.split import ModelSplit

pytestmark = pytest.mark.usefixtures('one_thread')


def make_batch(num_classes=10, batch=12, size=160, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, size, size, generator=gen), torch.randint(0, num_classes, (batch,), generator=gen)


def batchnorm_state(model):
    return {k: v.clone() for k, v in model.state_dict().items() if 'running' in k or 'num_batches' in k}


@pytest.fixture
def model():
    torch.manual_seed(0)
    return timm.create_model('test_resnet', num_classes=10)


def reference_rsc_step(model, stage, x, y, spatial, percent, spatial_drop=1 / 3, channel_drop=1 / 3.2):
    """RSC one sample at a time, as the reference code reads: returns (keep mask of the batch, challenged logits)."""
    model = copy.deepcopy(model).train()
    split = ModelSplit(model, stage)
    with torch.no_grad():
        features = split.features(x)  # one train-mode run of F, as the task
    model.eval()
    masks, drops = [], []
    for i in range(x.shape[0]):
        a = features[i:i + 1].clone().requires_grad_(True)
        logits = split.rest(a)
        logits[0, y[i]].backward()
        g = a.grad[0]
        channels, height, width = g.shape
        weights = torch.stack([g[c].mean() for c in range(channels)])
        mask = torch.ones(channels, height, width)
        if spatial:
            scores = {}
            for h in range(height):
                for w in range(width):
                    scores[h, w] = (weights * a[0, :, h, w]).sum().item()
            threshold = sorted(scores.values(), reverse=True)[math.ceil(height * width * spatial_drop)]
            for (h, w), score in scores.items():
                if score > threshold:
                    mask[:, h, w] = 0
        else:
            weights = weights.tolist()
            threshold = sorted(weights, reverse=True)[math.ceil(channels * channel_drop)]
            for c in range(channels):
                if weights[c] > threshold:
                    mask[c] = 0
        with torch.no_grad():
            before = logits[0].softmax(-1)[y[i]].item()
            after = split.rest(a * mask)[0].softmax(-1)[y[i]].item()
        masks.append(mask)
        drops.append(max(before - after - 1e-4, 0.0))
    rank = round(len(drops) * percent)
    threshold = sorted(drops, reverse=True)[rank] if rank < len(drops) else 0.0
    keep = [drop > threshold for drop in drops]
    mask = torch.stack([m if k else torch.ones_like(m) for m, k in zip(masks, keep)])
    model.train()
    with torch.no_grad():
        challenged = split.rest(features * mask)
    return torch.tensor(keep), challenged


@pytest.mark.parametrize('stage, spatial, epoch', [(-1, True, 0), (-1, False, 10), (3, True, 20), (3, False, 0)])
def test_step_matches_per_sample_reference_loop(model, stage, spatial, epoch):
    cfg = RscConfig(stage=stage)
    x, y = make_batch()
    keep, challenged = reference_rsc_step(model, stage, x, y, spatial, cfg.batch_percent_at(epoch))
    trainable = RscTask(model, cfg, verbose=False).train().trainable_module
    passes = trainable(x, y, spatial=spatial, batch_percent=cfg.batch_percent_at(epoch))
    assert passes['selected'].bool().tolist() == keep.tolist()
    assert 0 < keep.sum() <= round(12 * cfg.batch_percent_at(epoch))
    torch.testing.assert_close(passes['challenged'], challenged, rtol=1e-4, atol=1e-5)


def test_challenged_samples_rank_the_probability_drop():
    before = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    after = torch.tensor([0.1, 0.8, 0.6, 0.7, 0.2, 0.39995])  # drops .8, 0, .1, <0, .3, below the margin
    assert challenged_samples(before, after, 1 / 3).tolist() == [True, False, False, False, True, False]
    assert challenged_samples(before, after, 0.5).tolist() == [True, False, True, False, True, False]
    assert challenged_samples(before, after, 1.0).tolist() == [True, False, True, False, True, False]
    assert not challenged_samples(before, after, 0.0).any()


def test_batch_percentage_follows_the_epoch_schedule():
    cfg = RscConfig()
    assert [cfg.batch_percent_at(e) for e in (0, 9, 10, 19, 20)] == [0.3, 0.3, 0.5, 0.5, 0.7]
    assert cfg.batch_percent_at(100) == 1.0
    assert RscConfig(batch_percent=0.25, batch_percent_step=0.0).batch_percent_at(50) == 0.25
    assert RscConfig(batch_percent_every=3).batch_percent_at(7) == pytest.approx(0.7)


class _RecordingPasses(nn.Module):
    """Stands in for the trainable module: records what the task asks of it."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, input, target=None, spatial=None, batch_percent=1.0):
        self.calls.append((spatial, batch_percent))
        logits = torch.zeros(input.shape[0], 10, requires_grad=True)
        return {'output': logits, 'challenged': logits, 'selected': torch.zeros(input.shape[0])}


def test_task_asks_for_the_scheduled_batch_percentage(model):
    task = RscTask(model, RscConfig(batch_percent=0.2, batch_percent_step=0.5, batch_percent_every=2),
                   verbose=False).train()
    task.trainable_module = passes = _RecordingPasses()
    x, y = make_batch(batch=2, size=8)
    for epoch in range(5):
        task.set_epoch(epoch)
        task(x, y)
    assert [percent for _, percent in passes.calls] == [0.2, 0.2, 0.7, 0.7, 1.0]
    task.eval()
    task(x, y)
    assert passes.calls[-1] == (None, 1.0)  # evaluation is the plain forward


@pytest.mark.parametrize('spatial_prob, low, high', [(1.0, 400, 400), (0.0, 0, 0), (0.3, 90, 150)])
def test_spatial_or_channel_choice_follows_spatial_prob(model, spatial_prob, low, high):
    task = RscTask(model, RscConfig(spatial_prob=spatial_prob), verbose=False, seed=3).train()
    task.trainable_module = passes = _RecordingPasses()
    x, y = make_batch(batch=2, size=8)
    logged = sum(task(x, y)['spatial_frac'].item() for _ in range(400))
    choices = [spatial for spatial, _ in passes.calls]
    assert low <= sum(choices) <= high and logged == sum(choices)  # binomial(400, 0.3): 120 +- 4.7 sd


def test_kept_fraction_grows_with_the_batch_percentage(model):
    x, y = make_batch(size=64)
    fractions = []
    for percent in (0.0, 0.25, 0.5):
        task = RscTask(copy.deepcopy(model), RscConfig(spatial_prob=1.0, batch_percent=percent),
                       verbose=False).train()
        fractions.append(task(x, y)['inhibited_frac'].item())
    assert fractions[0] == 0.0 and fractions[1] == 0.25 and 0.25 <= fractions[2] <= 0.5


@pytest.mark.parametrize('spatial', [True, False])
def test_mask_zeroes_whole_positions_or_whole_channels(model, spatial):
    trainable = RscTask(model, RscConfig(batch_percent=1.0), verbose=False).train().trainable_module
    x, y = make_batch(size=160)
    masks, apply = [], trainable.split.apply_mask

    def recording(a, mask):
        masks.append(mask)
        return apply(a, mask)

    trainable.split.apply_mask = recording
    trainable(x, y, spatial=spatial, batch_percent=1.0)
    mask = masks[0]  # before the sample choice
    assert mask.dtype == torch.float32
    if spatial:
        assert mask.shape == (12, 1, 5, 5) and (mask == 0).flatten(1).sum(1).eq(math.ceil(25 / 3)).all()
    else:
        assert mask.shape == (12, 96, 1, 1) and (mask == 0).flatten(1).sum(1).eq(math.ceil(96 / 3.2)).all()


def test_loss_is_the_challenged_cross_entropy_and_reaches_the_feature_extractor(model):
    task = RscTask(model, RscConfig(batch_percent=1.0), verbose=False).train()
    x, y = make_batch(size=64)
    result = task(x, y)
    result['loss'].backward()
    assert set(result) == {'loss', 'output', 'loss_clean', 'loss_inhibited', 'inhibited_frac', 'spatial_frac'}
    assert result['loss'] is result['loss_inhibited'] and not result['loss_clean'].requires_grad
    assert next(model.parameters()).grad.abs().sum() > 0  # the stem, through F
    task.eval()
    with torch.no_grad():
        torch.testing.assert_close(task(x, y)['output'], model.eval()(x))


@pytest.mark.parametrize('stage', [2, -1])
def test_masked_pass_leaves_batchnorm_statistics(model, stage):
    clean_only = copy.deepcopy(model).train()
    task = RscTask(model, RscConfig(stage=stage, batch_percent=1.0), verbose=False).train()
    x, y = make_batch(size=64)
    result = task(x, y)
    result['loss'].backward()
    assert result['inhibited_frac'].item() > 0
    clean_only(x)
    rsc_stats, clean_stats = batchnorm_state(model), batchnorm_state(clean_only)
    assert rsc_stats.keys() == clean_stats.keys()
    for key in clean_stats:
        torch.testing.assert_close(rsc_stats[key], clean_stats[key], msg=key)
    assert all(m.track_running_stats for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    assert all(m.training for m in model.modules())


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_rsc_step_under_autocast(model, dtype):
    task = RscTask(model, RscConfig(stage=3, batch_percent=1.0), verbose=False).train()
    x, y = make_batch(size=64)
    with torch.autocast('cpu', dtype=dtype):
        result = task(x, y)
    result['loss'].backward()
    assert torch.isfinite(result['loss']) and result['inhibited_frac'].item() > 0


def test_soft_targets_from_mixup_are_supported(model):
    from timm.loss import SoftTargetCrossEntropy
    task = RscTask(model, RscConfig(batch_percent=1.0), criterion=SoftTargetCrossEntropy(), verbose=False).train()
    x, y = make_batch(size=64)
    result = task(x, 0.8 * nn.functional.one_hot(y, 10).float() + 0.02)
    result['loss'].backward()
    assert torch.isfinite(result['loss'])


def test_rsc_step_reads_nothing_back_from_the_device(model):
    task = RscTask(model, RscConfig(stage=3, batch_percent=0.5), verbose=False).train()
    x, y = make_batch(size=64)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(2):
            task(x, y)['loss'].backward()
    ops = {event.key for event in prof.key_averages()}
    assert 'aten::topk' in ops  # the RSC path ran
    assert not ops & {'aten::item', 'aten::_local_scalar_dense', 'aten::nonzero'}


def test_eval_model_and_checkpoint_keys_are_the_base_model(model):
    base_keys = set(model.state_dict())
    task = RscTask(model, verbose=False).train()
    task.setup_ema(decay=0.5)
    x, y = make_batch(size=64)
    task(x, y)['loss'].backward()
    task.update_ema()
    assert task.get_eval_model() is model
    state = task.get_checkpoint_state()
    assert set(state['state_dict']) == base_keys and state['task_state']['rsc_cfg'] == RscConfig().to_dict()


# --- bad input: one clear line each ---------------------------------------------------------------

@pytest.mark.parametrize('field, value, message', [
    ('spatial_drop', 1.0, r'spatial_drop is the fraction of entries zeroed and must be in \(0, 1\), got 1.0'),
    ('channel_drop', 0.0, r'channel_drop .* must be in \(0, 1\), got 0.0'),
    ('spatial_prob', 1.5, r'spatial_prob must be in \[0, 1\], got 1.5'),
    ('batch_percent', -0.1, r'batch_percent must be in \[0, 1\], got -0.1'),
    ('batch_percent_every', 0, r'batch_percent_every must be >= 1'),
    ('stage', 0, r'RSC stage is 1-based'),
])
def test_out_of_range_settings_are_refused(field, value, message):
    with pytest.raises(ValueError, match=message):
        RscConfig(**{field: value})


def test_stage_out_of_range_names_the_model(model):
    with pytest.raises(ValueError, match=r'Stage 5 is out of range for ResNet: use 1\.\.4, or -1'):
        RscTask(model, RscConfig(stage=5), verbose=False)
