"""Switch a model's train/eval mode for a block of code and put every module back as it was."""
from contextlib import contextmanager
from typing import Iterator

import torch.nn as nn

__all__ = ['eval_mode']


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Run ``model`` in eval mode (BatchNorm running stats, no dropout), then restore every module's mode."""
    modules = list(model.modules())
    modes = [m.training for m in modules]
    for m in modules:
        m.training = False
    try:
        yield
    finally:
        for m, mode in zip(modules, modes):
            m.training = mode
