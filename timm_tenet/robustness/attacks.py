"""White-box L-inf attacks (FGSM, PGD, optional AutoAttack) and a batched robust-accuracy loop.

Attacks work in pixel space: the attacked model takes inputs in [0, 1] and normalises them itself
(wrap a timm model in :class:`NormalizedModel`), so that ``eps = 8/255`` means eight grey levels and
the [0, 1] box is the valid image range. The model must be in eval mode: BatchNorm batch statistics
or Dropout would change the very loss being maximised, so a model in train mode is refused rather
than silently switched. Gradients are taken in float32 with autocast disabled, because reduced
precision rounds small input gradients to zero and blunts the sign step, and only with respect to
the input, so no parameter ``.grad`` is touched and attacks can run between training steps.
"""
import functools
import math
from typing import Callable, Dict, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from ..utils.progress import progress_bar

__all__ = [
    'NormalizedModel', 'fgsm', 'pgd', 'autoattack', 'format_eps', 'parse_eps', 'create_attack', 'robust_accuracy',
    'ATTACKS']

ATTACKS = ('fgsm', 'pgd', 'autoattack')

Attack = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


class NormalizedModel(nn.Module):
    """Wraps a classifier so that it takes [0, 1] images and applies ``(x - mean) / std`` itself.

    Args:
        model: Classifier expecting normalised inputs.
        mean: Per-channel mean, e.g. ``model.pretrained_cfg['mean']``.
        std: Per-channel standard deviation.

    Examples:

        ```python
        import timm
        model = timm.create_model('test_resnet', num_classes=10)
        wrapped = NormalizedModel(model, model.pretrained_cfg['mean'], model.pretrained_cfg['std']).eval()
        logits = wrapped(torch.rand(2, 3, 32, 32))
        ```
    """

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.model = model
        self.register_buffer('mean', torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer('std', torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean) / self.std)


def parse_eps(text: str) -> float:
    """Parse an attack radius in [0, 1] pixel units, given as a number (``'0.03'``) or a fraction (``'8/255'``).

    The one rule for every radius flag (``train.py --adv-eps``, ``validate.py --eps``, the step sizes): a
    negative value, or one above 1 (grey levels given without ``/255``), is a one-line ``ValueError``.
    """
    parts = str(text).split('/')
    try:
        values = [float(part) for part in parts]
    except ValueError:
        values = []
    if len(values) not in (1, 2) or not all(math.isfinite(v) for v in values) or (len(values) == 2 and not values[1]):
        raise ValueError(f"cannot parse eps '{text}': give a number or a fraction such as 8/255")
    value = values[0] / values[1] if len(values) == 2 else values[0]
    shown = str(text).strip()
    if value < 0:
        raise ValueError(f"eps must be >= 0, got '{shown}' (a radius is a size: write 8/255, not -8/255)")
    if value > 1:
        raise ValueError(f"eps '{shown}' is above 1, but radii are in [0, 1] pixel units: write 8/255 for eight grey "
                         f"levels")
    return value


def format_eps(eps: float) -> str:
    """A radius as :func:`parse_eps` reads it back and as logs and results show it: ``8/255`` for a multiple of
    1/255, else the plain number."""
    grey = eps * 255
    return f'{round(grey)}/255' if eps > 0 and abs(grey - round(grey)) < 1e-6 else f'{eps:g}'


def _check_attackable(model: nn.Module, eps: float) -> None:
    if any(m.training for m in model.modules()):
        raise ValueError('attacks need a model in eval mode (BatchNorm/Dropout change the attacked loss); '
                         'call model.eval() first.')
    if eps < 0:
        raise ValueError(f'attack eps must be >= 0, got {eps}.')


def _input_grad(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Gradient of the summed cross-entropy w.r.t. ``x`` only, in float32 with autocast off."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad(), torch.autocast(x.device.type, enabled=False):
        # summed rather than averaged so that a sample's gradient does not shrink with the batch size
        loss = F.cross_entropy(model(x), y, reduction='sum')
        grad, = torch.autograd.grad(loss, x)
    return grad


def _project(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Project onto the L-inf ball of radius ``eps`` around ``x``, then onto the [0, 1] image box."""
    return torch.minimum(torch.maximum(x_adv, x - eps), x + eps).clamp_(0, 1)


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """Fast Gradient Sign Method: one step of size ``eps`` along the sign of the loss gradient.

    Args:
        model: Classifier in eval mode taking inputs in [0, 1].
        x: Clean inputs B x C x H x W in [0, 1].
        y: Integer labels (B,).
        eps: L-inf radius, e.g. ``8 / 255``.

    Returns:
        Adversarial inputs in [0, 1] and within ``eps`` of ``x``, float32, detached.
    """
    _check_attackable(model, eps)
    x = x.detach().float()
    return _project(x + eps * _input_grad(model, x, y).sign(), x, eps)


def _pgd_run(model, x, y, eps, step_size, steps, random_start, generator) -> torch.Tensor:
    x_adv = x.clone()
    if random_start:
        noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x_adv = _project(x + eps * (2 * noise - 1), x, eps)
    for _ in range(steps):
        x_adv = _project(x_adv + step_size * _input_grad(model, x_adv, y).sign(), x, eps)
    return x_adv


def pgd(
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        eps: float,
        step_size: float,
        steps: int,
        random_start: bool = True,
        generator: Optional[torch.Generator] = None,
        restarts: int = 1,
) -> torch.Tensor:
    """Projected Gradient Descent (Madry et al. 2018) on the cross-entropy, L-inf.

    Each step is ``x_adv + step_size * sign(grad)`` followed by projection onto the ``eps``-ball around
    ``x`` and the [0, 1] box. The random start is ``x + eps * (2 * u - 1)`` with ``u`` uniform in [0, 1)
    drawn from ``generator``.

    Args:
        model: Classifier in eval mode taking inputs in [0, 1].
        x: Clean inputs B x C x H x W in [0, 1].
        y: Integer labels (B,).
        eps: L-inf radius, e.g. ``8 / 255``.
        step_size: Step length, e.g. ``2 / 255``.
        steps: Number of gradient steps (PGD-10, PGD-20, ...).
        random_start: Start from a uniform point of the ball instead of ``x``.
        generator: Random source of the starts, on ``x``'s device, for reproducible attacks.
        restarts: Independent runs; per sample the first run that fools the model is kept (the last run
            where none does). 1 is plain PGD.

    Returns:
        Adversarial inputs in [0, 1] and within ``eps`` of ``x``, float32, detached.
    """
    _check_attackable(model, eps)
    if steps < 1 or restarts < 1:
        raise ValueError(f'PGD needs steps >= 1 and restarts >= 1, got steps={steps}, restarts={restarts}.')
    x = x.detach().float()
    best = _pgd_run(model, x, y, eps, step_size, steps, random_start, generator)
    if restarts == 1:
        return best
    done = _fooled(model, best, y)
    for _ in range(restarts - 1):
        x_adv = _pgd_run(model, x, y, eps, step_size, steps, random_start, generator)
        best = torch.where(done.view(-1, 1, 1, 1), best, x_adv)
        done |= _fooled(model, x_adv, y)
    return best


@torch.no_grad()
def _fooled(model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.autocast(x_adv.device.type, enabled=False):
        return model(x_adv).argmax(dim=1) != y


def _import_autoattack():
    try:
        from pyautoattack import AutoAttack  # PyPI packaging of fra31/auto-attack
    except ImportError:
        try:
            from autoattack import AutoAttack  # the git install of fra31/auto-attack
        except ImportError:
            raise ImportError('AutoAttack is optional and not installed: run `pip install pyautoattack` '
                              '(a PyPI packaging of github.com/fra31/auto-attack).') from None
    return AutoAttack


def autoattack(
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        eps: float,
        version: str = 'standard',
        seed: int = 0,
) -> torch.Tensor:
    """AutoAttack (Croce & Hein 2020), L-inf, through the optional ``pyautoattack`` package.

    The ensemble (APGD-CE, APGD-T, FAB-T, Square for ``'standard'``) is parameter-free and is the
    accepted reference for robust accuracy; FGSM/PGD here are the cheap, dependency-free numbers.

    Returns:
        Adversarial inputs in [0, 1] and within ``eps`` of ``x``.
    """
    _check_attackable(model, eps)
    auto_attack = _import_autoattack()
    attacker = auto_attack(model, norm='Linf', eps=eps, version=version, seed=seed, device=x.device)
    with torch.autocast(x.device.type, enabled=False):
        x_adv = attacker.run_standard_evaluation(x.detach().float(), y)
    # pyautoattack returns (x_adv, y_adv), the git version x_adv alone
    return (x_adv[0] if isinstance(x_adv, tuple) else x_adv).detach()


def create_attack(
        name: str,
        eps: float,
        steps: int = 10,
        step_size: Optional[float] = None,
        restarts: int = 1,
        generator: Optional[torch.Generator] = None,
) -> Attack:
    """Build an ``attack(model, x, y)`` callable by name for :func:`robust_accuracy`.

    Args:
        name: One of :data:`ATTACKS`.
        eps: L-inf radius.
        steps: PGD steps.
        step_size: PGD step; ``eps / 4`` when not given (2/255 for eps 8/255).
        restarts: PGD runs per sample.
        generator: Random source of the PGD starts.
    """
    if name == 'fgsm':
        return functools.partial(fgsm, eps=eps)
    if name == 'pgd':
        step_size = eps / 4 if step_size is None else step_size
        return functools.partial(
            pgd, eps=eps, step_size=step_size, steps=steps, restarts=restarts, generator=generator)
    if name == 'autoattack':
        return functools.partial(autoattack, eps=eps)
    raise ValueError(f"unknown attack '{name}'; choose one of {', '.join(ATTACKS)}.")


def robust_accuracy(
        model: nn.Module,
        loader,
        attack: Attack,
        device: Optional[torch.device] = None,
        progress: Optional[bool] = None,
        desc: str = 'attack',
) -> Dict[str, float]:
    """Top-1 accuracy on clean and attacked inputs over a loader, batched.

    A sample counts as robust only if it is classified correctly both clean and attacked: ``x`` itself
    lies in the ball, so the worst case over the ball can never beat the clean prediction.

    Args:
        model: Classifier in eval mode taking inputs in [0, 1] (see :class:`NormalizedModel`).
        loader: Iterable of ``(x, y)`` batches with ``x`` in [0, 1] (a timm loader with
            ``mean=(0, 0, 0), std=(1, 1, 1)``).
        attack: ``attack(model, x, y) -> x_adv``, e.g. from :func:`create_attack`.
        device: Where to run; the model's device when not given.
        progress: A tqdm bar (None: on a terminal, else log lines; False: neither).
        desc: Label of the progress bar.

    Returns:
        ``{'clean_top1', 'robust_top1', 'robust_err'}`` in percent and ``'count'``, the number of samples.
    """
    device = device or next(model.parameters()).device
    clean_correct = torch.zeros((), dtype=torch.long, device=device)
    robust_correct = torch.zeros((), dtype=torch.long, device=device)
    count = 0
    for x, y in progress_bar(loader, progress, desc=desc, leave=False):
        x, y = x.to(device), y.to(device)
        clean_hit = ~_fooled(model, x, y)
        robust_hit = clean_hit & ~_fooled(model, attack(model, x, y), y)
        clean_correct += clean_hit.sum()
        robust_correct += robust_hit.sum()
        count += y.numel()
    if count == 0:
        raise ValueError('robust_accuracy got an empty loader; check the dataset path and split.')
    clean, robust = 100.0 * clean_correct.item() / count, 100.0 * robust_correct.item() / count
    return {'clean_top1': clean, 'robust_top1': robust, 'robust_err': 100.0 - robust, 'count': count}
