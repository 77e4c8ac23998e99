"""Weather corruptions: brightness (HSV value shift).

Adding ``c`` to V in HSV (then clipping V) keeps H and S, and with them every ratio ``(V - channel) / V``;
it is therefore exactly a rescaling of RGB by ``V' / V`` (black turns grey), with no colour-space round trip.
"""
from typing import Optional

import torch


def brightness(x: torch.Tensor, shift: float, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Add ``shift`` to V of HSV (clipped to 1) and convert back."""
    value = x.amax(dim=1, keepdim=True)
    brighter = (value + shift).clamp(max=1)
    return torch.where(value > 0, x * (brighter / value.clamp(min=1e-12)), brighter)
