"""Helpers shared by the reference tests of the corruptions (``test_corruptions_reference*.py``): the conversions
between the tensor layout and the reference's images, and the reference's own ``clipped_zoom`` (used by its zoom
blur and its snow), written plainly per image on scipy as in ``make_cifar_c.py`` / ``make_imagenet_c.py``."""
import numpy as np
import torch
from scipy.ndimage import zoom as scizoom


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """Uint8 B x H x W x C -> float32 B x C x H x W in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255


def to_255(x: torch.Tensor) -> np.ndarray:
    """B x C x H x W in [0, 1] -> B x H x W x C float64 in [0, 255], as the reference returns."""
    return x.permute(0, 2, 3, 1).double().numpy() * 255


def ref_clipped_zoom(img, zoom_factor):
    h = img.shape[0]
    ch = int(np.ceil(h / zoom_factor))
    top = (h - ch) // 2
    img = scizoom(img[top:top + ch, top:top + ch], (zoom_factor, zoom_factor, 1), order=1)
    trim_top = (img.shape[0] - h) // 2
    return img[trim_top:trim_top + h, trim_top:trim_top + h]
