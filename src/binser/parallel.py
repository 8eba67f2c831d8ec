"""Data-parallel network inference that gives the same numbers whatever the thread count.

PyTorch's CPU kernels split one operation over its intra-op threads, and the split changes
the order of floating-point sums: EfficientNet-Lite0 features differ by about 1e-5 between 1
and 2 threads, and a Whisper encoder's hidden states by up to 1e-3 between a signal encoded
alone and inside a padded batch. Such differences flip discrete choices downstream (the C of
an SVM on a flat inner-CV curve) and make a feature cache depend on whichever run filled it.

:func:`single_thread_map` removes both causes: every work item (a sub-batch of images, one
signal) is computed with ONE intra-op thread, the items run side by side in ``workers``
Python threads (PyTorch releases the GIL inside its kernels), and the items are fixed by
the data alone (never by the thread count). So a file's features depend only on the file,
the network and the code; on this project's 2-core machine it is also faster than 2
intra-op threads (see RESULTS.md).
"""
from __future__ import annotations

import contextlib
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, TypeVar

from .validation import check_int_range

T = TypeVar("T")
R = TypeVar("R")


def default_workers() -> int:
    """One worker per core this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def check_workers(workers: int | None) -> int:
    """``workers`` as a positive int (None: :func:`default_workers`)."""
    if workers is None:
        return default_workers()
    return check_int_range(workers, "--threads", 1, integral_floats=True)


@contextlib.contextmanager
def torch_threads(n: int | None):
    """torch's intra-op CPU threads set to ``n`` inside the block and restored after it
    (``None``: unchanged)."""
    import torch

    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def single_thread_map(fn: Callable[[T], R], items: Iterable[T], workers: int | None = None,
                      on_result: Callable[[T], None] | None = None) -> list[R]:
    """``[fn(item) for item in items]`` computed by ``workers`` threads, torch limited to one
    intra-op thread meanwhile (restored afterwards). Results keep the order of ``items``.
    ``on_result(item)`` (e.g. a progress bar's update) runs in the calling thread as each
    result, in order, becomes available."""
    items = list(items)
    workers = min(check_workers(workers), max(1, len(items)))
    out: list[R] = []
    with torch_threads(1), (ThreadPoolExecutor(max_workers=workers,
                                               thread_name_prefix="binser-infer")
                            if workers > 1 else contextlib.nullcontext()) as pool:
        for item, result in zip(items, pool.map(fn, items) if pool else map(fn, items)):
            out.append(result)
            if on_result is not None:
                on_result(item)
    return out
