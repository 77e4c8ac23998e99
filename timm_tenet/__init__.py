"""timm_tenet: TENET training (group-wise inhibition feature regularisation, ICCV 2021) for timm.

Importing the package registers the ``*_tenet`` models with timm's registry.
"""
from .config import TenetConfig

__version__ = '0.1.0'
from .task import TenetTask
