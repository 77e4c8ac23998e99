"""``<arch>_tenet`` models: timm architectures registered with their TENET training defaults.

A ``_tenet`` model IS its base architecture: the base's timm entrypoint builds it (same class, same
state-dict keys, same inference cost), its pretrained cfg is a copy of the base's (so
``pretrained=True`` starts from the base's default weights), and ``model.tenet_cfg`` holds the
``TenetConfig`` that TENET training uses (the reference's defaults, inhibited stage per family).
``tenet_<field>`` keyword arguments override any ``TenetConfig`` field::

    model = timm.create_model('resnet50_tenet', tenet_stage=-1, tenet_num_groups=4)

Paper: `Group-wise Inhibition based Feature Regularization for Robust Classification` (ICCV 2021)
- https://arxiv.org/abs/2103.02152
"""
import dataclasses
import difflib
from typing import Any, Dict, Optional, Union

import torch.nn as nn

import timm
from timm.models import PretrainedCfg, generate_default_cfgs, get_pretrained_cfg, is_model, model_entrypoint, \
    register_model
from timm.models._registry import get_arch_name
from timm.utils import unwrap_model

from . import cifar  # noqa: F401  registers the CIFAR base architectures copied below
from ..config import TenetConfig
from ..utils.network import offline_if_unreachable

__all__ = ['TENET_BASES', 'TENET_PAPER', 'base_architecture', 'create_tenet_model', 'get_tenet_config']  # + each entrypoint fn

_SUFFIX = '_tenet'
_ARG_PREFIX = 'tenet_'
# the paper, as timm's pretrained_cfg fields (exports' config.json and model cards repeat them)
TENET_PAPER = dict(
    paper_name='Group-wise Inhibition based Feature Regularization for Robust Classification',
    paper_ids='arXiv:2103.02152',
    origin_url='https://github.com/LinusWu/TENET_Training',
)


def _cfg(base: str, **kwargs) -> Dict[str, Any]:
    """Copy the registered pretrained cfg of ``base`` ('arch.tag') and add TENET's paper.

    The copy keeps the weight source (a full ``hf_hub_id``), mean/std, input size, crop, pool size,
    first conv and classifier. ``license`` stays the license of those weights, since they are what
    ``pretrained=True`` loads.
    """
    cfg = get_pretrained_cfg(base, allow_unregistered=False).to_dict()
    cfg.pop('architecture', None)  # register_model sets the _tenet name and tag
    cfg.pop('tag', None)
    weights = cfg.get('hf_hub_id') or cfg.get('url')
    return {
        **cfg,
        **TENET_PAPER,
        'license': cfg.get('license') or 'apache-2.0',
        'notes': (f'Base architecture {base}; TENET changes training only'
                  + (f', pretrained=True loads {weights}.' if weights else '.'),),
        **kwargs,
    }


default_cfgs = generate_default_cfgs({
    'resnet18_tenet.a1_in1k': _cfg('resnet18.a1_in1k'),
    'resnet34_tenet.a1_in1k': _cfg('resnet34.a1_in1k'),
    'resnet50_tenet.a1_in1k': _cfg('resnet50.a1_in1k'),
    'resnet101_tenet.a1h_in1k': _cfg('resnet101.a1h_in1k'),
    'resnet152_tenet.a1h_in1k': _cfg('resnet152.a1h_in1k'),
    'resnext50_32x4d_tenet.a1h_in1k': _cfg('resnext50_32x4d.a1h_in1k'),
    'resnext101_32x8d_tenet.tv_in1k': _cfg('resnext101_32x8d.tv_in1k'),
    'wide_resnet50_2_tenet.racm_in1k': _cfg('wide_resnet50_2.racm_in1k'),
    'seresnext50_32x4d_tenet.racm_in1k': _cfg('seresnext50_32x4d.racm_in1k'),
    'convnext_tiny_tenet.in12k_ft_in1k': _cfg('convnext_tiny.in12k_ft_in1k'),
    'efficientnet_b0_tenet.ra_in1k': _cfg('efficientnet_b0.ra_in1k'),
    'regnety_016_tenet.tv2_in1k': _cfg('regnety_016.tv2_in1k'),
    'cifar_resnet20_tenet.untrained': _cfg('cifar_resnet20.untrained'),
    'cifar_resnet56_tenet.untrained': _cfg('cifar_resnet56.untrained'),
    'cifar_resnet18_tenet.untrained': _cfg('cifar_resnet18.untrained'),
    'cifar_resnext29_4x32d_tenet.untrained': _cfg('cifar_resnext29_4x32d.untrained'),
    'cifar_wrn40_2_tenet.untrained': _cfg('cifar_wrn40_2.untrained'),
    'cifar_wrn28_10_tenet.untrained': _cfg('cifar_wrn28_10.untrained'),
})

# every name above is '<base>_tenet'
TENET_BASES: Dict[str, str] = {name: name[:-len(_SUFFIX)] for name in default_cfgs}


def base_architecture(model_name: str) -> str:
    """The timm architecture a ``_tenet`` model is built from (``'resnet50_tenet.a1_in1k'`` -> ``'resnet50'``)."""
    arch = get_arch_name(model_name)
    if arch not in TENET_BASES:
        raise ValueError(_unknown_message(model_name))
    return TENET_BASES[arch]


def get_tenet_config(model: nn.Module) -> Optional[TenetConfig]:
    """The ``TenetConfig`` a ``_tenet`` model carries, looking through DDP / EMA / compile wrappers; else None."""
    return getattr(unwrap_model(model), 'tenet_cfg', None)


def create_tenet_model(model_name: str, **kwargs: Any) -> nn.Module:
    """``timm.create_model`` that names the registered ``_tenet`` models when given an unknown one.

    Args:
        model_name: A model name (``resnet50_tenet``, ``resnet50_tenet.a1_in1k``, or any timm name).
        **kwargs: Passed to ``timm.create_model`` (``pretrained``, ``num_classes``, ``tenet_stage``, ...).

    Examples:

        ```python
        model = create_tenet_model('cifar_resnet18_tenet', tenet_num_groups=4)
        get_tenet_config(model).num_groups  # 4
        ```
    """
    arch = get_arch_name(model_name)
    if ':' not in model_name and arch.endswith(_SUFFIX) and not is_model(arch):
        raise ValueError(_unknown_message(model_name))
    if not (kwargs.get('pretrained') or model_name.startswith('hf-hub:')):
        return timm.create_model(model_name, **kwargs)
    with offline_if_unreachable() as unreachable:
        try:
            return timm.create_model(model_name, **kwargs)
        except (OSError, RuntimeError, ValueError) as e:
            if unreachable is None:
                raise
            raise RuntimeError(
                f'the Hugging Face Hub does not answer ({unreachable}; no network?) and the pretrained weights of '
                f"'{model_name}' are not in the local cache ({type(e).__name__})") from None


def _unknown_message(model_name: str) -> str:
    close = difflib.get_close_matches(get_arch_name(model_name), TENET_BASES, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ''
    return f"Unknown TENET model '{model_name}'.{hint} Registered: {', '.join(sorted(TENET_BASES))}."


def _pop_tenet_config(variant: str, kwargs: Dict[str, Any]) -> TenetConfig:
    """Remove the ``tenet_<field>`` entries from ``kwargs`` and return the ``TenetConfig`` they describe."""
    changes = {k[len(_ARG_PREFIX):]: kwargs.pop(k) for k in [k for k in kwargs if k.startswith(_ARG_PREFIX)]}
    valid = [f.name for f in dataclasses.fields(TenetConfig)]
    unknown = sorted(set(changes) - set(valid))
    if unknown:
        raise TypeError(
            f'{variant}: unknown TENET argument(s) {[_ARG_PREFIX + k for k in unknown]}; '
            f'valid: {[_ARG_PREFIX + k for k in valid]}.')
    return TenetConfig().replace(**changes)


def _resolve_pretrained_cfg(
        variant: str,
        pretrained_cfg: Optional[Union[str, Dict[str, Any], PretrainedCfg]],
) -> Union[Dict[str, Any], PretrainedCfg]:
    """The pretrained cfg for ``variant``: its registered default, a tag of its own or of its base
    (``resnet50_tenet.a2_in1k`` starts from ``resnet50.a2_in1k``), or a given cfg unchanged."""
    if pretrained_cfg is not None and not isinstance(pretrained_cfg, str):
        return pretrained_cfg
    tag = pretrained_cfg or ''
    try:
        return get_pretrained_cfg(f'{variant}.{tag}' if tag else variant, allow_unregistered=False)
    except RuntimeError:
        pass
    base = f'{TENET_BASES[variant]}.{tag}'
    try:
        cfg = _cfg(base)
    except RuntimeError:
        raise ValueError(
            f"Unknown pretrained tag '{tag}' for {variant}: neither {variant}.{tag} nor {base} is registered."
        ) from None
    return PretrainedCfg(**cfg, architecture=variant, tag=tag)


def _create_tenet(variant: str, pretrained: bool = False, **kwargs) -> nn.Module:
    """Build ``variant``'s base architecture with its timm entrypoint and attach ``tenet_cfg``.

    ``tenet_<field>`` kwargs set ``TenetConfig`` fields; the rest (``pretrained_cfg_overlay``,
    ``num_classes``, ``cache_dir``, ...) go to the base entrypoint unchanged.
    """
    tenet_cfg = _pop_tenet_config(variant, kwargs)
    pretrained_cfg = _resolve_pretrained_cfg(variant, kwargs.pop('pretrained_cfg', None))
    source = pretrained_cfg.to_dict() if isinstance(pretrained_cfg, PretrainedCfg) else dict(pretrained_cfg)
    source.update(kwargs.get('pretrained_cfg_overlay') or {})
    downloads = pretrained and not (
        source.get('file') or source.get('state_dict') is not None or source.get('source') == 'local-dir')
    try:
        model = model_entrypoint(TENET_BASES[variant])(pretrained=pretrained, pretrained_cfg=pretrained_cfg, **kwargs)
    except OSError as e:
        if not downloads:
            raise
        where = source.get('hf_hub_id') or source.get('url')
        raise RuntimeError(
            f'could not download pretrained weights for {variant} ({where}): no network? ({type(e).__name__}) '
            f'Pass pretrained_cfg_overlay=dict(file=...), or set HF_HUB_OFFLINE=1 with a filled cache.') from e
    model.tenet_cfg = tenet_cfg
    return model


@register_model
def resnet18_tenet(pretrained: bool = False, **kwargs) -> nn.Module:
    """ResNet-18 with TENET on the output of stage 3 (layer3, 256 channels, stride 16).
    """
    model_args = dict(tenet_stage=3)
    return _create_tenet('resnet18_tenet', pretrained, **dict(model_args, **kwargs))


@register_model
def resnet34_tenet(pretrained: bool = False, **kwargs) -> nn.Module:
    """ResNet-34 with TENET on the output of stage 3 (layer3, 256 channels, stride 16).
    """
    model_args = dict(tenet_stage=3)
    return _create_tenet('resnet34_tenet', pretrained, **dict(model_args, **kwargs))


@register_model
def resnet50_tenet(pretrained: bool = False, **kwargs) -> nn.Module:
    """ResNet-50 with TENET on the output of stage 3 (layer3, 1024 channels, stride 16), as the reference.
    """
    model_args = dict(tenet_stage=3)
    return _create_tenet('resnet50_tenet', pretrained, **dict(model_args, **kwargs))


@register_model
def resnet101_tenet(pretrained: bool = False, **kwargs) -> nn.Module:
    """ResNet-101 with TENET on the output of stage 3 (layer3, 1024 channels, stride 16).
    """
    model_args = dict(tenet_stage=3)
    return _create_tenet('resnet101_tenet', pretrained, **dict(model_args, **kwargs))


@register_model
def resnet152_tenet(pretrained: bool = False, **kwargs) -> nn.Module:
    """ResNet-152 with TENET on the output of stage 3 (layer3, 1024 channels, stride 16).
    """
    model_args = dict(tenet_stage=3)
    return _create_tenet('resnet152_tenet', pretrained, **dict(model_args, **kwargs))


@register_model
def resnext50_32x4d_tenet(pretrained: bool = False, **kwargs) -> nn.Module:
    """ResNeXt-50 32x4d with TENET on the output of stage 3 (layer3, 1024 channels, stride 16).
    """
    model_args = dict(tenet_stage=3)
    return _create_tenet('resnext50_32x4d_tenet', pretrained, **dict(model_args, **kwargs))


@register_model
def resnext101_32x8d_tenet(pretrained: bool = False, **kwargs) -> nn.Module:
    """ResNeXt-101 32x8d with TENET on the output of stage 3 (layer3, 1024 channels, stride 16).
    """
    model_args = dict(tenet_stage=3)
    return _create_tenet('resnext101_32x8d_tenet', pretrained, **dict(model_args, **kwargs))


@register_model
def wide_resnet50_2_tenet(pretrained: bool = False, **kwargs) -> nn.Module:
    """Wide ResNet-50-2 with TENET on the output of stage 3 (layer3, 1024 channels, stride 16).
    """
    model_args = dict(tenet_stage=3)
    return _create_tenet('wide_resnet50_2_tenet', pretrained, **dict(model_args, **kwargs))


@register_model
def seresnext50_32x4d_tenet(pretrained: bool = False, **kwargs) -> nn.Module:
    """SE-ResNeXt-50 32x4d with TENET on the output of stage 3 (layer3, 1024 channels, stride 16).
    """
    model_args = dict(tenet_stage=3)
    return _create_tenet('seresnext50_32x4d_tenet', pretrained, **dict(model_args, **kwargs))


@register_model
def convnext_tiny_tenet(pretrained: bool = False, **kwargs) -> nn.Module:
    """ConvNeXt-Tiny with TENET on the output of stage 3 (stages.2, 384 channels, stride 16).
    """
    model_args = dict(tenet_stage=3)
    return _create_tenet('convnext_tiny_tenet', pretrained, **dict(model_args, **kwargs))


@register_model
def efficientnet_b0_tenet(pretrained: bool = False, **kwargs) -> nn.Module:
    """EfficientNet-B0 with TENET on block group 5 of 7 (blocks.4, 112 channels, the last at stride 16).
    """
    model_args = dict(tenet_stage=5)
    return _create_tenet('efficientnet_b0_tenet', pretrained, **dict(model_args, **kwargs))


@register_model
def regnety_016_tenet(pretrained: bool = False, **kwargs) -> nn.Module:
    """RegNetY-1.6GF with TENET on the output of stage 3 (s3, 336 channels, stride 16).
    """
    model_args = dict(tenet_stage=3)
    return _create_tenet('regnety_016_tenet', pretrained, **dict(model_args, **kwargs))


@register_model
def cifar_resnet20_tenet(pretrained: bool = False, **kwargs) -> nn.Module:
    """CIFAR ResNet-20 with TENET on stage 2 of 3 (layer2, 32 channels, 16x16 at 32x32 input), as the reference's ResNeXt-29.
    """
    model_args = dict(tenet_stage=2)
    return _create_tenet('cifar_resnet20_tenet', pretrained, **dict(model_args, **kwargs))


@register_model
def cifar_resnet56_tenet(pretrained: bool = False, **kwargs) -> nn.Module:
    """CIFAR ResNet-56 with TENET on stage 2 of 3 (layer2, 32 channels, 16x16 at 32x32 input), as the reference's ResNeXt-29.
    """
    model_args = dict(tenet_stage=2)
    return _create_tenet('cifar_resnet56_tenet', pretrained, **dict(model_args, **kwargs))


@register_model
def cifar_resnet18_tenet(pretrained: bool = False, **kwargs) -> nn.Module:
    """CIFAR ResNet-18 with TENET on the output of stage 3 (layer3, 256 channels, 8x8 at 32x32 input).
    """
    model_args = dict(tenet_stage=3)
    return _create_tenet('cifar_resnet18_tenet', pretrained, **dict(model_args, **kwargs))


@register_model
def cifar_resnext29_4x32d_tenet(pretrained: bool = False, **kwargs) -> nn.Module:
    """CIFAR ResNeXt-29 4x32d with TENET on stage 2 of 3 (layer2, 512 channels, 16x16), the reference's feature_id=3.
    """
    model_args = dict(tenet_stage=2)
    return _create_tenet('cifar_resnext29_4x32d_tenet', pretrained, **dict(model_args, **kwargs))


@register_model
def cifar_wrn40_2_tenet(pretrained: bool = False, **kwargs) -> nn.Module:
    """CIFAR WRN-40-2 with TENET on stage 2 of 3 (stages.1, 64 channels, 16x16 at 32x32 input).
    """
    model_args = dict(tenet_stage=2)
    return _create_tenet('cifar_wrn40_2_tenet', pretrained, **dict(model_args, **kwargs))


@register_model
def cifar_wrn28_10_tenet(pretrained: bool = False, **kwargs) -> nn.Module:
    """CIFAR WRN-28-10 with TENET on stage 2 of 3 (stages.1, 320 channels, 16x16 at 32x32 input).
    """
    model_args = dict(tenet_stage=2)
    return _create_tenet('cifar_wrn28_10_tenet', pretrained, **dict(model_args, **kwargs))
