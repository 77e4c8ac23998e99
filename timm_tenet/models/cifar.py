"""CIFAR-style ResNet / ResNeXt for 32x32 inputs, registered with timm under timm's ResNet parameter names.

Papers:
* `Deep Residual Learning for Image Recognition` - https://arxiv.org/abs/1512.03385
* `Aggregated Residual Transformations for Deep Neural Networks` - https://arxiv.org/abs/1611.05431
"""
from typing import Any, Dict, List, Optional, Tuple, Type, Union

import torch
import torch.nn as nn

from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from timm.models._manipulate import checkpoint_seq
from timm.models.resnet import BasicBlock, Bottleneck, ResNet

__all__ = ['CifarResNet']  # register_model adds each entrypoint fn

CIFAR_MEAN = (0.5, 0.5, 0.5)  # the TENET reference normalises CIFAR images to [-1, 1]
CIFAR_STD = (0.5, 0.5, 0.5)


class CifarResNet(ResNet):
    """ResNet / ResNeXt for 32x32 inputs, with timm's ``ResNet`` state-dict keys (conv1, bn1, layer1.., fc).

    A 3x3 stride-1 stem convolution (64 channels) replaces the 7x7 stride-2 one and the max-pool is
    dropped, so the first stage sees the full 32x32 input and every later stage halves it. The number
    of stages follows ``layers`` (three for ResNeXt-29); ``stage_names`` lists them.

    Args:
        block: Residual block class (``BasicBlock`` or ``Bottleneck``).
        layers: Blocks per stage.
        channels: Planes per stage (output channels are ``channels[i] * block.expansion``).
        num_classes: Number of classifier outputs.
        in_chans: Number of input channels.
        **kwargs: Other ``ResNet`` arguments (cardinality, base_width, act_layer, norm_layer, drop_rate,
            drop_path_rate, block_args, ...). Stem and dilation options do not apply and are refused.

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
            device=None,
            dtype=None,
            **kwargs: Any,
    ):
        if len(channels) != len(layers):
            raise ValueError(f'CifarResNet needs one channel count per stage, got {channels=}, {layers=}.')
        fixed = dict(stem_type='', stem_width=64, replace_stem_pool=False, output_stride=32)
        changed = {k: kwargs[k] for k, v in fixed.items() if k in kwargs and kwargs[k] != v}
        if changed:
            raise ValueError(f'CifarResNet has a fixed 3x3 stride-1 stem of 64 channels, no dilation; got {changed}.')
        super().__init__(
            block, layers, channels=channels, num_classes=num_classes, in_chans=in_chans,
            device=device, dtype=dtype, **kwargs,
        )
        dd = {'device': device, 'dtype': dtype}
        self.conv1 = nn.Conv2d(in_chans, self.bn1.num_features, kernel_size=3, stride=1, padding=1, bias=False, **dd)
        nn.init.kaiming_normal_(self.conv1.weight, mode='fan_out', nonlinearity='relu')
        self.maxpool = nn.Identity()  # kept (no parameters) so code that names ResNet.maxpool still works
        self.stage_names = tuple(f'layer{i + 1}' for i in range(len(layers)))
        # timm's ResNet counts a stride of 4 before layer1 (7x7/2 conv, max-pool); here there is none
        self.feature_info[0]['reduction'] = 1
        for info in self.feature_info[1:]:
            info['reduction'] //= 4

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


default_cfgs = generate_default_cfgs({
    'cifar_resnet18.untrained': _cfg(paper_ids='arXiv:1512.03385'),
    'cifar_resnext29_4x32d.untrained': _cfg(pool_size=(8, 8), paper_ids='arXiv:1611.05431'),
})


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
