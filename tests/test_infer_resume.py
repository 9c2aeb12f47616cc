"""dga-infer --resume after kill -9: the final files equal an uninterrupted run's (docs/cli/infer.md).

A real ``dga-infer`` process is killed with SIGKILL at several points of a run over a generated
folder (just after the header, after the first rows, midway, near the end), each time resumed by
the next process, and finally resumed to the end. Every killed process must leave only complete
lines, and the final predictions and errors must hold exactly the rows of an uninterrupted run:
none lost, none twice, none changed. The kill points are found by polling the output's size, in
loops bounded in time; a run that ends before its kill point fails the test rather than passing
it unchecked.
"""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

INFER = [sys.executable, "-m", "dga.cli.infer"]
N_GOOD = 160
BATCH = 2
POLL_S, DEADLINE_S = 0.005, 180.0


def _build_folder(root: Path) -> None:
    rng = np.random.default_rng(5)
    for i in range(N_GOOD):
        grid = rng.integers(0, 256, (3, 4, 3), dtype=np.uint8)
        img = Image.fromarray(grid).resize((int(rng.integers(24, 80)), int(rng.integers(24, 80))),
                                           Image.Resampling.BILINEAR)
        buf = io.BytesIO()
        img.save(buf, "JPEG" if i % 2 else "PNG")
        name = f"img_{i:03d}.{'jpg' if i % 2 else 'png'}"
        if i % 40 == 7:
            name = f'odd, "name"\n{i}.png'  # quoted CSV cell with a newline inside
        if i % 40 == 9:
            name = os.fsdecode(f"caf\xe9_{i}.png".encode("latin-1"))  # not UTF-8
        sub = root / f"part{i % 3}"
        sub.mkdir(parents=True, exist_ok=True)
        with open(os.path.join(os.fsencode(sub), os.fsencode(name)), "wb") as fh:
            fh.write(buf.getvalue())
    for i, data in enumerate([b"", b"not an image", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40]):
        (root / f"part{i}" / f"bad_{i}.png").write_bytes(data)  # three error rows, spread over the run
    (root / "README.txt").write_text("skipped, counted\n")


def _args(folder: Path, package: Path, out: Path) -> list[str]:
    return [*INFER, str(folder), "--model", str(package), "--backend", "onnxruntime", "--batch-size", str(BATCH),
            "--workers", "1", "--no-progress", "--out", str(out), "--errors", str(out.with_suffix(".errors.jsonl"))]


def _lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def _kill_at(cmd: list[str], out: Path, at_lines: int, log: Path) -> bytes:
    """Start ``cmd``, SIGKILL it once ``out`` has ``at_lines`` newlines; what it left in ``out``."""
    with open(log, "ab") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
        try:
            deadline = time.monotonic() + DEADLINE_S
            while time.monotonic() < deadline and proc.poll() is None and _lines(out) < at_lines:
                time.sleep(POLL_S)
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, f"the run ended (rc {proc.returncode}) before {at_lines} lines"
    return out.read_bytes()


def _csv_rows(data: bytes) -> list[tuple[str, ...]]:
    return [tuple(r) for r in csv.reader(io.StringIO(data.decode("utf-8", "surrogateescape"), newline=""))]


def _jsonl_rows(data: bytes) -> list[str]:
    lines = data.decode("ascii").splitlines()
    for line in lines:
        json.loads(line)  # every line parses
    return lines


def _rows(path: Path) -> list:
    data = path.read_bytes()
    assert data == b"" or data.endswith(b"\n"), f"{path.name} ends in a partial line"
    return _csv_rows(data) if path.suffix == ".csv" else _jsonl_rows(data)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("resume_in") / "photos"
    _build_folder(root)
    return root


@pytest.mark.parametrize("fmt, kill_fractions", [("csv", (0.0, 0.05, 0.5, 0.8)), ("jsonl", (0.1, 0.6))])
def test_resume_after_kill_at_several_points_equals_an_uninterrupted_run(fmt, kill_fractions, folder,
                                                                         tiny_package, tmp_path):
    ref_out = tmp_path / f"ref.{fmt}"
    ref = subprocess.run(_args(folder, tiny_package, ref_out), capture_output=True, timeout=DEADLINE_S)
    assert ref.returncode == 3, ref.stderr  # three bad files
    expected, expected_errors = _rows(ref_out), _rows(ref_out.with_suffix(".errors.jsonl"))
    assert len(expected) == N_GOOD + (fmt == "csv") and len(expected_errors) == 3
    assert len(set(expected)) == len(expected)

    out = tmp_path / f"preds.{fmt}"
    errors = out.with_suffix(".errors.jsonl")
    total = _lines(ref_out)
    cmd = _args(folder, tiny_package, out)
    left_by_kills = []
    for i, fraction in enumerate(kill_fractions):
        at = max(1, int(fraction * total))  # 1: the CSV header, written before any image is decoded
        _kill_at(cmd + (["--resume"] if i else []), out, at, tmp_path / "kills.log")
        left = _rows(out)  # only complete lines, whatever the moment of the kill
        assert set(left) <= set(expected) and len(set(left)) == len(left)
        assert set(_rows(errors)) <= set(expected_errors)
        left_by_kills.append(len(left))
    assert left_by_kills == sorted(left_by_kills)  # every resume kept what the killed run had written
    assert left_by_kills[-1] < len(expected)

    final = subprocess.run(cmd + ["--resume", "--summary", str(tmp_path / "s.json")], capture_output=True,
                           timeout=DEADLINE_S)
    assert final.returncode == 3, final.stderr  # the bad files of the earlier runs still count
    got, got_errors = _rows(out), _rows(errors)
    assert len(got) == len(set(got)) and len(got_errors) == len(set(got_errors))  # none twice
    assert set(got) == set(expected) and set(got_errors) == set(expected_errors)  # none lost, none changed
    if fmt == "csv":
        assert got[0] == expected[0]  # one header, first
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["images_ok"] == N_GOOD + (fmt == "csv") - left_by_kills[-1]
    assert summary["files_skipped"] == 1
