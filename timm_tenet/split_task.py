"""What the feature-inhibition tasks (TENET, RSC) share: the split model as one trainable module, the
eval-mode gradient of the true-class logits w.r.t. ``A``, the masked pass of ``D`` with BatchNorm running
statistics frozen, and the task plumbing (compile ``F`` and ``D``, the bare model for evaluation and
checkpoints).

Both methods compute ``A = F(x)`` once, differentiate the summed logits of the target classes w.r.t. ``A``
with the network in eval mode (so samples do not influence each other through BatchNorm batch
statistics), turn that gradient into a constant mask and train on ``D(A * mask)``. Each task subclasses
:class:`SplitModule` for its ``forward`` (all passes inside it, so that DDP sees one forward) and
:class:`SplitTask` for its loss.
"""
from contextlib import contextmanager
from typing import Callable, Iterator, Optional, Tuple

import torch
import torch.nn as nn
from timm.models import group_parameters
from timm.task import ClassificationTask
from timm.utils import unwrap_model

from .split import ModelSplit
from .utils.modes import eval_mode

__all__ = ['EAGER_BACKEND_LIMIT', 'LOGIT_GRAD_SCALE', 'SplitModule', 'SplitTask', 'compile_backend_fails',
           'frozen_batchnorm_stats', 'is_soft', 'target_logit_sum']

# Constant scale of the summed logits before their gradient w.r.t. ``A`` is taken: under float16 autocast
# about 8% of the non-zero values of that gradient on an untrained ResNet-18 fall below float16's normal
# range unscaled. A power of two, so that dividing the float32 result back is exact.
LOGIT_GRAD_SCALE = 2.0 ** 10


# torch.compile backends that run Dynamo's graphs without AOTAutograd. They run a checkpointed region
# (``tag_activation_checkpoint``) as ``torch.utils.checkpoint`` over the region's graph inputs, which include
# BatchNorm's buffers; BatchNorm then increments ``num_batches_tracked`` in place and the backward fails
# ("modified by an inplace operation"), with or without TENET. AOTAutograd backends functionalise the update.
_EAGER_BACKENDS = ('eager', 'eager_debug', 'eager_noexcept', 'pre_dispatch_eager')
EAGER_BACKEND_LIMIT = ("PyTorch's eager backends save BatchNorm's buffers for the recomputation, then BatchNorm "
                       "updates them in place")


def compile_backend_fails(model: nn.Module, backend: str) -> bool:
    """Whether ``torch.compile`` with ``backend`` cannot train ``model``: an eager backend, gradient
    checkpointing and BatchNorm layers that track running statistics."""
    checkpointed = any(getattr(m, 'grad_checkpointing', False) for m in model.modules())
    batchnorm = any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats for m in model.modules())
    return backend in _EAGER_BACKENDS and checkpointed and batchnorm


@contextmanager
def frozen_batchnorm_stats(model: nn.Module) -> Iterator[None]:
    """Normalise with batch statistics as in training, without updating running statistics."""
    tracking = [
        m for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats
    ]
    for m in tracking:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in tracking:
            m.track_running_stats = True


def is_soft(target: torch.Tensor) -> bool:
    """Whether ``target`` holds per-class weights (mixup/cutmix) rather than class indices."""
    return target.is_floating_point() and target.ndim == 2


def target_logit_sum(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Sum over the batch of the target-class logits; soft targets weight every class's logit."""
    if is_soft(target):
        return (logits * target).sum()
    return logits.gather(1, target.unsqueeze(1)).sum()


class SplitModule(nn.Module):
    """A model and its ``F``/``D`` split at one stage, as the trainable module a task (and DDP) wraps.

    Subclasses put every pass of a step in ``forward``. Parameters are the model's, under ``model.``;
    ``no_weight_decay`` and ``group_matcher`` are forwarded so the optimizer factory treats them as the
    model's own. ``F`` and ``D`` run through ``features_fn`` and ``rest_fn``, which
    :meth:`SplitTask.compile` replaces with compiled versions.

    Args:
        model: The timm model being trained.
        stage: 1-based stage whose output is ``A``, or -1 for the ``forward_features``/``forward_head`` boundary.
    """

    def __init__(self, model: nn.Module, stage: int):
        super().__init__()
        self.model = model
        self.split = ModelSplit(model, stage)
        self.features_fn: Callable[[torch.Tensor], torch.Tensor] = self.split.features
        self.rest_fn: Callable[[torch.Tensor], torch.Tensor] = self.split.rest

    def no_weight_decay(self):
        model = unwrap_model(self.model)
        if not hasattr(model, 'no_weight_decay'):
            return set()
        return {'model.' + name for name in model.no_weight_decay()}

    def group_matcher(self, coarse: bool = False):
        model = unwrap_model(self.model)
        if not hasattr(model, 'group_matcher'):
            return {}
        layer_map = group_parameters(model, model.group_matcher(coarse=coarse), reverse=True)
        last_layer = max(layer_map.values(), default=0)
        return lambda name: layer_map.get(name[len('model.'):], last_layer)

    def features(self, input: torch.Tensor) -> torch.Tensor:
        """``A = F(input)``, compiled when the task was compiled."""
        return self.features_fn(input)

    def rest(self, features: torch.Tensor) -> torch.Tensor:
        """``D(A)``: the logits, compiled when the task was compiled."""
        return self.rest_fn(features)

    def logit_gradient(
            self,
            features: torch.Tensor,
            target: torch.Tensor,
            scale: float = LOGIT_GRAD_SCALE,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """``G = d(sum of target logits)/dA`` in float32 with ``D`` in eval mode, and those eval-mode logits
        (float32, detached).

        Only the gradient w.r.t. ``A`` is taken (``torch.autograd.grad``), so parameter gradients and DDP's
        reducer are untouched. It is taken from ``scale`` times the sum, so that float16 gradients under
        autocast do not underflow, and divided back in float32 (a loss scale of its own: GradScaler's
        scale applies to the training loss only). Under float16 autocast ``D`` itself runs in float16: where
        ``D`` is the head the mask stays within 1e-3 of float32's, but through residual blocks it moves by
        about as much as rounding a float32 ``A`` to float16 moves the float32 mask (median 2.8e-3 at stage
        3 of an untrained ResNet-18, 224 px; ``benchmarks/mask_precision.py``), which only a float32 ``D``
        would avoid.
        """
        probe = features.detach().requires_grad_(True)
        with eval_mode(self.model), torch.enable_grad():
            logits = self.rest_fn(probe).float()
            (grad,) = torch.autograd.grad(target_logit_sum(logits, target) * scale, probe)
        return grad.float() / scale, logits.detach()

    def masked_logits(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``D(A * mask)`` in train mode, BatchNorm running statistics frozen: masked features are smaller
        than clean ones and would pollute the statistics that evaluation uses."""
        with frozen_batchnorm_stats(self.model):
            return self.rest_fn(self.split.apply_mask(features, mask))


class SplitTask(ClassificationTask):
    """A ``ClassificationTask`` whose trainable module is a :class:`SplitModule`.

    ``compile`` compiles ``F``, ``D`` and the eval model; ``get_eval_model`` returns the bare model, so
    checkpoint and EMA keys are the base model's keys. Subclasses set ``self.trainable_module``.
    """

    def compile(self, backend: str = 'inductor', mode: Optional[str] = None, **compile_kwargs) -> nn.Module:
        """Compile ``F``, ``D`` and the eval model.

        ``torch.autograd.grad`` of the mask-gradient pass runs outside the compiled graphs and passes
        through the compiled ``D`` like any autograd function; ``D``'s train, eval-mode and
        frozen-statistics runs are separate cached graphs (module modes are guarded). The step itself
        (mode switches, the gradient call) stays eager. PyTorch's eager backends (``'eager'`` ...) cannot
        train a model with BatchNorm and gradient checkpointing, plain or TENET: that is refused here.
        """
        trainable = unwrap_model(self.trainable_module)
        if compile_backend_fails(trainable.model, backend):
            raise ValueError(f"torch.compile backend '{backend}' cannot train with gradient checkpointing through "
                             f"BatchNorm ({EAGER_BACKEND_LIMIT}): use 'aot_eager' or 'inductor'.")
        trainable.features_fn = torch.compile(trainable.split.features, backend=backend, mode=mode, **compile_kwargs)
        trainable.rest_fn = torch.compile(trainable.split.rest, backend=backend, mode=mode, **compile_kwargs)
        self.eval_model = torch.compile(trainable.model, backend=backend, mode=mode, **compile_kwargs)
        return self.eval_model

    def get_eval_model(self, module: Optional[nn.Module] = None, ema: bool = False) -> Optional[nn.Module]:
        """The bare model, so checkpoint and EMA keys are the base model's keys."""
        current = resolved = super().get_eval_model(module=module, ema=ema)
        while current is not None:
            if isinstance(current, SplitModule):
                return current.model
            current = getattr(current, 'module', None)
        return resolved
