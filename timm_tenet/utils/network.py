"""Reaching the Hugging Face Hub: a short probe instead of ``huggingface_hub``'s retries.

Without network, a download of pretrained weights retries for about a minute (with a warning per retry)
before it fails. A TCP connection to the Hub's host, with a timeout of a few seconds, tells the same
thing at once; while the Hub does not answer, downloads behave as with ``HF_HUB_OFFLINE=1``: they read
the local cache and fail immediately when the files are not there.
"""
import socket
import urllib.parse
from contextlib import contextmanager
from typing import Iterator, Optional

__all__ = ['HUB_TIMEOUT', 'hub_unreachable', 'offline_if_unreachable']

HUB_TIMEOUT = 5.0  # seconds


def hub_unreachable(endpoint: Optional[str] = None, timeout: float = HUB_TIMEOUT) -> Optional[str]:
    """Why the Hub at ``endpoint`` (default: ``HF_ENDPOINT``) cannot be reached within ``timeout`` seconds, or
    None when a TCP connection to it opens."""
    if endpoint is None:
        from huggingface_hub import constants
        endpoint = constants.ENDPOINT
    url = urllib.parse.urlsplit(endpoint)
    port = url.port or (443 if url.scheme == 'https' else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout).close()
    except OSError as e:
        return str(e) or type(e).__name__
    return None


@contextmanager
def offline_if_unreachable(timeout: float = HUB_TIMEOUT) -> Iterator[Optional[str]]:
    """Within the block, downloads from an unreachable Hub read the local cache only (as ``HF_HUB_OFFLINE=1``).

    Yields:
        Why the Hub cannot be reached (the block runs offline), or None (it runs as usual; also when
        ``HF_HUB_OFFLINE`` is already set).
    """
    from huggingface_hub import constants
    reason = None if constants.HF_HUB_OFFLINE else hub_unreachable(constants.ENDPOINT, timeout)
    if reason is None:
        yield None
        return
    constants.HF_HUB_OFFLINE = True
    try:
        yield reason
    finally:
        constants.HF_HUB_OFFLINE = False
