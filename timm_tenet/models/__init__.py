"""Model registrations: the ``*_tenet`` variants of timm architectures and the CIFAR networks they build on."""
from .cifar import CifarResNet, CifarWideResNet
from .tenet_models import TENET_BASES, base_architecture, create_tenet_model, get_tenet_config
from .loading import model_from_checkpoint
