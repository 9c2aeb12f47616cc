"""Where predictions and failures go: resumable CSV/JSONL writers and the run summary.

Decisions:

* **Rows go straight to the final path.** A resumable run needs its rows on disk as it goes, so
  writers open the output itself (mode ``"w"``, replacing an old file, or ``"a"`` when resuming)
  rather than a temporary file renamed at the end. ``write`` keeps the row in memory; ``flush()``
  (call it once per batch) hands the rows since the last flush to the OS in one ``write`` of
  complete lines, so a killed process loses at most the rows since the last flush, and only a kill
  during that very call can leave a partial last line (resume cuts it off). No ``fsync``: the rows
  survive the process being killed (``kill -9``, an out-of-memory kill), since the OS has them;
  surviving a power cut or an OS crash is not promised.
* **Resume.** With ``resume=True`` the existing file is read back, a trailing partial line (no
  final newline, an unparsable last line or an unclosed CSV quote) is cut off by truncating the
  file to the end of the last complete row, and the rows' paths become ``done_paths()``. ``write``
  skips a path already written (returns False), so a resumed run never duplicates a row. Paths
  are compared as strings: resume with the same input argument so listing yields the same strings.
  A file written with other columns (another top-k or other levels) is refused, not mixed.
* **CSV** via the ``csv`` module, UTF-8 with ``surrogateescape`` so undecodable POSIX file names
  round-trip (read the file with ``errors="surrogateescape"``). Paths with commas, quotes or
  newlines are quoted; a row with a carriage return anywhere has every cell quoted (the ``csv``
  module would leave such a cell bare, and a reader would split the row there). Header:
  ``path,label_1,prob_1,...,label_k,prob_k[,<level names>],warnings``; fewer than ``k`` labels (a
  model with fewer classes) leave empty cells. Probabilities are written with 6 decimals.
  ``warnings`` holds Pillow's warnings about the file joined by `` | `` (empty for most files).
* **JSONL** rows ``{"path", "topk": [{"label", "prob"}], "levels": [...], "warnings": [...]}``;
  ``levels`` only when the writer has ``level_names``, ``warnings`` only when there are any.
  ``ensure_ascii`` JSON, so every row is one line of ASCII.
* **Errors** ``{"path", "reason", "message"[, "warnings"]}``, one JSON line per file that failed.

Standard library and numpy only: this module ships with the runtime.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from dga.errors import InputError

ENCODING = "utf-8"
ERRORS = "surrogateescape"


# --- reading back what an interrupted run wrote ------------------------------------------------


def _complete_jsonl(data: bytes, where: Path) -> tuple[list[dict[str, Any]], int]:
    """Parsed complete rows of a JSON-lines file and the byte length they span."""
    rows: list[dict[str, Any]] = []
    end = 0
    lines = data.split(b"\n")
    for i, line in enumerate(lines[:-1]):  # lines[-1] follows the last newline: partial or b""
        try:
            row = json.loads(line.decode(ENCODING, ERRORS))
            if not isinstance(row, dict) or "path" not in row:
                raise ValueError("row without a path")
        except ValueError as exc:
            if i == len(lines) - 2 and lines[-1] == b"":
                break  # a damaged last line: treat as partial
            raise InputError(
                f"{where} line {i + 1} is not a row this program wrote; use a new output file or drop --resume."
            ) from exc
        rows.append(row)
        end += len(line) + 1
    return rows, end


def _complete_csv(data: bytes) -> tuple[list[list[str]], int]:
    """Parsed complete records of a CSV file and the byte length they span.

    A record ends at a newline outside quotes; quotes inside a quoted field are doubled, so the
    parity of the quote count so far says whether a newline is inside a field.
    """
    records: list[list[str]] = []
    end = 0
    start = 0
    quotes = 0
    pos = 0
    while True:
        nl = data.find(b"\n", pos)
        if nl < 0:
            break
        quotes += data.count(b'"', pos, nl)
        pos = nl + 1
        if quotes % 2:
            continue  # newline inside a quoted field
        chunk = data[start:pos].decode(ENCODING, ERRORS)
        records.extend(csv.reader(io.StringIO(chunk, newline="")))
        start = end = pos
        quotes = 0
    return records, end


class _ResumableFile:
    """Open ``path`` for appending complete lines, after reading back what is already there."""

    def __init__(self, path: str | os.PathLike[str], resume: bool) -> None:
        self.path = Path(path)
        self.resume = resume
        self._done: set[str] = set()
        self.written = 0  # rows written by this object
        self._fd: int | None = None
        self._pending: list[str] = []  # complete lines not yet handed to the OS

    def _open(self, existing_end: int | None) -> int:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if existing_end is None:
            return os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        os.ftruncate(fd, existing_end)  # drop a partial last line left by a killed run
        return fd

    def _read_existing(self) -> bytes | None:
        if not self.resume:
            return None
        try:
            return self.path.read_bytes()
        except FileNotFoundError:
            return None

    def done_paths(self) -> set[str]:
        """Paths already in the file: from before a resume, plus those written since."""
        return set(self._done)

    @property
    def count(self) -> int:
        """Rows in the file (earlier runs included when resuming)."""
        return len(self._done)

    def _emit(self, path: str, text: str) -> bool:
        if self._fd is None:
            raise ValueError(f"{self.path} is closed")
        if path in self._done:
            return False
        self._pending.append(text)
        self._done.add(path)
        self.written += 1
        return True

    def flush(self) -> None:
        """Hand the rows written since the last flush to the OS, as complete lines in one write."""
        if self._fd is None or not self._pending:
            return
        data = memoryview("".join(self._pending).encode(ENCODING, ERRORS))
        self._pending.clear()
        while data:
            data = data[os.write(self._fd, data):]

    def close(self) -> None:
        if self._fd is not None:
            try:
                self.flush()
            finally:
                os.close(self._fd)
                self._fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _csv_line(cells: Sequence[str]) -> str:
    """One CSV record; every cell quoted when one holds a carriage return (see the module docstring)."""
    buf = io.StringIO()
    quoting = csv.QUOTE_ALL if any("\r" in c for c in cells) else csv.QUOTE_MINIMAL
    csv.writer(buf, lineterminator="\n", quoting=quoting).writerow(cells)
    return buf.getvalue()


def _warning_list(warnings: Sequence[str]) -> list[str]:
    return [" ".join(str(w).split()) for w in warnings]


# --- predictions -------------------------------------------------------------------------------


class ResultWriter(_ResumableFile):
    """Top-k predictions (and DGA hierarchy levels), one row per image, CSV or JSONL."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        fmt: Literal["csv", "jsonl"] = "csv",
        topk: int = 5,
        level_names: Sequence[str] | None = None,
        resume: bool = False,
    ) -> None:
        if fmt not in ("csv", "jsonl"):
            raise ValueError(f"fmt must be 'csv' or 'jsonl', got {fmt!r}")
        if topk < 1:
            raise ValueError(f"topk must be >= 1, got {topk}")
        super().__init__(path, resume)
        self.fmt = fmt
        self.topk = topk
        # No level names (None or empty): no level columns, and ``write`` takes levels=None or [].
        self.level_names = list(level_names) if level_names else None
        self.header = self._header()
        existing = self._read_existing()
        end: int | None = None
        if existing is not None:
            end = self._load_existing(existing)
        self._fd = self._open(end)
        if fmt == "csv" and (end is None or end == 0):
            self._pending.append(_csv_line(self.header))
            self.flush()

    def _header(self) -> list[str]:
        cols = ["path"]
        for i in range(1, self.topk + 1):
            cols += [f"label_{i}", f"prob_{i}"]
        return cols + list(self.level_names or []) + ["warnings"]

    def _load_existing(self, data: bytes) -> int:
        if self.fmt == "jsonl":
            rows, end = _complete_jsonl(data, self.path)
            for row in rows:
                if len(row.get("topk", [])) > self.topk or (
                    ("levels" in row) != (self.level_names is not None)
                    or len(row.get("levels") or []) != len(self.level_names or [])
                ):
                    raise InputError(
                        f"{self.path} was written with other columns (top-k or levels); "
                        "use a new output file or drop --resume."
                    )
                self._done.add(str(row["path"]))
            return end
        records, end = _complete_csv(data)
        if not records:
            return 0  # not even a complete header: start over
        if records[0] != self.header:
            raise InputError(
                f"{self.path} has columns {','.join(records[0])}, not {','.join(self.header)}; "
                "use a new output file or drop --resume."
            )
        for rec in records[1:]:
            if len(rec) != len(self.header):
                raise InputError(f"{self.path} holds a malformed row; use a new output file or drop --resume.")
            self._done.add(rec[0])
        return end

    def write(
        self,
        path: str | os.PathLike[str],
        labels: Sequence[str],
        probs: Sequence[float],
        levels: Sequence[Any] | None = None,
        warnings: Sequence[str] = (),
    ) -> bool:
        """Add one image's row; False (nothing written) when ``path`` is already in the file.

        ``warnings``: Pillow's warnings about the file, one line each.
        """
        key = os.fspath(path)
        if len(labels) != len(probs) or len(labels) > self.topk:
            raise ValueError(f"need <= {self.topk} labels, one probability each; got {len(labels)}/{len(probs)}")
        if self.level_names is not None:
            if levels is None or len(levels) != len(self.level_names):
                raise ValueError(f"need {len(self.level_names)} level values, got {levels!r}")
        elif levels:
            raise ValueError("this writer has no level columns (level_names=None)")
        probs_f = [round(float(p), 6) for p in probs]
        if self.fmt == "jsonl":
            row: dict[str, Any] = {
                "path": key,
                "topk": [{"label": str(lab), "prob": p} for lab, p in zip(labels, probs_f, strict=True)],
            }
            if self.level_names is not None:
                row["levels"] = [_jsonable(v) for v in levels or []]
            if warnings:
                row["warnings"] = _warning_list(warnings)
            return self._emit(key, json.dumps(row, ensure_ascii=True) + "\n")
        cells = [key]
        for lab, p in zip(labels, probs_f, strict=True):
            cells += [str(lab), f"{p:.6f}"]
        cells += [""] * (2 * (self.topk - len(labels)))
        cells += [str(v) for v in levels or []]
        cells.append(" | ".join(_warning_list(warnings)))
        return self._emit(key, _csv_line(cells))


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return value


# --- failures ----------------------------------------------------------------------------------


class ErrorWriter(_ResumableFile):
    """``errors.jsonl``: one ``{"path", "reason", "message"[, "warnings"]}`` line per input that failed."""

    def __init__(self, path: str | os.PathLike[str], resume: bool = False) -> None:
        super().__init__(path, resume)
        existing = self._read_existing()
        end: int | None = None
        if existing is not None:
            rows, end = _complete_jsonl(existing, self.path)
            self._done.update(str(r["path"]) for r in rows)
        self._fd = self._open(end)

    def write(self, path: str | os.PathLike[str], reason: str, message: str, warnings: Sequence[str] = ()) -> bool:
        """Record a failure; False (nothing written) when ``path`` already has one."""
        key = os.fspath(path)
        row: dict[str, Any] = {"path": key, "reason": reason, "message": message}
        if warnings:
            row["warnings"] = _warning_list(warnings)
        return self._emit(key, json.dumps(row, ensure_ascii=True) + "\n")


# --- summary -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Summary:
    """What a run did, from raw numbers; derived figures are properties.

    ``batch_latencies`` are seconds per engine batch (``time.perf_counter`` differences);
    percentiles use numpy's default (linear interpolation). ``images_per_s`` counts the images
    that got a prediction (``ok``) over the wall time. ``skipped``: files of the folder walk that
    are not images (``listing.SkippedFile``; hidden files are not counted).
    """

    ok: int
    failed: int
    wall_s: float
    batch_latencies: Sequence[float] = ()
    backend: str = ""
    batch_size: int = 0
    skipped: int = 0

    @property
    def total(self) -> int:
        return self.ok + self.failed

    @property
    def images_per_s(self) -> float:
        return self.ok / self.wall_s if self.wall_s > 0 else 0.0

    def _percentile_ms(self, q: float) -> float | None:
        lat = np.asarray(self.batch_latencies, dtype=np.float64)
        return float(np.percentile(lat * 1000.0, q)) if lat.size else None

    @property
    def p50_batch_ms(self) -> float | None:
        return self._percentile_ms(50)

    @property
    def p99_batch_ms(self) -> float | None:
        return self._percentile_ms(99)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (the raw latency list is summarised, not included)."""
        return {
            "images_ok": self.ok,
            "images_failed": self.failed,
            "files_skipped": self.skipped,
            "wall_s": round(float(self.wall_s), 3),
            "images_per_s": round(self.images_per_s, 2),
            "batches": len(self.batch_latencies),
            "p50_batch_ms": _round(self.p50_batch_ms),
            "p99_batch_ms": _round(self.p99_batch_ms),
            "backend": self.backend,
            "batch_size": self.batch_size,
        }

    def line(self) -> str:
        """One line for people, e.g. for stderr at the end of a run."""

        def ms(v: float | None) -> str:
            return "n/a" if v is None else f"{v:.1f} ms"

        return (
            f"{self.ok} images ok, {self.failed} failed, {self.skipped} non-image files skipped in {self.wall_s:.1f} s "
            f"({self.images_per_s:.1f} images/s; batch latency p50 {ms(self.p50_batch_ms)}, "
            f"p99 {ms(self.p99_batch_ms)}; {self.backend}, batch {self.batch_size})"
        )

    def __str__(self) -> str:
        return self.line()


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 3)
