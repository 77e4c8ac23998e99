"""Hyper-parameters of TENET and of its peer RSC, validated once so that every later stage can trust them."""
from dataclasses import asdict, dataclass, fields
from typing import Any, Dict

__all__ = ['RscConfig', 'TenetConfig']

_TARGETS = ('label', 'pred')


def _check_stage(method: str, stage: int) -> None:
    if stage == 0 or stage < -1:
        raise ValueError(f'{method} stage is 1-based (or -1 for the forward_head boundary), got {stage}.')


def _replace(cfg: Any, changes: Dict[str, Any]) -> Any:
    """A validated copy of the dataclass ``cfg`` with ``changes`` applied; ``None`` values are ignored."""
    unknown = set(changes) - {f.name for f in fields(cfg)}
    if unknown:
        raise TypeError(f'Unknown {type(cfg).__name__} field(s): {sorted(unknown)}.')
    values = asdict(cfg)
    values.update({k: v for k, v in changes.items() if v is not None})
    return type(cfg)(**values)


@dataclass(frozen=True)
class TenetConfig:
    """Settings of TENET training (Group-wise Inhibition based Feature Regularization, ICCV 2021).

    Defaults are the reference implementation's.

    Args:
        num_groups: Channel groups per sample found by k-means (``N_G``).
        stage: 1-based index of the stage whose output is inhibited; ``-1`` splits the network at
            ``forward_features`` / ``forward_head`` (works for every timm model).
        weight: Weight of the cross-entropy on inhibited features.
        orth_weight: Weight of the orthogonality loss between group maps.
        warmup_steps: Training forward calls before the first TENET step. Forward calls, not optimizer
            updates as timm's schedulers count: with ``--grad-accum-steps k`` an update takes ``k`` calls.
        period: A TENET step runs on every ``period``-th training forward call after warm-up (also calls,
            not updates).
        kmeans_iters: Lloyd iterations of the channel grouping.
        medoid: Snap every k-means centre to its nearest real channel, as the reference does.
        only_correct: Inhibit only samples that the clean pass already classifies correctly.
        target: Class whose logit is differentiated for the channel weights: ``'label'`` (ground
            truth, soft targets weight all classes) or ``'pred'`` (the clean prediction).

    Examples:

        ```python
        cfg = TenetConfig(num_groups=4, stage=-1)
        cfg.replace(weight=0.2).weight  # 0.2
        ```
    """
    num_groups: int = 6
    stage: int = 3
    weight: float = 0.1
    orth_weight: float = 1e-3
    warmup_steps: int = 500
    period: int = 3
    kmeans_iters: int = 10
    medoid: bool = True
    only_correct: bool = True
    target: str = 'label'

    def __post_init__(self):
        if self.num_groups < 2:
            raise ValueError(f'TENET needs num_groups >= 2 to inhibit one group among others, got {self.num_groups}.')
        _check_stage('TENET', self.stage)
        if self.weight < 0 or self.orth_weight < 0:
            raise ValueError(f'TENET loss weights must be >= 0, got weight={self.weight}, orth_weight={self.orth_weight}.')
        if self.warmup_steps < 0:
            raise ValueError(f'TENET warmup_steps must be >= 0, got {self.warmup_steps}.')
        if self.period < 1:
            raise ValueError(f'TENET period must be >= 1 (1 = every step), got {self.period}.')
        if self.kmeans_iters < 1:
            raise ValueError(f'TENET kmeans_iters must be >= 1, got {self.kmeans_iters}.')
        if self.target not in _TARGETS:
            raise ValueError(f"TENET target must be one of {_TARGETS}, got '{self.target}'.")

    def replace(self, **changes: Any) -> 'TenetConfig':
        """Return a validated copy with ``changes`` applied; ``None`` values are ignored."""
        return _replace(self, changes)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    def is_tenet_step(self, step: int) -> bool:
        """Whether 1-based training step ``step`` runs the inhibited pass (reference schedule)."""
        return step >= self.warmup_steps and step % self.period == 0

    def count_tenet_steps(self, steps: int) -> int:
        """How many of the training steps ``1..steps`` run the inhibited pass."""
        first = max(self.warmup_steps, 1)
        return max(0, steps // self.period - (first - 1) // self.period)


@dataclass(frozen=True)
class RscConfig:
    """Settings of RSC training (Representation Self-Challenging, Huang et al., ECCV 2020).

    Defaults are the reference implementation's (``DeLightCMU/RSC``, ``Domain_Generalization``): the last
    convolutional features, a spatial mask on half of the batches dropping the top third of positions,
    else a channel mask dropping the top ``1/3.2`` of channels, kept by the 30% of samples whose
    true-class probability drops most, 20 points more every 10 epochs.

    Args:
        stage: 1-based index of the stage whose output is challenged; ``-1`` (the reference's choice)
            splits the network at ``forward_features`` / ``forward_head``.
        spatial_drop: Fraction of positions zeroed by a spatial mask (rounded up).
        channel_drop: Fraction of channels zeroed by a channel mask (rounded up).
        spatial_prob: Probability that a batch gets spatial masks (else channel masks).
        batch_percent: Fraction of each batch that keeps its mask in the first epochs (the others
            train unmasked); samples whose true-class probability drops most are chosen.
        batch_percent_step: Added to ``batch_percent`` every ``batch_percent_every`` epochs (capped at 1).
        batch_percent_every: Epochs between increases of the batch percentage.

    Examples:

        ```python
        cfg = RscConfig(spatial_prob=1.0)
        cfg.batch_percent_at(epoch=12)  # 0.5
        ```
    """
    stage: int = -1
    spatial_drop: float = 1 / 3
    channel_drop: float = 1 / 3.2
    spatial_prob: float = 0.5
    batch_percent: float = 0.3
    batch_percent_step: float = 0.2
    batch_percent_every: int = 10

    def __post_init__(self):
        _check_stage('RSC', self.stage)
        for name in ('spatial_drop', 'channel_drop'):
            value = getattr(self, name)
            if not 0 < value < 1:
                raise ValueError(f'RSC {name} is the fraction of entries zeroed and must be in (0, 1), got {value}.')
        for name in ('spatial_prob', 'batch_percent', 'batch_percent_step'):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ValueError(f'RSC {name} must be in [0, 1], got {value}.')
        if self.batch_percent_every < 1:
            raise ValueError(f'RSC batch_percent_every must be >= 1 (epochs), got {self.batch_percent_every}.')

    def replace(self, **changes: Any) -> 'RscConfig':
        """Return a validated copy with ``changes`` applied; ``None`` values are ignored."""
        return _replace(self, changes)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    def batch_percent_at(self, epoch: int) -> float:
        """Fraction of the batch that keeps its mask in 0-based ``epoch`` (reference schedule, capped at 1)."""
        return min(1.0, self.batch_percent + (epoch // self.batch_percent_every) * self.batch_percent_step)
