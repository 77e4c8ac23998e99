"""TenetTask: the joint loss, the schedule, BatchNorm hygiene, AMP, EMA, checkpoints and bad input."""
import copy
import functools

import pytest
import timm
import torch
import torch.nn as nn
from timm.task import ClassificationTask

from timm_tenet import TenetConfig, TenetTask
from timm_tenet.inhibition import group_channels
from timm_tenet.task import ensure_finite

EVERY_STEP = dict(warmup_steps=0, period=1)


def make_batch(num_classes=10, batch=6, size=32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, size, size, generator=gen), torch.randint(0, num_classes, (batch,), generator=gen)


def batchnorm_state(model):
    return {k: v.clone() for k, v in model.state_dict().items() if 'running' in k or 'num_batches' in k}


def first_conv_grad(task, loss_key, x, y):
    task.zero_grad()
    result = task(x, y)
    result[loss_key].backward()
    return result, task.get_eval_model().conv1.weight.grad.abs().sum()


@pytest.fixture
def resnet():
    torch.manual_seed(0)
    return timm.create_model('resnet18', num_classes=10)


def test_tenet_step_returns_all_terms_and_inhibited_loss_reaches_feature_extractor(resnet):
    task = TenetTask(resnet, TenetConfig(stage=3, only_correct=False, **EVERY_STEP)).train()
    x, y = make_batch()
    result, grad = first_conv_grad(task, 'loss_inhibited', x, y)
    assert set(result) == {'loss', 'output', 'loss_clean', 'loss_inhibited', 'loss_orth', 'inhibited_frac'}
    assert torch.isfinite(result['loss']) and grad > 0
    expected = result['loss_clean'] + 0.1 * result['loss_inhibited'] + 1e-3 * result['loss_orth']
    torch.testing.assert_close(result['loss'], expected)
    assert result['inhibited_frac'].item() == 1.0


def test_masked_pass_leaves_batchnorm_statistics(resnet):
    clean_only = copy.deepcopy(resnet).train()
    task = TenetTask(resnet, TenetConfig(stage=2, only_correct=False, **EVERY_STEP)).train()
    x, y = make_batch()
    task(x, y)['loss'].backward()
    clean_only(x)
    tenet_stats, clean_stats = batchnorm_state(resnet), batchnorm_state(clean_only)
    assert tenet_stats.keys() == clean_stats.keys()
    for key in clean_stats:
        torch.testing.assert_close(tenet_stats[key], clean_stats[key], msg=key)
    assert all(m.track_running_stats for m in resnet.modules() if isinstance(m, nn.BatchNorm2d))
    assert all(m.training for m in resnet.modules())


def test_schedule_follows_warmup_and_period(resnet):
    task = TenetTask(resnet, TenetConfig(warmup_steps=4, period=3)).train()
    x, y = make_batch(batch=2)
    tenet_steps = [step for step in range(1, 11) if 'loss_inhibited' in task(x, y)]
    assert tenet_steps == [6, 9]
    task.eval()
    assert 'loss_inhibited' not in task(x, y) and task.step == 10


@pytest.mark.parametrize('warmup, period', [(0, 1), (0, 3), (42, 3), (500, 3), (2, 2)])
def test_tenet_step_count_matches_the_schedule(warmup, period):
    cfg = TenetConfig(warmup_steps=warmup, period=period)
    for steps in (0, 1, 2, 3, 41, 42, 100, 3270):
        assert cfg.count_tenet_steps(steps) == sum(cfg.is_tenet_step(s) for s in range(1, steps + 1))
    assert TenetConfig(warmup_steps=42).count_tenet_steps(3270) == 1077


def test_tenet_step_leaves_the_global_random_state(resnet):
    """k-means draws from the task's own generator, so a TENET run keeps its seed's data order."""
    task = TenetTask(resnet, TenetConfig(stage=3, only_correct=False, **EVERY_STEP)).train()
    x, y = make_batch()
    state = torch.get_rng_state()
    first = task(x, y)['loss_inhibited']
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.isfinite(first)


def test_only_correct_samples_are_inhibited(resnet):
    task = TenetTask(resnet, TenetConfig(**EVERY_STEP)).train()
    x, _ = make_batch()
    with torch.no_grad():
        predicted = resnet.eval()(x).argmax(-1)
    resnet.train()
    with torch.no_grad():
        train_prediction = task.trainable_module(x)['output'].argmax(-1)
    y = train_prediction.clone()
    y[:2] = (y[:2] + 1) % 10  # two wrong samples
    result = task(x, y)
    assert result['inhibited_frac'].item() == pytest.approx(4 / 6)
    assert predicted.shape == y.shape


def test_soft_targets_from_mixup_are_supported(resnet):
    from timm.loss import SoftTargetCrossEntropy
    task = TenetTask(resnet, TenetConfig(only_correct=False, **EVERY_STEP), criterion=SoftTargetCrossEntropy()).train()
    x, y = make_batch()
    soft = 0.8 * nn.functional.one_hot(y, 10).float() + 0.02
    result = task(x, soft)
    result['loss'].backward()
    assert torch.isfinite(result['loss_inhibited'])


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_tenet_step_under_autocast(resnet, dtype):
    task = TenetTask(resnet, TenetConfig(only_correct=False, **EVERY_STEP)).train()
    x, y = make_batch()
    with torch.autocast('cpu', dtype=dtype):
        result = task(x, y)
    result['loss'].backward()
    assert torch.isfinite(result['loss']) and torch.isfinite(result['loss_inhibited'])


@pytest.mark.parametrize('stage', [-1, 1, 4])
def test_stage_boundaries_match_plain_forward(resnet, stage):
    task = TenetTask(resnet, TenetConfig(stage=stage)).eval()
    x, y = make_batch()
    with torch.no_grad():
        torch.testing.assert_close(task(x, y)['output'], resnet(x))


def test_eval_model_and_checkpoint_keys_are_the_base_model(resnet):
    base_keys = set(resnet.state_dict())
    task = TenetTask(resnet, TenetConfig(**EVERY_STEP)).train()
    task.setup_ema(decay=0.5)
    x, y = make_batch()
    task(x, y)['loss'].backward()
    task.update_ema()
    assert task.get_eval_model() is resnet
    assert set(task.get_eval_model(ema=True).state_dict()) == base_keys
    state = task.get_checkpoint_state()
    assert set(state['state_dict']) == base_keys and state['task_state']['tenet_step'] == 1
    assert set(task.get_checkpoint_state(ema=True)['state_dict_ema']) == base_keys


def test_task_state_restores_the_step_counter(resnet):
    task = TenetTask(resnet, TenetConfig(warmup_steps=3, period=2)).train()
    x, y = make_batch(batch=2)
    for _ in range(3):
        task(x, y)
    state = task.get_checkpoint_state()
    resumed = TenetTask(copy.deepcopy(resnet), TenetConfig(warmup_steps=3, period=2)).train()
    resumed.load_checkpoint_state(state['state_dict'], state['task_state'])
    assert resumed.step == 3 and 'loss_inhibited' in resumed(x, y)


def test_optimizer_sees_forwarded_no_weight_decay_and_group_matcher():
    torch.manual_seed(0)
    model = timm.create_model('test_vit', num_classes=10, global_pool='avg')
    task = TenetTask(model, TenetConfig(stage=-1, num_groups=4))
    trainable = task.get_trainable_module()
    assert trainable.no_weight_decay() == {'model.' + n for n in model.no_weight_decay()}
    matcher = trainable.group_matcher()
    assert matcher('model.patch_embed.proj.weight') < matcher('model.head.weight')


def test_model_tenet_cfg_is_the_default(resnet):
    resnet.tenet_cfg = TenetConfig(stage=2, num_groups=3)
    assert TenetTask(resnet).cfg == resnet.tenet_cfg
    assert TenetTask(resnet, TenetConfig(stage=1)).cfg.stage == 1


def test_compile_compiles_features_rest_and_grouping_with_the_eager_loss(resnet):
    eager = TenetTask(copy.deepcopy(resnet), TenetConfig(only_correct=False, **EVERY_STEP)).train()
    task = TenetTask(resnet, TenetConfig(only_correct=False, **EVERY_STEP)).train()
    graphs = []

    def recording_backend(graph_module, example_inputs):
        graphs.append(' '.join(str(node.target) for node in graph_module.graph.nodes))
        return graph_module.forward

    eval_model = task.compile(backend=recording_backend)
    assert task.get_eval_model() is eval_model
    x, y = make_batch()
    torch.manual_seed(0)
    expected = eager(x, y)
    torch.manual_seed(0)
    result = task(x, y)
    result['loss'].backward()
    torch.testing.assert_close(result['loss'], expected['loss'])
    torch.testing.assert_close(result['loss_inhibited'], expected['loss_inhibited'])
    assert sum('searchsorted' in g for g in graphs) == 1  # the grouping, one graph
    assert sum('conv2d' in g and 'linear' in g for g in graphs) == 3  # D: clean, eval-mode, frozen-stats runs
    assert sum('conv2d' in g and 'linear' not in g for g in graphs) == 1  # F


def test_matches_classification_task_before_warmup(resnet):
    x, y = make_batch()
    plain = ClassificationTask(copy.deepcopy(resnet)).train()
    tenet = TenetTask(resnet, TenetConfig(warmup_steps=100)).train()
    torch.testing.assert_close(tenet(x, y)['loss'], plain(x, y)['loss'])


def test_vit_at_head_boundary_inhibits_patch_tokens_only():
    torch.manual_seed(0)
    model = timm.create_model('test_vit', num_classes=10, global_pool='avg')
    task = TenetTask(model, TenetConfig(stage=-1, num_groups=4, only_correct=False, **EVERY_STEP)).train()
    x, y = make_batch(size=160)
    result = task(x, y)
    result['loss'].backward()
    assert torch.isfinite(result['loss_inhibited'])


# --- bad input: one clear line each ---------------------------------------------------------------

@pytest.mark.parametrize('stage, message', [
    (5, r'Stage 5 is out of range for ResNet: use 1\.\.4, or -1'),
    (0, 'stage is 1-based'),
])
def test_stage_out_of_range_is_refused(resnet, stage, message):
    with pytest.raises(ValueError, match=message):
        TenetTask(resnet, TenetConfig(stage=stage))


def test_intermediate_stage_of_unsupported_family_names_supported_ones():
    model = timm.create_model('test_vit', num_classes=10, global_pool='avg')
    with pytest.raises(ValueError, match='only stage=-1.*supported for ResNet, ConvNeXt'):
        TenetTask(model, TenetConfig(stage=2))


def test_vit_token_pooling_is_refused():
    model = timm.create_model('test_vit', num_classes=10, global_pool='token')
    with pytest.raises(ValueError, match="global_pool='token'.*global_pool='avg'"):
        TenetTask(model, TenetConfig(stage=-1))


@pytest.mark.parametrize('num_groups, message', [(1, 'num_groups >= 2'), (65, 'more than the 64 channels at stage 1')])
def test_group_counts_are_checked(resnet, num_groups, message):
    with pytest.raises(ValueError, match=message):
        task = TenetTask(resnet, TenetConfig(stage=1, num_groups=num_groups))
        task(*make_batch(batch=2))


def test_non_finite_loss_stops_with_the_step_number(resnet):
    task = TenetTask(resnet, TenetConfig(**EVERY_STEP)).train()
    x, y = make_batch()
    x[0] = float('nan')
    result = task(x, y)
    with pytest.raises(FloatingPointError, match='non-finite loss .* at training step 1'):
        ensure_finite(result['loss'], task.step)


# --- the step as GPU users run it: AMP, no host reads, checkpointing --------------------------------

def float16_step_mask(model, stage, x, y):
    """One float16-autocast TENET step; its map ``A``, group ids and mask, and the trainable module."""
    trainable = TenetTask(model, TenetConfig(stage=stage, only_correct=False, **EVERY_STEP)).train() \
        .get_trainable_module()
    with torch.autocast('cpu', dtype=torch.float16):
        step = trainable(x, y, tenet_step=True)
    assert step['maps'].dtype == torch.float16 and step['mask'].dtype == torch.float32
    return step['maps'], step['group_ids'], step['mask'], trainable


def test_mask_of_a_float16_autocast_step_is_float32_and_matches_the_float32_mask():
    from timm_tenet.inhibition import reversed_mask
    torch.manual_seed(0)
    model = timm.create_model('resnet18', num_classes=10)
    with torch.no_grad():
        model.fc.weight.mul_(0.01)  # small logit gradients: every value of dL_d/dA is a float16 subnormal
    x, y = make_batch(batch=2, size=224)
    maps, group_ids, mask, trainable = float16_step_mask(model, -1, x, y)
    # stage -1 of a CNN: the maps are the features
    exact = reversed_mask(maps, trainable.logit_gradient(maps.float(), y)[0], group_ids, 6)
    with torch.autocast('cpu', dtype=torch.float16):
        unscaled = reversed_mask(maps, trainable.logit_gradient(maps, y, scale=1.0)[0], group_ids, 6)
    assert (mask - exact).abs().max() < 1e-3
    assert (unscaled - exact).abs().max() > 1e-3  # the float16 underflow that the scale prevents


def test_mask_of_a_float16_step_before_residual_blocks_is_as_close_as_float16_maps_allow():
    """With residual blocks in ``D`` the mask moves with the last bits of ``A``: rounding a float32 ``A`` to
    float16, everything else float32, already moves it by more than 1e-3 here, so 1e-3 is out of reach of
    any float16 ``D``. The float16 step (``D``'s gradient pass in float16) stays within 1.5x of that
    rounding. Both differences vary from batch to batch (``benchmarks/mask_precision.py``: medians 2.3e-3
    and 2.8e-3 over 20 batches, step / rounding 0.09-9.3 per batch): this checks one batch."""
    from timm_tenet.inhibition import reversed_mask
    torch.manual_seed(0)
    model = timm.create_model('resnet18', num_classes=10)
    x, y = make_batch(batch=2, size=224, seed=4)
    maps, group_ids, mask, trainable = float16_step_mask(model, 3, x, y)

    def float32_mask(features):  # D's eval-mode pass sees the running statistics the step's pass saw
        return reversed_mask(features, trainable.logit_gradient(features, y)[0], group_ids, 6)

    with torch.no_grad():
        features = trainable.features(x)  # float32 A of the same batch
    rounding = (float32_mask(features.half().float()) - float32_mask(features)).abs().max()
    step = (mask - float32_mask(maps.float())).abs().max()  # same A and groups, D in float16 vs float32
    assert rounding > 1e-3
    assert step <= 1.5 * rounding


def test_tenet_step_reads_nothing_back_from_the_device(resnet):
    from torch.profiler import ProfilerActivity, profile
    task = TenetTask(resnet, TenetConfig(only_correct=True, **EVERY_STEP)).train()
    x, y = make_batch()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        result = task(x, y)
        result['loss'].backward()
    assert 'loss_inhibited' in result
    names = {event.name for event in prof.events()}
    assert names.isdisjoint({'aten::item', 'aten::_local_scalar_dense', 'aten::bincount', 'aten::nonzero'})


@pytest.mark.parametrize('name, stage, plain_blocks, tenet_blocks', [
    ('resnet18', 3, 8, 6 + 3 * 2),  # F = layer1-3 (6 blocks), D = layer4 (2 blocks) run three times
    ('test_efficientnet', 2, 5, 11),
    ('mobilenetv3_small_050', 3, 12, 24),
    ('regnetx_002', 3, 13, 27),
    ('test_convnext', 2, 9, 21),
])
def test_grad_checkpointing_is_kept_under_tenet(monkeypatch, name, stage, plain_blocks, tenet_blocks):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=10)
    reference = copy.deepcopy(model)
    model.set_grad_checkpointing(True)
    calls = []
    checkpoint = torch.utils.checkpoint.checkpoint
    monkeypatch.setattr(torch.utils.checkpoint, 'checkpoint', lambda fn, *a, **kw: calls.append(fn) or checkpoint(fn, *a, **kw))
    x, y = make_batch(batch=2, size=64)
    model.train().forward_features(x)
    plain_calls = len(calls)
    model.load_state_dict(reference.state_dict())  # undo that forward's running statistics
    cfg = TenetConfig(stage=stage, num_groups=4, only_correct=False, **EVERY_STEP)
    results = []
    for task in (TenetTask(reference, cfg).train(), TenetTask(model, cfg).train()):
        calls.clear()
        torch.manual_seed(1)
        result = task(x, y)
        result['loss'].backward()
        results.append((result['loss'], len(calls), batchnorm_state(task.get_eval_model())))
    (loss, no_calls, stats), (checkpointed_loss, tenet_calls, checkpointed_stats) = results
    assert (plain_calls, no_calls, tenet_calls) == (plain_blocks, 0, tenet_blocks)
    torch.testing.assert_close(checkpointed_loss, loss)
    for key in stats:  # recomputation never updates BatchNorm statistics a second time
        torch.testing.assert_close(checkpointed_stats[key], stats[key], msg=key)


def test_eager_backend_with_grad_checkpointing_and_batchnorm_is_refused_at_compile():
    torch.manual_seed(0)
    model = timm.create_model('test_resnet', num_classes=10)
    model.set_grad_checkpointing(True)
    task = TenetTask(model, TenetConfig(only_correct=False, num_groups=4, **EVERY_STEP)).train()
    with pytest.raises(ValueError, match=r"^torch.compile backend 'eager' cannot train with gradient checkpointing "
                                         r"through BatchNorm .*: use 'aot_eager' or 'inductor'.$"):
        task.compile(backend='eager')
    model.set_grad_checkpointing(False)
    task.compile(backend='eager')  # without checkpointing the eager backend trains


def test_eager_backend_with_grad_checkpointing_fails_in_pytorch_without_tenet():
    """Why the refusal above: a plain timm model fails the same way (lift the refusal when this fails)."""
    torch.manual_seed(0)
    model = timm.create_model('test_resnet', num_classes=10).train()
    model.set_grad_checkpointing(True)
    compiled = torch.compile(model, backend='eager')
    with pytest.raises(RuntimeError, match='modified by an inplace operation'):
        compiled(torch.randn(2, 3, 32, 32)).sum().backward()


def test_compiled_step_with_grad_checkpointing_matches_the_eager_step():
    torch.manual_seed(0)
    resnet = timm.create_model('test_resnet', num_classes=10)
    reference = copy.deepcopy(resnet)
    resnet.set_grad_checkpointing(True)
    cfg = TenetConfig(only_correct=False, num_groups=4, **EVERY_STEP)
    compiled = TenetTask(resnet, cfg).train()
    compiled.compile(backend='aot_eager')  # ('eager' is refused with checkpointing and BatchNorm: see above)
    x, y = make_batch(batch=2, size=64)
    eager = TenetTask(reference, cfg).train()
    eager.get_trainable_module().grouping_fn = functools.partial(group_channels)  # global generator, as compiled
    results = []
    for task, model in ((eager, reference), (compiled, resnet)):
        torch.manual_seed(1)
        result = task(x, y)
        result['loss'].backward()
        results.append((result['loss'], batchnorm_state(model), model.layer1[0].conv1.weight.grad))
    (loss, stats, grad), (compiled_loss, compiled_stats, compiled_grad) = results
    torch.testing.assert_close(compiled_loss, loss)
    torch.testing.assert_close(compiled_grad, grad, rtol=1e-4, atol=1e-5)
    for key in stats:
        torch.testing.assert_close(compiled_stats[key], stats[key], msg=key)
