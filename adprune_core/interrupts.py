"""Ctrl-C at safe points: the first SIGINT asks long work to stop, the work stops where nothing is half-done.

Python raises ``KeyboardInterrupt`` wherever the main thread happens to be, which may be inside a
database commit (a tracking store, the Optuna storage) or a file write: the interrupted transaction
can leave a lock behind, turn the interrupt into another error, or lose a record. Inside
``deferred()`` the first SIGINT only sets a flag (and says so on stderr); the work calls ``check()``
at its safe points (the trainer after every step, the study between trials) and ``check()`` raises
``KeyboardInterrupt`` there. A second SIGINT raises at once, wherever it lands: the user insisted.

Contract:
- ``deferred()`` nests (only the outermost installs the handler) and is a no-op outside the main
  thread, where Python cannot install signal handlers; the previous handler is restored on exit.
- leaving the outermost ``deferred()`` normally with an interrupt pending raises ``KeyboardInterrupt``
  (work that finished between its last check and the end still reports that it was interrupted).
- the pending flag is cleared when the outermost ``deferred()`` exits.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_depth = 0
_pending = False

MESSAGE = "adprune: interrupt requested; stopping at the next safe point (Ctrl-C again to stop at once)"


def requested() -> bool:
    """Whether a SIGINT arrived inside ``deferred()`` and has not been acted on yet."""
    return _pending


def check() -> None:
    """Raise ``KeyboardInterrupt`` if an interrupt is pending: call it where stopping is safe."""
    if _pending:
        raise KeyboardInterrupt


def _handler(signum: int, frame: object) -> None:
    global _pending
    if _pending:  # the second Ctrl-C: at once
        raise KeyboardInterrupt
    _pending = True
    print(MESSAGE, file=sys.stderr, flush=True)


@contextmanager
def deferred() -> Iterator[None]:
    """Within this block the first SIGINT waits for the next ``check()``; see the module docstring."""
    global _depth, _pending
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if _depth:  # nested: the outermost block owns the handler
        _depth += 1
        try:
            yield
        finally:
            _depth -= 1
        return
    previous = signal.signal(signal.SIGINT, _handler)
    _depth = 1
    try:
        yield
        check()
    finally:
        _depth = 0
        _pending = False
        signal.signal(signal.SIGINT, previous)
