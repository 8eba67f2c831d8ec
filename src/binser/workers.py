"""Worker processes that never outlive the command.

joblib's loky workers are re-parented to PID 1 when the parent process is SIGKILLed and
would otherwise idle on (with their resource tracker) for many minutes. :func:`in_worker`
runs a task in a worker after starting, once per worker, a daemon thread that exits the
worker within about a second of its parent's death. SIGTERM and SIGINT of the parent are
handled in :func:`binser.cli.main` (joblib aborts and kills its workers).
"""
from __future__ import annotations

import os
import threading
import time
from typing import Any, Callable

POLL_S = 0.5
_watching = False
_lock = threading.Lock()


def _watch(parent: int) -> None:
    while True:
        if os.getppid() != parent:
            os._exit(1)   # the parent is gone: nothing will collect this worker's results
        time.sleep(POLL_S)


def watch_parent(parent: int) -> None:
    """In a worker process: exit as soon as ``parent`` is no longer this process's parent."""
    global _watching
    if os.getpid() == parent:   # the task runs in the parent itself (n_jobs=1)
        return
    with _lock:
        if not _watching:
            threading.Thread(target=_watch, args=(parent,), name="binser-parent-watch",
                             daemon=True).start()
            _watching = True


def in_worker(parent: int, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``func(*args, **kwargs)`` in a worker watching its parent ``parent`` (``os.getpid()``
    of the process that submits the task)."""
    watch_parent(parent)
    return func(*args, **kwargs)
