"""One-line error text: what the library's ``*Error`` messages quote of a lower-level exception."""
from typing import Union

__all__ = ['first_line']


def first_line(e: Union[BaseException, str]) -> str:
    """The first line of ``str(e)`` with runs of whitespace collapsed, or the exception's type name if it is empty."""
    text = str(e).strip()
    return ' '.join(text.splitlines()[0].split()) if text else type(e).__name__
