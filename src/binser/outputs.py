"""Output and cache paths: checked before any work, written whole or not at all.

* :func:`check_output_file` / :func:`check_folder` refuse, up front and with one line naming
  the option, what would otherwise fail after the work: an existing file where a folder is
  wanted (or the reverse), a parent that is a file, a read-only or missing-permission
  location, pseudo file systems (``/proc``, ``/sys``, ``/dev``), a figure suffix matplotlib
  cannot write.
* :class:`OutputFolder` holds an exclusive lock (``.<name>.lock`` beside the folder) from the
  check to the end of the run, so two runs into one ``--out`` cannot mix files: the second
  stops at once. Its :meth:`OutputFolder.staged` writes into a temporary sibling and swaps it
  in (``renameat2(RENAME_EXCHANGE)`` where the kernel has it), so the folder is always one
  complete run's output, or untouched.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, Sequence

from .errors import ConfigError

PSEUDO_FILESYSTEMS = ("/proc", "/sys", "/dev")
FIGURE_SUFFIXES = (".png", ".pdf", ".svg")
# What a binser run writes into --out; an existing folder holding anything else is not
# replaced (so --out ~ can never wipe a home folder).
RESULT_MARKERS = ("results.json", "model.json")


def _pseudo(path: Path) -> bool:
    text = str(path)
    return any(text == root or text.startswith(root + "/") for root in PSEUDO_FILESYSTEMS)


def _nearest_existing(path: Path) -> Path:
    current = path
    while not current.exists() and current != current.parent:
        current = current.parent
    return current


def _probe_writable(folder: Path, option: str, target: Path) -> None:
    """Create and remove a temporary file in ``folder`` (permission bits say nothing for
    root or on a read-only mount)."""
    try:
        fd, name = tempfile.mkstemp(prefix=".binser-probe-", dir=folder)
        os.close(fd)
        os.unlink(name)
    except OSError as error:
        cause = error.strerror or str(error)
        raise ConfigError(f"{option} {target}: cannot write in {folder} ({cause})") from None


def _check_parent(path: Path, option: str) -> None:
    """Every existing ancestor must be a folder; the nearest one must be writable."""
    if _pseudo(path):
        raise ConfigError(f"{option} {path}: refusing to write under "
                          f"{'/'.join(path.parts[:2]).replace('//', '/')} (a pseudo file system)")
    existing = _nearest_existing(path.parent)
    if not existing.is_dir():
        raise ConfigError(f"{option} {path}: {existing} is a file, not a folder")
    _probe_writable(existing, option, path)


def check_output_file(path: str | Path, option: str = "-o",
                      suffixes: Sequence[str] = FIGURE_SUFFIXES) -> Path:
    """A file to be written: right suffix, not a folder, in a writable folder."""
    path = Path(os.path.abspath(path))
    if suffixes and path.suffix.lower() not in suffixes:
        raise ConfigError(f"{option} {path}: unsupported file type "
                          f"{path.suffix or '(no suffix)'!r}; use one of {', '.join(suffixes)}")
    if path.is_dir():
        raise ConfigError(f"{option} {path}: is a folder; give a file name")
    _check_parent(path, option)
    return path


def check_folder(path: str | Path, option: str = "--out") -> Path:
    """A folder to be created or written into (a cache, or an output folder)."""
    path = Path(os.path.abspath(path))
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{option} {path}: exists and is a file, not a folder")
    _check_parent(path, option)
    if path.is_dir():
        _probe_writable(path, option, path)
    return path


def _replaceable(path: Path, keep: Sequence[str] = ()) -> bool:
    if not path.is_dir():
        return True
    names = [p.name for p in path.iterdir()]
    return all(name in keep for name in names) or any(m in names for m in RESULT_MARKERS)


# ------------------------------------------------------------------ swap

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux ``renameat2``); False where unavailable."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                          ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(b))


class OutputFolder:
    """An output folder checked and locked before the work, written at the end by a swap.

    ``overwrite``: replace an existing non-empty folder (a previous binser output only).
    ``option``: the CLI's word, for messages. ``keep``: entries of the old folder carried
    into the new one (the demo's generated ``corpus``).
    """

    def __init__(self, path: str | Path, option: str = "--out", overwrite: bool = True,
                 keep: Sequence[str] = ()) -> None:
        self._lock = None
        self.path = check_folder(path, option)
        self.option = option
        self.keep = tuple(keep)
        if self.path.is_dir() and any(self.path.iterdir()):
            if not overwrite:
                raise ConfigError(f"{option} {self.path}: folder exists and is not empty; "
                                  "pass --overwrite to replace it")
            if not _replaceable(self.path, self.keep):
                raise ConfigError(f"{option} {self.path}: folder exists and holds no binser "
                                  f"output ({' or '.join(RESULT_MARKERS)}); not replacing it: "
                                  "choose a new or empty folder")
        self._lock = self._acquire()

    def _acquire(self):
        import fcntl

        parent = self.path.parent
        parent.mkdir(parents=True, exist_ok=True)
        lock_path = parent / f".{self.path.name}.lock"
        handle = open(lock_path, "a+")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            raise ConfigError(f"{self.option} {self.path}: another binser run is writing to "
                              "this folder; wait for it to finish or choose another folder"
                              ) from None
        return handle

    def release(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def __del__(self) -> None:
        self.release()

    @contextlib.contextmanager
    def staged(self) -> Iterator[Path]:
        """Yield a temporary sibling folder to write into; on success it replaces the folder
        (entries named in ``keep`` are carried over from the old one), on any error or
        interruption it is removed and the folder is untouched."""
        out = self.path
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
        try:
            yield tmp
            for name in self.keep:
                if (out / name).exists() and not (tmp / name).exists():
                    os.replace(out / name, tmp / name)
            if out.is_dir():
                if not _exchange(tmp, out):
                    old = out.parent / f".{out.name}.{os.getpid()}.old"
                    os.replace(out, old)
                    os.replace(tmp, old.parent / out.name)
                    tmp = old
            else:
                os.replace(tmp, out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)   # the new run's leftovers or the old folder
            self.release()
