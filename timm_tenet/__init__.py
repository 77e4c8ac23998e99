"""timm_tenet: TENET training (group-wise inhibition feature regularisation, ICCV 2021) for timm.

Importing the package registers the ``*_tenet`` models with timm's registry. The method sits at the top
(``config``, ``inhibition``, ``split``, ``task``); ``models``, ``data``, ``training``, ``robustness`` and ``hub``
hold one concern each.
"""
__version__ = '0.1.0'

from .config import TenetConfig
from .task import TenetTask
from .models import TENET_BASES, base_architecture, create_tenet_model, get_tenet_config
from .robustness import CORRUPTIONS, corrupt, fgsm, mce, pgd
from . import hub
