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


def test_the_class_colour_is_what_the_object_is_painted(tmp_path):
    """Solid objects: many pixels near the class colour, few near the other groups' colours."""
    scenebench.make_benchmark(tmp_path, per_split={"train": 5}, descriptions=False)
    for colour in scenebench.PALETTES:
        near = {}
        for other in scenebench.PALETTES:
            ref = np.array(_COLOURS[other][0], dtype=np.float64)
            count = 0
            for p in (tmp_path / "train" / f"{colour}_solid").iterdir():
                arr = np.asarray(Image.open(p).convert("RGB"), dtype=np.float64)
                count += int((np.abs(arr - ref).max(axis=-1) < 30).sum())
            near[other] = count
        assert max(near, key=near.get) == colour, (colour, near)


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
