"""Where a timm network is cut into the feature extractor ``F`` (input -> inhibited map ``A``) and the
rest ``D`` (``A`` -> logits).

TENET and RSC need ``A`` from a single run of ``F`` and then run ``D`` several times (clean, for the
mask gradient, inhibited). Every supported family's ``forward_features`` is ``stem -> stages -> neck``, so
one small declarative adapter per family, looked up by model class, is enough: ``F`` at stage k is the
stem and the first k stages, ``D`` is the remaining stages, the neck and ``forward_head``. Stage ``-1``
cuts at ``forward_features``/``forward_head`` and works for every timm model; there the map may be NCHW
(CNNs), NHWC (Swin-style ``output_fmt``) or tokens (ViT-style, inhibited on patch tokens only).

Running the stages directly bypasses ``forward_features``, where timm applies gradient checkpointing, so
the split applies it itself when the model (or a stage) has ``grad_checkpointing`` set: one checkpoint
per block, as timm's ``checkpoint_seq(..., flatten=True)``. It is always non-reentrant (the mask
gradient is taken with ``torch.autograd.grad``), and the recomputation in the backward pass replays
each BatchNorm module's mode of the original forward without updating its running statistics again: the
forward already updated them once, and the inhibited pass, whose recomputation happens after TENET has
switched the statistics tracking back on, must never update them.
"""
import re
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from functools import partial
from typing import Callable, ContextManager, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.utils.checkpoint
from timm.models.convnext import ConvNeXt
from timm.models.efficientnet import EfficientNet
from timm.models.mobilenetv3 import MobileNetV3
from timm.models.regnet import RegNet
from timm.models.resnet import ResNet
from timm.models.resnetv2 import ResNetV2

__all__ = ['ModelSplit', 'stage_modules', 'supported_families']

_LAYER_NAME = re.compile(r'layer(\d+)$')
_TOKEN_POOLS = ('token', 'map', '')


def _resnet_stages(model: nn.Module) -> List[nn.Module]:
    named = [(int(m.group(1)), module) for name, module in model.named_children() if (m := _LAYER_NAME.match(name))]
    return [module for _, module in sorted(named, key=lambda item: item[0])]


@dataclass(frozen=True)
class _Family:
    """How one model family's ``forward_features`` decomposes: attribute names run in order.

    ``block_stages``: a stage's forward is its children run in order, so the split can checkpoint each
    child; otherwise (ConvNeXt) a stage checkpoints its own blocks when its ``grad_checkpointing`` is set.
    """
    stem: Tuple[str, ...]
    stages: Callable[[nn.Module], Sequence[nn.Module]]
    neck: Tuple[str, ...] = ()
    block_stages: bool = True


_FAMILIES = {
    ResNet: _Family(('conv1', 'bn1', 'act1', 'maxpool'), _resnet_stages),
    ConvNeXt: _Family(('stem',), lambda m: list(m.stages), ('norm_pre',), block_stages=False),
    EfficientNet: _Family(('conv_stem', 'bn1'), lambda m: list(m.blocks), ('conv_head', 'bn2')),
    MobileNetV3: _Family(('conv_stem', 'bn1'), lambda m: list(m.blocks)),
    RegNet: _Family(('stem',), lambda m: [m.s1, m.s2, m.s3, m.s4], ('final_conv',)),
    ResNetV2: _Family(('stem',), lambda m: list(m.stages), ('norm',), block_stages=False),
}


def supported_families() -> List[str]:
    """Model classes whose intermediate stages can be inhibited (any model works at stage -1)."""
    return [cls.__name__ for cls in _FAMILIES]


def _find_family(model: nn.Module) -> Optional[_Family]:
    for cls in type(model).__mro__:
        if cls in _FAMILIES:
            return _FAMILIES[cls]
    return None


def stage_modules(model: nn.Module) -> Sequence[nn.Module]:
    """The stages of a supported family, in order; empty for other models."""
    family = _find_family(model)
    return list(family.stages(model)) if family is not None else []


def _run(model: nn.Module, names: Sequence[str], x: torch.Tensor) -> torch.Tensor:
    for name in names:
        x = getattr(model, name)(x)
    return x


@contextmanager
def _batchnorm_replay(norms: Sequence[nn.Module], modes: Sequence[Tuple[bool, bool]]) -> Iterator[None]:
    """BatchNorm modes of the original forward, with momentum 0 and the batch counter put back: the
    recomputed forward normalises and saves exactly what the original did, and updates nothing."""
    current = [(m.training, m.track_running_stats, m.momentum) for m in norms]
    counts = [None if m.num_batches_tracked is None else m.num_batches_tracked.clone() for m in norms]
    for m, (training, tracking) in zip(norms, modes):
        m.training, m.track_running_stats, m.momentum = training, tracking, 0.0
    try:
        yield
    finally:
        for m, (training, tracking, momentum), count in zip(norms, current, counts):
            m.training, m.track_running_stats, m.momentum = training, tracking, momentum
            if count is not None:
                m.num_batches_tracked.copy_(count)


def _recompute_contexts(block: nn.Module) -> Tuple[ContextManager, ContextManager]:
    norms = [m for m in block.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    modes = [(m.training, m.track_running_stats) for m in norms]  # as the original forward runs
    return nullcontext(), _batchnorm_replay(norms, modes)


def checkpoint_block(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``block(x)`` with activations recomputed in the backward pass (non-reentrant, so that
    ``torch.autograd.grad`` works), BatchNorm statistics left alone by the recomputation."""
    if torch.compiler.is_compiling():
        # traced into the graph, buffer updates are applied once and the recomputation replays none
        return torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
    return torch.utils.checkpoint.checkpoint(
        block, x, use_reentrant=False, context_fn=partial(_recompute_contexts, block))


class ModelSplit:
    """``F``/``D`` of one model at one stage, and the layout of the feature map between them.

    The split holds no parameters: it calls the model's own submodules, so weights, state-dict keys
    and plain inference are untouched.

    Args:
        model: A timm model (unwrapped).
        stage: 1-based stage index, or -1 for the ``forward_features``/``forward_head`` boundary.

    Examples:

        ```python
        split = ModelSplit(timm.create_model('resnet18'), stage=3)
        logits = split.rest(split.features(torch.randn(2, 3, 64, 64)))
        ```
    """

    def __init__(self, model: nn.Module, stage: int):
        self.model = model
        self.stage = stage
        self.prefix_tokens = 0
        self.layout = 'NCHW'
        self._family = _find_family(model)
        # resolved once, so that the compiled feature extractor traces a plain list of modules
        self._stages = stage_modules(model)
        name = type(model).__name__
        if stage == -1:
            self._init_head_boundary(model)
            return
        if self._family is None:
            raise ValueError(
                f'Stage {stage} is not available for {name}: only stage=-1 (the forward_features/forward_head '
                f'boundary) works for it; intermediate stages are supported for {", ".join(supported_families())}.')
        num_stages = len(self._stages)
        if not 1 <= stage <= num_stages:
            raise ValueError(f'Stage {stage} is out of range for {name}: use 1..{num_stages}, or -1.')

    def _init_head_boundary(self, model: nn.Module) -> None:
        if getattr(model, 'output_fmt', 'NCHW') == 'NHWC':
            self.layout = 'NHWC'
        elif hasattr(model, 'num_prefix_tokens'):
            pool = getattr(model, 'global_pool', 'token')
            if getattr(model, 'attn_pool', None) is not None or pool in _TOKEN_POOLS:
                raise ValueError(
                    f"Stage -1 needs pooled patch tokens, but {type(model).__name__} uses global_pool="
                    f"'{pool}' (patch-token gradients are zero); create the model with global_pool='avg'.")
            self.layout = 'NLC'
            self.prefix_tokens = model.num_prefix_tokens

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``F``: input -> inhibited feature map ``A`` (in the model's own layout)."""
        if self.stage == -1:
            return self.model.forward_features(x)
        x = _run(self.model, self._family.stem, x)
        return self._run_stages(self._stages[:self.stage], x)

    def rest(self, a: torch.Tensor) -> torch.Tensor:
        """``D``: feature map ``A`` -> logits."""
        if self.stage != -1:
            a = self._run_stages(self._stages[self.stage:], a)
            a = _run(self.model, self._family.neck, a)
        return self.model.forward_head(a)

    def _run_stages(self, stages: Sequence[nn.Module], x: torch.Tensor) -> torch.Tensor:
        model_flag = getattr(self.model, 'grad_checkpointing', False)
        for stage in stages:
            if self._family.block_stages and (model_flag or getattr(stage, 'grad_checkpointing', False)):
                for block in stage.children():
                    x = checkpoint_block(block, x)
            else:
                x = stage(x)
        return x

    def to_maps(self, a: torch.Tensor) -> torch.Tensor:
        """View ``A`` as B x C x positions for the TENET maths (differentiable)."""
        if self.layout == 'NHWC':
            return a.permute(0, 3, 1, 2)
        if self.layout == 'NLC':
            return a[:, self.prefix_tokens:].transpose(1, 2)
        return a

    def apply_mask(self, a: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``A * mask`` in ``A``'s dtype, the mask given as B x C x positions (prefix tokens are never inhibited)."""
        if self.layout == 'NHWC':
            return (a * mask.permute(0, 2, 3, 1)).to(a.dtype)
        if self.layout == 'NLC':
            patches = (a[:, self.prefix_tokens:] * mask.transpose(1, 2)).to(a.dtype)
            return torch.cat([a[:, :self.prefix_tokens], patches], dim=1)
        return (a * mask).to(a.dtype)
