"""TENET hyper-parameters, validated once so that every later stage can trust them."""
from dataclasses import asdict, dataclass, fields
from typing import Any, Dict

__all__ = ['TenetConfig']

_TARGETS = ('label', 'pred')


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
        if self.stage == 0 or self.stage < -1:
            raise ValueError(f'TENET stage is 1-based (or -1 for the forward_head boundary), got {self.stage}.')
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
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            raise TypeError(f'Unknown TenetConfig field(s): {sorted(unknown)}.')
        values = asdict(self)
        values.update({k: v for k, v in changes.items() if v is not None})
        return TenetConfig(**values)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    def is_tenet_step(self, step: int) -> bool:
        """Whether 1-based training step ``step`` runs the inhibited pass (reference schedule)."""
        return step >= self.warmup_steps and step % self.period == 0
