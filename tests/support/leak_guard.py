"""What a test may leave running: only the threads of fixtures wider than one test.

``tests/conftest.py`` fails a test that leaves a thread behind (an emulator it did not stop, a
worker it did not join); a fixture that starts something for a whole module or session on
demand, inside some test, registers it here with :func:`shared`.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Iterator

_SHARED: weakref.WeakSet[threading.Thread] = weakref.WeakSet()


@contextlib.contextmanager
def shared() -> Iterator[None]:
    """Threads started inside this block outlive the test on purpose."""
    before = set(threading.enumerate())
    try:
        yield
    finally:
        _SHARED.update(set(threading.enumerate()) - before)


def is_shared(thread: threading.Thread) -> bool:
    return thread in _SHARED
