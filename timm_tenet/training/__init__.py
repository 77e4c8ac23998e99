"""Training: the ``train.py`` command line and its checked settings, what a run is built from, the run, the epoch
loop, adversarial training and checkpoints."""
