"""Runtime input pipeline: listing, decoding (good and bad files), result/error writers, summary."""

from __future__ import annotations

import csv
import io
import json
import os
import struct
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile, JpegImagePlugin, features

from dga.errors import DgaError, InputError
from dga.runtime.decode import REASONS, DecodeError, decode_bytes, decode_image, draft_request
from dga.runtime.listing import list_inputs, sniff
from dga.runtime.preprocess import eval_image, to_rgb
from dga.runtime.results import ErrorWriter, ResultWriter, Summary

S = 32
RNG = np.random.default_rng(1234)


def _noise(h: int, w: int, c: int = 3) -> np.ndarray:
    return RNG.integers(0, 256, (h, w, c), dtype=np.uint8) if c > 1 else RNG.integers(0, 256, (h, w), dtype=np.uint8)


def _smooth(h: int, w: int) -> np.ndarray:
    """A photo-like smooth image (gradients and a disc), where JPEG draft stays close to a full decode."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 127 + 120 * np.sin(x / w * 3 * np.pi)
    g = 255 * y / h
    b = np.where((x - w / 2) ** 2 + (y - h / 2) ** 2 < (min(h, w) / 3) ** 2, 230.0, 30.0)
    return np.stack([r, g, b], axis=-1).clip(0, 255).astype(np.uint8)


def _png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _set_ihdr_size(png: bytes, width: int, height: int) -> bytes:
    """Rewrite a PNG's IHDR width/height and fix the chunk CRC: a header-only decompression bomb."""
    data = bytearray(png)
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


# --- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("good")
    files: dict[str, Path] = {}

    def save(name: str, img: Image.Image, **kw) -> None:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        img.save(path, **kw)
        files[name] = path

    # Asymmetric: left half red, right half blue; EXIF orientation 6 (rotate 90 clockwise to show).
    arr = np.zeros((40, 80, 3), np.uint8)
    arr[:, :40] = (255, 0, 0)
    arr[:, 40:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    save("exif6.jpg", Image.fromarray(arr), exif=exif.tobytes(), quality=95)
    save("gray.png", Image.fromarray(_noise(50, 70, 1), "L"))
    save("palette.gif", Image.fromarray(_noise(60, 40)).convert("P"))
    pal = Image.fromarray(_noise(30, 30)).convert("P")
    save("sub/palette_transparent.png", pal, transparency=0)
    save("sub/rgba.png", Image.fromarray(_noise(40, 50, 4), "RGBA"))
    save("sub/la.png", Image.fromarray(_noise(40, 50, 2), "LA"))
    save("cmyk.jpg", Image.fromarray(_noise(48, 64, 4), "CMYK"))
    i16 = Image.fromarray((np.arange(64 * 48, dtype=np.uint16).reshape(48, 64) * 20).astype(np.uint16))
    assert i16.mode.startswith("I;16")
    save("deep/er/sixteen.png", i16)
    save("rgb.bmp", Image.fromarray(_noise(33, 45)))
    if features.check("webp"):
        save("rgb.webp", Image.fromarray(_noise(40, 40)))
    save("rgb.tiff", Image.fromarray(_noise(40, 60)))
    save("UPPER.JPEG", Image.fromarray(_noise(40, 60)))
    save("tiny.png", Image.fromarray(_noise(1, 1)))
    save("wide.jpg", Image.fromarray(_smooth(10, 2000)))
    save("large.jpg", Image.fromarray(_smooth(768, 1024)), quality=92)
    # A JPEG with a text extension: content decides.
    buf = io.BytesIO()
    Image.fromarray(_noise(40, 40)).save(buf, "JPEG")
    (root / "actually_jpeg.txt").write_bytes(buf.getvalue())
    files["actually_jpeg.txt"] = root / "actually_jpeg.txt"
    # Things listing must skip silently.
    (root / "labels.csv").write_text("path,label\na.jpg,cat\n")
    (root / "README.txt").write_text("not an image\n")
    (root / "notes").write_text("no extension, not an image\n")
    (root / ".hidden.jpg").write_bytes(buf.getvalue())
    (root / ".cache").mkdir()
    (root / ".cache" / "x.jpg").write_bytes(buf.getvalue())
    (root / "empty_dir.jpg").mkdir()
    return files


@pytest.fixture(scope="module")
def bad(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """Bad inputs and the reason each must be reported with."""
    root = tmp_path_factory.mktemp("bad")
    expect: dict[str, str] = {}

    def put(name: str, data: bytes, reason: str) -> None:
        (root / name).write_bytes(data)
        expect[name] = reason

    jpg = io.BytesIO()
    Image.fromarray(_noise(120, 160)).save(jpg, "JPEG")
    jpg = jpg.getvalue()
    png = _png_bytes(Image.fromarray(_noise(120, 160)))
    gif_buf = io.BytesIO()
    Image.fromarray(_noise(64, 64)).convert("P").save(gif_buf, "GIF")
    gif = bytearray(gif_buf.getvalue())

    put("empty.jpg", b"", "empty")
    put("truncated.jpg", jpg[: len(jpg) // 2], "truncated")
    put("truncated.png", png[: len(png) // 2], "truncated")
    put("text.png", b"hello, I am text pretending to be a PNG\n", "not-an-image")
    noise = RNG.integers(0, 256, 4096, dtype=np.uint8).tobytes()
    put("random.jpg", b"\x00" + noise, "not-an-image")
    put("page.jpeg", b"<!DOCTYPE html><html><body><img src='cat.jpg'></body></html>\n", "not-an-image")
    # Header claims 100000 x 100000: beyond PIL's hard limit (2 x MAX_IMAGE_PIXELS).
    tiny_1bit = _png_bytes(Image.new("1", (8, 8)))
    put("bomb.png", _set_ihdr_size(tiny_1bit, 100_000, 100_000), "too-large")
    # 10000 x 10000 = 1e8: above PIL's warning limit, below its error limit.
    put("bomb_warn.png", _set_ihdr_size(tiny_1bit, 10_000, 10_000), "too-large")
    # GIF whose LZW image data is garbage (structure intact).
    start = gif.index(b"\x2c") + 12  # image descriptor (10) + LZW code size + first sub-block length
    gif[start : start + 200] = b"\xff" * 200
    put("corrupt.gif", bytes(gif), "corrupt")
    bad_crc = bytearray(png)
    bad_crc[29:33] = b"\x00\x00\x00\x00"  # IHDR CRC
    put("bad_crc.png", bytes(bad_crc), "corrupt")
    bmp = io.BytesIO()
    Image.fromarray(_noise(20, 30)).save(bmp, "BMP")
    bmp = bytearray(bmp.getvalue())
    bmp[30:34] = struct.pack("<I", 9)  # unknown BMP compression
    put("odd_compression.bmp", bytes(bmp), "unsupported")
    webp = io.BytesIO()
    if features.check("webp"):
        Image.fromarray(_noise(64, 64)).save(webp, "WEBP")
        put("truncated.webp", webp.getvalue()[: len(webp.getvalue()) // 2], "truncated")

    (root / "dir.jpg").mkdir()
    (root / "notes").write_text("no extension and no signature: skipped\n")
    unreadable = root / "locked.jpg"
    unreadable.write_bytes(jpg)
    unreadable.chmod(0)
    if os.access(unreadable, os.R_OK):  # running as root: permissions do not block reads
        unreadable.chmod(0o644)
        unreadable.unlink()
        unreadable.symlink_to(root / "no_such_target.jpg")  # dangling link: unreadable all the same
    expect["locked.jpg"] = "unreadable"
    return root, expect


# --- listing ------------------------------------------------------------------------------------


def test_listing_sorted_content_aware_and_skips(good):
    root = good["gray.png"].parent
    listed = list_inputs(root)
    rel = [p.relative_to(root).as_posix() for p in listed]
    assert rel == sorted(rel)
    assert set(rel) == set(good)  # every good image, nothing else
    assert "actually_jpeg.txt" in rel  # content decides
    for skipped in ("labels.csv", "README.txt", "notes", ".hidden.jpg", ".cache/x.jpg", "empty_dir.jpg"):
        assert skipped not in rel
    assert list_inputs(root) == listed  # stable
    assert all(p.is_relative_to(root) for p in listed)  # not resolved: paths as the user gave them


def test_listing_single_file_missing_root_and_sniff(good, tmp_path):
    assert list_inputs(good["rgb.bmp"]) == [good["rgb.bmp"]]
    with pytest.raises(InputError, match="does not exist"):
        list_inputs(tmp_path / "nope")
    assert issubclass(InputError, DgaError)
    assert sniff(good["actually_jpeg.txt"]) == "jpeg"
    assert sniff(good["gray.png"]) == "png"
    assert sniff(good["palette.gif"]) == "gif"
    assert sniff(good["rgb.bmp"]) == "bmp"
    assert sniff(good["rgb.tiff"]) == "tiff"
    if "rgb.webp" in good:
        assert sniff(good["rgb.webp"]) == "webp"
    assert sniff(good["gray.png"].parent / "labels.csv") is None
    assert sniff(tmp_path / "missing") is None


def test_listing_symlink_loops_and_duplicates(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(tmp_path / "a" / "b" / "x.png")
    Image.new("RGB", (4, 4)).save(tmp_path / "top.jpg")
    (tmp_path / "a" / "b" / "loop").symlink_to(tmp_path / "a")  # cycle
    (tmp_path / "z_alias").symlink_to(tmp_path / "a")  # second route to a folder already listed
    (tmp_path / "dangling.png").symlink_to(tmp_path / "gone.png")  # listed by name; decode says why
    rel = [p.relative_to(tmp_path).as_posix() for p in list_inputs(tmp_path)]
    assert rel == ["a/b/x.png", "dangling.png", "top.jpg"]


def test_listing_bad_folder(bad):
    root, expect = bad
    rel = {p.relative_to(root).as_posix() for p in list_inputs(root)}
    # Every bad file with an image name or signature is listed (so it gets an error row);
    # the directory named dir.jpg and the extensionless text file are not.
    assert rel == set(expect)


# --- decoding good files --------------------------------------------------------------------------


def test_good_files_decode(good):
    for name, path in good.items():
        out = decode_image(path, S)
        assert out.shape == (S, S, 3) and out.dtype == np.uint8, name
        exact = decode_image(path, S, draft=False)
        with Image.open(path) as img:
            ref = eval_image(to_rgb(img), S)
        np.testing.assert_array_equal(exact, ref, err_msg=name)
        assert np.array_equal(decode_bytes(path.read_bytes(), S, draft=False), exact), name


def test_exif_orientation_is_applied(good):
    out = decode_image(good["exif6.jpg"], S, draft=False).astype(int)
    # Stored: red left, blue right. Orientation 6 shows it rotated 90 degrees clockwise: red on top.
    top, bottom = out[: S // 4].mean(axis=(0, 1)), out[-S // 4 :].mean(axis=(0, 1))
    assert top[0] > 200 and top[2] < 60, top
    assert bottom[2] > 200 and bottom[0] < 60, bottom


def test_modes_become_rgb(good):
    # Transparent pixels composite onto white; 16-bit greyscale is scaled, not clipped.
    for name in ("sub/rgba.png", "sub/la.png", "sub/palette_transparent.png", "cmyk.jpg", "gray.png"):
        assert decode_image(good[name], S).shape == (S, S, 3)
    sixteen = decode_image(good["deep/er/sixteen.png"], S, draft=False)
    assert sixteen.max() > 200 and len(np.unique(sixteen)) > 20
    assert np.all(sixteen[..., 0] == sixteen[..., 1])  # grey stays grey


def test_jpeg_draft_close_to_full_decode(good, monkeypatch):
    path = good["large.jpg"]
    calls = []
    original = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):
        calls.append(size)
        return original(self, mode, size)

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    fast = decode_image(path, 64, draft=True)
    assert calls == [draft_request(1024, 768, 64)] == [(85, 64)]
    full = decode_image(path, 64, draft=False)
    assert len(calls) == 1  # draft=False never asks for it
    assert fast.shape == full.shape == (64, 64, 3)
    assert np.abs(fast.astype(int) - full.astype(int)).mean() < 3.0
    # Draft keeps the decoded shorter side >= the requested size: resize still down-samples.
    with Image.open(path) as img:
        img.draft("RGB", draft_request(*img.size, 64))
        assert min(img.size) >= 64 and img.size[0] < 1024


# --- decoding bad files ---------------------------------------------------------------------------


def test_bad_files_reasons(bad):
    root, expect = bad
    assert len(expect) >= 10
    got = {}
    for name in expect:
        with pytest.raises(DecodeError) as info:
            decode_image(root / name, S)
        err = info.value
        assert err.reason in REASONS
        assert err.message.endswith(".") and "\n" not in err.message
        got[name] = err.reason
    assert got == expect
    with pytest.raises(DecodeError) as info:
        decode_image(root / "dir.jpg", S)
    assert info.value.reason == "unreadable"
    with pytest.raises(DecodeError) as info:
        decode_image(root / "missing.jpg", S)
    assert info.value.reason == "unreadable"


def test_bad_bytes_same_rules(bad):
    root, expect = bad
    for name, reason in expect.items():
        if reason in ("unreadable", "empty"):
            continue
        with pytest.raises(DecodeError) as info:
            decode_bytes((root / name).read_bytes(), S)
        assert info.value.reason == reason, name
    with pytest.raises(DecodeError) as info:
        decode_bytes(b"", S)
    assert info.value.reason == "empty"


def test_max_pixels_checked_before_decoding():
    data = _png_bytes(Image.new("1", (100, 100)))
    assert decode_bytes(data, S, max_pixels=10_000).shape == (S, S, 3)
    with pytest.raises(DecodeError) as info:
        decode_bytes(data, S, max_pixels=9_999)
    assert info.value.reason == "too-large" and "100 x 100" in info.value.message


def test_truncated_stays_an_error_when_global_set(bad, monkeypatch):
    root, _ = bad
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(DecodeError) as info:
        decode_image(root / "truncated.jpg", S)
    assert info.value.reason == "truncated"
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # restored, not changed for good


def test_threads_share_pil_state_safely(good, bad):
    """Decode workers may be threads: results match serial ones and PIL's globals are left as found."""
    import warnings
    from concurrent.futures import ThreadPoolExecutor

    root, expect = bad
    jobs = list(good.values()) + [root / n for n in expect]
    filters_before = list(warnings.filters)

    def run(path):
        try:
            return decode_image(path, S, draft=False)
        except DecodeError as err:
            return err.reason

    serial = [run(p) for p in jobs]
    with ThreadPoolExecutor(8) as pool:
        for _ in range(3):
            for a, b in zip(serial, pool.map(run, jobs), strict=True):
                assert (a == b) if isinstance(a, str) else np.array_equal(a, b)
    assert warnings.filters == filters_before
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="thread nice values are Linux's")
@pytest.mark.parametrize("background", [True, False])
def test_background_decode_threads_run_at_lowest_priority(background, tmp_path, monkeypatch):
    from dga.runtime import pipeline

    seen = []

    def fake_decode(path, size, draft=True, **kw):
        tid = threading.get_native_id()
        seen.append((tid, os.getpriority(os.PRIO_PROCESS, tid)))
        return np.zeros((size, size, 3), np.uint8)

    monkeypatch.setattr(pipeline, "decode_image", fake_decode)
    me = threading.get_native_id()
    base = os.getpriority(os.PRIO_PROCESS, me)
    paths = [str(tmp_path / f"{i}.jpg") for i in range(6)]
    batches = []
    for b in pipeline.decoded_batches(paths, 4, batch_size=2, workers=2, background=background):
        batches.append(b)
        time.sleep(0.05)  # the model's time per batch; decode (instant here) never keeps it waiting
    assert [b.paths for b in batches] == [paths[0:2], paths[2:4], paths[4:6]]
    assert len(seen) == 6 and all(tid != me for tid, _ in seen)
    assert {nice for _, nice in seen} == ({19} if background else {base})
    assert os.getpriority(os.PRIO_PROCESS, me) == base  # the consumer (the model's thread) keeps its own


def test_starvation_by_hand():
    from dga.runtime.pipeline import Starvation

    s = Starvation()
    s.record(5.0, float("inf"))  # the first batch: nothing to compare with
    s.record(0.6, 1.0)  # waited more than half the model's time: once
    s.record(0.4, 1.0)  # not twice in a row
    s.record(0.6, 1.0)
    assert not s.starved
    s.record(0.51, 1.0)  # twice in a row
    assert s.starved
    s.record(0.0, 1.0)
    assert s.starved  # for the rest of the run


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="thread nice values are Linux's")
def test_starved_consumer_moves_decode_to_normal_priority(tmp_path, monkeypatch):
    """Decode slower than the model (as when other work crowds the low-priority threads out): after
    two batches the consumer waited for, the remaining chunks decode at normal priority."""
    from dga.runtime import pipeline

    seen = {}

    def slow_decode(path, size, draft=True, **kw):
        time.sleep(0.02)
        seen[path] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        return np.zeros((size, size, 3), np.uint8)

    monkeypatch.setattr(pipeline, "decode_image", slow_decode)
    base = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    paths = [str(tmp_path / f"{i}.jpg") for i in range(20)]
    got = [p for b in pipeline.decoded_batches(paths, 4, batch_size=2, workers=1, prefetch=1, background=True)
           for p in b.paths]  # the consumer takes no time: every wait is "longer than half of it"
    assert got == paths
    assert seen[paths[0]] == 19 and seen[paths[-1]] == base != 19
    first_normal = next(i for i, p in enumerate(paths) if seen[p] == base)
    assert all(seen[p] == 19 for p in paths[:first_normal]) and all(seen[p] == base for p in paths[first_normal:])


def test_decode_error_pickles():
    import pickle

    err = pickle.loads(pickle.dumps(DecodeError("corrupt", "x is corrupt.")))
    assert (err.reason, err.message, str(err)) == ("corrupt", "x is corrupt.", "x is corrupt.")
    with pytest.raises(ValueError):
        DecodeError("nope", "bad reason")


# --- writers ----------------------------------------------------------------------------------------


def _csv_rows(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def test_result_writer_csv(tmp_path):
    out = tmp_path / "pred.csv"
    out.write_text("old content that must go\n")
    with ResultWriter(out, "csv", topk=2, level_names=["level_1", "level_2"]) as w:
        assert w.write("a.jpg", ["cat", "dog"], [0.9, 0.05], ["animal", 3])
        assert w.write('odd, "name"\n.jpg', ["dog"], [np.float32(0.5)], ["animal", 1])
        assert not w.write("a.jpg", ["cat", "dog"], [0.9, 0.05], ["animal", 3])  # no duplicates
        w.flush()
        assert w.count == 2
    rows = _csv_rows(out)
    assert rows[0] == ["path", "label_1", "prob_1", "label_2", "prob_2", "level_1", "level_2", "warnings"]
    assert rows[1] == ["a.jpg", "cat", "0.900000", "dog", "0.050000", "animal", "3", ""]
    assert rows[2] == ['odd, "name"\n.jpg', "dog", "0.500000", "", "", "animal", "1", ""]
    with pytest.raises(ValueError):
        ResultWriter(tmp_path / "x.csv", topk=1).write("b.jpg", ["a", "b"], [0.5, 0.5])


def test_result_writer_jsonl(tmp_path):
    out = tmp_path / "pred.jsonl"
    with ResultWriter(out, "jsonl", topk=2, level_names=["coarse"]) as w:
        w.write("a.jpg", ["cat", "dog"], [0.75, 0.25], ["animal"])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows == [
        {
            "path": "a.jpg",
            "topk": [{"label": "cat", "prob": 0.75}, {"label": "dog", "prob": 0.25}],
            "levels": ["animal"],
        }
    ]
    with ResultWriter(out, "jsonl", topk=1) as w:  # replaced, no levels key without level_names
        w.write("b.jpg", ["cat"], [1.0])
    assert [json.loads(line) for line in out.read_text().splitlines()] == [
        {"path": "b.jpg", "topk": [{"label": "cat", "prob": 1.0}]}
    ]


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_result_writer_resume_after_crash(tmp_path, fmt):
    out = tmp_path / f"pred.{fmt}"
    paths = [f"img_{i}.jpg" for i in range(5)] + ['we"ird,\nname.jpg']
    w = ResultWriter(out, fmt, topk=1, level_names=["g"])
    for p in paths[:3]:
        w.write(p, ["cat"], [0.5], [0])
    w.flush()
    w.close()  # what a kill leaves on disk after the last flush ...
    with open(out, "ab") as f:  # ... plus the start of the row it was writing
        f.write(b'"img_3.jp' if fmt == "csv" else b'{"path": "img_3.jpg", "to')

    w2 = ResultWriter(out, fmt, topk=1, level_names=["g"], resume=True)
    assert w2.done_paths() == set(paths[:3])
    assert out.read_bytes().endswith(b"\n")  # partial line cut off
    written = [p for p in paths if w2.write(p, ["dog"], [0.25], [1])]
    w2.close()
    assert written == paths[3:]
    if fmt == "csv":
        got = [r[0] for r in _csv_rows(out)[1:]]
    else:
        got = [json.loads(line)["path"] for line in out.read_text().splitlines()]
    assert got == paths  # each exactly once, in order

    # A second resume of the now complete file adds nothing.
    w3 = ResultWriter(out, fmt, topk=1, level_names=["g"], resume=True)
    assert w3.done_paths() == set(paths) and w3.count == len(paths)
    w3.close()
    # Other columns than the file has: refused, not mixed.
    with pytest.raises(InputError):
        ResultWriter(out, fmt, topk=1, level_names=["g", "h"], resume=True)
    if fmt == "csv":
        with pytest.raises(InputError, match="columns"):
            ResultWriter(out, fmt, topk=2, level_names=["g"], resume=True)


def test_resume_of_missing_or_headless_file(tmp_path):
    out = tmp_path / "p.csv"
    with ResultWriter(out, topk=1, resume=True) as w:  # nothing to resume: a fresh file
        assert w.done_paths() == set()
        w.write("a.jpg", ["x"], [1.0])
    out.write_bytes(b"path,lab")  # killed while writing the header
    with ResultWriter(out, topk=1, resume=True) as w:
        w.write("b.jpg", ["x"], [1.0])
    assert _csv_rows(out) == [["path", "label_1", "prob_1", "warnings"], ["b.jpg", "x", "1.000000", ""]]


def test_error_writer_resume(tmp_path):
    out = tmp_path / "errors.jsonl"
    with ErrorWriter(out) as w:
        w.write("a.jpg", "truncated", "a.jpg is truncated.")
        w.write("b.jpg", "empty", "b.jpg is empty.")
        assert w.count == 2
    with open(out, "ab") as f:
        f.write(b'{"path": "c.jpg", "rea')
    with ErrorWriter(out, resume=True) as w:
        assert w.done_paths() == {"a.jpg", "b.jpg"}
        assert not w.write("a.jpg", "truncated", "again")
        assert w.write("c.jpg", "corrupt", "c.jpg is corrupt.")
        assert (w.count, w.written) == (3, 1)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[-1] == {"path": "c.jpg", "reason": "corrupt", "message": "c.jpg is corrupt."}
    assert [r["path"] for r in rows] == ["a.jpg", "b.jpg", "c.jpg"]
    with ErrorWriter(out) as w:  # without resume: replaced
        assert w.count == 0
    assert out.read_text() == ""


def test_summary():
    s = Summary(
        ok=90,
        failed=10,
        wall_s=4.5,
        batch_latencies=[0.05, 0.01, 0.04, 0.02, 0.03],
        backend="onnxruntime",
        batch_size=32,
    )
    assert s.p50_batch_ms == pytest.approx(30.0)
    assert s.p99_batch_ms == pytest.approx(49.6)  # 40 + 0.96 * (50 - 40), linear interpolation
    assert s.images_per_s == pytest.approx(20.0)
    assert s.total == 100
    d = json.loads(json.dumps(s.to_json()))
    assert d == {
        "images_ok": 90,
        "images_failed": 10,
        "files_skipped": 0,
        "wall_s": 4.5,
        "images_per_s": 20.0,
        "batches": 5,
        "p50_batch_ms": 30.0,
        "p99_batch_ms": 49.6,
        "backend": "onnxruntime",
        "batch_size": 32,
    }
    line = s.line()
    assert line == str(s)
    assert "\n" not in line and "90 images ok, 10 failed, 0 non-image files skipped in 4.5 s" in line
    assert "p99 49.6 ms" in line
    assert Summary(1, 0, 1.0, skipped=7).to_json()["files_skipped"] == 7
    assert "1 images ok, 0 failed, 7 non-image files skipped" in Summary(1, 0, 1.0, skipped=7).line()
    empty = Summary(0, 0, 0.0, [], "torch", 8)
    assert empty.p50_batch_ms is None and empty.images_per_s == 0.0 and "n/a" in empty.line()


def test_permission_error_is_unreadable(good, monkeypatch):
    """What chmod 000 gives a non-root user, simulated so the case is covered when tests run as root."""
    import dga.runtime.decode as decode_mod

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(decode_mod, "open", denied, raising=False)
    with pytest.raises(DecodeError) as info:
        decode_image(good["gray.png"], S)
    assert info.value.reason == "unreadable" and "Permission denied" in info.value.message


def test_empty_level_names_mean_no_level_columns(tmp_path):
    with ResultWriter(tmp_path / "p.csv", topk=1, level_names=[]) as w:
        w.write("a.jpg", ["x"], [1.0], None)
    assert _csv_rows(tmp_path / "p.csv") == [["path", "label_1", "prob_1", "warnings"], ["a.jpg", "x", "1.000000", ""]]


def test_eval_image_resamples_the_crop_box_like_resize_then_crop():
    """One resample of the crop's box == resize the shorter side, then centre-crop (to 1-2 levels)."""
    from dga.runtime.preprocess import crop_box, shorter_side_size

    def resize_shorter_side(img, size):  # the two-step reference: the whole image resized ...
        new = shorter_side_size(*img.size, size)
        return img if new == img.size else img.resize(new, Image.Resampling.BICUBIC)

    def center_crop(img, size):  # ... then the sides thrown away
        left, top = crop_box(*img.size, size)
        return img.crop((left, top, left + size, top + size))

    rng = np.random.default_rng(0)
    differing = total = 0
    for w, h, size in [(640, 480, 192), (300, 1200, 224), (1280, 320, 192), (193, 191, 192), (200, 200, 192),
                       (97, 131, 64)]:
        coarse = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
        img = Image.fromarray(coarse).resize((w, h), Image.Resampling.BILINEAR)  # smooth, like photos
        got = eval_image(img, size).astype(int)
        two_step = np.asarray(center_crop(resize_shorter_side(img, size), size), dtype=int)
        assert got.shape == two_step.shape == (size, size, 3)
        assert np.abs(got - two_step).max() <= 2, (w, h, size)
        differing += int((got != two_step).sum())
        total += got.size
    assert differing / total < 0.05
    # Already the right size on the shorter side: a plain crop, exactly.
    img = Image.fromarray(rng.integers(0, 256, (192, 300, 3), dtype=np.uint8))
    np.testing.assert_array_equal(eval_image(img, 192), np.asarray(img)[:, 54:246])


# --- the folder walk: Pillow's formats, skipped files -------------------------------------------


def _encoded(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def test_listing_takes_pillows_formats_and_names_what_it_skips(tmp_path):
    from dga.runtime.listing import scan_inputs

    img = Image.fromarray(_noise(20, 30))
    images = {"a.tga": "TGA", "b.ico": "ICO", "c.pcx": "PCX", "d.sgi": "SGI", "e.qoi": "QOI", "f.dds": "DDS",
              **({"g.jp2": "JPEG2000"} if features.check("jpg_2000") else {}),
              **({"h.avif": "AVIF"} if features.check("avif") else {})}
    for name, fmt in images.items():
        (tmp_path / name).write_bytes(_encoded(img, fmt))
    (tmp_path / "qoi.bin").write_bytes(_encoded(img, "QOI"))  # no extension: QOI's own signature test
    skipped = {
        # XBM's loose signature test accepts it, XBM's header parser does not.
        "defs.h": (b"#define WIDTH 8\n", "not an image (no image extension or signature)"),
        "weights.h5": (b"\x89HDF\r\n\x1a\n" + bytes(64), "HDF5 file, which Pillow cannot decode here"),
        "doc.pdf": (b"%PDF-1.7\n", "PDF file, which Pillow cannot decode here"),
        "movie.mpg": (b"\x00\x00\x01\xb3\x14\x00\xf0\x13" + bytes(64), "MPEG file, which Pillow cannot decode here"),
        "README": (b"text\n", "not an image (no image extension or signature)"),
    }
    for name, (data, _) in skipped.items():
        (tmp_path / name).write_bytes(data)
    os.mkfifo(tmp_path / "pipe.png")
    (tmp_path / "latest").symlink_to(tmp_path / "nowhere")
    (tmp_path / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    listing = scan_inputs(tmp_path)
    assert [p.name for p in listing.files] == sorted([*images, "qoi.bin"])
    whys = {name: why for name, (_, why) in skipped.items()}
    assert {s.path.name: s.why for s in listing.skipped} == {
        **whys, "pipe.png": "not a regular file", "latest": "dangling link"}
    assert [s.path.name for s in listing.skipped] == sorted(s.path.name for s in listing.skipped)
    for name in images:
        assert decode_image(tmp_path / name, S).shape == (S, S, 3), name


def test_unreadable_subfolder_is_skipped_with_why(tmp_path, monkeypatch):
    """What chmod 000 on a sub-folder gives a non-root user, simulated (root reads anything)."""
    from dga.runtime import listing

    (tmp_path / "locked").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "locked" / "x.png")
    Image.new("RGB", (4, 4)).save(tmp_path / "y.png")
    real_scandir = os.scandir

    def scandir(path):
        if Path(path).name == "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(listing.os, "scandir", scandir)
    told = []
    found = listing.scan_inputs(tmp_path, on_error=lambda folder, exc: told.append(folder))
    assert found.files == [tmp_path / "y.png"] and told == [tmp_path / "locked"]
    assert [(s.path, s.why) for s in found.skipped] == [
        (tmp_path / "locked", "folder cannot be read (Permission denied)")]


def test_skipped_line_is_always_one_line():
    from dga.runtime.listing import SkippedFile

    assert SkippedFile(Path("photos/notes.txt"), "not an image").line() == "skipped: photos/notes.txt (not an image)"
    assert SkippedFile(Path("a\nb"), "x").line() == 'skipped: "a\\nb" (x)'
    assert SkippedFile(Path(os.fsdecode(b"caf\xe9")), "x").line() == 'skipped: "caf\\udce9" (x)'


# --- Pillow's warnings ------------------------------------------------------------------------


def _jpeg_with_broken_exif() -> bytes:
    """A JPEG whose EXIF Make tag points past the end: Pillow warns while reading the orientation."""
    ifd = struct.pack("<H", 1) + struct.pack("<HHII", 0x010F, 2, 100, 0x1000) + struct.pack("<I", 0)
    exif = b"Exif\x00\x00" + b"II*\x00" + struct.pack("<I", 8) + ifd
    return _encoded(Image.fromarray(_noise(20, 30)), "JPEG", exif=exif)


def test_pillow_warnings_belong_to_the_file_across_threads(tmp_path):
    import warnings
    from concurrent.futures import ThreadPoolExecutor

    (tmp_path / "warns.jpg").write_bytes(_jpeg_with_broken_exif())
    Image.fromarray(_noise(20, 30)).save(tmp_path / "clean.jpg")
    jobs = [tmp_path / ("warns.jpg" if i % 3 == 0 else "clean.jpg") for i in range(48)]

    def run(path):
        notes = []
        decode_image(path, S, record_warnings=notes)
        return path.name, notes

    with warnings.catch_warnings(record=True) as leaked:
        warnings.simplefilter("always")
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(run, jobs))
        warnings.warn("a warning of someone else's", UserWarning, stacklevel=1)  # other code warns as before
    for name, notes in results:
        if name == "warns.jpg":
            assert len(notes) == 1 and "Skipping tag 271" in notes[0] and "\n" not in notes[0]
        else:
            assert notes == []
    assert [str(w.message) for w in leaked] == ["a warning of someone else's"]  # nothing raw from the decodes
    assert leaked[0].filename == __file__  # attributed to the caller, through the wrapper
    # Without a list to record into, the warning is issued as before (training's decodes).
    with pytest.warns(UserWarning, match="Skipping tag 271"):
        decode_image(tmp_path / "warns.jpg", S)
    notes = []
    with pytest.raises(DecodeError):
        decode_bytes(_jpeg_with_broken_exif()[:300], S, record_warnings=notes)  # warned, then failed
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_formats_pillow_cannot_decode_and_cut_tiffs():
    mpeg = b"\x00\x00\x01\xb3\x14\x00\xf0\x13" + bytes(64)
    with pytest.raises(DecodeError) as info:
        decode_bytes(mpeg, S)
    assert info.value.reason == "unsupported" and "MPEG" in info.value.message
    # libtiff writes the directory after the pixels: a cut file loses it, yet it is truncated, not corrupt.
    lzw = _encoded(Image.fromarray(_smooth(64, 96)), "TIFF", compression="tiff_lzw")
    with pytest.raises(DecodeError) as info:
        decode_bytes(lzw[: len(lzw) // 2], S, record_warnings=[])
    assert info.value.reason == "truncated"


# --- writers: whole lines, any name -------------------------------------------------------------


def test_writer_keeps_rows_whole_between_flushes(tmp_path):
    """Rows reach the file only at flush, as complete lines: a kill between flushes leaves no half row."""
    out = tmp_path / "p.csv"
    w = ResultWriter(out, "csv", topk=1)
    header = out.read_bytes()
    assert header == b"path,label_1,prob_1,warnings\n"  # on disk at once: a resume recognises the file
    for i in range(300):  # ~15 KB: more than any stream buffer, which would have written part of a row
        w.write(f"folder/sub/image_{i:05d}_with_a_long_name.jpg", ["label"], [0.5])
    assert out.read_bytes() == header
    w.flush()
    data = out.read_bytes()
    assert data.endswith(b"\n") and len(_csv_rows(out)) == 301
    w.close()
    assert out.read_bytes() == data


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_any_file_name_round_trips_and_resumes(tmp_path, fmt):
    names = ["with space.jpg", "new\nline.jpg", "carriage\rreturn.jpg", 'comma, "quote".jpg', "ünï.jpg",
             os.fsdecode(b"caf\xe9.jpg"), "tab\there.jpg"]
    out = tmp_path / f"p.{fmt}"
    with ResultWriter(out, fmt, topk=1) as w:
        for i, name in enumerate(names):
            w.write(name, ["cat"], [0.5], warnings=["first warning", "second\nwarning"] if i == 0 else ())
    if fmt == "csv":
        with open(out, encoding="utf-8", errors="surrogateescape", newline="") as fh:
            rows = list(csv.reader(fh))
        assert rows[0][-1] == "warnings" and [r[0] for r in rows[1:]] == names
        assert rows[1][-1] == "first warning | second warning" and rows[2][-1] == ""
    else:
        rows = [json.loads(line) for line in out.read_bytes().decode("ascii").splitlines()]
        assert [r["path"] for r in rows] == names
        assert rows[0]["warnings"] == ["first warning", "second warning"] and "warnings" not in rows[1]
    assert os.fsencode(names[5]) == b"caf\xe9.jpg"
    with ResultWriter(out, fmt, topk=1, resume=True) as w:
        assert w.done_paths() == set(names)
        assert not any(w.write(name, ["dog"], [0.1]) for name in names)


def test_error_writer_records_warnings(tmp_path):
    out = tmp_path / "errors.jsonl"
    with ErrorWriter(out) as w:
        w.write("a.jpg", "truncated", "a.jpg is truncated.", ["Corrupt EXIF data."])
        w.write("b.jpg", "empty", "b.jpg is empty.")
    assert [json.loads(line) for line in out.read_text().splitlines()] == [
        {"path": "a.jpg", "reason": "truncated", "message": "a.jpg is truncated.", "warnings": ["Corrupt EXIF data."]},
        {"path": "b.jpg", "reason": "empty", "message": "b.jpg is empty."},
    ]
