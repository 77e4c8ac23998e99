"""Files that are never half-written: written to a hidden temporary file beside the target, flushed to disk
and renamed over it, so a reader sees the old content or the complete new one, whenever the process dies."""
import os
import uuid
from contextlib import contextmanager
from typing import IO, Any, Iterator

import torch

__all__ = ['TMP_MARK', 'atomic_open', 'atomic_save', 'atomic_write_text', 'fsync_dir', 'tmp_path']

# every temporary file is named '.<target name><TMP_MARK><pid>-<random>': a glob of '.*<TMP_MARK>*' finds stale ones
TMP_MARK = '.tmp-'


def fsync_dir(path: str) -> None:
    """Flush a folder's entries (a rename in it) to disk, where the platform allows it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def tmp_path(path: str) -> str:
    """A unique hidden temporary name in the folder of ``path``."""
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.join(folder, f'.{name}{TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}')


@contextmanager
def atomic_open(path: str, mode: str = 'wb', **kwargs: Any) -> Iterator[IO]:
    """``open(path, mode)`` for writing through a temporary file: on a clean exit the file is flushed, fsynced and
    renamed over ``path``; on any exception (``KeyboardInterrupt`` too) it is removed and ``path`` is untouched.
    The folder is created if needed.

    Args:
        path: Target file.
        mode: ``'w'`` or ``'wb'`` (the temporary file is opened exclusively, ``'x'``).
        **kwargs: Other ``open`` arguments (``newline``, ``encoding``).
    """
    if not mode.startswith('w'):
        raise ValueError(f"atomic_open writes a file: mode must be 'w' or 'wb', got '{mode}'")
    path = os.path.abspath(path)
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    tmp = tmp_path(path)
    try:
        with open(tmp, 'x' + mode[1:], **kwargs) as f:  # 'x': never clobber; permissions follow the umask
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    fsync_dir(folder)


def atomic_save(obj: Any, path: str) -> None:
    """``torch.save(obj, path)`` through :func:`atomic_open`."""
    with atomic_open(path, 'wb') as f:
        torch.save(obj, f)


def atomic_write_text(text: str, path: str) -> None:
    """Write a text file (``args.yaml``, results) through :func:`atomic_open`, newlines untranslated."""
    with atomic_open(path, 'w', newline='') as f:
        f.write(text)
