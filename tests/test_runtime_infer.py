"""The runtime end to end (DESIGN.md 7): dga-infer and the Predictor over a generated folder.

One DGA package (random programs, tiny random backbone, max batch 64, fp32 graph) is exported
once. One folder of about 2,000 small images of every format and mode the decoder handles, nested
in sub-folders, with a dozen kinds of bad files mixed in, is generated once and run through the
CLI once (``accept``); the other tests compare their own runs against that output:

* the torch ReprogramModel (from the bundle) on 300 of the files: same top-1, probs within 1e-4;
* the Predictor API on ``part_b`` (same rows, order, probs and error reasons);
* a run on ``part_a`` killed with SIGKILL midway and resumed: byte-identical to the ``part_a``
  rows of the uninterrupted run (the graph is batch-size invariant, checked here too).

TensorRT cannot run here: its engine lookup is tested on sidecars written by ``engine_key``.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import math
import os
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_random_bundle
from PIL import Image, ImageDraw, features

from dga.errors import PackageError

N_A, N_B = 1500, 520  # good images in part_a (also the resume test's folder) and part_b
TORCH_SUBSET = 300
BATCH = 64
HAS_WEBP = features.check("webp")
DGA_INFER = Path(sys.executable).with_name("dga-infer")
INFER_CMD = [str(DGA_INFER)] if DGA_INFER.exists() else [sys.executable, "-m", "dga.cli.infer"]

# format extension -> (PIL format, modes it is saved in)
FORMATS = {
    "jpg": ("JPEG", ("RGB", "L", "CMYK")),
    "jpeg": ("JPEG", ("RGB",)),
    "png": ("PNG", ("RGB", "L", "P", "RGBA")),
    "bmp": ("BMP", ("RGB", "L", "P")),
    "gif": ("GIF", ("P", "L")),
    "tiff": ("TIFF", ("RGB", "L", "RGBA", "CMYK")),
    **({"webp": ("WEBP", ("RGB", "RGBA"))} if HAS_WEBP else {}),
}


# ----------------------------------------------------------------------------------------------
# generated inputs


def _picture(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """Smooth colour noise (a few control points, bilinear) with one filled shape on top."""
    grid = rng.integers(0, 256, (int(rng.integers(2, 7)), int(rng.integers(2, 7)), 3), dtype=np.uint8)
    img = Image.fromarray(grid).resize((w, h), Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(img)
    x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
    box = [x0, y0, x0 + int(rng.integers(4, max(5, w // 2))), y0 + int(rng.integers(4, max(5, h // 2)))]
    colour = tuple(int(v) for v in rng.integers(0, 256, 3))
    (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
    return img


def _encode(img: Image.Image, fmt: str, mode: str) -> bytes:
    img = img.convert(mode)
    if mode == "RGBA":  # some transparency, so alpha compositing matters
        alpha = np.asarray(img)[..., 3].copy()
        alpha[: alpha.shape[0] // 3] = 60
        img.putalpha(Image.fromarray(alpha))
    buf = io.BytesIO()
    img.save(buf, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def _write_good(root: Path, part: str, n: int, rng: np.random.Generator) -> list[str]:
    """n good images under root/part in nested folders; returns their paths relative to root."""
    exts = list(FORMATS)
    names = []
    for i in range(n):
        ext = exts[i % len(exts)]
        fmt, modes = FORMATS[ext]
        mode = modes[(i // len(exts)) % len(modes)]
        if i % 10 == 0:
            w = h = int(rng.integers(16, 301))
        else:
            w, h = (int(v) for v in rng.integers(16, 301, 2))
        name = f"img_{i:04d}.{ext}"
        if i % 397 == 5:
            name = f'odd, name "{i}".{ext}'  # CSV quoting of commas and quotes
        rel = f"{part}/g{i % 5}/h{i % 3}/{name}" if i % 4 else f"{part}/{name}"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(_encode(_picture(rng, w, h), fmt, mode))
        names.append(rel)
    # A JPEG without an image extension: listing sniffs the content.
    rel = f"{part}/sniffed.data"
    (root / rel).write_bytes(_encode(_picture(rng, 64, 40), "JPEG", "RGB"))
    names.append(rel)
    # Not images and hidden files: listed by nobody, neither a row nor an error.
    (root / part / "labels.csv").write_text("path,label\nimg.jpg,cat\n")
    (root / part / "README").write_text("not an image\n")
    (root / part / ".hidden.jpg").write_bytes(b"")
    return names


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _bomb(width: int, height: int) -> bytes:
    """A tiny PNG whose IHDR (with a correct CRC) claims width x height pixels."""
    data = bytearray(_png(Image.new("1", (8, 8))))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def _write_bad(root: Path, rng: np.random.Generator) -> dict[str, str]:
    """Bad files (relative path -> expected reason), in both parts and at several depths."""
    pic = _picture(rng, 160, 120)
    jpg, png = _encode(pic, "JPEG", "RGB"), _png(pic)
    gif = bytearray(_encode(pic, "GIF", "P"))
    start = gif.index(b"\x2c") + 12  # past the image descriptor, LZW code size, first block length
    gif[start:start + 200] = b"\xff" * 200
    bad_crc = bytearray(png)
    bad_crc[29:33] = b"\x00\x00\x00\x00"
    bmp = bytearray(_encode(pic, "BMP", "RGB"))
    bmp[30:34] = struct.pack("<I", 9)  # unknown BMP compression
    files = {
        "part_a/empty.jpg": (b"", "empty"),
        "part_a/g1/h1/truncated.jpg": (jpg[: len(jpg) // 2], "truncated"),
        "part_a/g2/text.jpg": (b"hello, I am text pretending to be a JPEG\n", "not-an-image"),
        "part_a/g3/h0/bomb.png": (_bomb(100_000, 100_000), "too-large"),
        "part_a/g4/corrupt.gif": (bytes(gif), "corrupt"),
        "part_b/g0/truncated.png": (png[: len(png) // 2], "truncated"),
        "part_b/random.png": (b"\x00" + rng.integers(0, 256, 4096, dtype=np.uint8).tobytes(), "not-an-image"),
        "part_b/g1/h2/page.jpeg": (b"<!DOCTYPE html><html><body><img src='cat.jpg'></body></html>\n",
                                   "not-an-image"),
        "part_b/g2/bad_crc.png": (bytes(bad_crc), "corrupt"),
        "part_b/g3/bomb_warn.png": (_bomb(10_000, 10_000), "too-large"),
        "part_b/g4/h1/odd_compression.bmp": (bytes(bmp), "unsupported"),
    }
    if HAS_WEBP:
        webp = _encode(pic, "WEBP", "RGB")
        files["part_b/g0/h0/truncated.webp"] = (webp[: len(webp) // 2], "truncated")
    expect = {}
    for rel, (data, reason) in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
        expect[rel] = reason
    (root / "part_a/g0/dangling.jpg").symlink_to(root / "part_a/no_such_file.jpg")
    expect["part_a/g0/dangling.jpg"] = "unreadable"
    (root / "part_b/g1/y.png").mkdir(parents=True)  # a folder with an image name: no row, no error
    return expect


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> tuple[Path, list[str], dict[str, str]]:
    """(root, good files relative to root, bad file -> reason)."""
    root = tmp_path_factory.mktemp("infer_in") / "photos"
    rng = np.random.default_rng(2024)
    good = _write_good(root, "part_a", N_A, rng) + _write_good(root, "part_b", N_B, rng)
    bad = _write_bad(root, rng)
    return root, good, bad


# ----------------------------------------------------------------------------------------------
# the package


@pytest.fixture(scope="module")
def dga_bundle(backbone, shapes_data, tmp_path_factory) -> Path:
    """An untrained DGA bundle with random (seeded) programs, as in test_export.py."""
    return make_random_bundle(backbone, shapes_data, "dga", tmp_path_factory.mktemp("infer_bundle") / "m.dga", 1005)


@pytest.fixture(scope="module")
def package(dga_bundle, tmp_path_factory) -> Path:
    from dga.export.package import ExportOptions, export_package

    out = tmp_path_factory.mktemp("infer_pkg") / "m.deploy"
    path, _ = export_package(dga_bundle, out, ExportOptions(precision="fp32", max_batch=BATCH, verify=False),
                             log=lambda _line: None)
    return path


# ----------------------------------------------------------------------------------------------
# helpers


def _csv_records(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh))


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _infer(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([*INFER_CMD, *args], capture_output=True, text=True, timeout=300, **kw)


def _main(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """dga-infer in this process (no interpreter start-up): exit code, stdout, stderr."""
    from dga.cli.infer import main

    monkeypatch.setattr(sys, "argv", ["dga-infer", *args])
    with pytest.raises(SystemExit) as info:
        main()
    out, err = capsys.readouterr()
    return info.value.code, out, err


def _lines_of(data: bytes, keep) -> bytes:
    """The lines of a CSV/JSONL file (no newlines inside records here) whose path passes ``keep``."""
    lines = data.split(b"\n")[:-1]
    out = []
    for line in lines:
        text = line.decode()
        path = json.loads(text)["path"] if text.startswith("{") else next(csv.reader([text]))[0]
        if keep(path):
            out.append(line + b"\n")
    return b"".join(out)


@pytest.fixture(scope="module")
def accept(package, folder, tmp_path_factory) -> dict:
    """One uninterrupted dga-infer run over the whole folder."""
    root = folder[0]
    out = tmp_path_factory.mktemp("infer_out")
    t = time.perf_counter()
    proc = _infer(str(root), "--model", str(package), "--backend", "onnxruntime", "--batch-size", str(BATCH),
                  "--no-progress", "--out", str(out / "preds.csv"), "--summary", str(out / "s.json"))
    wall = time.perf_counter() - t
    assert (out / "preds.csv").is_file() and (out / "s.json").is_file(), proc.stderr
    return {"proc": proc, "out": out, "wall": wall, "rows": _csv_records(out / "preds.csv"),
            "errors": _jsonl(out / "errors.jsonl"), "summary": json.loads((out / "s.json").read_text())}


# ----------------------------------------------------------------------------------------------
# acceptance


def test_cli_acceptance(accept, folder, package):
    root, good, bad = folder
    proc = accept["proc"]
    assert proc.returncode == 3, proc.stderr
    assert len(good) >= 2000 and len(bad) >= 10
    rows = accept["rows"]
    deploy = json.loads((package / "deploy.json").read_text())
    assert rows[0] == ["path"] + [f"{c}_{i}" for i in range(1, 6) for c in ("label", "prob")] + ["level_1", "warnings"]
    paths = [r[0] for r in rows[1:]]
    assert len(paths) == len(set(paths)) == len(good)
    assert set(paths) == {str(root / rel) for rel in good}
    # Rows come in listing order: sorted by the path relative to the input folder.
    rel = [os.path.relpath(p, root) for p in paths]
    assert rel == sorted(rel)
    classnames = deploy["classnames"]
    for r in rows[1:]:
        labels, probs = r[1:11:2], [float(p) for p in r[2:11:2]]
        assert len(set(labels)) == 5 and set(labels) <= set(classnames)
        assert probs == sorted(probs, reverse=True) and 0 < probs[0] <= 1

    errors = accept["errors"]
    assert [e["path"] for e in errors] == sorted((str(root / b) for b in bad), key=lambda p: os.path.relpath(p, root))
    assert {os.path.relpath(e["path"], root): e["reason"] for e in errors} == bad
    for e in errors:
        assert e["message"] and "\n" not in e["message"]

    s = accept["summary"]
    assert s["images_ok"] == len(good) and s["images_failed"] == len(bad)
    assert s["files_skipped"] == 4  # labels.csv and README in each part; hidden files are not counted
    assert s["batch_size"] == BATCH and s["backend"].startswith("onnxruntime")
    assert s["batches"] == math.ceil((len(good) + len(bad)) / BATCH)
    assert s["precision"] == "fp32" and s["stopped_early"] is False
    assert s["images_per_s"] > 0 and s["p50_batch_ms"] > 0
    assert f"{len(good)} images ok, {len(bad)} failed, 4 non-image files skipped in " in proc.stderr
    print(f"\ndga-infer: {len(good) + len(bad)} files in {accept['wall']:.1f} s "
          f"({s['images_per_s']} images/s, p50 batch {s['p50_batch_ms']} ms)")


def test_levels_column_is_the_parent_of_top1(accept, package):
    deploy = json.loads((package / "deploy.json").read_text())
    parents, classnames = deploy["hierarchy"]["parents"], deploy["classnames"]
    assert len(parents) == 1
    for r in accept["rows"][1:]:
        assert r[11] == str(parents[0][classnames.index(r[1])]), r


def test_top1_matches_torch_model(accept, folder, dga_bundle, package):
    from dga.runtime.decode import decode_image
    from dga.train.bundle import load_bundle

    root, good, _ = folder
    bundle = load_bundle(dga_bundle)
    s0 = json.loads((package / "deploy.json").read_text())["s0"]
    rows = {r[0]: r for r in accept["rows"][1:]}
    subset = sorted(good)[:: len(good) // TORCH_SUBSET][:TORCH_SUBSET]
    assert len(subset) == TORCH_SUBSET
    images = np.stack([decode_image(root / rel, s0, draft=True) for rel in subset])
    with torch.no_grad():
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
        logits = torch.cat([bundle.model(x[i:i + BATCH]).logits for i in range(0, len(x), BATCH)])
        probs = torch.softmax(logits, dim=1).numpy()
    names = bundle.classnames
    for rel, p in zip(subset, probs, strict=True):
        row = rows[str(root / rel)]
        assert row[1] == names[int(p.argmax())], rel
        for label, prob in zip(row[1:11:2], row[2:11:2], strict=True):
            assert abs(float(prob) - p[names.index(label)]) <= 1e-4, (rel, label)
    # Not a degenerate model: more than one class is predicted.
    assert len({rows[str(root / rel)][1] for rel in subset}) >= 2


# ----------------------------------------------------------------------------------------------
# the Predictor API


@pytest.fixture(scope="module")
def predictor(package):
    from dga.runtime import Predictor

    p = Predictor.from_package(package, backend="onnxruntime")
    yield p
    p.close()


def test_predictor_folder_matches_cli(predictor, accept, folder):
    root = folder[0]
    part = root / "part_b"
    results = list(predictor.predict_folder(part))
    prefix = str(part) + os.sep
    cli_rows = [r for r in accept["rows"][1:] if r[0].startswith(prefix)]
    cli_errors = [e for e in accept["errors"] if e["path"].startswith(prefix)]
    assert [r.path for r in results if r.ok] == [r[0] for r in cli_rows]
    assert [(r.path, r.error) for r in results if not r.ok] == [(e["path"], e["reason"]) for e in cli_errors]
    # Files and failures interleave in listing order, as in the CLI.
    assert [os.path.relpath(r.path, root) for r in results] == sorted(os.path.relpath(r.path, root)
                                                                      for r in results)
    for res, row in zip([r for r in results if r.ok], cli_rows, strict=True):
        assert [lb for lb, _ in res.topk] == row[1:11:2]
        np.testing.assert_allclose([p for _, p in res.topk], [float(v) for v in row[2:11:2]], atol=1e-6)
        assert res.label == row[1] and [str(v) for v in res.levels] == row[11:-1] and row[-1] == ""
    for res, err in zip([r for r in results if not r.ok], cli_errors, strict=True):
        assert res.message == err["message"] and res.label is None


def test_infer_to_files_from_python(predictor, accept, folder, tmp_path):
    """The library function behind dga-infer: the same files from Python, with a Predictor of one's own."""
    from dga.runtime.run_folder import infer_to_files

    root = folder[0]
    run = infer_to_files(root, predictor, tmp_path / "p.csv", summary=tmp_path / "s.json", progress=False)
    assert not run.all_ok and not run.stopped_early and run.errors == tmp_path / "errors.jsonl"
    assert (run.summary.ok, run.summary.failed) == (len(folder[1]), len(folder[2]))
    assert run.first_error is not None and run.first_error[0] in {str(root / r) for r in folder[2]}
    assert [r[0] for r in _csv_records(tmp_path / "p.csv")] == [r[0] for r in accept["rows"]]
    assert [e["path"] for e in _jsonl(tmp_path / "errors.jsonl")] == [e["path"] for e in accept["errors"]]
    assert json.loads((tmp_path / "s.json").read_text()) == run.to_json()
    assert predictor.runner is not None  # a Predictor passed in is left open
    again = infer_to_files(root, predictor, tmp_path / "p.csv", resume=True, progress=False)
    assert (again.summary.ok, again.summary.failed, again.failed_earlier) == (0, 0, len(folder[2]))
    assert not again.all_ok  # the resumed run's earlier failures still count
    one = infer_to_files(root / folder[1][0], predictor, tmp_path / "one.jsonl", progress=False)
    assert one.all_ok and one.summary.ok == 1 and len(_jsonl(tmp_path / "one.jsonl")) == 1


def test_decode_priority_follows_where_the_model_runs(predictor, monkeypatch):
    from dga.errors import ConfigError
    from dga.runtime import pipeline
    from dga.runtime.predictor import Predictor

    assert predictor.runner.on_cpu and predictor.background_decode  # auto on a CPU runner: low
    pkg, cpu = predictor.package, predictor.runner
    assert not Predictor(pkg, cpu, decode_priority="normal").background_decode

    class GpuRunner:  # what auto sees on a GPU runner: decode must keep the GPU fed
        name, precision, max_batch, on_cpu = "fake:gpu", "fp16", 64, False

    assert not Predictor(pkg, GpuRunner()).background_decode
    assert Predictor(pkg, GpuRunner(), decode_priority="low").background_decode
    with pytest.raises(ConfigError, match="decode priority 'high' must be one of auto, low, normal"):
        Predictor(pkg, cpu, decode_priority="high")

    if sys.platform.startswith("linux"):  # the decode threads' nice value, run by run
        seen = []

        def fake_decode(path, size, draft=True, **kw):
            seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
            return np.zeros((size, size, 3), np.uint8)

        monkeypatch.setattr(pipeline, "decode_image", fake_decode)
        p = Predictor(pkg, cpu, batch_size=4)
        assert len(list(p.iter_results(["a.jpg", "b.jpg", "c.jpg"]))) == 3 and set(seen) == {19}
        p.starvation.starved = True  # a verdict from an earlier run of this Predictor is kept
        seen.clear()
        list(p.iter_results(["a.jpg", "b.jpg", "c.jpg"]))
        assert set(seen) == {os.getpriority(os.PRIO_PROCESS, threading.get_native_id())} != {19}


def test_predict_array_equals_predict_paths(predictor, package, tmp_path):
    s0 = predictor.package.s0
    rng = np.random.default_rng(7)
    arrays = np.stack([np.asarray(_picture(rng, s0, s0)) for _ in range(6)])
    paths = []
    for i, a in enumerate(arrays):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(a).save(paths[-1])
    pred = predictor.predict(arrays)
    assert pred.logits.shape == pred.probs.shape == (6, len(predictor.classnames))
    assert pred.logits.dtype == np.float32
    np.testing.assert_allclose(pred.probs.sum(1), 1.0, atol=1e-5)
    results = predictor.predict_paths(paths)
    assert [r.path for r in results] == [str(p) for p in paths] and all(r.ok for r in results)
    assert pred.labels() == [r.label for r in results]
    for top, res in zip(pred.topk(5), results, strict=True):
        assert [lb for lb, _ in top] == [lb for lb, _ in res.topk]
        np.testing.assert_allclose([p for _, p in top], [p for _, p in res.topk], rtol=0, atol=1e-6)
    # One uint8 image [S0, S0, 3] also works (as a batch of one).
    np.testing.assert_allclose(predictor.predict(arrays[0]).probs, pred.probs[:1], atol=1e-6)


def test_predict_pil_images_of_other_sizes(predictor):
    from dga.runtime.preprocess import eval_image

    rng = np.random.default_rng(8)
    images = [_picture(rng, 50, 120), _picture(rng, 300, 90).convert("L"), _picture(rng, 17, 17).convert("RGBA")]
    pred = predictor.predict(images)
    assert pred.probs.shape == (3, len(predictor.classnames))
    expected = predictor.predict(np.stack([eval_image(im, predictor.package.s0) for im in images]))
    np.testing.assert_allclose(pred.probs, expected.probs, atol=1e-6)
    assert len(pred.labels()) == 3 and all(len(t) == 5 for t in pred.topk(5))


def test_graph_is_batch_size_invariant(predictor):
    """What lets the resumed run's rows equal the uninterrupted run's rows byte for byte."""
    rng = np.random.default_rng(9)
    s0 = predictor.package.s0
    x = np.stack([np.asarray(_picture(rng, s0, s0)) for _ in range(20)])
    whole = predictor.runner.infer(x)[1]
    parts = np.concatenate([predictor.runner.infer(x[i:i + 7])[1] for i in range(0, 20, 7)])
    np.testing.assert_array_equal(whole, parts)


# ----------------------------------------------------------------------------------------------
# resume, fail-fast


def test_resume_after_kill(accept, folder, package, tmp_path):
    root = folder[0]
    part = root / "part_a"
    prefix = str(part) + os.sep
    out = tmp_path / "preds.csv"
    args = [str(part), "--model", str(package), "--backend", "onnxruntime", "--batch-size", "16",
            "--no-progress", "--out", str(out)]
    proc = subprocess.Popen([*INFER_CMD, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            if out.exists() and out.read_bytes().count(b"\n") >= 200:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed midway"
    expected_csv = _lines_of((accept["out"] / "preds.csv").read_bytes(),
                             lambda p: p == "path" or p.startswith(prefix))
    expected_err = _lines_of((accept["out"] / "errors.jsonl").read_bytes(), lambda p: p.startswith(prefix))
    partial = out.read_bytes()
    assert 200 <= partial.count(b"\n") < expected_csv.count(b"\n")

    resumed = _infer(*args, "--resume", "--summary", str(tmp_path / "s.json"))
    assert resumed.returncode == 3, resumed.stderr
    final = out.read_bytes()
    assert final.startswith(partial[: partial.rfind(b"\n") + 1])
    assert final == expected_csv
    assert (tmp_path / "errors.jsonl").read_bytes() == expected_err
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["images_ok"] + partial.count(b"\n") - 1 == N_A + 1  # the killed run's complete rows are kept

    # Resuming a finished run writes nothing new and exits as the run did (3: some files failed).
    again = _infer(*args, "--resume", "--summary", str(tmp_path / "s2.json"))
    assert again.returncode == 3, again.stderr
    assert out.read_bytes() == expected_csv
    assert (tmp_path / "errors.jsonl").read_bytes() == expected_err
    s2 = json.loads((tmp_path / "s2.json").read_text())
    assert s2["images_ok"] == 0 and s2["images_failed"] == 0


def test_fail_fast(package, tmp_path, monkeypatch, capsys):
    rng = np.random.default_rng(3)
    src = tmp_path / "in"
    src.mkdir()
    for name in ("a.png", "b.jpg", "d.png", "f.bmp"):
        _picture(rng, 70, 50).save(src / name)
    (src / "c.jpg").write_bytes(b"")
    (src / "e.png").write_bytes(b"not a png")
    out = tmp_path / "preds.csv"
    rc, _, err = _main(monkeypatch, capsys, str(src), "--model", str(package), "--backend", "onnxruntime",
                       "--fail-fast", "--no-progress", "--out", str(out), "--summary", str(tmp_path / "s.json"))
    assert rc == 3
    error_lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and str(src / "c.jpg") in error_lines[0]
    assert [r[0] for r in _csv_records(out)[1:]] == [str(src / "a.png"), str(src / "b.jpg")]
    assert [(e["path"], e["reason"]) for e in _jsonl(tmp_path / "errors.jsonl")] == [(str(src / "c.jpg"), "empty")]
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["stopped_early"] is True and (s["images_ok"], s["images_failed"]) == (2, 1)


# ----------------------------------------------------------------------------------------------
# user errors, --help


def _modified_package(package: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "modified.deploy"
    shutil.copytree(package, copy)
    with open(copy / "model.onnx", "ab") as fh:
        fh.write(b"\0")
    return copy


@pytest.mark.parametrize("case, needle", [
    ("no-package", "no deployment package"),
    ("modified-onnx", "model.onnx"),  # refused naming the graph (its digest or its sha256)
    ("unknown-backend", "unknown backend 'cuda'"),
    ("out-folder-missing", "folder does not exist"),
    ("input-missing", "does not exist"),
    ("bad-decode-priority", "decode priority 'high' must be one of auto, low, normal"),
])
def test_user_errors_exit_2(case, needle, package, folder, tmp_path, monkeypatch, capsys):
    root = folder[0]
    one = str(root / "part_b" / "img_0001.png")
    args = {
        "no-package": [one, "--model", str(tmp_path / "nowhere.deploy")],
        "modified-onnx": [one, "--model", str(_modified_package(package, tmp_path)), "--backend", "onnxruntime"],
        "unknown-backend": [one, "--model", str(package), "--backend", "cuda"],
        "out-folder-missing": [one, "--model", str(package), "--out", str(tmp_path / "no" / "dir" / "p.csv")],
        "input-missing": [str(tmp_path / "no_such_folder"), "--model", str(package), "--backend", "onnxruntime"],
        "bad-decode-priority": [one, "--model", str(package), "--backend", "onnxruntime", "--decode-priority", "high"],
    }[case]
    if "--out" not in args:
        args += ["--out", str(tmp_path / "p.csv")]
    rc, out, err = _main(monkeypatch, capsys, *args, "--no-progress")
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], err
    assert not (tmp_path / "p.csv").exists()


def test_user_error_exit_code_of_the_real_process(tmp_path):
    proc = _infer(str(tmp_path), "--model", str(tmp_path / "nowhere.deploy"), "--no-progress")
    assert proc.returncode == 2
    assert [line for line in proc.stderr.splitlines() if line.startswith("error:")] == [
        f"error: no deployment package at {tmp_path / 'nowhere.deploy'}: expected deploy.json (made by dga-export)"]


def test_help_has_examples_and_exit_codes(monkeypatch, capsys):
    rc, out, _ = _main(monkeypatch, capsys, "--help")
    assert rc == 0
    assert "Examples" in out and "dga-infer photos/ --model run.deploy" in out
    text = " ".join(out.split())
    assert "Exit codes: 0 every file predicted; 3 some files could not be read" in text
    assert "2 a usage error" in text and "--resume" in out and "--fail-fast" in out


# ----------------------------------------------------------------------------------------------
# TensorRT runner logic without TensorRT


TRT, GPU, CC = "10.13.0.35", "NVIDIA H100 80GB HBM3", "9.0"


@pytest.fixture
def engine_pkg(package, tmp_path):
    """The real package's facts with an empty engines/ of its own (the shared package stays clean)."""
    from dga.runtime.package import DeployPackage

    return DeployPackage(tmp_path, DeployPackage.load(package).facts)


def _install(pkg, **changes):
    from dga.runtime.engine_key import EngineKey, Profile, atomic_write_bytes, engine_paths, write_sidecar

    fields = {"onnx_sha256": pkg.facts["files"]["model.onnx"]["sha256"], "trt_version": TRT, "gpu_name": GPU,
              "compute_capability": CC, "profile": Profile(1, BATCH, BATCH), "precision": "fp32", **changes}
    key = EngineKey(**fields)
    plan, sidecar = engine_paths(pkg.path, key)
    atomic_write_bytes(plan, b"fake-plan" * 10)
    write_sidecar(sidecar, key, b"fake-plan" * 10)
    return key, plan


def test_find_engine_hit(engine_pkg):
    from dga.runtime.backends.tensorrt import find_engine

    _install(engine_pkg, gpu_name="NVIDIA A100-SXM4-80GB", compute_capability="8.0")  # foreign, ignored
    key, plan = _install(engine_pkg)
    assert find_engine(engine_pkg, "fp32", TRT, GPU, CC) == (key, str(plan))


def test_find_engine_other_batch_profile(engine_pkg):
    from dga.runtime.backends.tensorrt import find_engine
    from dga.runtime.engine_key import Profile

    key, plan = _install(engine_pkg, profile=Profile(1, 8, 32))
    found, path = find_engine(engine_pkg, "fp32", TRT, GPU, CC)
    assert found == key and found.profile.max_batch == 32 and path == str(plan)


def test_find_engine_foreign_gpu(engine_pkg):
    from dga.runtime.backends.tensorrt import find_engine

    _install(engine_pkg, gpu_name="NVIDIA A100-SXM4-80GB", compute_capability="8.0")
    with pytest.raises(PackageError) as info:
        find_engine(engine_pkg, "fp32", TRT, GPU, CC)
    msg = str(info.value)
    assert "NVIDIA A100-SXM4-80GB" in msg and "rebuild with dga-export --engine" in msg and "\n" not in msg


def test_find_engine_none(engine_pkg):
    from dga.runtime.backends.tensorrt import find_engine

    with pytest.raises(PackageError, match="build one with dga-export"):
        find_engine(engine_pkg, "fp32", TRT, GPU, CC)
    # An engine of another precision (same GPU, TensorRT and ONNX hash) is neither a hit nor foreign.
    _install(engine_pkg, precision="fp16")
    with pytest.raises(PackageError, match="build one with dga-export"):
        find_engine(engine_pkg, "fp32", TRT, GPU, CC)


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_open_runner_tensorrt_without_tensorrt(package):
    from dga.runtime.backends import open_runner
    from dga.runtime.package import DeployPackage

    with pytest.raises(PackageError) as info:
        open_runner(DeployPackage.load(package), "tensorrt")
    msg = str(info.value)
    assert "TensorRT is not installed" in msg and "--backend onnxruntime" in msg
    assert "\n" not in msg and msg.count(". ") == 0


@pytest.mark.parametrize("chunk", [1, 3, 64])
def test_cpu_runner_slices_batches_without_changing_numbers(package, chunk):
    """The CPU EP runs the graph on slices of ``cpu_chunk`` images; rows and numbers are unchanged."""
    from dga.runtime.backends.onnxruntime import OnnxRuntimeRunner
    from dga.runtime.package import DeployPackage

    pkg = DeployPackage.load(package)
    runner = OnnxRuntimeRunner(pkg, "fp32", providers=["CPUExecutionProvider"], cpu_chunk=chunk)
    assert runner.chunk == chunk
    rng = np.random.default_rng(4)
    x = np.stack([np.asarray(_picture(rng, pkg.s0, pkg.s0)) for _ in range(10)])
    logits, probs = runner.infer(x)
    direct = runner.session.run(["logits", "probs"], {runner.input_name: x})
    assert logits.shape == direct[0].shape and probs.shape == direct[1].shape
    np.testing.assert_allclose(logits, direct[0], atol=1e-5)
    np.testing.assert_allclose(probs, direct[1], atol=1e-6)
