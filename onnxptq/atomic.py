"""Atomic file writes: a temporary file beside the target, renamed over it only once it is complete, so a
user's file is never left half written (an interrupted run keeps the old file or none)."""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import OutputError


@contextmanager
def atomic_path(out: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a fresh temporary path beside ``out`` (ending in ``suffix``, e.g. ``.npz`` for np.savez); when
    the block ends without an error, the file is synced and renamed to ``out``. The temporary file never
    survives; an OSError becomes an OutputError naming ``out``."""
    out = Path(out)
    fd, name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=suffix, dir=out.parent if str(out.parent) else ".")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except OSError as e:
        raise OutputError(f"cannot write {out}: {e.strerror or e}") from None
    finally:
        if tmp.exists():
            tmp.unlink()
