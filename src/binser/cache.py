"""On-disk caches: content hashes and a folder of atomically written ``.npy`` arrays.

Every cache in binser (segment features, openSMILE functionals, fine-tuned features,
classifier fold results) is a :class:`FeatureCache`: one ``.npy`` per key under
``<root>/<2 hex>/<key>.npy``, written through a temporary file in the same folder, fsync and
an atomic rename, so a killed run leaves only complete entries and a rerun resumes.
Unreadable or mis-shaped entries warn (:class:`CacheWarning`) and count as absent.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np

from .errors import AudioError, ConfigError

HASH_CHUNK = 1 << 20  # bytes read at a time when hashing a file


def default_cache_dir() -> Path:
    """$BINSER_CACHE_DIR, else $XDG_CACHE_HOME/binser, else ~/.cache/binser."""
    if os.environ.get("BINSER_CACHE_DIR"):
        return Path(os.environ["BINSER_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "binser"


class CacheWarning(UserWarning):
    """A cache entry was unreadable or inconsistent and is being recomputed."""


def file_sha256(path: str | Path, chunk: int = HASH_CHUNK) -> str:
    """Hex sha256 of a file's bytes, read in ``chunk``-byte pieces (1 MiB by default)."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(chunk), b""):
                digest.update(block)
    except OSError as exc:
        raise AudioError(path, f"cannot read file ({exc.strerror or exc})") from exc
    return digest.hexdigest()


def update_with_array(digest: "hashlib._Hash", array: np.ndarray) -> None:
    """Feed an array's dtype, shape and bytes (C order) into a running hash."""
    array = np.ascontiguousarray(array)
    digest.update(f"{array.dtype.str}{array.shape}".encode())
    digest.update(memoryview(array).cast("B"))


class FeatureCache:
    """Folder of ``<2 hex>/<key>.npy`` arrays ``(n, d)`` of one dtype; atomic writes.

    ``dtype``: what entries are stored as (float32 for features; float64 where a rerun must
    reproduce a computation bit for bit, e.g. classifier probabilities).
    """

    def __init__(self, cache_dir: str | Path, dtype: np.dtype | type = np.float32):
        self.root = Path(cache_dir)
        self.dtype = np.dtype(dtype)

    def path(self, key: str) -> Path:
        """File that holds (or would hold) entry ``key``."""
        if len(key) < 3 or not all(c in "0123456789abcdef" for c in key):
            raise ConfigError(f"cache key must be lower-case hex, got {key!r}")
        return self.root / key[:2] / f"{key}.npy"

    def has(self, key: str) -> bool:
        """Whether an entry exists (not read, not checked)."""
        return self.path(key).is_file()

    def get(self, key: str, feature_dim: int | None = None) -> np.ndarray | None:
        """The stored ``(n, d)`` array, or None if absent, unreadable or mis-shaped.

        ``feature_dim``: expected ``d``; an entry of another width counts as corrupt.
        """
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            array = np.load(path, allow_pickle=False)
        except Exception as exc:  # truncated or overwritten: recompute
            warnings.warn(f"{path}: unreadable cache entry ({type(exc).__name__}); "
                          "recomputing", CacheWarning, stacklevel=2)
            return None
        if not self._plausible(array, feature_dim):
            warnings.warn(f"{path}: cache entry has shape {array.shape} dtype {array.dtype}; "
                          "recomputing", CacheWarning, stacklevel=2)
            return None
        return array

    def put(self, key: str, features: np.ndarray) -> Path:
        """Store ``features`` (n, d) atomically; returns the entry's path."""
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        array = np.ascontiguousarray(features, dtype=self.dtype)
        handle = tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{key}.",
                                             suffix=".tmp", delete=False)
        try:
            with handle:
                np.save(handle, array, allow_pickle=False)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(handle.name, path)
        except BaseException:
            Path(handle.name).unlink(missing_ok=True)
            raise
        return path

    def _plausible(self, array: np.ndarray, feature_dim: int | None) -> bool:
        """A 2-D array of this cache's dtype, finite, with ``feature_dim`` columns (if given)."""
        return (array.ndim == 2 and array.dtype == self.dtype
                and (feature_dim is None or array.shape[1] == feature_dim)
                and bool(np.isfinite(array).all()))
