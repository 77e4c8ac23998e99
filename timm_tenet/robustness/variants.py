"""The evaluation loop: top-1/top-5 of several input variants (clean, each corruption and severity) of every
batch in one pass over the loader, hits counted on the device."""
from collections import OrderedDict
from contextlib import nullcontext
from typing import Any, Callable, ContextManager, Dict, Hashable, Iterable, Mapping, Optional

import torch
import torch.nn as nn
from ..utils.progress import progress_bar
from .options import EvaluationError

__all__ = ['evaluate_clean', 'evaluate_variants', 'metrics_row']


def metrics_row(top1: float, top5: float, digits: int = 4) -> Dict[str, float]:
    """timm's accuracy fields, percentages rounded as timm's validate.py."""
    return OrderedDict(top1=round(top1, digits), top1_err=round(100 - top1, digits),
                       top5=round(top5, digits), top5_err=round(100 - top5, digits))


@torch.inference_mode()
def evaluate_variants(
        model: nn.Module,
        loader: Iterable,
        variants: Mapping[Hashable, Optional[Callable[[torch.Tensor], torch.Tensor]]],
        *,
        device: Optional[torch.device] = None,
        amp_autocast: Callable[[], ContextManager] = nullcontext,
        channels_last: bool = False,
        progress: Optional[bool] = None,
        desc: str = 'eval',
        log_freq: int = 10,
) -> Dict[Hashable, Dict[str, float]]:
    """Top-1/top-5 accuracy of several input variants of every batch, in one pass over ``loader``.

    Args:
        model: Classifier in eval mode taking [0, 1] images (:func:`wrap_for_eval`).
        loader: ``(x, y)`` batches with ``x`` in [0, 1].
        variants: ``{key: fn(x) -> x'}``; ``None`` is the clean input. Each batch is loaded once and every
            variant is evaluated on it.
        device: Where to run (default: the model's device).
        amp_autocast: Context of the forward passes (variants are computed outside it, in float32).
        channels_last: Feed channels-last inputs.
        progress: Progress bar (None: on a terminal, else log lines; False: neither).
        desc: Label of the progress bar.
        log_freq: Batches between updates of the bar's running top-1 (each one waits for the device).

    Returns:
        ``{key: {'top1', 'top1_err', 'top5', 'top5_err', 'count'}}`` in percent; top-5 is top-k with
        ``k = min(5, classes)``. Hits are counted on the device, so no batch waits for a host copy.
    """
    if any(m.training for m in model.modules()):
        raise EvaluationError('evaluation needs the model in eval mode (BatchNorm/Dropout would use the batch); '
                              'call model.eval() first')
    device = device or next(model.parameters()).device
    keys = list(variants)
    hits1 = torch.zeros(len(keys), dtype=torch.long, device=device)
    hits5 = torch.zeros(len(keys), dtype=torch.long, device=device)
    count = 0
    bar = progress_bar(loader, progress, desc=desc, unit='batch', leave=False)
    for step, (x, y) in enumerate(bar):
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        for i, key in enumerate(keys):
            fn = variants[key]
            xv = x if fn is None else fn(x)
            if channels_last:
                xv = xv.contiguous(memory_format=torch.channels_last)
            with amp_autocast():
                output = model(xv)
            if isinstance(output, (tuple, list)):
                output = output[0]
            hit = output.topk(min(5, output.shape[1]), dim=1).indices == y[:, None]
            hits1[i] += hit[:, 0].sum()
            hits5[i] += hit.any(dim=1).sum()
        count += y.shape[0]
        if log_freq and step % log_freq == 0 and not bar.disable:
            bar.set_postfix(top1=f'{100.0 * hits1[0].item() / count:.2f}')
    bar.close()
    if count == 0:
        raise EvaluationError(f'{desc}: the loader gave no images; check the dataset path and split')
    hits1, hits5 = hits1.tolist(), hits5.tolist()
    return {key: {**metrics_row(100.0 * hits1[i] / count, 100.0 * hits5[i] / count), 'count': count}
            for i, key in enumerate(keys)}


def evaluate_clean(model: nn.Module, loader: Iterable, **kwargs: Any) -> Dict[str, float]:
    """Clean top-1/top-5 (:func:`evaluate_variants` with the identity variant only)."""
    return evaluate_variants(model, loader, {'clean': None}, **kwargs)['clean']
