"""timm_tenet: TENET training (group-wise inhibition feature regularisation, ICCV 2021) for timm.

Importing the package registers the ``*_tenet`` models with timm's registry.
"""
from .config import TenetConfig
from .task import TenetTask
from .tenet_models import TENET_BASES, base_architecture, create_tenet_model, get_tenet_config

__version__ = '0.1.0'
