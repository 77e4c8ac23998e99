"""What the feature-inhibition tasks (TENET, RSC) share: the split model as one trainable module, the
eval-mode gradient of the true-class logits w.r.t. ``A``, the masked pass of ``D`` with BatchNorm running
statistics frozen, and the task plumbing (compile ``F``, the bare model for evaluation and checkpoints).

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

__all__ = ['SplitModule', 'SplitTask', 'frozen_batchnorm_stats', 'is_soft', 'target_logit_sum']


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
    model's own.

    Args:
        model: The timm model being trained.
        stage: 1-based stage whose output is ``A``, or -1 for the ``forward_features``/``forward_head`` boundary.
    """

    def __init__(self, model: nn.Module, stage: int):
        super().__init__()
        self.model = model
        self.split = ModelSplit(model, stage)
        self.compiled_features: Optional[Callable[[torch.Tensor], torch.Tensor]] = None

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
        return (self.compiled_features or self.split.features)(input)

    def logit_gradient(self, features: torch.Tensor, target: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``G = d(sum of target logits)/dA`` with ``D`` in eval mode, and those eval-mode logits (float32, detached).

        Only the gradient w.r.t. ``A`` is taken (``torch.autograd.grad``), so parameter gradients and DDP's
        reducer are untouched.
        """
        probe = features.detach().requires_grad_(True)
        with eval_mode(self.model), torch.enable_grad():
            logits = self.split.rest(probe).float()
            (grad,) = torch.autograd.grad(target_logit_sum(logits, target), probe)
        return grad, logits.detach()

    def masked_logits(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``D(A * mask)`` in train mode, BatchNorm running statistics frozen: masked features are smaller
        than clean ones and would pollute the statistics that evaluation uses."""
        with frozen_batchnorm_stats(self.model):
            return self.split.rest(self.split.apply_mask(features, mask))


class SplitTask(ClassificationTask):
    """A ``ClassificationTask`` whose trainable module is a :class:`SplitModule`.

    ``compile`` compiles ``F`` (``D`` stays eager: its input gradient is taken with ``torch.autograd.grad``,
    which a compiled graph cannot contain) and the eval model; ``get_eval_model`` returns the bare model,
    so checkpoint and EMA keys are the base model's keys. Subclasses set ``self.trainable_module``.
    """

    def compile(self, backend: str = 'inductor', mode: Optional[str] = None, **compile_kwargs) -> nn.Module:
        trainable = unwrap_model(self.trainable_module)
        trainable.compiled_features = torch.compile(
            trainable.split.features, backend=backend, mode=mode, **compile_kwargs)
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
