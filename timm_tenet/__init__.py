"""timm_tenet: TENET training (group-wise inhibition feature regularisation, ICCV 2021) for timm, and its
closest peer RSC (representation self-challenging, ECCV 2020) in the same harness.

Importing the package registers the ``*_tenet`` models with timm's registry. The methods sit at the top
(``config``, ``inhibition``, ``split``, ``split_task``, ``task``, ``rsc``); ``models``, ``data``, ``training``,
``robustness`` and ``hub`` hold one concern each.
"""
__version__ = '0.1.0'

from .config import RscConfig, TenetConfig
from .rsc import RscTask
from .task import TenetTask
from .models import TENET_BASES, base_architecture, create_tenet_model, get_tenet_config
from .robustness import CORRUPTIONS, corrupt, fgsm, mce, pgd
from . import hub
