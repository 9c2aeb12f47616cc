"""The embedded downstream benchmark scene-fills-24 (issue 5, part 3): structure, determinism, descriptions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from dga.train import scenebench
from dga.train.scenes import SHAPES
from dga.train.synthetic import _COLOURS


def test_24_classes_in_6_colour_groups_of_4_fills():
    names = [c[0] for c in scenebench.classes()]
    assert len(names) == 24 and names == sorted(names)
    groups = {}
    for n in names:
        groups.setdefault(scenebench.superclass_of(n), []).append(n)
    assert len(groups) == 6 and all(len(v) == 4 for v in groups.values())
    assert "red_striped" in names and "cyan_outlined" in names


def test_generation_is_deterministic_and_mixes_formats_and_sizes(tmp_path):
    per = {"train": 5, "test": 1}
    a = scenebench.make_benchmark(tmp_path / "a", per_split=per, seed=3)
    b = scenebench.make_benchmark(tmp_path / "b", per_split=per, seed=3)
    assert a == b
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert files_a == sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert len([f for f in files_a if f.suffix in (".jpg", ".png")]) == 24 * 6
    for f in files_a:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()
    train = list((tmp_path / "a" / "train").rglob("*.*"))
    assert {p.suffix for p in train} == {".jpg", ".png"}  # every fifth image is a PNG
    sides = {Image.open(p).size for p in train}
    lo, hi = scenebench.RENDER_SIZES
    assert all(w == h and lo <= w <= hi for w, h in sides) and len(sides) > 10
    other = scenebench.make_benchmark(tmp_path / "c", per_split={"train": 1}, seed=4, descriptions=False)
    assert other == a and (tmp_path / "c/train/red_solid/0.jpg").read_bytes() != (
        tmp_path / "a/train/red_solid/0.jpg").read_bytes()


def _inside_frame(arr: np.ndarray) -> np.ndarray:
    m = int(np.ceil(scenebench.FRAME_WIDTH[1] * arr.shape[0])) + 1  # past the widest frame
    return arr[m:-m, m:-m]


def test_the_class_colour_is_what_the_object_is_painted(tmp_path):
    """Solid objects: inside the frame, many pixels near the class colour, few near the other groups' colours."""
    scenebench.make_benchmark(tmp_path, per_split={"train": 5}, descriptions=False)
    for colour in scenebench.PALETTES:
        near = {}
        for other in scenebench.PALETTES:
            ref = np.array(_COLOURS[other][0], dtype=np.float64)
            count = 0
            for p in (tmp_path / "train" / f"{colour}_solid").iterdir():
                arr = _inside_frame(np.asarray(Image.open(p).convert("RGB"), dtype=np.float64))
                count += int((np.abs(arr - ref).max(axis=-1) < 30).sum())
            near[other] = count
        assert max(near, key=near.get) == colour, (colour, near)


def test_frame_geometry_by_hand():
    """A 10 x 10 black image in a 3-px frame: 16 x 16, the inside untouched, the ring mat or one colour."""
    rng = np.random.default_rng(0)
    out = np.asarray(scenebench.framed(Image.new("RGB", (10, 10)), 3, rng), dtype=np.float64)
    assert out.shape == (16, 16, 3)
    assert (out[3:13, 3:13] == 0).all()
    ring = np.concatenate([out[:3].reshape(-1, 3), out[-3:].reshape(-1, 3), out[3:13, :3].reshape(-1, 3),
                           out[3:13, -3:].reshape(-1, 3)])
    assert len(ring) == 16 * 16 - 100
    mat = np.abs(ring - scenebench.FRAME_BASE).max(axis=1) < 15  # grain is N(0, 3)
    painted = ring[~mat]
    if len(painted):  # the pattern's pixels: one palette colour (+-18 tint, grain)
        dists = {c: np.abs(painted - np.array(_COLOURS[c][0])).max(axis=1).max() for c in scenebench.PALETTES}
        assert min(dists.values()) < 18 + 15, dists
    for side in (112, 160):
        widths = {scenebench.frame_width(side, np.random.default_rng(i)) for i in range(200)}
        lo, hi = scenebench.FRAME_WIDTH
        assert min(widths) >= round(lo * side) and max(widths) <= round(hi * side) and len(widths) > 3


def test_every_image_is_framed_in_colours_drawn_apart_from_the_class(tmp_path):
    """The outer ring of every image (narrower than the narrowest frame) is painted in a palette colour
    that does not follow the class."""
    scenebench.make_benchmark(tmp_path, per_split={"train": 10}, descriptions=False)
    palette = {c: np.array(_COLOURS[c][0], dtype=np.float64) for c in scenebench.PALETTES}
    ring_px = int(scenebench.FRAME_WIDTH[0] * scenebench.RENDER_SIZES[0])  # 6 px: inside every frame
    for name, _, _ in scenebench.classes():
        frame_colours = set()
        for p in (tmp_path / "train" / name).iterdir():
            arr = np.asarray(Image.open(p).convert("RGB"), dtype=np.float64)
            ring = np.concatenate([arr[:ring_px].reshape(-1, 3), arr[-ring_px:].reshape(-1, 3),
                                   arr[:, :ring_px].reshape(-1, 3), arr[:, -ring_px:].reshape(-1, 3)])
            far = ring[np.argsort(np.abs(ring - scenebench.FRAME_BASE).max(axis=1))[-20:]]  # the pattern's core
            dist = {c: np.abs(far - ref).max(axis=1).mean() for c, ref in palette.items()}
            colour = min(dist, key=dist.get)
            assert dist[colour] < 60, (p, dist)  # +-18 tint, grain and JPEG
            frame_colours.add(colour)
        assert len(frame_colours) >= 3, (name, frame_colours)  # 10 frames of one class: several colours


def test_description_files_cover_every_role_and_keep_causes_apart(tmp_path):
    paths = scenebench.write_descriptions(tmp_path)
    assert list(paths) == ["default", "des", "dist", "cause0", "cause1", "cause2"]
    names = [c[0] for c in scenebench.classes()]
    data = {role: json.loads(Path(p).read_text()) for role, p in paths.items()}
    for role, d in data.items():
        assert sorted(d) == names, role
        for cls, sentences in d.items():
            usable = [s for s in sentences if len(s) >= 20]
            assert len(usable) >= 17 and len(set(sentences)) == len(sentences), (role, cls)
    colours = set(scenebench.PALETTES) | {"orange", "pink"}
    fills = {"solid", "striped", "dotted", "outlined"}
    for cls in names:
        colour, fill = cls.split("_")
        subject = f"{colour} {fill} shape"  # class names use the fill word: red_outlined
        # Every cause sentence names its class (as LLM-written cause descriptions do) ...
        for role in ("cause0", "cause1", "cause2"):
            assert all(subject in sentence for sentence in data[role][cls]), (role, cls)
        # ... and, once the class name is taken out, speaks of its own cause only.
        shape_words = " ".join(data["cause0"][cls]).replace(subject, "")
        assert not any(c in shape_words for c in colours) and not any(f in shape_words for f in fills)
        mentioned = {s for s in SHAPES if s in shape_words}
        assert mentioned == set(scenebench.PALETTES[colour]), (cls, mentioned)  # the group's usual shapes only
        colour_words = " ".join(data["cause1"][cls]).replace(subject, "")
        assert colour in colour_words and not any(f in colour_words for f in fills - {"solid"})
        assert not any(s in colour_words for s in SHAPES)
        texture_words = " ".join(data["cause2"][cls]).replace(subject, "")
        assert fill in texture_words
        assert not any(c in texture_words.split() for c in colours)
        assert not any(s in texture_words for s in SHAPES)
