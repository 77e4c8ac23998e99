"""Grad-CAM comparison grids (the paper's Figure 2)."""
import numpy as np
import pytest
import timm
import torch
from PIL import Image

import timm_tenet  # noqa: F401  registers the CIFAR nets
from timm_tenet.robustness import cam
from timm_tenet.utils.io import atomic_save

pytest.importorskip('pytorch_grad_cam')


@pytest.fixture
def image_folder(tmp_path):
    rng = np.random.default_rng(0)
    for label in ('0', '1'):
        (tmp_path / 'images' / label).mkdir(parents=True)
        for i in range(2):
            pixels = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / 'images' / label / f'{label}_{i}.png')
    return tmp_path / 'images'


def _checkpoint(tmp_path, name, seed):
    torch.manual_seed(seed)
    model = timm.create_model('cifar_resnet18', num_classes=2)
    path = tmp_path / f'{name}.pth.tar'
    atomic_save({'arch': 'cifar_resnet18', 'state_dict': model.state_dict(), 'epoch': 0}, str(path))
    return model, str(path)


def test_class_folder_gives_ground_truth_targets_round_robin(image_folder):
    images, labels, names = cam.load_images([str(image_folder)], (32, 32), limit=3)
    assert images.shape == (3, 3, 32, 32) and 0 <= images.min() and images.max() <= 1
    assert labels == [0, 1, 0] and names == ['0_0.png', '1_0.png', '0_1.png']


def test_heatmaps_differ_between_different_models(tmp_path, image_folder):
    first, _ = _checkpoint(tmp_path, 'a', 0)
    second, _ = _checkpoint(tmp_path, 'b', 1)
    images, labels, _ = cam.load_images([str(image_folder)], (32, 32))
    targets = torch.tensor(labels)
    maps_a = cam.grad_cams(first, (images - 0.5) / 0.5, targets)
    maps_b = cam.grad_cams(second, (images - 0.5) / 0.5, targets)
    assert maps_a.shape == (4, 32, 32) and maps_a.min() >= 0 and maps_a.max() <= 1
    assert np.abs(maps_a - maps_b).mean() > 0.05


def test_cli_writes_a_grid_of_input_and_one_column_per_model(tmp_path, image_folder):
    _, path_a = _checkpoint(tmp_path, 'baseline', 0)
    _, path_b = _checkpoint(tmp_path, 'tenet', 1)
    out = tmp_path / 'cam.png'
    cam.main(['--models', path_a, path_b, '--titles', 'baseline', 'TENET', '--images', str(image_folder),
              '--num-images', '3', '--out', str(out)])
    width, height = Image.open(out).size
    assert (width, height) == (round(2.2 * 3 * 100), round((2.2 * 3 + 0.6) * 100))


def test_vit_tokens_are_reshaped_to_the_patch_grid():
    model = timm.create_model('test_vit', num_classes=3, global_pool='avg')
    layer, reshape = cam.cam_target(model)
    assert layer is model.blocks[-1]
    height, width = model.patch_embed.grid_size
    tokens = torch.randn(2, model.num_prefix_tokens + height * width, model.embed_dim)
    assert reshape(tokens).shape == (2, model.embed_dim, height, width)


def test_missing_images_give_a_clear_message(tmp_path):
    with pytest.raises(FileNotFoundError, match='no image or folder at'):
        cam.load_images([str(tmp_path / 'nowhere')], (32, 32))
