"""``python -m timm_tenet.hub push ...``: the command line of :mod:`timm_tenet.hub.client`."""
import sys

from .client import main

if __name__ == '__main__':
    sys.exit(main())
