"""Datasets shared by training and evaluation: the bundled digits / MNIST-5k data and timm datasets that skip
bad images."""
from .bundled import BUNDLED_DATASETS, default_cache_dir, prepare_bundled
from .digits import DIGITS_DATASET, prepare_digits
from .mnist5k import MNIST5K_DATASET, prepare_mnist5k
