"""Diagnostic plots (PNG output, many classes) and the synthetic shapes dataset / description files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.cluster.hierarchy import linkage

from dga.train.hierarchy import build_hierarchy, default_level_sizes
from dga.train.plots import plot_dendrogram, plot_prm, plot_training_curves
from dga.train.synthetic import make_shapes_dataset, write_descriptions

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _check_png(path: Path, min_side: int = 100) -> tuple[int, int]:
    path = Path(path)
    assert path.is_file()
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        w, h = im.size
        assert im.format == "PNG"
    assert min_side <= w <= 10000 and min_side <= h <= 10000
    return w, h


def _only(folder: Path, names: set[str]) -> None:
    assert {p.name for p in folder.iterdir()} == names  # no temporary files left behind


# ------------------------------------------------------------------------------------------- plots


def test_training_curves(tmp_path):
    rows = [
        {"epoch": e, "train_loss": 2.0 / (e + 1), "train_acc": 0.1 * e, "val_acc": None if e % 2 else 0.08 * e,
         "lr": 0.01 * 0.9**e}
        for e in range(8)
    ]
    rows.append({"epoch": 8})  # all values missing
    rows.append({"train_loss": float("nan"), "lr": None})  # no epoch, nan
    out = plot_training_curves(rows, tmp_path / "sub" / "curves.png")
    assert out == tmp_path / "sub" / "curves.png"
    _check_png(out)
    _only(tmp_path / "sub", {"curves.png"})
    # empty input still gives a figure; overwriting in place works
    plot_training_curves([], out)
    _check_png(out)
    _only(tmp_path / "sub", {"curves.png"})


def _hier(c: int, seed: int = 0):
    feats = np.random.default_rng(seed).normal(size=(c, 6))
    return build_hierarchy(feats, default_level_sizes(c))


@pytest.mark.parametrize("c", [6, 120])
def test_dendrogram(tmp_path, c):
    h = _hier(c)
    names = [f"class_{i}_name" for i in range(c)]
    out = plot_dendrogram(h.linkage, names, h.parents, tmp_path / "dendro.png")
    w, _ = _check_png(out)
    _only(tmp_path, {"dendro.png"})
    if c == 120:
        small = plot_dendrogram(_hier(6).linkage, names[:6], _hier(6).parents, tmp_path / "small.png")
        assert w > _check_png(small)[0]  # width grows with the class count


def test_dendrogram_without_levels_and_bad_input(tmp_path):
    z = linkage(np.random.default_rng(1).normal(size=(5, 3)), method="centroid").tolist()
    _check_png(plot_dendrogram(z, list("abcde"), [], tmp_path / "d.png"))
    with pytest.raises(ValueError):
        plot_dendrogram(z, list("abcd"), [], tmp_path / "bad.png")
    with pytest.raises(ValueError):
        plot_dendrogram(z, list("abcde"), [[0, 1]], tmp_path / "bad.png")
    _only(tmp_path, {"d.png"})


@pytest.mark.parametrize(("c", "m", "group"), [(5, 12, 4), (9, 7, None), (120, 60, 20)])
def test_prm(tmp_path, c, m, group):
    prm = np.random.default_rng(c).random((c, m)).astype(np.float32)
    prm /= prm.sum(axis=1, keepdims=True)
    out = plot_prm(prm, [f"c{i}" for i in range(c)], tmp_path / "prm.png", group_size=group)
    _check_png(out)
    _only(tmp_path, {"prm.png"})


def test_prm_bad_input(tmp_path):
    with pytest.raises(ValueError):
        plot_prm(np.zeros(5), ["a"] * 5, tmp_path / "p.png")
    with pytest.raises(ValueError):
        plot_prm(np.zeros((3, 4)), ["a", "b"], tmp_path / "p.png")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------- synthetic

EXPECTED = sorted(f"{c}_{s}" for c in ("red", "green", "blue") for s in ("circle", "square", "triangle"))


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_shapes_dataset_layout(tmp_path):
    names = make_shapes_dataset(tmp_path / "ds")
    assert names == EXPECTED
    root = tmp_path / "ds"
    assert sorted(p.name for p in root.iterdir()) == ["test", "train", "val"]
    jpegs = 0
    for split, n in {"train": 8, "val": 4, "test": 4}.items():
        assert sorted(p.name for p in (root / split).iterdir()) == EXPECTED
        for cls in EXPECTED:
            files = sorted((root / split / cls).iterdir())
            assert len(files) == n
            assert {f.stem for f in files} == {str(i) for i in range(n)}
            for f in files:
                assert f.suffix in (".png", ".jpg")
                jpegs += f.suffix == ".jpg"
                with Image.open(f) as im:
                    assert im.size == (64, 64)
                    assert im.mode == "RGB"
                    assert im.format == ("PNG" if f.suffix == ".png" else "JPEG")
    assert 0 < jpegs < 9 * 16 // 2  # a few JPEGs, mostly PNG


def test_shapes_dataset_options_and_loader(tmp_path):
    names = make_shapes_dataset(
        tmp_path / "ds", shapes=("star", "circle"), colours=("yellow",), per_split={"train": 2}, size=32, seed=3
    )
    assert names == ["yellow_circle", "yellow_star"]
    files = sorted((tmp_path / "ds").rglob("*.*"))
    assert len(files) == 4
    with Image.open(files[0]) as im:
        assert im.size == (32, 32)
    with pytest.raises(ValueError):
        make_shapes_dataset(tmp_path / "bad", shapes=("blob",))
    with pytest.raises(ValueError):
        make_shapes_dataset(tmp_path / "bad", colours=("notacolour",))


def test_shapes_dataset_determinism(tmp_path):
    kw = {"per_split": {"train": 4, "val": 1}, "size": 48}
    make_shapes_dataset(tmp_path / "a", seed=7, **kw)
    make_shapes_dataset(tmp_path / "b", seed=7, **kw)
    make_shapes_dataset(tmp_path / "c", seed=8, **kw)
    a, b, c = _tree(tmp_path / "a"), _tree(tmp_path / "b"), _tree(tmp_path / "c")
    assert len(a) == 9 * 5
    assert a == b
    assert a.keys() == c.keys()
    assert all(a[k] != c[k] for k in a)  # every image differs under another seed


def test_shapes_dataset_colour_carries_signal(tmp_path):
    """The shape's colour dominates the image's most saturated pixels, so same-colour classes look alike."""
    make_shapes_dataset(tmp_path / "ds", per_split={"train": 3})
    for cls in EXPECTED:
        colour = cls.split("_")[0]
        channel = {"red": 0, "green": 1, "blue": 2}[colour]
        for f in (tmp_path / "ds" / "train" / cls).iterdir():
            arr = np.asarray(Image.open(f).convert("RGB"), dtype=np.float64)
            sat = arr.max(axis=2) - arr.min(axis=2)
            top = arr[sat >= np.quantile(sat, 0.9)].mean(axis=0)
            assert int(np.argmax(top)) == channel


ROLES = {
    "default": "descriptions.json",
    "des": "desattr.json",
    "dist": "distattr.json",
    "cause0": "cause_shape.json",
    "cause1": "cause_colour.json",
    "cause2": "cause_texture.json",
}


def test_descriptions(tmp_path):
    paths = write_descriptions(tmp_path, EXPECTED)
    assert {r: p.name for r, p in paths.items()} == ROLES
    assert all(p.parent == tmp_path for p in paths.values())
    _only(tmp_path, set(ROLES.values()))
    loaded = {r: json.loads(p.read_text(encoding="utf-8")) for r, p in paths.items()}
    for role, data in loaded.items():
        assert list(data) == EXPECTED, role
        for cls, sentences in data.items():
            assert isinstance(sentences, list)
            assert len(sentences) >= 25, (role, cls)
            assert len(set(sentences)) == len(sentences), (role, cls)
            assert all(isinstance(s, str) and len(s.strip()) >= 20 for s in sentences), (role, cls)
    for cls in EXPECTED:
        colour, shape = cls.split("_")
        default = loaded["default"][cls]
        assert all(colour in s or shape in s for s in default)
        assert sum(colour in s and shape in s for s in default) >= 20
        # causes stay on their own cause
        others = {"red", "green", "blue"} - {colour}
        assert not any(c in s for s in loaded["cause0"][cls] for c in ("red", "green", "blue"))
        assert not any(sh in s for s in loaded["cause1"][cls] for sh in ("circle", "square", "triangle"))
        assert any(shape in s for s in loaded["cause0"][cls])
        assert any(colour in s for s in loaded["cause1"][cls])
        # distinguishing sentences name the neighbours that share a colour or a shape
        dist = loaded["dist"][cls]
        assert any(f"unlike the {o} {shape}, this one is {colour}" in s for s in dist for o in others)
    # the loader of the real pipeline accepts them
    from dga.train.data import load_descriptions

    for p in paths.values():
        assert list(load_descriptions(p, EXPECTED)) == EXPECTED


def test_descriptions_deterministic(tmp_path):
    a = write_descriptions(tmp_path / "a", EXPECTED)
    b = write_descriptions(tmp_path / "b", list(EXPECTED))
    for role in ROLES:
        assert a[role].read_bytes() == b[role].read_bytes()
    names = make_shapes_dataset(tmp_path / "ds", shapes=("hexagon", "diamond"), colours=("purple", "teal"),
                                per_split={"train": 1})
    paths = write_descriptions(tmp_path / "ds", names)
    for p in paths.values():
        data = json.loads(p.read_text(encoding="utf-8"))
        assert list(data) == names and all(len(v) >= 25 for v in data.values())
