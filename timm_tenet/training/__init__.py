"""Training: the ``train.py`` command line, the run, the epoch loop and adversarial training."""
