"""An inter-process lock on a file: the one behind the model cache (two notebooks asking for the same model)
and the kernel-start lock (two kernels starting at once). Imports nothing heavy (no torch), so the classroom's
command lines can take it without paying for torch."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path


@contextlib.contextmanager
def file_lock(path: str | os.PathLike):
    """Hold an exclusive lock on `path` (created with its folder if missing, never truncated) for the block.

    A process that asks while another holds it waits; the lock goes with the holder's process if it dies
    (`fcntl.flock`). A no-op where `fcntl` does not exist (Windows).

    Raises:
        OSError: `path` cannot be created or opened (e.g. a read-only folder).
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover
        yield
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
