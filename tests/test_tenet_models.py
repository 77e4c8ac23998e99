"""The ``_tenet`` registrations are their base architectures with TENET defaults, and the CIFAR bases."""
import time

import huggingface_hub.constants
import pytest
import torch
import torch.nn as nn
from safetensors.torch import save_file

import timm
from timm.models import get_pretrained_cfg

from timm_tenet import TENET_BASES, TenetConfig, base_architecture, create_tenet_model, get_tenet_config
from timm_tenet.models.cifar import CifarResNet, CifarWideResNet

EXPECTED_STAGES = {
    'resnet18_tenet': 3,
    'resnet34_tenet': 3,
    'resnet50_tenet': 3,
    'resnet101_tenet': 3,
    'resnet152_tenet': 3,
    'resnext50_32x4d_tenet': 3,
    'resnext101_32x8d_tenet': 3,
    'wide_resnet50_2_tenet': 3,
    'seresnext50_32x4d_tenet': 3,
    'convnext_tiny_tenet': 3,
    'efficientnet_b0_tenet': 5,
    'regnety_016_tenet': 3,
    'cifar_resnet20_tenet': 2,
    'cifar_resnet56_tenet': 2,
    'cifar_resnet18_tenet': 3,
    'cifar_resnext29_4x32d_tenet': 2,
    'cifar_wrn40_2_tenet': 2,
    'cifar_wrn28_10_tenet': 2,
}
NUM_CLASSES = 7


pytestmark = pytest.mark.usefixtures('one_thread')


@pytest.fixture(scope='module', params=sorted(EXPECTED_STAGES))
def tenet_and_base(request):
    """A ``_tenet`` model and its base built by the base's own entrypoint (on 'meta': only keys and shapes)."""
    name = request.param
    torch.manual_seed(0)
    tenet = timm.create_model(name, num_classes=NUM_CLASSES)
    base = timm.create_model(base_architecture(name), num_classes=NUM_CLASSES, device='meta')
    return name, tenet, base


def _input(name: str) -> torch.Tensor:
    size = 32 if name.startswith('cifar_') else 64
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))


def test_list_models_has_all_eighteen_tenet_models():
    listed = timm.list_models('*_tenet')
    assert len(listed) == 18 and sorted(listed) == sorted(EXPECTED_STAGES)
    assert sorted(TENET_BASES) == sorted(EXPECTED_STAGES)
    assert all(base_architecture(name) == name[:-len('_tenet')] for name in EXPECTED_STAGES)
    assert all(timm.is_model(base) for base in TENET_BASES.values())


def test_tenet_model_has_exactly_the_base_state_dict_keys_and_shapes(tenet_and_base):
    name, tenet, base = tenet_and_base
    assert type(tenet) is type(base)
    tenet_shapes = {k: tuple(v.shape) for k, v in tenet.state_dict().items()}
    base_shapes = {k: tuple(v.shape) for k, v in base.state_dict().items()}
    assert list(tenet_shapes) == list(base_shapes)
    assert tenet_shapes == base_shapes


def test_tenet_weights_in_the_base_give_identical_logits(tenet_and_base):
    name, tenet, base = tenet_and_base
    base.load_state_dict(tenet.state_dict(), strict=True, assign=True)  # materialises the meta base
    tenet.eval()
    base.eval()
    x = _input(name)
    with torch.no_grad():
        expected, got = base(x), tenet(x)
    assert got.shape == (2, NUM_CLASSES)
    assert torch.equal(got, expected)


def test_tenet_model_carries_paper_defaults_with_its_stage(tenet_and_base):
    name, tenet, _ = tenet_and_base
    cfg = get_tenet_config(tenet)
    assert cfg == TenetConfig(stage=EXPECTED_STAGES[name])
    assert (cfg.num_groups, cfg.weight, cfg.orth_weight, cfg.warmup_steps, cfg.period) == (6, 0.1, 1e-3, 500, 3)


@pytest.mark.parametrize('name', sorted(EXPECTED_STAGES))
def test_tenet_cfg_copies_the_base_default_pretrained_cfg(name):
    base = get_pretrained_cfg(TENET_BASES[name])  # the base architecture's default tag
    cfg = get_pretrained_cfg(name)
    assert cfg.architecture == name and cfg.tag == base.tag
    for key in ('hf_hub_id', 'url', 'input_size', 'crop_pct', 'interpolation', 'mean', 'std', 'pool_size',
                'num_classes', 'first_conv', 'classifier', 'license'):
        assert getattr(cfg, key) == getattr(base, key), key
    assert cfg.paper_ids == 'arXiv:2103.02152'
    assert cfg.origin_url == 'https://github.com/LinusWu/TENET_Training'
    assert cfg.paper_name.startswith('Group-wise Inhibition based Feature Regularization')


def test_resnet50_tenet_cfg_has_base_preprocessing_and_full_hub_id():
    cfg = timm.create_model('resnet50_tenet').pretrained_cfg
    assert cfg['hf_hub_id'] == 'timm/resnet50.a1_in1k'
    assert cfg['mean'] == (0.485, 0.456, 0.406) and cfg['std'] == (0.229, 0.224, 0.225)
    assert cfg['input_size'] == (3, 224, 224) and cfg['crop_pct'] == 0.95
    assert (cfg['architecture'], cfg['tag']) == ('resnet50_tenet', 'a1_in1k')
    assert timm.is_model_pretrained('resnet50_tenet')


def test_base_pretrained_tag_selects_base_weights():
    model = timm.create_model('resnet18_tenet.a2_in1k', num_classes=NUM_CLASSES)
    assert model.pretrained_cfg['hf_hub_id'] == 'timm/resnet18.a2_in1k'
    assert (model.pretrained_cfg['architecture'], model.pretrained_cfg['tag']) == ('resnet18_tenet', 'a2_in1k')
    assert model.pretrained_cfg['paper_ids'] == 'arXiv:2103.02152'
    with pytest.raises(ValueError, match=r"Unknown pretrained tag 'nope' for resnet18_tenet"):
        timm.create_model('resnet18_tenet.nope')


def test_pretrained_cfg_overlay_file_loads_given_weights(tmp_path):
    torch.manual_seed(0)
    base = timm.create_model('resnet18', num_classes=NUM_CLASSES)
    path = tmp_path / 'resnet18.safetensors'
    save_file({k: v.contiguous() for k, v in base.state_dict().items()}, str(path))
    torch.manual_seed(1)  # a different init, so equality below can only come from the file
    model = timm.create_model(
        'resnet18_tenet', pretrained=True, num_classes=NUM_CLASSES,
        pretrained_cfg_overlay=dict(file=str(path), num_classes=NUM_CLASSES),
    )
    expected, loaded = base.state_dict(), model.state_dict()
    assert list(loaded) == list(expected)
    differing = [k for k in expected if not torch.equal(loaded[k], expected[k])]
    assert differing == []
    assert get_tenet_config(model) == TenetConfig(stage=3)


def test_offline_pretrained_fails_fast_with_clear_message(monkeypatch, tmp_path):
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', True)  # read once at import
    start = time.monotonic()
    with pytest.raises(RuntimeError) as info:
        timm.create_model('resnet18_tenet', pretrained=True, cache_dir=tmp_path)
    elapsed = time.monotonic() - start
    message = str(info.value)
    assert message.startswith(
        'could not download pretrained weights for resnet18_tenet (timm/resnet18.a1_in1k): no network?')
    assert 'pretrained_cfg_overlay=dict(file=...)' in message and 'HF_HUB_OFFLINE=1' in message
    assert '\n' not in message
    assert isinstance(info.value.__cause__, OSError)
    assert elapsed < 10, f'offline failure took {elapsed:.1f} s'


def test_missing_local_weight_file_is_not_reported_as_a_download_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        timm.create_model(
            'cifar_resnet18_tenet', pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / 'none.pth')))


def test_unknown_tenet_name_lists_registered_models():
    with pytest.raises(ValueError) as info:
        create_tenet_model('resnet51_tenet')
    message = str(info.value)
    assert message.startswith("Unknown TENET model 'resnet51_tenet'. Did you mean 'resnet50_tenet'?")
    assert all(name in message for name in EXPECTED_STAGES)
    assert '\n' not in message
    with pytest.raises(ValueError, match="Unknown TENET model 'foo_tenet'"):
        base_architecture('foo_tenet')


def test_create_tenet_model_passes_known_names_to_timm():
    model = create_tenet_model('cifar_resnet18_tenet', num_classes=NUM_CLASSES)
    assert isinstance(model, CifarResNet) and model.num_classes == NUM_CLASSES
    assert get_tenet_config(model) == TenetConfig(stage=3)
    plain = create_tenet_model('cifar_resnet18')
    assert get_tenet_config(plain) is None


def test_tenet_kwargs_override_the_config():
    model = timm.create_model('cifar_resnext29_4x32d_tenet', tenet_stage=-1, tenet_num_groups=4, tenet_weight=0.2)
    assert get_tenet_config(model) == TenetConfig(stage=-1, num_groups=4, weight=0.2)
    cfg = get_tenet_config(timm.create_model('resnet18_tenet', tenet_period=1, tenet_medoid=False))
    assert (cfg.stage, cfg.period, cfg.medoid) == (3, 1, False)
    with pytest.raises(TypeError, match=r"unknown TENET argument\(s\) \['tenet_groups'\]; valid: \['tenet_num_groups'"):
        timm.create_model('cifar_resnet18_tenet', tenet_groups=4)
    with pytest.raises(ValueError, match='num_groups >= 2'):
        timm.create_model('cifar_resnet18_tenet', tenet_num_groups=1)


def test_get_tenet_config_unwraps_ddp_and_compiled_wrappers():
    model = timm.create_model('cifar_resnet18_tenet', tenet_num_groups=5)

    class DDPLike(nn.Module):
        def __init__(self, module):
            super().__init__()
            self.module = module

    assert get_tenet_config(DDPLike(model)) is model.tenet_cfg
    assert get_tenet_config(torch.compile(model)) is model.tenet_cfg  # lazily compiled: nothing runs here
    assert model.tenet_cfg.num_groups == 5


def test_cifar_resnext29_has_256_512_1024_stages_and_8x8_output():
    model = timm.create_model('cifar_resnext29_4x32d').eval()
    assert isinstance(model, CifarResNet) and model.stage_names == ('layer1', 'layer2', 'layer3')
    assert [len(stage) for stage in model.stages] == [3, 3, 3]
    assert [stage[0].conv2.out_channels for stage in model.stages] == [128, 256, 512]  # bottleneck widths
    assert [stage[0].conv2.groups for stage in model.stages] == [4, 4, 4]
    assert [stage[0].conv2.stride for stage in model.stages] == [(1, 1), (2, 2), (2, 2)]
    assert [stage[-1].conv3.out_channels for stage in model.stages] == [256, 512, 1024]
    with torch.no_grad():
        final, feats = model.forward_intermediates(torch.randn(2, 3, 32, 32))
        logits = model(torch.randn(2, 3, 32, 32))
    assert [tuple(f.shape[1:]) for f in feats] == [(64, 32, 32), (256, 32, 32), (512, 16, 16), (1024, 8, 8)]
    assert tuple(final.shape) == (2, 1024, 8, 8)
    assert tuple(logits.shape) == (2, 10)
    assert [info['reduction'] for info in model.feature_info] == [1, 1, 2, 4]
    cfg = model.pretrained_cfg
    assert (cfg['input_size'], cfg['crop_pct'], cfg['mean'], cfg['std']) == ((3, 32, 32), 1.0, (0.5,) * 3, (0.5,) * 3)
    assert (cfg['num_classes'], cfg['pool_size'], cfg['paper_ids']) == (10, (8, 8), 'arXiv:1611.05431')
    assert not cfg.get('url') and not cfg.get('hf_hub_id') and not timm.is_model_pretrained('cifar_resnext29_4x32d')


def test_cifar_resnet18_keeps_32x32_in_layer1():
    model = timm.create_model('cifar_resnet18').eval()
    assert (model.conv1.kernel_size, model.conv1.stride) == ((3, 3), (1, 1))
    assert isinstance(model.maxpool, nn.Identity)
    with torch.no_grad():
        feats = model.forward_intermediates(torch.randn(2, 3, 32, 32), intermediates_only=True)
    assert [tuple(f.shape[1:]) for f in feats] == [
        (64, 32, 32), (64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4)]
    assert [info['reduction'] for info in model.feature_info] == [1, 1, 2, 4, 8]


def test_cifar_features_only_and_pruning_follow_the_three_stages():
    features = timm.create_model('cifar_resnext29_4x32d', features_only=True).eval()
    with torch.no_grad():
        maps = features(torch.randn(1, 3, 32, 32))
    assert [tuple(m.shape[1:]) for m in maps] == [(64, 32, 32), (256, 32, 32), (512, 16, 16), (1024, 8, 8)]
    model = timm.create_model('cifar_resnext29_4x32d')
    assert model.prune_intermediate_layers(indices=[2]) == [2]
    assert (len(model.layer3), model.num_features, model.num_classes) == (0, 512, 0)
    with torch.no_grad():
        assert tuple(model.eval().forward_features(torch.randn(1, 3, 32, 32)).shape) == (1, 512, 16, 16)


def test_cifar_resnet_refuses_imagenet_stem_options():
    with pytest.raises(ValueError, match='fixed 3x3 stride-1 stem'):
        timm.create_model('cifar_resnet18', stem_type='deep')


# published parameter counts: He et al. 2016 Table 6 (0.27M, 0.85M, option-A identity shortcuts; timm's 1x1
# projections add 2.8k), Zagoruyko & Komodakis 2016 / AugMix (WRN-40-2 2.2M), RobustBench (WRN-28-10 36.5M)
@pytest.mark.parametrize('name, published, tolerance', [
    ('cifar_resnet20', 0.27e6, 0.02), ('cifar_resnet56', 0.85e6, 0.01),
    ('cifar_wrn40_2', 2.2e6, 0.03), ('cifar_wrn28_10', 36.5e6, 0.01),
])
def test_cifar_networks_have_their_published_parameter_counts(name, published, tolerance):
    model = timm.create_model(name, device='meta')
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(published, rel=tolerance)


def test_cifar_resnet20_has_16_32_64_stages_of_three_basic_blocks():
    model = timm.create_model('cifar_resnet20').eval()
    assert isinstance(model, CifarResNet) and model.conv1.out_channels == 16
    assert [len(stage) for stage in model.stages] == [3, 3, 3]
    with torch.no_grad():
        feats = model.forward_intermediates(torch.randn(2, 3, 28, 28), intermediates_only=True)
    assert [tuple(f.shape[1:]) for f in feats] == [(16, 28, 28), (16, 28, 28), (32, 14, 14), (64, 7, 7)]
    assert model.layer1[0].downsample is None  # the 16-channel stem feeds layer1 without a projection


def test_cifar_wrn_is_preactivation_with_a_final_norm():
    model = timm.create_model('cifar_wrn40_2').eval()
    assert isinstance(model, CifarWideResNet) and [len(stage.blocks) for stage in model.stages] == [6, 6, 6]
    assert (model.stem.conv.kernel_size, model.stem.conv.stride, model.stem.conv.out_channels) == ((3, 3), (1, 1), 16)
    first = model.stages[0].blocks[0]
    assert first.downsample is not None and first.conv1.out_channels == 32  # 16 -> 32 projection, full width
    with torch.no_grad():
        final, feats = model.forward_intermediates(torch.randn(2, 3, 32, 32))
    assert [tuple(f.shape[1:]) for f in feats] == [(16, 32, 32), (32, 32, 32), (64, 16, 16), (128, 8, 8)]
    assert [info['reduction'] for info in model.feature_info] == [1, 1, 2, 4]
    features = timm.create_model('cifar_wrn40_2', features_only=True).eval()
    with torch.no_grad():
        assert [tuple(m.shape[1:]) for m in features(torch.randn(1, 3, 32, 32))][1:] == [
            (32, 32, 32), (64, 16, 16), (128, 8, 8)]
