"""Helpers shared by every package: atomic file writes, one-line error messages, checkpoint reading, eval_mode, the
``-c/--config`` command-line plumbing of train.py and validate.py, images, the Hub reachability probe."""
from .checkpoint import CheckpointError, load_checkpoint_file
from .errors import first_line
from .io import atomic_save, atomic_write_text
from .modes import eval_mode
