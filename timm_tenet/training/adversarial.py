"""Adversarial training for ``train.py``: FGSM/PGD examples in place of each batch, or free adversarial training.

TENET's adversarial result (top-1 error under FGSM eps 8/255 on CIFAR-10: 36.37% with adversarial training
alone, 31.75% with TENET as well) comes from training on adversarial examples, so ``train.py`` needs them
next to its TENET loss. Three methods, all L-inf and all in pixel space:

- ``fgsm`` and ``pgd`` (Madry et al. 2018) replace every batch by adversarial examples of the model being
  trained, made with :func:`timm_tenet.robustness.attacks.fgsm` / :func:`~timm_tenet.robustness.attacks.pgd` through the training
  loop's ``perturb`` hook (:class:`AdversarialExamples`). timm's loader hands out normalised inputs, so the
  hook maps them back to [0, 1] with the data config's mean and std, attacks a :class:`NormalizedModel` view
  of the model, and normalises the result again; ``eps = 8/255`` thus means eight grey levels whatever the
  normalisation. The examples are made with the model in EVAL mode and the mode is restored afterwards:
  many PGD training codes attack in train mode, but then every attack step updates the BatchNorm running
  statistics with perturbed batches (PGD-10 makes ten such updates per real step) and the batch statistics
  couple the samples' perturbations; the attacks here refuse train mode for the same reason (see
  :mod:`timm_tenet.robustness.attacks`). The model is then trained, in train mode, on the examples only.
- ``free`` (Shafahi et al. 2019, the TENET reference's ``train_adv_cifar``) trains on every batch
  ``replays`` times. One perturbation ``delta`` persists across replays and batches; each replay trains on
  ``clamp(x + delta, 0, 1)`` and then moves ``delta`` by ``step_size * sign(grad)`` of that replay's training
  loss and clips it to ``[-eps, eps]``, so the one backward pass of a replay both updates the model and
  strengthens the attack. That changes the loop rather than the batch, so it is a loader wrapper
  (:class:`FreeAdversarialBatches`): the input it yields is a differentiable function of a leaf ``delta``,
  the training loop's ordinary ``loss.backward()`` fills ``delta.grad``, and the wrapper reads it when the
  loop asks for the next batch, after the optimizer step. ``train_one_epoch`` needs no change, and
  gradient accumulation, AMP, clipping, EMA and DDP work as for clean batches. The gradient is that of the
  whole training loss (with TENET, the joint loss); the reference uses the cross-entropy only.

Epochs under ``free``: an epoch is still one pass over the data, so it makes ``replays`` times the optimizer
updates (and the LR schedule, logs and ``--recovery-interval`` count those updates). Free training keeps the
cost of natural training by dividing the epoch budget by ``replays``; ``train.py`` does not divide
``--epochs`` itself, so recipes give the divided number (the reference: 50 epochs instead of 200).
"""
import math
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from timm.utils import unwrap_model

from ..robustness.attacks import NormalizedModel, fgsm, format_eps, pgd
from ..utils.modes import eval_mode

__all__ = ['ADV_METHODS', 'AdversarialConfig', 'AdversarialExamples', 'FreeAdversarialBatches',
           'adversarial_training']

ADV_METHODS = ('fgsm', 'pgd', 'free')


@dataclass(frozen=True)
class AdversarialConfig:
    """Settings of adversarial training, validated once.

    Args:
        method: ``'fgsm'``, ``'pgd'`` or ``'free'``.
        eps: L-inf radius in [0, 1] pixel units, e.g. ``8 / 255``.
        steps: PGD steps (``pgd`` only).
        step_size: Step of PGD (default ``eps / 4``) or of the free perturbation update (default ``eps``);
            FGSM steps by ``eps``.
        replays: Times each batch is trained on (``free`` only).

    Examples:

        ```python
        cfg = AdversarialConfig('pgd', eps=8 / 255, steps=7)
        cfg.step_size  # 2/255
        ```
    """
    method: str
    eps: float
    steps: int = 10
    step_size: Optional[float] = None
    replays: int = 4

    def __post_init__(self):
        if self.method not in ADV_METHODS:
            raise ValueError(f"adversarial training method must be one of {', '.join(ADV_METHODS)}, "
                             f"got '{self.method}'")
        if not (math.isfinite(self.eps) and 0 < self.eps <= 1):
            raise ValueError(f'adversarial eps must be in (0, 1] (pixel units, e.g. 8/255), got {self.eps}')
        if self.steps < 1:
            raise ValueError(f'adversarial steps must be >= 1, got {self.steps}')
        if self.replays < 1:
            raise ValueError(f'adversarial replays must be >= 1, got {self.replays}')
        if self.step_size is None:
            object.__setattr__(self, 'step_size', self.eps / 4 if self.method == 'pgd' else self.eps)
        if self.method == 'fgsm' and self.step_size != self.eps:
            raise ValueError('FGSM steps by eps; a different step size applies to pgd and free only')
        if not (math.isfinite(self.step_size) and self.step_size > 0):
            raise ValueError(f'adversarial step size must be > 0, got {self.step_size}')

    def summary(self) -> str:
        """One log line describing the setting."""
        text = f'Adversarial training: {self.method}, eps {format_eps(self.eps)}'
        if self.method == 'fgsm':
            return text + ' (examples made in eval mode)'
        if self.method == 'pgd':
            return (text + f', {self.steps} steps of {format_eps(self.step_size)} from a random start '
                           f'(examples made in eval mode)')
        return (text + f', step {format_eps(self.step_size)}, {self.replays} replays per batch: an epoch makes '
                       f'{self.replays}x the updates of a natural epoch (--epochs counts passes over the data)')


class _PixelSpace:
    """Maps normalised inputs to [0, 1] pixels and back with the loader's mean and std."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        self.mean = torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1)

    def to(self, device: torch.device) -> '_PixelSpace':
        if self.mean.device != device:
            self.mean, self.std = self.mean.to(device), self.std.to(device)
        return self

    def pixels(self, input: torch.Tensor) -> torch.Tensor:
        self.to(input.device)
        return input.float() * self.std + self.mean

    def normalise(self, pixels: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Normalise ``pixels`` to ``like``'s dtype and memory format."""
        self.to(pixels.device)
        out = ((pixels - self.mean) / self.std).to(like.dtype)
        if like.dim() == 4 and not like.is_contiguous() and like.is_contiguous(memory_format=torch.channels_last):
            out = out.contiguous(memory_format=torch.channels_last)
        return out


def _attacked_model(task: Any) -> nn.Module:
    """The bare eager model inside ``task`` (no DDP, compile or TENET wrapper): attack passes then neither
    trigger DDP gradient hooks nor run TENET's inhibited pass."""
    return unwrap_model(task.get_eval_model(module=unwrap_model(task.get_trainable_module())))


class AdversarialExamples:
    """``perturb`` hook for ``train_one_epoch``: replaces each batch by FGSM or PGD examples of the model.

    Args:
        cfg: Settings; ``cfg.method`` is ``'fgsm'`` or ``'pgd'``.
        mean: Normalisation mean of the loader (``data_config['mean']``).
        std: Normalisation standard deviation of the loader.
        seed: Seed of the PGD random starts (a generator on the inputs' device).

    Examples:

        ```python
        task = ClassificationTask(timm.create_model('test_resnet', num_classes=2))
        perturb = AdversarialExamples(AdversarialConfig('fgsm', 8 / 255), mean=(0.5,) * 3, std=(0.5,) * 3)
        x_adv = perturb(task, torch.randn(2, 3, 32, 32), torch.tensor([0, 1]))  # normalised, like its input
        ```
    """

    def __init__(self, cfg: AdversarialConfig, mean: Sequence[float], std: Sequence[float], seed: int = 0):
        if cfg.method not in ('fgsm', 'pgd'):
            raise ValueError(f"AdversarialExamples makes fgsm or pgd examples, not '{cfg.method}' "
                             f"(use FreeAdversarialBatches)")
        self.cfg = cfg
        self.space = _PixelSpace(mean, std)
        self.seed = seed
        self.generator: Optional[torch.Generator] = None

    def _generator(self, device: torch.device) -> torch.Generator:
        if self.generator is None or self.generator.device != device:
            self.generator = torch.Generator(device=device)
            self.generator.manual_seed(self.seed)
        return self.generator

    def __call__(self, task: Any, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        model = _attacked_model(task)
        clean = self.space.pixels(input).clamp_(0, 1)
        attacked = NormalizedModel(model, self.space.mean.flatten(), self.space.std.flatten()).to(input.device)
        cfg = self.cfg
        with eval_mode(attacked):
            if cfg.method == 'fgsm':
                x_adv = fgsm(attacked, clean, target, cfg.eps)
            else:
                x_adv = pgd(attacked, clean, target, cfg.eps, cfg.step_size, cfg.steps,
                            generator=self._generator(input.device))
        return self.space.normalise(x_adv, like=input)


class FreeAdversarialBatches:
    """Free adversarial training as a loader wrapper: yields every batch of ``loader`` ``cfg.replays`` times,
    each time with the persistent perturbation applied, updated after each replay from the gradient of that
    replay's training loss.

    A yielded input is ``normalise(clamp(x + delta, 0, 1))`` with ``x`` the batch in [0, 1] pixels and
    ``delta`` a leaf tensor that requires grad. After the consumer's ``loss.backward()``, the next request
    moves ``delta`` by ``cfg.step_size * sign(delta.grad)`` and clips it to ``[-cfg.eps, cfg.eps]``
    (non-finite gradients, e.g. of an overflowed float16 step, count as zero). The perturbation carries
    over to the next batch (its first ``B`` rows for a batch of ``B`` samples) and starts at zero.

    Args:
        loader: Yields normalised ``(input, target)`` batches.
        cfg: Settings; ``cfg.method`` is ``'free'``.
        mean: Normalisation mean of the loader.
        std: Normalisation standard deviation of the loader.
        device: Where batches are moved before the perturbation is applied (default: where they are).

    Examples:

        ```python
        batches = FreeAdversarialBatches(loader, AdversarialConfig('free', 4 / 255), mean, std)
        for input, target in batches:  # len(loader) * 4 batches
            task(input, target)['loss'].backward()
            optimizer.step()
            optimizer.zero_grad()
        ```
    """

    def __init__(
            self,
            loader: Iterable,
            cfg: AdversarialConfig,
            mean: Sequence[float],
            std: Sequence[float],
            device: Optional[torch.device] = None,
    ):
        if cfg.method != 'free':
            raise ValueError(f"FreeAdversarialBatches runs free adversarial training, not '{cfg.method}'")
        self.loader = loader
        self.cfg = cfg
        self.space = _PixelSpace(mean, std)
        self.device = device
        self.delta: Optional[torch.Tensor] = None  # persistent perturbation, [0, 1] pixel units

    def __len__(self) -> int:
        return len(self.loader) * self.cfg.replays

    def _start(self, clean: torch.Tensor) -> torch.Tensor:
        """The stored perturbation for a batch shaped like ``clean`` (zeros where there is none yet)."""
        if self.delta is None or self.delta.shape[1:] != clean.shape[1:] or self.delta.device != clean.device:
            self.delta = torch.zeros_like(clean, memory_format=torch.contiguous_format)
        elif self.delta.shape[0] < clean.shape[0]:
            extra = self.delta.new_zeros((clean.shape[0] - self.delta.shape[0],) + tuple(clean.shape[1:]))
            self.delta = torch.cat([self.delta, extra])
        return self.delta[:clean.shape[0]].clone()

    def _step(self, delta: torch.Tensor, grad: Optional[torch.Tensor]) -> torch.Tensor:
        if grad is None:
            return delta
        grad = torch.where(torch.isfinite(grad), grad, torch.zeros_like(grad))
        return (delta + self.cfg.step_size * grad.sign()).clamp_(-self.cfg.eps, self.cfg.eps)

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        for input, target in self.loader:
            if self.device is not None:
                input = input.to(self.device, non_blocking=True)
                target = target.to(self.device, non_blocking=True)
            clean = self.space.pixels(input)
            delta = self._start(clean)
            for _ in range(self.cfg.replays):
                leaf = delta.detach().requires_grad_(True)
                yield self.space.normalise((clean + leaf).clamp(0, 1), like=input), target
                delta = self._step(delta, leaf.grad)
                self.delta[:delta.shape[0]] = delta


def adversarial_training(
        cfg: Optional[AdversarialConfig],
        loader: Iterable,
        mean: Sequence[float],
        std: Sequence[float],
        device: Optional[torch.device] = None,
        seed: int = 0,
) -> Tuple[Iterable, Optional[AdversarialExamples]]:
    """The training batches and ``perturb`` hook of ``cfg``: ``(loader, None)`` without adversarial training,
    ``(loader, AdversarialExamples)`` for fgsm/pgd and ``(FreeAdversarialBatches, None)`` for free."""
    if cfg is None:
        return loader, None
    if cfg.method == 'free':
        return FreeAdversarialBatches(loader, cfg, mean, std, device=device), None
    return loader, AdversarialExamples(cfg, mean, std, seed=seed)
