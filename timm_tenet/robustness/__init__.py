"""Robustness evaluation: attacks, common corruptions, -C dataset readers and mCE, validate.py's run (options, loading,
the variant loop, corruption and attack evaluation, summaries, results files), make_c, Grad-CAM."""
from .attacks import autoattack, fgsm, pgd
from .corruptions import CORRUPTIONS, corrupt, mce, relative_mce
