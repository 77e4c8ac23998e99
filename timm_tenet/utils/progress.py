"""Progress of a long loop: a tqdm bar on a terminal, log lines elsewhere (a log file, a pipe, CI), so that an
evaluation of a minute or more never runs silently, as training logs every ``--log-interval`` steps."""
import logging
import time
from typing import Any, Iterable, Iterator, Optional

from tqdm import tqdm

__all__ = ['progress_bar']

_logger = logging.getLogger('timm_tenet.progress')
_LINES = 5  # log lines per loop of known length


class _LoggedProgress:
    """The part of tqdm's interface the loops use, logging about ``_LINES`` lines instead of drawing a bar."""

    def __init__(self, iterable: Iterable, desc: str, unit: str):
        self.iterable, self.desc, self.unit = iterable, desc, unit
        self.disable = True  # no bar to update: callers skip their postfix reads of the device

    def __iter__(self) -> Iterator[Any]:
        total = len(self.iterable) if hasattr(self.iterable, '__len__') else None
        every = max(1, -(-total // _LINES)) if total else 10
        start = time.time()
        for step, item in enumerate(self.iterable, 1):
            yield item
            if step % every == 0 or step == total:
                _logger.info(f"{self.desc}: {self.unit} {step}{f'/{total}' if total else ''} "
                             f'({time.time() - start:.0f} s)')

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(iterable: Iterable, progress: Optional[bool], desc: str = '', unit: str = 'batch', **kwargs: Any):
    """``tqdm`` over ``iterable`` when ``progress`` is True, or None with stderr a terminal; log lines when it is
    None elsewhere; nothing when it is False."""
    bar = tqdm(iterable, desc=desc, unit=unit, disable=None if progress is None else not progress,
               dynamic_ncols=True, **kwargs)
    if bar.disable and progress is None:
        bar.close()
        return _LoggedProgress(iterable, desc, unit)
    return bar
