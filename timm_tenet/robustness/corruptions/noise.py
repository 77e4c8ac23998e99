"""Noise corruptions (gaussian, shot, impulse, speckle), drawn from a ``torch.Generator`` on the input's device.

The reference adds numpy noise to the [0, 1] image with the same constants; equality is in distribution.
"""
from typing import Optional

import torch


def _normal(x: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def _uniform(x: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
    return torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def gaussian_noise(x: torch.Tensor, sigma: float, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    return x + sigma * _normal(x, generator)


def shot_noise(x: torch.Tensor, photons: float, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    return torch.poisson(x.clamp(min=0) * photons, generator=generator) / photons


def impulse_noise(x: torch.Tensor, amount: float, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Salt and pepper on a fraction ``amount`` of the values, half each, as skimage's ``'s&p'``."""
    hit = _uniform(x, generator) < amount
    salt = (_uniform(x, generator) < 0.5).to(x.dtype)
    return torch.where(hit, salt, x)


def speckle_noise(x: torch.Tensor, sigma: float, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    return x + x * sigma * _normal(x, generator)
