"""CIFAR-style networks for 32x32 (or 28x28) inputs, registered with timm under timm's parameter names.

* ``CifarResNet``: timm's ``ResNet`` (post-activation) with a 3x3 stride-1 stem and no max-pool: He et al.'s
  CIFAR ResNet-20 / ResNet-56 (16-32-64 channels), ResNet-18 and ResNeXt-29.
* ``CifarWideResNet``: timm's pre-activation ``ResNetV2`` with basic blocks and a 3x3 stem: the WideResNets
  CIFAR robustness papers report on, WRN-40-2 (AugMix's CIFAR-10-C network) and WRN-28-10 (RobustBench's).

Papers:
* `Deep Residual Learning for Image Recognition` - https://arxiv.org/abs/1512.03385
* `Aggregated Residual Transformations for Deep Neural Networks` - https://arxiv.org/abs/1611.05431
* `Wide Residual Networks` - https://arxiv.org/abs/1605.07146
"""
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Tuple, Type, Union

import torch
import torch.nn as nn

from timm.layers import BatchNormAct2d, LayerType, create_classifier, create_conv2d, get_act_layer, get_norm_layer, \
    to_ntuple
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from timm.models._manipulate import checkpoint_seq
from timm.models.resnet import BasicBlock, Bottleneck, ResNet, make_blocks
from timm.models.resnetv2 import ResNetV2

__all__ = ['CifarResNet', 'CifarWideResNet']  # register_model adds each entrypoint fn

CIFAR_MEAN = (0.5, 0.5, 0.5)  # the TENET reference normalises CIFAR images to [-1, 1]
CIFAR_STD = (0.5, 0.5, 0.5)


class CifarResNet(ResNet):
    """ResNet / ResNeXt for 32x32 inputs, with timm's ``ResNet`` state-dict keys (conv1, bn1, layer1.., fc).

    A 3x3 stride-1 stem convolution of ``stem_width`` channels replaces the 7x7 stride-2 one and the
    max-pool is dropped, so the first stage sees the full input and every later stage halves it. The
    number of stages follows ``layers`` (three for ResNet-20/56 and ResNeXt-29); ``stage_names`` lists
    them. The stages are timm's (``make_blocks``), so blocks, shortcuts (1x1 projection where the shape
    changes) and initialisation are timm's ResNet's.

    Args:
        block: Residual block class (``BasicBlock`` or ``Bottleneck``).
        layers: Blocks per stage.
        channels: Planes per stage (output channels are ``channels[i] * block.expansion``).
        num_classes: Number of classifier outputs.
        in_chans: Number of input channels.
        stem_width: Output channels of the stem convolution (64; 16 for He et al.'s CIFAR ResNets).
        global_pool: Global pooling type.
        drop_rate: Classifier dropout rate.
        drop_path_rate: Stochastic depth rate.
        drop_block_rate: DropBlock rate.
        zero_init_last: Zero-initialise the last BatchNorm of every residual branch.
        **kwargs: Block arguments (cardinality, base_width, act_layer, norm_layer, block_args, ...). timm's
            ImageNet stem and dilation options (stem_type, replace_stem_pool, output_stride) are refused.

    Examples:

        ```python
        model = timm.create_model('cifar_resnext29_4x32d')
        model.forward_features(torch.randn(2, 3, 32, 32)).shape  # (2, 1024, 8, 8)
        ```
    """

    def __init__(
            self,
            block: Union[Type[BasicBlock], Type[Bottleneck]],
            layers: Tuple[int, ...],
            channels: Tuple[int, ...] = (64, 128, 256, 512),
            num_classes: int = 10,
            in_chans: int = 3,
            stem_width: int = 64,
            global_pool: str = 'avg',
            drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            drop_block_rate: float = 0.,
            zero_init_last: bool = True,
            act_layer: LayerType = nn.ReLU,
            norm_layer: LayerType = nn.BatchNorm2d,
            device=None,
            dtype=None,
            **kwargs: Any,
    ):
        if len(channels) != len(layers):
            raise ValueError(f'CifarResNet needs one channel count per stage, got {channels=}, {layers=}.')
        fixed = dict(stem_type='', replace_stem_pool=False, output_stride=32)
        changed = {k: kwargs.pop(k) for k, v in fixed.items() if k in kwargs and kwargs[k] != v}
        if changed:
            raise ValueError(f'CifarResNet has a fixed 3x3 stride-1 stem, no dilation; got {changed}.')
        for k in fixed:
            kwargs.pop(k, None)
        kwargs.update(kwargs.pop('block_args', None) or {})  # timm's ResNet names
        if 'block_reduce_first' in kwargs:
            kwargs['reduce_first'] = kwargs.pop('block_reduce_first')
        nn.Module.__init__(self)
        dd = {'device': device, 'dtype': dtype}
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.grad_checkpointing = False
        act_layer = get_act_layer(act_layer)
        norm_layer = get_norm_layer(norm_layer)

        self.conv1 = nn.Conv2d(in_chans, stem_width, kernel_size=3, stride=1, padding=1, bias=False, **dd)
        self.bn1 = norm_layer(stem_width, **dd)
        self.act1 = act_layer(inplace=True)
        self.maxpool = nn.Identity()  # kept (no parameters) so code that names ResNet.maxpool still works
        self.feature_info = [dict(num_chs=stem_width, reduction=1, module='act1')]
        stage_modules, stage_feature_info = make_blocks(
            to_ntuple(len(channels))(block), channels, layers, stem_width,
            drop_block_rate=drop_block_rate, drop_path_rate=drop_path_rate,
            act_layer=act_layer, norm_layer=norm_layer, **kwargs, **dd,
        )
        for stage in stage_modules:
            self.add_module(*stage)  # layer1, layer2, ...
        # make_blocks counts a stride of 4 before layer1 (ImageNet stem); here there is none
        for info in stage_feature_info:
            info['reduction'] //= 4
        self.feature_info.extend(stage_feature_info)
        self.stage_names = tuple(f'layer{i + 1}' for i in range(len(layers)))

        self.num_features = self.head_hidden_size = channels[-1] * block.expansion
        self.global_pool, self.fc = create_classifier(self.num_features, num_classes, pool_type=global_pool, **dd)
        self.init_weights(zero_init_last=zero_init_last)

    @property
    def stages(self) -> List[nn.Module]:
        """The stage modules (``layer1``, ``layer2``, ...) in order."""
        return [getattr(self, name) for name in self.stage_names]

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Forward features and return intermediates: index 0 is the stem, index ``i`` the output of stage ``i``.

        Args:
            x: Input image tensor.
            indices: Take last n features if int, all if None, select matching indices if sequence.
            norm: Unused (no final norm), kept for timm's interface.
            stop_early: Stop after the last requested intermediate.
            output_fmt: Shape of intermediate feature outputs, only 'NCHW'.
            intermediates_only: Only return intermediate features.
        """
        assert output_fmt in ('NCHW',), 'Output shape must be NCHW.'
        intermediates = []
        take_indices, max_index = feature_take_indices(len(self.stage_names) + 1, indices)
        x = self.act1(self.bn1(self.conv1(x)))
        if 0 in take_indices:
            intermediates.append(x)
        stages = self.stages[:max_index] if stop_early else self.stages
        for feat_idx, stage in enumerate(stages, start=1):
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint_seq(stage, x)
            else:
                x = stage(x)
            if feat_idx in take_indices:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Empty the stages after the last requested intermediate; return the kept indices."""
        take_indices, max_index = feature_take_indices(len(self.stage_names) + 1, indices)
        for name in self.stage_names[max_index:]:
            setattr(self, name, nn.Sequential())  # empty, not Identity, so checkpoint_seq can iterate it
        prune_end = max_index < len(self.stage_names)
        if prune_end:
            self.num_features = self.head_hidden_size = self.feature_info[max_index]['num_chs']
        if prune_head or prune_end:
            self.reset_classifier(0, '')
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Forward pass through the stem and every stage."""
        x = self.act1(self.bn1(self.conv1(x)))
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.stages, x, flatten=True)
        else:
            for stage in self.stages:
                x = stage(x)
        return x


class CifarWideResNet(ResNetV2):
    """Wide ResNet (pre-activation basic blocks) for 32x32 inputs, on timm's ``ResNetV2``.

    Zagoruyko & Komodakis' WRN-d-k: a 3x3 16-channel stem convolution, three stages of ``(d - 4) / 6``
    pre-activation basic blocks (BN-ReLU-conv3x3-BN-ReLU-conv3x3) with ``16k / 32k / 64k`` channels and
    strides 1 / 2 / 2, a 1x1 projection on the pre-activated input where the shape changes, and a final
    BN-ReLU (``norm``) before pooling, as the WRNs of AugMix and RobustBench. Stages are ``stages.0..2``.

    Args:
        layers: Blocks per stage.
        channels: Output channels per stage.
        num_classes: Number of classifier outputs.
        in_chans: Number of input channels.
        stem_chs: Output channels of the stem convolution.
        **kwargs: Other ``ResNetV2`` arguments (global_pool, drop_rate, drop_path_rate, act_layer, ...).

    Examples:

        ```python
        model = timm.create_model('cifar_wrn40_2')
        model.forward_features(torch.randn(2, 3, 32, 32)).shape  # (2, 128, 8, 8)
        ```
    """

    def __init__(
            self,
            layers: Tuple[int, ...],
            channels: Tuple[int, ...],
            num_classes: int = 10,
            in_chans: int = 3,
            stem_chs: int = 16,
            device=None,
            dtype=None,
            **kwargs: Any,
    ):
        fixed = dict(stem_type='', output_stride=32, width_factor=1, preact=True, basic=True, bottle_ratio=1.0)
        changed = {k: kwargs[k] for k, v in fixed.items() if k in kwargs and kwargs[k] != v}
        if changed:
            raise ValueError(f'CifarWideResNet has a fixed 3x3 stride-1 stem and pre-activation basic blocks; '
                             f'got {changed}.')
        kwargs = dict(dict(norm_layer=BatchNormAct2d, conv_layer=create_conv2d), **kwargs, **fixed)
        super().__init__(
            list(layers), channels=channels, num_classes=num_classes, in_chans=in_chans, stem_chs=stem_chs,
            device=device, dtype=dtype, **kwargs,
        )
        conv = create_conv2d(in_chans, stem_chs, 3, stride=1, device=device, dtype=dtype)
        nn.init.kaiming_normal_(conv.weight, mode='fan_out', nonlinearity='relu')
        self.stem = nn.Sequential(OrderedDict(conv=conv))  # pre-activation: the first block normalises
        self.stem_feat_idx = 0
        # ResNetV2 counts a stride of 4 before the first stage (ImageNet stem); here there is none
        self.feature_info[0].update(reduction=1, module='stem.conv')
        for info in self.feature_info[1:]:
            info['reduction'] //= 4


def _create_cifar_resnet(variant: str, pretrained: bool = False, **kwargs) -> CifarResNet:
    """Create a CIFAR ResNet; ``features_only`` takes the stem and every stage by default."""
    num_stages = len(kwargs['layers'])
    return build_model_with_cfg(
        CifarResNet, variant, pretrained,
        feature_cfg=dict(out_indices=tuple(range(num_stages + 1))),
        **kwargs,
    )


def _cfg(url: str = '', **kwargs) -> Dict[str, Any]:
    """Create a default configuration for CIFAR models (32x32, no resize, the reference's normalisation)."""
    return {
        'url': url,
        'num_classes': 10, 'input_size': (3, 32, 32), 'pool_size': (4, 4),
        'crop_pct': 1.0, 'interpolation': 'bilinear',
        'mean': CIFAR_MEAN, 'std': CIFAR_STD,
        'first_conv': 'conv1', 'classifier': 'fc',
        'license': 'apache-2.0',
        **kwargs
    }


def _create_cifar_wrn(variant: str, pretrained: bool = False, **kwargs) -> CifarWideResNet:
    """Create a CIFAR WideResNet; ``features_only`` takes the stem and every stage by default."""
    return build_model_with_cfg(
        CifarWideResNet, variant, pretrained,
        feature_cfg=dict(flatten_sequential=True, out_indices=tuple(range(len(kwargs['layers']) + 1))),
        **kwargs,
    )


default_cfgs = generate_default_cfgs({
    'cifar_resnet20.untrained': _cfg(pool_size=(8, 8), paper_ids='arXiv:1512.03385'),
    'cifar_resnet56.untrained': _cfg(pool_size=(8, 8), paper_ids='arXiv:1512.03385'),
    'cifar_resnet18.untrained': _cfg(paper_ids='arXiv:1512.03385'),
    'cifar_resnext29_4x32d.untrained': _cfg(pool_size=(8, 8), paper_ids='arXiv:1611.05431'),
    'cifar_wrn40_2.untrained': _cfg(pool_size=(8, 8), first_conv='stem.conv', classifier='head.fc',
                                    paper_ids='arXiv:1605.07146'),
    'cifar_wrn28_10.untrained': _cfg(pool_size=(8, 8), first_conv='stem.conv', classifier='head.fc',
                                     paper_ids='arXiv:1605.07146'),
})


@register_model
def cifar_resnet20(pretrained: bool = False, **kwargs) -> CifarResNet:
    """Constructs He et al.'s CIFAR ResNet-20: a 16-channel 3x3 stem, 3 stages of 3 basic blocks, 16/32/64 channels.

    Initialised as the paper: no zero-initialised last BatchNorm per block, which slows early training
    (MNIST-5k, lr 0.05, steps 100-150: 72% against 96% training accuracy).
    """
    model_args = dict(block=BasicBlock, layers=(3, 3, 3), channels=(16, 32, 64), stem_width=16, zero_init_last=False)
    return _create_cifar_resnet('cifar_resnet20', pretrained, **dict(model_args, **kwargs))


@register_model
def cifar_resnet56(pretrained: bool = False, **kwargs) -> CifarResNet:
    """Constructs He et al.'s CIFAR ResNet-56: a 16-channel 3x3 stem, 3 stages of 9 basic blocks, 16/32/64 channels.

    Initialised as the paper (no zero-initialised last BatchNorm per block).
    """
    model_args = dict(block=BasicBlock, layers=(9, 9, 9), channels=(16, 32, 64), stem_width=16, zero_init_last=False)
    return _create_cifar_resnet('cifar_resnet56', pretrained, **dict(model_args, **kwargs))


@register_model
def cifar_resnet18(pretrained: bool = False, **kwargs) -> CifarResNet:
    """Constructs a ResNet-18 for 32x32 inputs (3x3 stride-1 stem, no max-pool, 64-512 channels).
    """
    model_args = dict(block=BasicBlock, layers=(2, 2, 2, 2), channels=(64, 128, 256, 512))
    return _create_cifar_resnet('cifar_resnet18', pretrained, **dict(model_args, **kwargs))


@register_model
def cifar_resnext29_4x32d(pretrained: bool = False, **kwargs) -> CifarResNet:
    """Constructs a CIFAR ResNeXt-29 (4x32d, widen factor 4): 3 stages of 3 bottlenecks, 256/512/1024 channels.
    """
    model_args = dict(block=Bottleneck, layers=(3, 3, 3), channels=(64, 128, 256), cardinality=4, base_width=32)
    return _create_cifar_resnet('cifar_resnext29_4x32d', pretrained, **dict(model_args, **kwargs))


@register_model
def cifar_wrn40_2(pretrained: bool = False, **kwargs) -> CifarWideResNet:
    """Constructs WRN-40-2 (AugMix's CIFAR-10-C network): 3 stages of 6 pre-activation blocks, 32/64/128 channels.
    """
    model_args = dict(layers=(6, 6, 6), channels=(32, 64, 128))
    return _create_cifar_wrn('cifar_wrn40_2', pretrained, **dict(model_args, **kwargs))


@register_model
def cifar_wrn28_10(pretrained: bool = False, **kwargs) -> CifarWideResNet:
    """Constructs WRN-28-10 (RobustBench's CIFAR network): 3 stages of 4 pre-activation blocks, 160/320/640 channels.
    """
    model_args = dict(layers=(4, 4, 4), channels=(160, 320, 640))
    return _create_cifar_wrn('cifar_wrn28_10', pretrained, **dict(model_args, **kwargs))
