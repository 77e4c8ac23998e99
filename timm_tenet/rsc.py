"""RSC (Representation Self-Challenging, Huang et al., ECCV 2020) as a timm task over the same split as TENET.

RSC is TENET's nearest relative: both differentiate the true-class score w.r.t. a feature map ``A`` and
train on ``A`` with its most predictive part muted. RSC mutes with a hard mask: with probability
``spatial_prob`` per batch the positions whose gradient-weighted activation (channel-mean of ``G`` times
``A``, summed over channels) is in the top ``spatial_drop``, else the channels whose spatial-mean gradient
is in the top ``channel_drop``. Only the ``batch_percent`` of samples whose true-class probability drops
most under the mask keep it; the others train unmasked. The loss is the cross-entropy of ``D(A * mask)``
alone, as in the reference.

Constants and the order of operations follow the reference model code (``DeLightCMU/RSC``,
``Domain_Generalization/models/resnet.py``): ``G`` from the summed true-class logits with the network in
eval mode; ``ceil(n * fraction)`` entries zeroed, those strictly above the value at that rank of the
descending sort; probabilities before (the eval-mode logits of ``A``) and after (eval-mode logits of the
masked ``A``) the mask; their drop minus ``1e-4``, clamped at 0; the samples strictly above the drop at rank
``round(B * percent)`` keep their mask. Where this implementation departs from the reference, and why:

* ``A`` comes from one train-mode run of ``F``, like the reference's, but the reference's ``F`` is always
  the whole backbone and ``D`` only pooling and a linear layer. Here ``D`` may hold BatchNorm (an earlier
  ``stage``), so the masked pass runs with BatchNorm running statistics frozen, and a clean train-mode
  pass of ``D`` without gradient keeps those statistics on clean features and gives the logged output.
  At the reference's stage (``-1``) this clean pass costs one pooling and one linear layer.
* No host reads: the reference sorts, then indexes with ``nonzero()`` and (ImageNet variant) copies the
  mask to numpy. Here thresholds come from ``topk`` on the device and masks are selected with
  ``torch.where``; sample counts are computed from shapes on the host. The spatial/channel choice is drawn
  on the host (as the reference's ``random.randint``) from the task's own ``random.Random``, so only the
  chosen mask is computed and the data-augmentation random stream is not disturbed.
* The batch percentage follows the reference's epoch schedule (0.3, +0.2 every 10 epochs) through
  :meth:`RscTask.set_epoch`, which the training loop calls each epoch; it is capped at 1 (the
  reference's index runs past the batch from epoch 40). Recipes much longer than the reference's 20
  epochs (its ``train.py`` default) should stretch ``batch_percent_every``.
* Masks are computed in float32 whatever the autocast dtype; soft targets (mixup) weight every class's
  logit and probability, where the reference knows only hard labels; any map layout that
  :class:`~timm_tenet.split.ModelSplit` supports works (the reference hard-codes a 7 x 7 map), and at
  most ``n - 1`` entries are zeroed, so a 1 x 1 map is never spatially masked.
* Under DDP each process draws its own spatial/channel choice and ranks its own samples, as one GPU of
  the reference would.
"""
import logging
import math
import random
from typing import Any, Callable, Dict, Optional, Union

import torch
import torch.nn as nn

from .config import RscConfig
from .split_task import SplitModule, SplitTask, is_soft
from .utils.modes import eval_mode

__all__ = ['RSC_PAPER', 'RscTask', 'RscTrainableModule', 'challenged_samples', 'channel_mask', 'spatial_mask']

_logger = logging.getLogger(__name__)

# the paper, as timm's pretrained_cfg fields (the config.json and model card of an RSC-trained export name it)
RSC_PAPER = dict(
    paper_name='Self-Challenging Improves Cross-Domain Generalization',
    paper_ids='arXiv:2007.02454',
    origin_url='https://github.com/DeLightCMU/RSC',
)

_DROP_MARGIN = 1e-4  # the reference's margin: a sample must lose more than this much probability


def _drop_top(scores: torch.Tensor, fraction: float) -> torch.Tensor:
    """1 where kept, 0 for the ``ceil(n * fraction)`` largest of each row of ``scores`` (B x n), at most n - 1."""
    num = scores.shape[1]
    drop = min(math.ceil(num * fraction), num - 1)
    if drop == 0:
        return torch.ones_like(scores)
    threshold = scores.topk(drop + 1, dim=1).values[:, -1:]
    return (scores <= threshold).to(scores.dtype)


def spatial_mask(maps: torch.Tensor, grads: torch.Tensor, fraction: float) -> torch.Tensor:
    """Zero the ``fraction`` of positions with the largest gradient-weighted activation.

    Args:
        maps: Feature map ``A`` as B x C x positions (any trailing spatial dims).
        grads: ``dL/dA`` in the same layout.
        fraction: Share of positions zeroed (rounded up).

    Returns:
        Float32 mask B x 1 x positions.
    """
    maps, grads = maps.float(), grads.float()
    weights = grads.flatten(2).mean(2, keepdim=True)
    scores = (maps.flatten(2) * weights).sum(1)
    return _drop_top(scores, fraction).view(maps.shape[0], 1, *maps.shape[2:])


def channel_mask(grads: torch.Tensor, fraction: float) -> torch.Tensor:
    """Zero the ``fraction`` of channels with the largest spatial-mean gradient.

    Args:
        grads: ``dL/dA`` as B x C x positions.
        fraction: Share of channels zeroed (rounded up).

    Returns:
        Float32 mask B x C x 1 ... (one 1 per spatial dim).
    """
    grads = grads.float()
    scores = grads.flatten(2).mean(2)
    return _drop_top(scores, fraction).view(*grads.shape[:2], *([1] * (grads.ndim - 2)))


def _target_probability(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    probs = logits.float().softmax(-1)
    if is_soft(target):
        return (probs * target).sum(-1)
    return probs.gather(1, target.unsqueeze(1)).squeeze(1)


def challenged_samples(before: torch.Tensor, after: torch.Tensor, percent: float) -> torch.Tensor:
    """Which samples keep their mask: those whose target probability drops most, about ``percent`` of them.

    The drop is ``before - after - 1e-4`` clamped at 0, so a sample whose probability does not fall never
    keeps its mask; the samples strictly above the drop at rank ``round(B * percent)`` do.

    Args:
        before: Per-sample target probability on clean features (B).
        after: The same on masked features (B).
        percent: Fraction of the batch, in [0, 1].

    Returns:
        Boolean B.
    """
    drop = (before - after - _DROP_MARGIN).clamp_min(0)
    rank = round(drop.shape[0] * percent)
    if rank >= drop.shape[0]:
        return drop > 0
    return drop > drop.topk(rank + 1).values[-1]


class RscTrainableModule(SplitModule):
    """The model plus every RSC pass in one ``forward``, so that DDP sees one forward.

    An RSC step computes ``A = F(x)`` once; the gradient of the target logits w.r.t. ``A`` and the clean
    probabilities with the network in eval mode; the spatial or channel mask; the masked probabilities
    (eval mode, no gradient); the samples that keep their mask; then a clean train-mode pass of ``D``
    without gradient (it updates BatchNorm running statistics, so it comes after the eval-mode passes,
    and gives the logged output) and the challenged logits ``D(A * mask)`` with running statistics frozen.

    Args:
        model: The timm model being trained.
        cfg: RSC settings.
    """

    def __init__(self, model: nn.Module, cfg: RscConfig):
        super().__init__(model, cfg.stage)
        self.cfg = cfg

    def forward(
            self,
            input: torch.Tensor,
            target: Optional[torch.Tensor] = None,
            spatial: Optional[bool] = None,
            batch_percent: float = 1.0,
    ) -> Dict[str, torch.Tensor]:
        """Clean logits (``output``); with ``spatial`` given (an RSC step, spatial or channel masks), also the
        ``challenged`` logits and the per-sample ``selected`` flags (1 where the mask was kept)."""
        features = self.features(input)
        if spatial is None:
            return {'output': self.rest(features)}

        grads, logits = self.logit_gradient(features, target)
        maps, grads = self.split.to_maps(features.detach()), self.split.to_maps(grads)
        if spatial:
            mask = spatial_mask(maps, grads, self.cfg.spatial_drop)
        else:
            mask = channel_mask(grads, self.cfg.channel_drop)
        with torch.no_grad(), eval_mode(self.model):
            masked = self.rest(self.split.apply_mask(features, mask))
        selected = challenged_samples(
            _target_probability(logits, target), _target_probability(masked, target), batch_percent)
        mask = torch.where(selected.view(-1, *([1] * (mask.ndim - 1))), mask, torch.ones_like(mask))
        with torch.no_grad():  # after the eval-mode passes, which see the statistics before this batch
            output = self.rest(features)
        return {
            'output': output,
            'challenged': self.masked_logits(features, mask),
            'selected': selected.float(),
        }


class RscTask(SplitTask):
    """RSC training (Representation Self-Challenging, ECCV 2020) as a timm task.

    Every training forward is an RSC step whose loss is ``criterion(D(A * mask), target)``: the challenged
    samples train on their masked features, the others on clean ones (their mask is all ones). The batch
    percentage follows the epoch given to :meth:`set_epoch`, which the training loop calls at the start
    of every epoch (without it, epoch 0's percentage holds). Evaluation is the plain model.

    Args:
        model: The timm model to train.
        cfg: RSC settings; defaults to ``RscConfig()`` (the reference's).
        criterion: Loss on the challenged logits. Created from ``criterion_kwargs`` when None.
        criterion_kwargs: Arguments for ``timm.loss.create_classification_loss``.
        device: Device for task tensors/buffers.
        dtype: Dtype for task tensors/buffers.
        verbose: Enable info logging.
        seed: Seed of the spatial/channel draws; defaults to ``torch.initial_seed()`` (set by timm's
            ``random_seed``, different per rank).

    Attributes:
        result_terms: Keys of the result dict beyond ``loss`` / ``loss_clean`` that the epoch loop averages
            and logs (training steps only).

    Examples:

        ```python
        task = RscTask(timm.create_model('resnet18', num_classes=10), RscConfig())
        task.set_epoch(0)
        result = task(torch.randn(4, 3, 64, 64), torch.randint(0, 10, (4,)))
        result['loss'].backward()  # result also holds loss_clean, loss_inhibited, inhibited_frac
        ```
    """
    result_terms = ('loss_inhibited', 'inhibited_frac', 'spatial_frac')

    def __init__(
            self,
            model: nn.Module,
            cfg: Optional[RscConfig] = None,
            criterion: Optional[Union[nn.Module, Callable]] = None,
            criterion_kwargs: Optional[Dict[str, Any]] = None,
            device: Optional[torch.device] = None,
            dtype: Optional[torch.dtype] = None,
            verbose: bool = True,
            seed: Optional[int] = None,
    ):
        super().__init__(model, criterion, criterion_kwargs=criterion_kwargs, device=device, dtype=dtype, verbose=False)
        self.cfg = cfg or RscConfig()
        self.trainable_module = RscTrainableModule(model, self.cfg)
        self.epoch = 0
        self._rng = random.Random(torch.initial_seed() if seed is None else seed)
        if verbose:
            _logger.info(f'RscTask: {self.cfg}')

    def set_epoch(self, epoch: int) -> None:
        """Set the 0-based epoch that the batch-percentage schedule reads."""
        self.epoch = epoch

    def get_task_state(self, module: Optional[nn.Module] = None, ema: bool = False) -> Dict[str, Any]:
        return {'rsc_cfg': self.cfg.to_dict()}

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> Dict[str, torch.Tensor]:
        """An RSC step in training, the plain forward in evaluation.

        Returns:
            ``loss``, ``output`` (clean logits) and ``loss_clean`` (logged, not trained on in RSC steps);
            in training also ``loss_inhibited`` (the loss on the challenged logits), ``inhibited_frac``
            (fraction of samples that kept their mask) and ``spatial_frac`` (1 for a spatial-mask batch).
        """
        if not self.training:
            output = self.trainable_module(input)['output']
            loss = self.criterion(output, target)
            return {'loss': loss, 'output': output, 'loss_clean': loss}
        spatial = self._rng.random() < self.cfg.spatial_prob
        passes = self.trainable_module(
            input, target, spatial=spatial, batch_percent=self.cfg.batch_percent_at(self.epoch))
        output = passes['output']
        loss = self.criterion(passes['challenged'], target)
        return {
            'loss': loss,
            'output': output,
            'loss_clean': self.criterion(output, target),
            'loss_inhibited': loss,
            'inhibited_frac': passes['selected'].mean(),
            'spatial_frac': output.new_full((), float(spatial), dtype=torch.float32),
        }
