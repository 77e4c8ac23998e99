import os
import zlib

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.functional import pil_to_tensor

from timm_tenet.robustness.c_datasets import CifarCDataset, ImageNetCDataset, find_corruptions
from timm_tenet.robustness.corruptions import CORRUPTIONS, EXTRA_CORRUPTIONS, corrupt
from timm_tenet.robustness.make_c import main, make_c

N = 3  # images per severity in the synthetic CIFAR-C folder


def _write_cifar_c(root, corruptions=('fog', 'snow'), n=N, num_labels=None):
    """Severity s of every corruption is an image filled with 10 * s + index, label = index % 2."""
    os.makedirs(root, exist_ok=True)
    values = np.array([10 * s + i for s in range(1, 6) for i in range(n)], dtype=np.uint8)
    images = np.broadcast_to(values[:, None, None, None], (5 * n, 4, 4, 3)).copy()
    for name in corruptions:
        np.save(os.path.join(root, name + '.npy'), images)
    labels = np.tile(np.arange(n) % 2, 5).astype(np.uint8)
    np.save(os.path.join(root, 'labels.npy'), labels[:num_labels])
    return root


def _write_image_folder(root, classes=('cat', 'dog'), per_class=3, size=16):
    rng = np.random.default_rng(0)
    for cls in classes:
        os.makedirs(os.path.join(root, cls))
        for i in range(per_class):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(os.path.join(root, cls, f'img{i}.png'))
    return root


def _folder_tensor(root):
    """All images of a class folder, sorted like ImageFolder, as a float batch, with their targets."""
    images, targets = [], []
    for target, cls in enumerate(sorted(os.listdir(root))):
        for name in sorted(os.listdir(os.path.join(root, cls))):
            images.append(pil_to_tensor(Image.open(os.path.join(root, cls, name)).convert('RGB')))
            targets.append(target)
    return torch.stack(images).float() / 255, targets


def _uint8(x):
    return (x * 255).round().to(torch.uint8)


def test_cifar_c_reads_each_severity_block_with_labels(tmp_path):
    root = _write_cifar_c(str(tmp_path / 'CIFAR-10-C'))
    for severity in range(1, 6):
        ds = CifarCDataset(root, 'fog', severity, transform=pil_to_tensor)
        assert len(ds) == N
        for i in range(N):
            image, target = ds[i]
            assert image.shape == (3, 4, 4) and int(image[0, 0, 0]) == 10 * severity + i
            assert target == i % 2


def test_cifar_c_returns_pil_without_transform(tmp_path):
    image, _ = CifarCDataset(_write_cifar_c(str(tmp_path)), 'snow', 1)[0]
    assert isinstance(image, Image.Image) and image.size == (4, 4)


def test_find_corruptions_lists_both_layouts(tmp_path):
    cifar = _write_cifar_c(str(tmp_path / 'cifar'))
    assert find_corruptions(cifar) == {'fog': (1, 2, 3, 4, 5), 'snow': (1, 2, 3, 4, 5)}
    for severity in (1, 3):
        _write_image_folder(str(tmp_path / 'inet' / 'fog' / str(severity)), per_class=1)
    os.makedirs(tmp_path / 'inet' / 'notes')  # no severity folders: not a corruption
    assert find_corruptions(str(tmp_path / 'inet')) == {'fog': (1, 3)}


def test_cifar_c_length_not_divisible_by_five(tmp_path):
    root = str(tmp_path)
    np.save(os.path.join(root, 'fog.npy'), np.zeros((14, 4, 4, 3), np.uint8))
    np.save(os.path.join(root, 'labels.npy'), np.zeros(14, np.uint8))
    with pytest.raises(ValueError, match=r'fog\.npy has 14 images, not 5 severity blocks') as err:
        CifarCDataset(root, 'fog', 1)
    assert '\n' not in str(err.value)


def test_cifar_c_label_count_mismatch(tmp_path):
    root = _write_cifar_c(str(tmp_path), num_labels=N)
    with pytest.raises(ValueError, match=rf'labels\.npy has {N} labels but .*fog\.npy has {5 * N} images'):
        CifarCDataset(root, 'fog', 1)


def test_cifar_c_missing_corruption_names_path_and_what_is_there(tmp_path):
    root = _write_cifar_c(str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r'frost\.npy not found.*present: fog 1,2,3,4,5; snow 1,2,3,4,5'):
        CifarCDataset(root, 'frost', 1)
    with pytest.raises(FileNotFoundError, match='does not exist'):
        CifarCDataset(str(tmp_path / 'nope'), 'fog', 1)


def test_imagenet_c_reads_severity_folder_with_classes(tmp_path):
    root = tmp_path / 'ImageNet-C'
    for severity in (1, 2):
        _write_image_folder(str(root / 'fog' / str(severity)), classes=('n01', 'n02'), per_class=2)
    ds = ImageNetCDataset(str(root), 'fog', 2)
    assert ds.classes == ['n01', 'n02'] and ds.targets == [0, 0, 1, 1]
    assert all(os.sep + os.path.join('fog', '2') + os.sep in path for path, _ in ds.samples)


def test_imagenet_c_missing_severity_says_which_exist(tmp_path):
    _write_image_folder(str(tmp_path / 'fog' / '1'), per_class=1)
    with pytest.raises(FileNotFoundError, match=r'fog/3 not found.*present: fog 1\)') as err:
        ImageNetCDataset(str(tmp_path), 'fog', 3)
    assert '\n' not in str(err.value)


def test_bad_severity_rejected_by_readers(tmp_path):
    with pytest.raises(ValueError, match='from 1 to 5'):
        CifarCDataset(str(tmp_path), 'fog', 0)
    with pytest.raises(ValueError, match='from 1 to 5'):
        ImageNetCDataset(str(tmp_path), 'fog', 6)


def test_make_c_cifar_layout_round_trip(tmp_path):
    data = _write_image_folder(str(tmp_path / 'data'))
    out = str(tmp_path / 'out')
    make_c(data, out, layout='cifar-c', corruptions=['contrast', 'gaussian_noise'], batch_size=4, progress=False)
    assert find_corruptions(out) == {'contrast': (1, 2, 3, 4, 5), 'gaussian_noise': (1, 2, 3, 4, 5)}
    assert not [f for f in os.listdir(out) if f.startswith('.')]  # no temporary files left
    clean, targets = _folder_tensor(data)
    for severity in range(1, 6):
        ds = CifarCDataset(out, 'contrast', severity, transform=pil_to_tensor)
        assert ds.targets.tolist() == targets
        written = torch.stack([ds[i][0] for i in range(len(ds))])
        assert torch.equal(written, _uint8(corrupt(clean, 'contrast', severity, dataset='cifar', released=True)))


def test_make_c_imagenet_layout_round_trip_and_is_reproducible(tmp_path):
    data = _write_image_folder(str(tmp_path / 'data'))
    out = str(tmp_path / 'out')
    args = dict(layout='imagenet-c', corruptions=['pixelate', 'shot_noise'], severities=[1, 3], progress=False)
    make_c(data, out, **args)
    assert find_corruptions(out) == {'pixelate': (1, 3), 'shot_noise': (1, 3)}
    clean, targets = _folder_tensor(data)
    ds = ImageNetCDataset(out, 'pixelate', 3, transform=pil_to_tensor)
    assert ds.classes == ['cat', 'dog'] and ds.targets == targets
    written = torch.stack([ds[i][0] for i in range(len(ds))])
    # JPEG quality 85 files as released: Pillow reads back exactly the on-the-fly released-style pixels
    assert torch.equal(written, _uint8(corrupt(clean, 'pixelate', 3, dataset='imagenet', released=True)))
    noisy = [p.read_bytes() for p in sorted((tmp_path / 'out' / 'shot_noise').rglob('*.JPEG'))]
    assert len(noisy) == 12  # 6 images x 2 severities
    make_c(data, str(tmp_path / 'again'), **args)
    assert noisy == [p.read_bytes() for p in sorted((tmp_path / 'again' / 'shot_noise').rglob('*.JPEG'))]
    assert not list((tmp_path / 'out').rglob('.*'))


@pytest.mark.parametrize('layout', ['cifar-c', 'imagenet-c'])
def test_make_c_no_released_rounds_and_stores_losslessly(tmp_path, layout):
    data = _write_image_folder(str(tmp_path / 'data'), per_class=1)
    out = str(tmp_path / 'out')
    make_c(data, out, layout=layout, corruptions=['fog'], progress=False, released=False)
    clean, _ = _folder_tensor(data)
    read = CifarCDataset if layout == 'cifar-c' else ImageNetCDataset
    ds = read(out, 'fog', 5, transform=pil_to_tensor)
    written = torch.stack([ds[i][0] for i in range(len(ds))])
    dataset = 'cifar' if layout == 'cifar-c' else 'imagenet'
    g = torch.Generator().manual_seed(zlib.crc32(b'0/fog/5'))
    assert torch.equal(written, _uint8(corrupt(clean, 'fog', 5, generator=g, dataset=dataset)))
    if layout == 'imagenet-c':
        assert {p.suffix for p in (tmp_path / 'out').rglob('img*')} == {'.png'}


def test_make_c_resizes_to_img_size(tmp_path):
    data = _write_image_folder(str(tmp_path / 'data'), per_class=1)
    main(['--data-dir', data, '--out', str(tmp_path / 'out'), '--format', 'cifar-c',
          '--corruptions', 'brightness', '--img-size', '8'])
    image, _ = CifarCDataset(str(tmp_path / 'out'), 'brightness', 5)[1]
    assert image.size == (8, 8)


def test_make_c_cli_rejects_partial_severities_for_cifar_layout(tmp_path, capsys):
    data = _write_image_folder(str(tmp_path / 'data'), per_class=1)
    assert main(['--data-dir', data, '--out', str(tmp_path / 'out'), '--format', 'cifar-c', '--severities', '1']) == 1
    assert 'stacks all 5 severities' in capsys.readouterr().err


def test_make_c_writes_all_19_corruptions_by_default(tmp_path):
    data = _write_image_folder(str(tmp_path / 'data'), per_class=1)
    make_c(data, str(tmp_path / 'out'), layout='cifar-c', progress=False)
    assert sorted(find_corruptions(str(tmp_path / 'out'))) == sorted(CORRUPTIONS + EXTRA_CORRUPTIONS)
