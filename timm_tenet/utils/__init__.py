"""Helpers shared by every package: atomic file writes, one-line error messages, checkpoint reading."""
from .checkpoint import CheckpointError, load_checkpoint_file
from .errors import first_line
from .io import atomic_save, atomic_write_text
from .modes import eval_mode
