"""dga-infer's file contract over a generated corpus of good, bad and non-image files (docs/cli/infer.md).

Every candidate file becomes exactly one prediction row or one error row (with the reason the
decoder must give), every other non-hidden file is counted as skipped and named by
--list-skipped, Pillow's warnings land in the file's row, CSV and JSON lines stay parseable
whatever the file names hold, and the exit code says what happened (0, 1, 2, 3). The corpus is
built here from Pillow-written files; it runs through the real CLI (``python -m dga.cli.infer``).

The unreadable-file case (chmod 000) is only built when the tests do not run as root: root reads
anything. ``test_runtime_input.test_permission_error_is_unreadable`` simulates it for root.
"""

from __future__ import annotations

import csv
import io
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, features

from dga.runtime.decode import open_image

INFER = [sys.executable, "-m", "dga.cli.infer"]
RNG = np.random.default_rng(77)
HAS_WEBP, HAS_J2K, HAS_AVIF = features.check("webp"), features.check("jpg_2000"), features.check("avif")
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
# libtiff prints its own errors (e.g. "Using code not yet in table" for a damaged LZW strip) to
# stderr under the name Pillow opens every TIFF with; Pillow gives no hook to catch them.
LIBTIFF_PREFIX = "tempfile.tif: "


# ----------------------------------------------------------------------------------------------
# building the corpus


def _picture(w: int = 96, h: int = 64) -> Image.Image:
    grid = RNG.integers(0, 256, (4, 5, 3), dtype=np.uint8)
    return Image.fromarray(grid).resize((w, h), Image.Resampling.BILINEAR)


def _enc(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _blocks(colours: list[tuple[int, int, int]], h: int = 40, w: int = 60) -> np.ndarray:
    """Vertical stripes of flat colours: a palette of exactly these colours, lossless in GIF/WebP."""
    arr = np.zeros((h, w, 3), np.uint8)
    for i, c in enumerate(colours):
        arr[:, i * w // len(colours):(i + 1) * w // len(colours)] = c
    return arr


def _png_bomb(width: int, height: int) -> bytes:
    data = bytearray(_enc(Image.new("1", (8, 8)), "PNG"))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def _gif_bomb() -> bytes:
    """A GIF whose screen and frame both claim 65535 x 65535 pixels: 4.3e9, a tiny file."""
    data = bytearray(_enc(Image.new("P", (8, 8)), "GIF"))
    data[6:10] = struct.pack("<HH", 65535, 65535)  # logical screen
    i = data.index(b"\x2c")  # image descriptor: left, top, width, height
    data[i + 5:i + 9] = struct.pack("<HH", 65535, 65535)
    return bytes(data)


def _garbage(data: bytes, start: int, n: int = 40) -> bytes:
    out = bytearray(data)
    out[start:start + n] = RNG.integers(0, 256, n, dtype=np.uint8).tobytes()
    return bytes(out)


def _exif_tiff(orientation: int | None = None, broken_tag: bool = False) -> bytes:
    """EXIF (TIFF) bytes: an Orientation tag, or a Make tag whose data lies past the end."""
    entries = []
    if orientation is not None:
        entries.append(struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0))
    if broken_tag:
        entries.append(struct.pack("<HHII", 0x010F, 2, 100, 0x1000))
    body = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", len(entries)) + b"".join(entries)
    return b"Exif\x00\x00" + body + struct.pack("<I", 0)


class Corpus:
    """The generated folder and what must become of each file."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.expect: dict[str, str] = {}  # candidate (relative path) -> "ok" or the error reason
        self.skipped: dict[str, str] = {}  # skipped (relative path) -> a word its "why" must hold
        self.hidden: list[str] = []

    def put(self, rel: str | bytes, data: bytes, expect: str) -> None:
        path = os.path.join(os.fsencode(self.root), os.fsencode(rel))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as fh:
            fh.write(data)
        self.expect[os.fsdecode(rel)] = expect

    def skip(self, rel: str, data: bytes, why: str) -> None:
        (self.root / rel).parent.mkdir(parents=True, exist_ok=True)
        (self.root / rel).write_bytes(data)
        self.skipped[rel] = why

    def path(self, rel: str) -> str:
        return str(self.root / rel)


def build_corpus(root: Path) -> Corpus:
    c = Corpus(root)
    pic = _picture()
    jpg, png, tif = _enc(pic, "JPEG", quality=90), _enc(pic, "PNG"), _enc(pic, "TIFF")
    gif = _enc(pic.convert("P"), "GIF")
    lzw = _enc(pic, "TIFF", compression="tiff_lzw")

    # Good files in the formats Pillow writes; the extension alone makes them candidates.
    for rel, data in {
        "good/rgb.jpg": jpg, "good/rgb.png": png, "good/palette.gif": gif, "good/rgb.tiff": tif,
        "good/lzw.tif": lzw, "good/rgb.bmp": _enc(pic, "BMP"), "good/rgb.tga": _enc(pic, "TGA"),
        "good/rgb.ico": _enc(pic, "ICO"), "good/rgb.pcx": _enc(pic, "PCX"), "good/rgb.sgi": _enc(pic, "SGI"),
        "good/rgb.ppm": _enc(pic, "PPM"), "good/rgb.qoi": _enc(pic, "QOI"), "good/rgb.dds": _enc(pic, "DDS"),
        "good/bits.xbm": _enc(pic.convert("1"), "XBM"),
        "good/UPPER.JPG": jpg, "good/deep/er/nested.png": png,
        **({"good/rgb.webp": _enc(pic, "WEBP")} if HAS_WEBP else {}),
        **({"good/rgb.jp2": _enc(pic, "JPEG2000")} if HAS_J2K else {}),
        **({"good/rgb.avif": _enc(pic, "AVIF")} if HAS_AVIF else {}),
    }.items():
        c.put(rel, data, "ok")
    # Content decides: a JPEG and a QOI without image extensions (signature, plugin signature test).
    c.put("good/photo.data", jpg, "ok")
    c.put("good/qoi.bin", _enc(pic, "QOI"), "ok")
    # Modes: CMYK, 16-bit greyscale, palette with a transparent colour; each with a twin it must equal.
    c.put("modes/cmyk.jpg", _enc(pic.convert("CMYK"), "JPEG"), "ok")
    grey = RNG.integers(0, 256, (48, 72), dtype=np.uint8)
    sixteen = Image.fromarray(grey.astype(np.uint16) * 257)  # 257 * v scales back to v exactly
    assert sixteen.mode.startswith("I;16")
    c.put("modes/sixteen.png", _enc(sixteen, "PNG"), "ok")
    c.put("modes/sixteen_twin.png", _enc(Image.fromarray(grey, "L"), "PNG"), "ok")
    colours = [(250, 20, 20), (20, 250, 20), (20, 20, 250), (200, 200, 40)]
    index = np.tile(np.repeat(np.arange(4, dtype=np.uint8), 15), (40, 1))  # 40 x 60, four stripes
    pal = Image.fromarray(index, "P")
    pal.putpalette([v for col in colours for v in col])
    c.put("modes/pal_trans.png", _enc(pal, "PNG", transparency=0), "ok")
    white = _blocks([(255, 255, 255)] + colours[1:])
    c.put("modes/pal_trans_twin.png", _enc(Image.fromarray(white), "PNG"), "ok")
    # Animated: the first frame counts.
    frames = [_blocks(colours), _blocks(colours[::-1])]
    c.put("anim/frame0.png", _enc(Image.fromarray(frames[0]), "PNG"), "ok")
    c.put("anim/frame1.png", _enc(Image.fromarray(frames[1]), "PNG"), "ok")
    gif_frames = [Image.fromarray(f).convert("P", palette=Image.Palette.ADAPTIVE, colors=4) for f in frames]
    c.put("anim/anim.gif", _enc(gif_frames[0], "GIF", save_all=True, append_images=gif_frames[1:], duration=50,
                                loop=0), "ok")
    if HAS_WEBP:
        webp_frames = [Image.fromarray(f) for f in frames]
        c.put("anim/anim.webp", _enc(webp_frames[0], "WEBP", save_all=True, append_images=webp_frames[1:],
                                     lossless=True, duration=50), "ok")
    # EXIF orientation 6 (shown rotated 90 degrees clockwise); the same JPEG data tagged 1; the
    # upright pixels by hand, losslessly (filled in by the test from the decoded tag-1 twin).
    stored = np.zeros((48, 80, 3), np.uint8)
    stored[:, :40] = (255, 0, 0)
    stored[:, 40:] = (0, 0, 255)
    stored[:12, :12] = (0, 255, 0)  # a green corner: top-left as stored
    c.put("exif/exif6.jpg", _enc(Image.fromarray(stored), "JPEG", quality=95, exif=_exif_tiff(6)), "ok")
    c.put("exif/exif1.jpg", _enc(Image.fromarray(stored), "JPEG", quality=95, exif=_exif_tiff(1)), "ok")
    # A warning from Pillow (EXIF tag data past the end of the file): recorded in the row.
    c.put("exif/warns.jpg", _enc(pic, "JPEG", exif=_exif_tiff(broken_tag=True)), "ok")
    # Names CSV and JSON lines must survive.
    for rel in ("names/with space.png", "names/new\nline.png", 'names/comma, "quote".png',
                "names/carriage\rreturn.png", "names/ünïcödé.png", b"names/caf\xe9.png"):
        c.put(rel, png, "ok")

    # Bad candidates and the reason each must get.
    bad = {
        "bad/empty.jpg": (b"", "empty"),
        "bad/empty.png": (b"", "empty"),
        "bad/text.jpg": (b"hello, I am text pretending to be a JPEG\n", "not-an-image"),
        "bad/page.png": (b"<!DOCTYPE html><html><body></body></html>\n", "not-an-image"),
        "bad/truncated.jpg": (jpg[: len(jpg) // 2], "truncated"),
        "bad/truncated.png": (png[: len(png) // 2], "truncated"),
        "bad/truncated.gif": (gif[: len(gif) // 2], "truncated"),
        "bad/truncated.tiff": (tif[: len(tif) // 2], "truncated"),
        "bad/truncated_lzw.tif": (lzw[: len(lzw) // 2], "truncated"),
        "bad/corrupt.jpg": (jpg[:8] + b"\xff" * 32 + jpg[40:], "corrupt"),
        "bad/corrupt.png": (_garbage(png, len(png) // 2), "corrupt"),
        "bad/corrupt.gif": (_garbage(gif, len(gif) // 2), "corrupt"),
        "bad/corrupt.tif": (_garbage(lzw, 100), "corrupt"),
        "bad/broken.data": (b"\x89PNG\r\n\x1a\n" + b"\x00" * 200, "corrupt"),  # a signature, then nothing
        "bad/bomb.png": (_png_bomb(100_000, 100_000), "too-large"),
        "bad/bomb_warn.png": (_png_bomb(10_000, 10_000), "too-large"),
        "bad/bomb.gif": (_gif_bomb(), "too-large"),
    }
    if HAS_WEBP:
        webp = _enc(pic, "WEBP")
        bad["bad/truncated.webp"] = (webp[: len(webp) // 2], "truncated")
        bad["bad/corrupt.webp"] = (_garbage(webp, len(webp) // 2), "corrupt")
    for rel, (data, reason) in bad.items():
        c.put(rel, data, reason)
    (root / "links").mkdir()
    (root / "links/to_rgb.png").symlink_to(root / "good/rgb.png")
    c.expect["links/to_rgb.png"] = "ok"
    (root / "links/gone.jpg").symlink_to(root / "links/no_such_file.jpg")
    c.expect["links/gone.jpg"] = "unreadable"
    (root / "links/latest").symlink_to(root / "nowhere")  # no image extension: skipped
    c.skipped["links/latest"] = "dangling link"
    if not IS_ROOT:
        c.put("bad/locked.jpg", jpg, "unreadable")
        (root / "bad/locked.jpg").chmod(0)

    # Not images: skipped, counted, named by --list-skipped.
    c.skip("README.txt", b"Photos of the trip.\n", "not an image")
    c.skip("labels.csv", b"path,label\ngood/rgb.jpg,cat\n", "not an image")
    c.skip("notes", b"no extension, no signature\n", "not an image")
    c.skip("sub/notes.md", b"# notes\n", "not an image")
    c.skip("defs.h", b"#define WIDTH 8\n", "not an image")  # XBM's signature test accepts it; Pillow does not
    c.skip("weights.h5", b"\x89HDF\r\n\x1a\n" + b"\x00" * 64, "HDF5")
    c.skip("doc.pdf", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n", "PDF")
    c.skip("movie.mpg", b"\x00\x00\x01\xb3\x14\x00\xf0\x13" + b"\x00" * 64, "MPEG")
    os.mkfifo(root / "pipe.jpg")  # never opened: reading a FIFO would block
    c.skipped["pipe.jpg"] = "not a regular file"
    # Hidden: skipped without a word.
    for rel in (".DS_Store", ".hidden.png", ".git/config", ".git/x.png"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(png if rel.endswith(".png") else b"\x00\x00\x00\x01Bud1")
        c.hidden.append(rel)
    return c


# ----------------------------------------------------------------------------------------------
# running it


def _csv_rows(path: Path) -> list[list[str]]:
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as fh:
        return list(csv.reader(fh))


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_bytes().decode("ascii").splitlines()]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Corpus:
    return build_corpus(tmp_path_factory.mktemp("corpus") / "photos")


@pytest.fixture(scope="module")
def runs(corpus, tiny_package, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("corpus_out")
    done = {}
    for fmt in ("csv", "jsonl"):
        proc = subprocess.run([*INFER, str(corpus.root), "--model", str(tiny_package), "--backend", "onnxruntime",
                               "--batch-size", "4", "--no-progress", "--list-skipped", "--out",
                               str(out / f"preds.{fmt}"), "--errors", str(out / f"errors_{fmt}.jsonl"),
                               "--summary", str(out / f"s_{fmt}.json")],
                              capture_output=True, timeout=300)
        done[fmt] = {"proc": proc, "out": out / f"preds.{fmt}", "errors": _jsonl(out / f"errors_{fmt}.jsonl"),
                     "summary": json.loads((out / f"s_{fmt}.json").read_text())}
    done["csv"]["rows"] = _csv_rows(done["csv"]["out"])
    done["jsonl"]["rows"] = _jsonl(done["jsonl"]["out"])
    return done


def _predictions(run: dict, fmt: str) -> dict[str, tuple[list[str], list[float]]]:
    """path -> (top-k labels, probabilities), from either format."""
    if fmt == "csv":
        header, *rows = run["rows"]
        k = (header.index("warnings") - 1) // 2 if "level_1" not in header else (header.index("level_1") - 1) // 2
        return {r[0]: (r[1:2 * k + 1:2], [float(p) for p in r[2:2 * k + 1:2]]) for r in rows}
    return {r["path"]: ([t["label"] for t in r["topk"]], [t["prob"] for t in r["topk"]]) for r in run["rows"]}


def _same_prediction(preds, a: str, b: str) -> bool:
    (la, pa), (lb, pb) = preds[a], preds[b]
    return la == lb and np.allclose(pa, pb, rtol=0, atol=2e-6)


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_every_candidate_exactly_once_with_its_reason(runs, corpus, fmt):
    run = runs[fmt]
    proc = run["proc"]
    assert proc.returncode == 3, proc.stderr.decode(errors="replace")
    preds = _predictions(run, fmt)
    rows = run["rows"][1:] if fmt == "csv" else run["rows"]
    row_paths = [r[0] if fmt == "csv" else r["path"] for r in rows]
    error_paths = [e["path"] for e in run["errors"]]
    assert len(row_paths) == len(set(row_paths)) and len(error_paths) == len(set(error_paths))
    assert not set(row_paths) & set(error_paths)  # never both
    want_ok = {corpus.path(rel) for rel, e in corpus.expect.items() if e == "ok"}
    want_bad = {corpus.path(rel): e for rel, e in corpus.expect.items() if e != "ok"}
    assert set(row_paths) == want_ok == set(preds)  # never neither
    assert {e["path"]: e["reason"] for e in run["errors"]} == want_bad
    for e in run["errors"]:
        assert e["message"] and "\n" not in e["message"]
    # Rows (and errors) come in listing order: by the path relative to the folder.
    rel = [os.path.relpath(p, corpus.root) for p in row_paths]
    assert rel == sorted(rel)
    # Undecodable bytes in a name round-trip to the file's real name.
    assert os.path.join(os.fsencode(corpus.root), b"names/caf\xe9.png") in {os.fsencode(p) for p in row_paths}

    s = run["summary"]
    assert (s["images_ok"], s["images_failed"], s["files_skipped"]) == (len(want_ok), len(want_bad),
                                                                          len(corpus.skipped))


def test_stderr_holds_only_skipped_lines_and_the_summary(runs, corpus):
    """Nothing raw on stderr: no Python warning, no traceback; --list-skipped names each skipped file."""
    lines = runs["csv"]["proc"].stderr.decode().splitlines()
    skipped = [line for line in lines if line.startswith("skipped: ")]
    libtiff = [line for line in lines if line.startswith(LIBTIFF_PREFIX)]
    others = [line for line in lines if line not in skipped and line not in libtiff]
    n_ok = sum(e == "ok" for e in corpus.expect.values())
    assert len(others) == 1 and others[0].startswith(
        f"{n_ok} images ok, {len(corpus.expect) - n_ok} failed, {len(corpus.skipped)} non-image files skipped in ")
    assert [f"skipped: {corpus.path(rel)} (" for rel in sorted(corpus.skipped)] == \
        [line[: line.index(" (") + 2] for line in skipped]
    for line, rel in zip(skipped, sorted(corpus.skipped), strict=True):
        assert corpus.skipped[rel] in line, line
    for rel in corpus.hidden:
        assert not any(rel in line for line in lines)


def test_pillow_warnings_go_to_the_files_row(runs, corpus):
    header, *rows = runs["csv"]["rows"]
    col = header.index("warnings")
    by_path = {r[0]: r[col] for r in rows}
    assert "Skipping tag 271" in by_path[corpus.path("exif/warns.jpg")]
    assert by_path[corpus.path("good/rgb.jpg")] == ""
    jsonl = {r["path"]: r for r in runs["jsonl"]["rows"]}
    assert any("Skipping tag 271" in w for w in jsonl[corpus.path("exif/warns.jpg")]["warnings"])
    assert "warnings" not in jsonl[corpus.path("good/rgb.jpg")]


def test_decoded_inputs_match_hand_built_twins(runs, corpus):
    """Animated -> first frame, 16-bit -> scaled 8-bit, transparency -> white, a symlink -> its target."""
    for fmt in ("csv", "jsonl"):
        preds = _predictions(runs[fmt], fmt)
        p = corpus.path
        assert _same_prediction(preds, p("anim/anim.gif"), p("anim/frame0.png"))
        assert not _same_prediction(preds, p("anim/frame0.png"), p("anim/frame1.png"))  # frames differ
        if HAS_WEBP:
            assert _same_prediction(preds, p("anim/anim.webp"), p("anim/frame0.png"))
        assert _same_prediction(preds, p("modes/sixteen.png"), p("modes/sixteen_twin.png"))
        assert _same_prediction(preds, p("modes/pal_trans.png"), p("modes/pal_trans_twin.png"))
        assert _same_prediction(preds, p("links/to_rgb.png"), p("good/rgb.png"))
        assert _same_prediction(preds, p("good/photo.data"), p("good/rgb.jpg"))


def test_exif_orientation_is_applied_before_prediction(runs, corpus, tiny_package, tmp_path):
    """Orientation 6: the model sees the stored pixels turned 90 degrees clockwise (checked by hand)."""
    stored = np.asarray(open_image(corpus.path("exif/exif1.jpg")))  # the same JPEG data, tag 1
    h, w, _ = stored.shape
    upright = np.empty((w, h, 3), np.uint8)
    for i in range(w):  # displayed row i, column j is stored row h - 1 - j, column i
        for j in range(h):
            upright[i, j] = stored[h - 1 - j, i]
    rotated = np.asarray(open_image(corpus.path("exif/exif6.jpg")))
    np.testing.assert_array_equal(rotated, upright)
    # By pixel positions: red (stored left) on top, blue at the bottom, the green corner top right.
    assert rotated.shape == (80, 48, 3)
    assert rotated[5, 5, 0] > 200 and rotated[5, 5, 2] < 60  # red, top left
    assert rotated[75, 24, 2] > 200 and rotated[75, 24, 0] < 60  # blue
    assert rotated[3, 44, 1] > 200 and rotated[3, 44, 0] < 60  # green, top right
    # And the prediction of the tagged JPEG is that of the upright pixels saved losslessly.
    Image.fromarray(upright).save(tmp_path / "upright.png")
    (tmp_path / "exif6.jpg").write_bytes(Path(corpus.path("exif/exif6.jpg")).read_bytes())
    proc = subprocess.run([*INFER, str(tmp_path), "--model", str(tiny_package), "--backend", "onnxruntime",
                           "--no-progress", "--out", str(tmp_path / "p.csv")], capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = {r[0]: r for r in _csv_rows(tmp_path / "p.csv")[1:]}
    a, b = rows[str(tmp_path / "exif6.jpg")], rows[str(tmp_path / "upright.png")]
    assert a[1:] == b[1:]


# ----------------------------------------------------------------------------------------------
# exit codes


def _main(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    from dga.cli.infer import main

    monkeypatch.setattr(sys, "argv", ["dga-infer", *args])
    with pytest.raises(SystemExit) as info:
        main()
    return info.value.code, capsys.readouterr().err


def test_exit_0_when_every_image_is_predicted_skipped_files_aside(tiny_package, tmp_path, monkeypatch, capsys):
    src = tmp_path / "in"
    src.mkdir()
    _picture().save(src / "a.png")
    (src / "README.txt").write_text("not an image\n")
    (src / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    rc, err = _main(monkeypatch, capsys, str(src), "--model", str(tiny_package), "--backend", "onnxruntime",
                    "--no-progress", "--out", str(tmp_path / "p.csv"))
    assert rc == 0, err
    assert err.splitlines()[-1].startswith("1 images ok, 0 failed, 1 non-image files skipped in ")
    assert len(_csv_rows(tmp_path / "p.csv")) == 2


def test_a_file_given_by_name_always_gets_a_row(tiny_package, tmp_path, monkeypatch, capsys):
    notes = tmp_path / "README.txt"
    notes.write_text("not an image\n")
    rc, err = _main(monkeypatch, capsys, str(notes), "--model", str(tiny_package), "--backend", "onnxruntime",
                    "--no-progress", "--out", str(tmp_path / "p.csv"))
    assert rc == 3, err
    assert [(e["path"], e["reason"]) for e in _jsonl(tmp_path / "errors.jsonl")] == [(str(notes), "not-an-image")]


@pytest.mark.parametrize("debug", [False, True])
def test_exit_1_on_an_internal_error(debug, tmp_path, monkeypatch, capsys):
    from dga.runtime import run_folder

    def broken(*args, **kwargs):
        raise RuntimeError("something nobody\nanticipated")

    monkeypatch.setattr(run_folder, "infer_to_files", broken)
    monkeypatch.setenv("DGA_DEBUG", "1" if debug else "0")
    rc, err = _main(monkeypatch, capsys, str(tmp_path), "--model", str(tmp_path), "--no-progress")
    assert rc == 1
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: internal error in dga-infer (RuntimeError: something nobody anticipated)")
    assert "please report it" in last
    if debug:
        assert "Traceback (most recent call last)" in err and "in broken" in err
    else:
        assert err.count("\n") == 1 and "DGA_DEBUG=1" in last


def test_exit_2_on_a_usage_error(tmp_path, monkeypatch, capsys):
    rc, err = _main(monkeypatch, capsys, str(tmp_path), "--model", str(tmp_path), "--batch-size", "many")
    assert rc == 2 and err.startswith("error: ") and err.count("\n") == 1
