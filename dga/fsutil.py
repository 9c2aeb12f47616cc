"""Atomic file writes: readers see the old file or the whole new one, never half of one."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def atomic_write(path: str | os.PathLike[str], data: bytes | bytearray | memoryview | str) -> Path:
    """Write through a temporary file in the same folder, fsync, then ``os.replace`` it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_or_check_generated(out: Path, text: str, check: bool, regenerate: str) -> int:
    """A generated page (CLI reference, results tables): write it atomically, or with ``check`` compare
    it with the committed one and return 1 (with a diff on stderr) when it is stale."""
    import difflib
    import sys

    if not check:
        atomic_write(out, text)
        print(f"wrote {out}")
        return 0
    current = out.read_text(encoding="utf-8") if out.is_file() else ""
    if current == text:
        print(f"{out} is current")
        return 0
    diff = list(difflib.unified_diff(current.splitlines(), text.splitlines(), str(out), "generated", lineterm=""))
    print("\n".join(diff[:40]), file=sys.stderr)
    print(f"{out} is stale: regenerate it with {regenerate}", file=sys.stderr)
    return 1
