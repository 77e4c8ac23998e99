"""TENET as a timm training task: one joint loss per step, both passes inside one module forward."""
import logging
from typing import Any, Callable, Dict, Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.utils import unwrap_model

from .config import TenetConfig
from .inhibition import group_channels, orthogonal_loss, reversed_mask
from .split_task import SplitModule, SplitTask, is_soft

__all__ = ['TenetTask', 'TenetTrainableModule', 'ensure_finite']

_logger = logging.getLogger(__name__)


def _per_sample_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    logits = logits.float()
    if is_soft(target):
        return -(target * logits.log_softmax(-1)).sum(-1)
    return F.cross_entropy(logits, target, reduction='none')


def _masked_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    return (values * weights).sum() / weights.sum().clamp_min(1)


def ensure_finite(loss: torch.Tensor, step: int) -> None:
    """Stop training on a non-finite loss; reads the loss back, so call it where the loop syncs anyway."""
    if not torch.isfinite(loss).all():
        raise FloatingPointError(
            f'non-finite loss ({loss.detach().float().cpu().tolist()}) at training step {step}: stopping without saving '
            f'these weights; lower the learning rate, enable --clip-grad, or resume from the last checkpoint.')


class TenetTrainableModule(SplitModule):
    """The model plus everything TENET runs through it in one ``forward``, so that DDP sees one forward.

    A TENET step computes ``A = F(x)`` once, the clean logits ``D(A)``, the gradient of the chosen
    logits w.r.t. ``A`` with the network in eval mode (no BatchNorm batch coupling, as the reference),
    the channel groups and reversed mask (float32 under autocast), and the inhibited logits
    ``D(A * mask)`` with BatchNorm running statistics frozen (masked features are smaller and would
    pollute them). The grouping runs through ``grouping_fn``, compiled by :meth:`TenetTask.compile`.

    Args:
        model: The timm model being trained.
        cfg: TENET settings.
    """

    def __init__(self, model: nn.Module, cfg: TenetConfig):
        super().__init__(model, cfg.stage)
        self.cfg = cfg
        self.grouping_fn: Callable[..., torch.Tensor] = group_channels
        self._channels_checked = False
        # eager k-means seeding draws from its own generator (seeded from the run's seed), not the global one,
        # so that TENET leaves the data order and augmentation of a seed as in plain training: a baseline and a
        # TENET run of one seed differ only by the regulariser
        self._kmeans_seed = torch.initial_seed()
        self._kmeans_generator: Optional[torch.Generator] = None

    def kmeans_rng_state(self) -> Optional[Dict[str, Any]]:
        """The k-means generator's device and state (None before the first TENET step), for checkpoints: a run
        resumed from one draws the seeds the uninterrupted run would have drawn."""
        if self._kmeans_generator is None:
            return None
        return {'device': str(self._kmeans_generator.device), 'state': self._kmeans_generator.get_state()}

    def set_kmeans_rng_state(self, rng: Dict[str, Any]) -> None:
        self._kmeans_generator = torch.Generator(device=rng['device'])
        self._kmeans_generator.set_state(rng['state'])

    def _check_channels(self, maps: torch.Tensor) -> None:
        if not self._channels_checked:
            num_channels = maps.shape[1]
            if self.cfg.num_groups > num_channels:
                raise ValueError(
                    f'TENET num_groups={self.cfg.num_groups} is more than the {num_channels} channels at stage '
                    f'{self.cfg.stage} of {type(self.model).__name__}; use at most {num_channels} groups.')
            self._channels_checked = True

    def forward(
            self,
            input: torch.Tensor,
            target: Optional[torch.Tensor] = None,
            tenet_step: bool = False,
    ) -> Dict[str, torch.Tensor]:
        """Clean logits (``output``), and on a TENET step the ``inhibited`` logits, the per-sample
        ``selected`` weights (1 where inhibition applies) and per-sample ``orth`` loss, plus what the
        inhibition saw and made, for inspection (mask precision, pictures of the groups): the ``maps``
        (``A`` as B x C x H x W, detached, in the autocast dtype), their ``grads``, the ``group_ids`` and
        the float32 ``mask``. :class:`TenetTask` uses the first four only."""
        features = self.features(input)
        output = self.rest(features)
        maps = self.split.to_maps(features)
        self._check_channels(maps)
        if not tenet_step:
            return {'output': output}

        cfg = self.cfg
        labels = target.argmax(-1) if is_soft(target) else target
        prediction = output.detach().argmax(-1)
        if cfg.only_correct:
            selected = (prediction == labels).float()
        else:
            selected = torch.ones_like(labels, dtype=torch.float32)
        chosen = target if cfg.target == 'label' else prediction

        if self.grouping_fn is group_channels:  # eager: k-means seeding from the module's own generator
            if self._kmeans_generator is None or self._kmeans_generator.device != maps.device:
                self._kmeans_generator = torch.Generator(device=maps.device).manual_seed(self._kmeans_seed)
            group_ids = group_channels(maps, cfg.num_groups, iters=cfg.kmeans_iters, medoid=cfg.medoid,
                                       generator=self._kmeans_generator)
        else:  # compiled: a generator argument would break the graph, so the global generator draws
            group_ids = self.grouping_fn(maps, cfg.num_groups, iters=cfg.kmeans_iters, medoid=cfg.medoid)
        grads = self.split.to_maps(self.logit_gradient(features, chosen)[0])
        mask = reversed_mask(maps, grads, group_ids, cfg.num_groups)
        return {
            'output': output,
            'inhibited': self.masked_logits(features, mask),
            'selected': selected,
            'orth': orthogonal_loss(maps, group_ids, cfg.num_groups, reduction='none'),
            'maps': maps.detach(),
            'grads': grads,
            'group_ids': group_ids,
            'mask': mask,
        }


class TenetTask(SplitTask):
    """TENET training (group-wise inhibition feature regularisation, ICCV 2021) as a timm task.

    Every step computes the clean loss with ``criterion``. After ``cfg.warmup_steps`` training forward
    calls, every ``cfg.period``-th call is a TENET step with the joint loss
    ``CE(D(A)) + weight * CE(D(A * mask))[correct] + orth_weight * L_orth[correct]``, so that timm's loop,
    gradient accumulation, AMP, EMA and DDP see one ordinary loss. The step counter is checkpointed as
    task state, so a resumed run keeps its warm-up and period phase.

    Args:
        model: The timm model to train (a ``*_tenet`` model carries its own settings).
        cfg: TENET settings; defaults to the model's ``tenet_cfg``, else ``TenetConfig()``.
        criterion: Loss for the clean pass. Created from ``criterion_kwargs`` when None.
        criterion_kwargs: Arguments for ``timm.loss.create_classification_loss``.
        device: Device for task tensors/buffers.
        dtype: Dtype for task tensors/buffers.
        verbose: Enable info logging.

    Attributes:
        result_terms: Keys of the result dict beyond ``loss`` / ``loss_clean``, present on TENET steps only;
            the epoch loop averages and logs them (None in an epoch without a TENET step).

    Examples:

        ```python
        model = timm.create_model('resnet18_tenet', num_classes=10)
        task = TenetTask(model, TenetConfig(warmup_steps=0, period=1))
        result = task(torch.randn(4, 3, 64, 64), torch.randint(0, 10, (4,)))
        result['loss'].backward()  # result also holds loss_clean, loss_inhibited, loss_orth, inhibited_frac
        ```
    """
    result_terms = ('loss_inhibited', 'loss_orth', 'inhibited_frac')

    def __init__(
            self,
            model: nn.Module,
            cfg: Optional[TenetConfig] = None,
            criterion: Optional[Union[nn.Module, Callable]] = None,
            criterion_kwargs: Optional[Dict[str, Any]] = None,
            device: Optional[torch.device] = None,
            dtype: Optional[torch.dtype] = None,
            verbose: bool = True,
    ):
        super().__init__(model, criterion, criterion_kwargs=criterion_kwargs, device=device, dtype=dtype, verbose=False)
        self.cfg = cfg or getattr(unwrap_model(model), 'tenet_cfg', None) or TenetConfig()
        self.trainable_module = TenetTrainableModule(model, self.cfg)
        self.step = 0
        if verbose:
            _logger.info(f'TenetTask: {self.cfg}')

    def compile(self, backend: str = 'inductor', mode: Optional[str] = None, **compile_kwargs) -> nn.Module:
        """Compile ``F``, ``D``, the eval model and the channel grouping (one graph, no host reads).

        The grouping compiles with static shapes unless ``dynamic`` is given: the k-means++ draw
        ``randint(C, (B, 1))`` fails to trace with a symbolic channel count, which automatic dynamic shapes
        produce once a process has compiled the grouping for a second map size.
        """
        eval_model = super().compile(backend=backend, mode=mode, **compile_kwargs)
        unwrap_model(self.trainable_module).grouping_fn = torch.compile(
            group_channels, backend=backend, mode=mode, **{'dynamic': False, **compile_kwargs})
        return eval_model

    def get_task_state(self, module: Optional[nn.Module] = None, ema: bool = False) -> Dict[str, Any]:
        state = {'tenet_step': self.step, 'tenet_cfg': self.cfg.to_dict()}
        rng = unwrap_model(self.trainable_module).kmeans_rng_state()
        if rng is not None and not ema:
            state['kmeans_rng'] = rng
        return state

    def load_task_state(
            self,
            state: Optional[Dict[str, Any]],
            strict: bool = True,
            module: Optional[nn.Module] = None,
            ema: bool = False,
    ) -> None:
        if state and not ema:
            self.step = int(state.get('tenet_step', 0))
            if state.get('kmeans_rng') is not None:
                unwrap_model(self.trainable_module).set_kmeans_rng_state(state['kmeans_rng'])

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Clean (and on TENET steps, inhibited) forward and the joint loss.

        Returns:
            ``loss``, ``output`` (clean logits) and ``loss_clean`` on every step; on TENET steps also
            ``loss_inhibited``, ``loss_orth`` and ``inhibited_frac`` (fraction of samples inhibited).
        """
        if self.training:
            self.step += 1
        tenet_step = self.training and self.cfg.is_tenet_step(self.step)
        passes = self.trainable_module(input, target, tenet_step=tenet_step)
        output = passes['output']
        loss_clean = self.criterion(output, target)
        result = {'loss': loss_clean, 'output': output, 'loss_clean': loss_clean}
        if tenet_step:
            selected = passes['selected']
            loss_inhibited = _masked_mean(_per_sample_cross_entropy(passes['inhibited'], target), selected)
            loss_orth = _masked_mean(passes['orth'], selected)
            result.update(
                loss=loss_clean + self.cfg.weight * loss_inhibited + self.cfg.orth_weight * loss_orth,
                loss_inhibited=loss_inhibited,
                loss_orth=loss_orth,
                inhibited_frac=selected.mean(),
            )
        return result
