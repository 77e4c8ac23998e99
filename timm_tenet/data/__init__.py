"""Datasets shared by training and evaluation: the bundled digits data and timm datasets that skip bad images."""
from .digits import DIGITS_DATASET, prepare_digits
