"""Accuracy under attack as result rows: every attack at every radius, on the first ``samples`` images."""
import math
from collections import OrderedDict
from typing import Any, Dict, Iterable, List, Optional, Sequence

import torch
import torch.nn as nn

from ..utils.errors import first_line
from .attacks import create_attack, format_eps, robust_accuracy
from .options import EvaluationError

__all__ = ['evaluate_attacks']


class _FirstSamples:
    """The first ``limit`` samples of a loader, batches trimmed."""

    def __init__(self, loader: Iterable, limit: int, batch_size: int):
        self.loader, self.limit, self.batch_size = loader, limit, batch_size

    def __len__(self) -> int:
        return min(len(self.loader), math.ceil(self.limit / self.batch_size))

    def __iter__(self):
        left = self.limit
        for x, y in self.loader:
            if left <= 0:
                break
            yield x[:left], y[:left]
            left -= len(y)


def evaluate_attacks(
        model: nn.Module,
        loader: Iterable,
        attacks: Sequence[str],
        eps: Sequence[float],
        *,
        steps: int = 10,
        step_size: Optional[float] = None,
        restarts: int = 1,
        seed: int = 0,
        samples: Optional[int] = None,
        batch_size: Optional[int] = None,
        device: Optional[torch.device] = None,
        progress: Optional[bool] = None,
) -> List[Dict[str, Any]]:
    """Top-1 accuracy under each attack and radius (:func:`timm_tenet.robustness.attacks.robust_accuracy`).

    Attacks run in float32 with autocast off, on [0, 1] inputs, with the model in eval mode (a model in
    train mode is refused). A sample counts as robust only when its clean prediction is right too.

    Args:
        model: Classifier taking [0, 1] images (:func:`wrap_for_eval`), in eval mode.
        loader: ``(x, y)`` batches with ``x`` in [0, 1].
        attacks: Names from :data:`timm_tenet.robustness.attacks.ATTACKS`.
        eps: L-inf radii.
        steps: PGD steps.
        step_size: PGD step (default ``eps / 4``).
        restarts: PGD restarts.
        seed: Seed of the PGD random starts (one generator per attack and radius).
        samples: Attack only the first ``samples`` images.
        batch_size: Loader batch size, for the length of the ``samples`` progress bar.
        device: Where to run (default: the model's device).
        progress: Progress bars (None: on a terminal only; False: never).

    Returns:
        Rows ``{'attack', 'eps', 'steps', 'step_size', 'restarts', 'top1', 'top1_err', 'clean_top1', 'count'}``.
    """
    device = device or next(model.parameters()).device
    if samples is not None:
        loader = _FirstSamples(loader, samples, batch_size or getattr(loader, 'batch_size', None) or 1)
    rows = []
    for name in attacks:
        for radius in eps:
            generator = torch.Generator(device=device).manual_seed(seed)
            attack = create_attack(name, radius, steps=steps, step_size=step_size, restarts=restarts,
                                   generator=generator)
            try:
                result = robust_accuracy(model, loader, attack, device=device, progress=progress,
                                         desc=f'{name} eps {format_eps(radius)}')
            except ImportError as e:
                raise EvaluationError(first_line(e)) from None
            except ValueError as e:  # a model in train mode, an empty loader
                raise EvaluationError(f'{name}: {first_line(e)}') from None
            pgd = name == 'pgd'
            rows.append(OrderedDict(
                attack=name, eps=round(radius, 8), eps_text=format_eps(radius),
                steps=steps if pgd else (1 if name == 'fgsm' else None),
                step_size=(round(step_size if step_size is not None else radius / 4, 8) if pgd else None),
                restarts=restarts if pgd else None,
                top1=round(result['robust_top1'], 4), top1_err=round(result['robust_err'], 4),
                clean_top1=round(result['clean_top1'], 4), count=result['count']))
    return rows
