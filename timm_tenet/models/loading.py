"""Rebuild the model a ``train.py`` checkpoint holds, from the architecture and settings it records."""
from typing import Any

import torch.nn as nn

from ..utils.checkpoint import CheckpointError, checkpoint_args, classifier_outputs, extract_state_dict, \
    load_checkpoint_file, load_state_dict_checked, resolve_checkpoint_path
from ..utils.errors import first_line
from .tenet_models import create_tenet_model

__all__ = ['model_from_checkpoint']


def model_from_checkpoint(path: str, use_ema: bool = False, **kwargs: Any) -> nn.Module:
    """The model a ``train.py`` checkpoint holds, in eval mode: created from the architecture, class count,
    input channels and model kwargs it records, then loaded (``weights_only``, strict).

    Args:
        path: A checkpoint file, or a ``train.py`` output folder (:func:`resolve_checkpoint_path`).
        use_ema: Load the EMA weights (an error if the checkpoint has none).
        **kwargs: Extra ``create_model`` arguments.

    Raises:
        CheckpointError: one line for a missing, corrupt, foreign or mismatched checkpoint.
    """
    path = resolve_checkpoint_path(path)
    checkpoint = load_checkpoint_file(path)
    state_dict = extract_state_dict(checkpoint, path, use_ema)
    args = checkpoint_args(checkpoint)
    name = args.get('model')
    if not isinstance(name, str):
        raise CheckpointError(f"'{path}' does not record its model architecture (no args.model or arch)")
    input_size = args.get('input_size')
    create_kwargs = dict(num_classes=args.get('num_classes'),
                         in_chans=args.get('in_chans') or (input_size[0] if input_size else None),
                         **(args.get('model_kwargs') or {}))
    create_kwargs.update(kwargs)

    def create(**extra):
        try:
            return create_tenet_model(name, **{k: v for k, v in {**create_kwargs, **extra}.items() if v is not None})
        except (RuntimeError, ValueError, TypeError) as e:
            raise CheckpointError(f"cannot create model '{name}' recorded in '{path}': {first_line(e)}") from None

    model = create()
    if create_kwargs.get('num_classes') is None:  # no recorded class count: read it off the classifier weights
        classes, _ = classifier_outputs(state_dict, (getattr(model, 'pretrained_cfg', None) or {}).get('classifier')
                                        or 'fc')
        if classes is not None and classes != getattr(model, 'num_classes', classes):
            model = create(num_classes=classes)
    load_state_dict_checked(model, state_dict, path)
    return model.eval()


