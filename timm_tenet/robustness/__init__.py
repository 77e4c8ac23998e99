"""Robustness evaluation: attacks, common corruptions, -C dataset readers and mCE, the validation run, Grad-CAM."""
from .attacks import autoattack, fgsm, pgd
from .corruptions import CORRUPTIONS, corrupt, mce, relative_mce
