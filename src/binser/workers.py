"""Worker processes that never outlive the command.

joblib's loky workers are re-parented when the parent process is SIGKILLed and would
otherwise idle on (with loky's resource tracker, which holds on while any worker keeps its
pipe open) for many minutes. :func:`fold_parallel` builds the ``joblib.Parallel`` that runs
the folds with :func:`watch_parent` as the loky worker *initializer*: it runs in every
worker before the worker takes its first task, so a worker is watched from the moment it
starts, not from its first task. The watch:

* exits at once if the parent is already gone when the worker starts (a parent SIGKILLed
  while the worker was still importing): ``os.getppid()`` is no longer the parent's pid;
* otherwise starts a daemon thread that polls ``os.getppid()`` every :data:`POLL_S`
  seconds and ``os._exit(1)``s once the parent is gone (re-parenting changes the ppid).

A parent-death signal (``prctl(PR_SET_PDEATHSIG)``) is not used: Linux sends it when the
*thread* that forked the worker exits, and loky spawns replacement workers from its
manager thread, so a signal could kill healthy workers. Once every worker has exited, the
resource tracker reads end-of-file on its pipe and exits too. SIGTERM and SIGINT of the
parent are handled in :func:`binser.cli.main` (joblib aborts and kills its workers).
"""
from __future__ import annotations

import os
import threading
import time
from typing import Any

POLL_S = 0.2
_watching = False
_lock = threading.Lock()


def _watch(parent: int) -> None:
    while True:
        if os.getppid() != parent:
            os._exit(1)   # the parent is gone: nothing will collect this worker's results
        time.sleep(POLL_S)


def watch_parent(parent: int) -> None:
    """In a worker process: exit as soon as ``parent`` is no longer this process's parent
    (at once if it already is not). A no-op in ``parent`` itself (``n_jobs=1``)."""
    global _watching
    if os.getpid() == parent:   # the task runs in the parent itself (n_jobs=1)
        return
    if os.getppid() != parent:
        os._exit(1)
    with _lock:
        if not _watching:
            threading.Thread(target=_watch, args=(parent,), name="binser-parent-watch",
                             daemon=True).start()
            _watching = True


def fold_parallel(n_jobs: int, **kwargs: Any):
    """A ``joblib.Parallel(n_jobs, **kwargs)`` on loky whose workers run
    :func:`watch_parent` (of this process) as their initializer."""
    from joblib import Parallel
    from joblib.parallel import LokyBackend

    backend = LokyBackend(initializer=watch_parent, initargs=(os.getpid(),))
    return Parallel(n_jobs=n_jobs, backend=backend, **kwargs)
