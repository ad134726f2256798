"""Turn SIGTERM into a cancel call while a job runs (KFP stops a cancelled step with SIGTERM)."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)


@contextmanager
def cancel_on_sigterm(cancel: Callable[[], None]) -> Iterator[None]:
    """Call ``cancel()`` on SIGTERM inside the block; the previous handler comes back after it.

    Signal handlers can only be set from the main thread; elsewhere this does nothing and the
    caller must call ``cancel()`` itself.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _handler(signum: int, frame: object) -> None:
        log.warning("received SIGTERM: cancelling the job")
        cancel()

    previous = signal.signal(signal.SIGTERM, _handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
