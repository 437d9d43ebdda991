"""Garbage collection in the long-running server processes, tuned for short pauses.

A full collection walks every tracked object. With a thousand agent sockets the ASGI process
holds about 300,000 of them, and a full collection took 150-290 ms on two busy cores: the
slowest kill switch pushes were those that waited behind one. CPython starts a full collection
after every ten collections of the middle generation; here it waits for a thousand, so under
steady load the process runs one every few minutes instead of every few seconds, and what
was loaded at start-up (Django, the app, the libraries) is frozen out of every collection.
Young objects are collected as before, so short-lived cycles are freed as soon as ever.
"""

from __future__ import annotations

import gc

FULL_AFTER_MIDDLE = 1000  # CPython's default is 10


def settle_heap() -> None:
    """Call once the server process has loaded the application."""
    gc.collect()
    gc.freeze()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, FULL_AFTER_MIDDLE)
