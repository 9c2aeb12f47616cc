"""Data loading: ImageFolder, CoOp layouts, few-shot split files, descriptions, image transforms."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dga.errors import DataError
from dga.runtime.preprocess import eval_image
from dga.train.data import (
    DATASETS,
    DatasetSplits,
    ImageListDataset,
    detect_layout,
    eval_transform,
    fewshot_splits,
    load_dataset,
    load_descriptions,
    load_imagefolder,
    sample_descriptions,
    template_sentences,
    train_transform,
)
from dga.train.data.coop import SPLIT_FILE_DATASETS


def _img(path: Path, color: tuple[int, int, int] = (10, 20, 30), size: tuple[int, int] = (8, 8)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = "JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG"
    Image.new("RGB", size, color).save(path, format=fmt)
    return path


def _class_tree(base: Path, counts: dict[str, int], ext: str = ".png") -> None:
    for cname, n in counts.items():
        for i in range(n):
            _img(base / cname / f"{i:03d}{ext}")


# ----------------------------------------------------------------------------- ImageFolder


def test_imagefolder_layout_a_with_val_and_test(tmp_path: Path) -> None:
    _class_tree(tmp_path / "train", {"dog": 3, "cat": 4})
    _class_tree(tmp_path / "val", {"cat": 1, "dog": 2})
    _class_tree(tmp_path / "test", {"cat": 2})  # a test set may lack a class
    (tmp_path / "train" / "cat" / "notes.txt").write_text("x")
    (tmp_path / "train" / "cat" / ".hidden.png").write_bytes(b"")
    _img(tmp_path / "train" / "cat" / "UPPER.JPG")

    s = load_imagefolder(tmp_path)
    assert s.classnames == ["cat", "dog"]
    assert s.name == tmp_path.name
    assert [lab for _, lab in s.train] == [0] * 5 + [1] * 3
    assert len(s.val) == 3 and len(s.test) == 2
    assert all(Path(p).is_absolute() for p, _ in s.train + s.val + s.test)
    assert str(tmp_path / "train" / "cat" / "UPPER.JPG") in dict(s.train)
    assert not any(p.endswith((".txt", ".hidden.png")) for p, _ in s.train)


def test_imagefolder_layout_a_carves_val_from_train(tmp_path: Path) -> None:
    _class_tree(tmp_path / "train", {"a": 5, "b": 10})
    _class_tree(tmp_path / "test", {"a": 2, "b": 2})
    s = load_imagefolder(tmp_path, val_fraction=0.2)
    # round(5 * 0.2) = 1, round(10 * 0.2) = 2
    assert [lab for _, lab in s.val] == [0, 1, 1]
    assert len(s.train) == 12 and len(s.test) == 4
    assert not set(s.train) & set(s.val)
    assert load_imagefolder(tmp_path, val_fraction=0.2) == s  # deterministic


def test_imagefolder_layout_b_stratified_and_seeded(tmp_path: Path) -> None:
    _class_tree(tmp_path, {"c": 10, "a": 10, "b": 5}, ext=".jpg")
    s = load_imagefolder(tmp_path, val_fraction=0.2, test_fraction=0.2, seed=0)
    assert s.classnames == ["a", "b", "c"]
    for label, (n_train, n_val, n_test) in enumerate([(6, 2, 2), (3, 1, 1), (6, 2, 2)]):
        assert sum(lab == label for _, lab in s.train) == n_train
        assert sum(lab == label for _, lab in s.val) == n_val
        assert sum(lab == label for _, lab in s.test) == n_test
    everything = s.train + s.val + s.test
    assert len(set(everything)) == 25
    assert load_imagefolder(tmp_path, seed=0) == s
    others = [load_imagefolder(tmp_path, seed=k) for k in (1, 2, 3)]
    assert any(o.test != s.test for o in others)


def test_imagefolder_tiny_class_keeps_a_training_image(tmp_path: Path) -> None:
    _class_tree(tmp_path, {"one": 1, "two": 2, "many": 10})
    s = load_imagefolder(tmp_path, val_fraction=0.3, test_fraction=0.3)
    one = s.classnames.index("one")
    two = s.classnames.index("two")
    assert sum(lab == one for _, lab in s.train) == 1
    assert sum(lab == two for _, lab in s.train) == 1
    assert sum(lab == two for _, lab in s.test) == 1  # val gives up its image first


def test_imagefolder_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_imagefolder(tmp_path / "nope")
    with pytest.raises(DataError, match="no class folders"):
        load_imagefolder(tmp_path)
    (tmp_path / "empty_class").mkdir()
    _class_tree(tmp_path, {"full": 2})
    with pytest.raises(DataError, match="'empty_class'.*no images"):
        load_imagefolder(tmp_path)
    for vf, tf in ((1.0, 0.1), (-0.1, 0.1), (0.5, 0.5)):
        with pytest.raises(DataError, match="fraction"):
            load_imagefolder(tmp_path, val_fraction=vf, test_fraction=tf)


def test_imagefolder_test_class_not_in_train(tmp_path: Path) -> None:
    _class_tree(tmp_path / "train", {"a": 2, "b": 2})
    _class_tree(tmp_path / "test", {"a": 1, "zebra": 1})
    with pytest.raises(DataError, match="'zebra'") as e:
        load_imagefolder(tmp_path)
    assert str(tmp_path / "test") in str(e.value)


# ----------------------------------------------------------------------------- CoOp layouts

_CLASSES = ["class zero", "class_one", "Class Two"]
_COUNTS = {"train": 3, "val": 2, "test": 1}


def _make_split_dataset(data: Path, key: str) -> Path:
    """A fake CoOp dataset under data/<folder>: 3 classes, 3/2/1 images each, and its split file."""
    spec = SPLIT_FILE_DATASETS[key]
    root = data / spec.folder
    image_dir = root / spec.image_dir if spec.image_dir else root
    split: dict[str, list[list[object]]] = {}
    for name, n in _COUNTS.items():
        split[name] = []
        for label, cname in enumerate(_CLASSES):
            for i in range(n):
                rel = f"c{label}/{name}_{i}.jpg"
                _img(image_dir / rel)
                split[name].append([rel, label, cname])
    (root / spec.split_file).write_text(json.dumps(split))
    return root


@pytest.mark.parametrize("key", sorted(SPLIT_FILE_DATASETS))
def test_coop_split_file_datasets(tmp_path: Path, key: str) -> None:
    root = _make_split_dataset(tmp_path, key)
    assert detect_layout(root) == key
    s = DATASETS[key](root)
    assert s.classnames == _CLASSES
    assert s.name == key
    for name, n in _COUNTS.items():
        items = getattr(s, name)
        assert [lab for _, lab in items] == [lab for lab in range(3) for _ in range(n)]
        assert all(Path(p).is_file() for p, _ in items)
    # the parent folder ($DATA in CoOp's instructions) works too
    assert DATASETS[key](tmp_path) == s
    assert load_dataset(root) == s


def test_coop_stanford_cars_images_at_root(tmp_path: Path) -> None:
    root = _make_split_dataset(tmp_path, "stanford_cars")
    s = DATASETS["stanford_cars"](root)
    assert s.train[0][0] == str(root / "c0" / "train_0.jpg")


def test_coop_label_order_from_split_file(tmp_path: Path) -> None:
    root = tmp_path / "dtd"
    _img(root / "images" / "x.jpg")
    split = {
        "train": [["x.jpg", 1, "banded"], ["x.jpg", 0, "zigzagged"]],
        "val": [],
        "test": [["x.jpg", 2, "aardvark"]],
    }
    (root / "split_zhou_DescribableTextures.json").write_text(json.dumps(split))
    assert DATASETS["dtd"](root).classnames == ["zigzagged", "banded", "aardvark"]


def test_coop_errors(tmp_path: Path) -> None:
    root = tmp_path / "pets"
    root.mkdir()
    split_path = root / "split_zhou_OxfordPets.json"
    with pytest.raises(DataError, match="split file .*split_zhou_OxfordPets.json is missing"):
        DATASETS["oxford_pets"](root)
    split_path.write_text('{"train": [], "val": [], "test": []}')
    with pytest.raises(DataError, match=r"image folder .*images is missing"):
        DATASETS["oxford_pets"](root)
    (root / "images").mkdir()
    split_path.write_text('{"train": [\n["a.jpg", 0, "x"],\n]}')
    with pytest.raises(DataError, match=r"not valid JSON \(line 3") as e:
        DATASETS["oxford_pets"](root)
    assert str(split_path) in str(e.value)
    split_path.write_text('{"train": [["a.jpg", "0", "x"]], "val": [], "test": []}')
    with pytest.raises(DataError, match=r"train\[0\]"):
        DATASETS["oxford_pets"](root)
    split_path.write_text('{"train": [["a.jpg", 1, "x"]], "val": [], "test": []}')
    with pytest.raises(DataError, match="without gaps"):
        DATASETS["oxford_pets"](root)
    with pytest.raises(DataError, match="does not exist"):
        DATASETS["oxford_pets"](tmp_path / "missing")
    with pytest.raises(DataError, match="unknown dataset 'pets'"):
        load_dataset(root, name="pets")


def test_coop_fgvc_aircraft(tmp_path: Path) -> None:
    root = tmp_path / "fgvc_aircraft"
    variants = ["Boeing 717", "A300B4", "707-320"]
    (root / "images").mkdir(parents=True)
    (root / "variants.txt").write_text("\n".join(variants) + "\n")
    ids = iter(range(1000, 2000))
    for split, n in _COUNTS.items():
        lines = []
        for v in variants:
            for _ in range(n):
                i = next(ids)
                _img(root / "images" / f"{i:07d}.jpg")
                lines.append(f"{i:07d} {v}")
        (root / f"images_variant_{split}.txt").write_text("\n".join(lines) + "\n")
    assert detect_layout(root) == "fgvc_aircraft"
    s = DATASETS["fgvc_aircraft"](root)
    assert s.classnames == variants
    assert [lab for _, lab in s.train] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert len(s.val) == 6 and len(s.test) == 3
    assert s.train[0][0] == str(root / "images" / "0001000.jpg")
    assert all(Path(p).is_file() for p, _ in s.train + s.val + s.test)
    (root / "images_variant_test.txt").write_text("0001999 Airbus Nonexistent\n")
    with pytest.raises(DataError, match="line 1"):
        DATASETS["fgvc_aircraft"](root)


@pytest.mark.parametrize("nested", [False, True])
def test_coop_imagenet(tmp_path: Path, nested: bool) -> None:
    root = tmp_path / "imagenet"
    image_dir = root / "images" if nested else root
    wnids = {"n02": "goldfish", "n01": "tench fish"}
    for w in wnids:
        for i in range(10):
            _img(image_dir / "train" / w / f"{w}_{i}.JPEG")
        for i in range(3):
            _img(image_dir / "val" / w / f"val_{w}_{i}.JPEG")
    (root / "classnames.txt").write_text("n01 tench fish\nn02 goldfish\n")
    assert detect_layout(root) == "imagenet"
    s = DATASETS["imagenet"](root)
    assert s.classnames == ["tench fish", "goldfish"]  # sorted wnids
    # val carved from train: max(4, round(1 % of 10)) = 4 per class
    assert [lab for _, lab in s.val] == [0] * 4 + [1] * 4
    assert [lab for _, lab in s.train] == [0] * 6 + [1] * 6
    assert not set(s.train) & set(s.val)
    assert [lab for _, lab in s.test] == [0] * 3 + [1] * 3
    assert DATASETS["imagenet"](root) == s
    (root / "classnames.txt").write_text("n01 tench fish\n")
    with pytest.raises(DataError, match="'n02'"):
        DATASETS["imagenet"](root)


def test_detect_layout_plain_folder(tmp_path: Path) -> None:
    _class_tree(tmp_path, {"a": 2, "b": 2})
    assert detect_layout(tmp_path) is None
    assert load_dataset(tmp_path, val_fraction=0.0, test_fraction=0.5).classnames == ["a", "b"]


# ----------------------------------------------------------------------------- few-shot


def _fake_splits(root: Path, n_train: int = 10, n_val: int = 6, classes: int = 3) -> DatasetSplits:
    """Paths only: few-shot sampling never opens files."""
    classnames = [f"k{c}" for c in range(classes)]

    def items(split: str, n: int) -> list[tuple[str, int]]:
        return [(str(root / split / f"k{c}" / f"{i}.jpg"), c) for c in range(classes) for i in range(n)]

    return DatasetSplits(classnames, items("train", n_train), items("val", n_val), items("test", 2),
                         "fake", str(root))


def test_fewshot_counts_and_file(tmp_path: Path) -> None:
    s = _fake_splits(tmp_path / "data")
    fs = fewshot_splits(s, shots=2, seed=1, split_dir=tmp_path / "splits")
    assert [lab for _, lab in fs.train] == [0, 0, 1, 1, 2, 2]
    assert [lab for _, lab in fs.val] == [0, 0, 1, 1, 2, 2]  # min(2, 4)
    assert fs.test == s.test and fs.classnames == s.classnames
    assert set(fs.train) <= set(s.train) and set(fs.val) <= set(s.val)
    f = tmp_path / "splits" / "shot_2-seed_1.json"
    obj = json.loads(f.read_text())
    assert obj["dataset"] == "fake" and obj["shots"] == 2 and obj["seed"] == 1
    assert obj["classnames"] == ["k0", "k1", "k2"]
    assert obj["train"][0][0].startswith("train/k0/")  # relative to the dataset root
    assert not list((tmp_path / "splits").glob(".*tmp"))

    with pytest.warns(UserWarning, match="3 class\\(es\\) have fewer than 16 images.*'k0' \\(10\\)"):
        fs16 = fewshot_splits(s, shots=16, seed=1, split_dir=tmp_path / "splits")
    assert len(fs16.val) == 3 * 4  # val capped at 4 per class


def test_fewshot_warns_on_small_class(tmp_path: Path) -> None:
    s = _fake_splits(tmp_path, n_train=3)
    with pytest.warns(UserWarning, match="fewer than 5 images"):
        fs = fewshot_splits(s, shots=5, seed=0, split_dir=tmp_path / "splits")
    assert fs.train == s.train


def test_fewshot_determinism(tmp_path: Path) -> None:
    s = _fake_splits(tmp_path / "data")
    fewshot_splits(s, shots=3, seed=7, split_dir=tmp_path / "a")
    fewshot_splits(s, shots=3, seed=7, split_dir=tmp_path / "b")
    fewshot_splits(s, shots=3, seed=8, split_dir=tmp_path / "c")
    a = (tmp_path / "a" / "shot_3-seed_7.json").read_text()
    assert a == (tmp_path / "b" / "shot_3-seed_7.json").read_text()
    c = json.loads((tmp_path / "c" / "shot_3-seed_8.json").read_text())
    assert json.loads(a)["train"] != c["train"]


def test_fewshot_reuses_existing_file_on_another_machine(tmp_path: Path) -> None:
    s = _fake_splits(tmp_path / "data")
    split_dir = tmp_path / "splits"
    fewshot_splits(s, shots=1, seed=0, split_dir=split_dir)
    f = split_dir / "shot_1-seed_0.json"
    obj = json.loads(f.read_text())
    obj["train"] = [["train/k0/9.jpg", 0], ["train/k1/9.jpg", 1], ["train/k2/9.jpg", 2]]
    f.write_text(json.dumps(obj))
    # same dataset at another location: relative paths resolve against the new root
    moved = _fake_splits(tmp_path / "elsewhere")
    fs = fewshot_splits(moved, shots=1, seed=0, split_dir=split_dir)
    assert fs.train == [(str(tmp_path / "elsewhere" / "train" / f"k{c}" / "9.jpg"), c) for c in range(3)]
    assert json.loads(f.read_text()) == obj  # not rewritten


def test_fewshot_mismatch_errors(tmp_path: Path) -> None:
    s = _fake_splits(tmp_path / "data")
    split_dir = tmp_path / "splits"
    fewshot_splits(s, shots=2, seed=0, split_dir=split_dir)
    other = _fake_splits(tmp_path / "data", classes=4)
    with pytest.raises(DataError, match="other classes.*delete it or use another --splits-dir") as e:
        fewshot_splits(other, shots=2, seed=0, split_dir=split_dir)
    assert "shot_2-seed_0.json" in str(e.value)
    f = split_dir / "shot_2-seed_0.json"
    obj = json.loads(f.read_text())
    obj["train"][0] = ["train/k0/not_in_dataset.jpg", 0]
    f.write_text(json.dumps(obj))
    with pytest.raises(DataError, match="not in this dataset's train split"):
        fewshot_splits(s, shots=2, seed=0, split_dir=split_dir)
    f.write_text("{broken")
    with pytest.raises(DataError, match="not valid JSON"):
        fewshot_splits(s, shots=2, seed=0, split_dir=split_dir)


def test_fewshot_shots_values(tmp_path: Path) -> None:
    s = _fake_splits(tmp_path)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(DataError, match="shots"):
            fewshot_splits(s, shots=bad, seed=0, split_dir=tmp_path / "splits")  # type: ignore[arg-type]
    assert fewshot_splits(s, shots="all", seed=0, split_dir=tmp_path / "splits") is s
    assert fewshot_splits(s, shots=None, seed=0, split_dir=tmp_path / "splits") is s
    assert not (tmp_path / "splits").exists()


def test_dataset_splits_json_roundtrip_and_label_check(tmp_path: Path) -> None:
    s = _fake_splits(tmp_path)
    assert DatasetSplits.from_json(json.loads(json.dumps(s.to_json()))) == s
    with pytest.raises(DataError, match="label 3"):
        DatasetSplits(["a", "b", "c"], [("/x.jpg", 3)], [], [], "bad")


# ----------------------------------------------------------------------------- descriptions

_NAMES = ["Sea Lion", "golden_retriever", "cat"]


def _write(tmp_path: Path, obj: object) -> Path:
    p = tmp_path / "descs.json"
    p.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return p


def test_descriptions_match_case_and_underscores(tmp_path: Path) -> None:
    p = _write(tmp_path, {"cat": ["a cat."], "sea_lion": ["a sea lion."], "Golden Retriever": ["a dog."]})
    d = load_descriptions(p, _NAMES)
    assert list(d) == _NAMES
    assert d == {"Sea Lion": ["a sea lion."], "golden_retriever": ["a dog."], "cat": ["a cat."]}


def test_descriptions_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist") as e:
        load_descriptions(tmp_path / "none.json", _NAMES)
    assert "none.json" in str(e.value)
    good = {"sea lion": ["x"], "golden retriever": ["y"], "cat": ["z"]}
    cases: list[tuple[object, str]] = [
        ('{\n"cat": ["a"],\n"dog" ["b"]\n}', r"not valid JSON \(line 3"),
        (["cat"], "must be a JSON object.*not a list"),
        ({**good, "cat": "a cat"}, "value of 'cat' is not a list of strings"),
        ({**good, "cat": ["ok", 3]}, "value of 'cat' is not a list of strings"),
        ({**good, "cat": []}, "'cat' has an empty list"),
        ({"sea lion": ["x"]}, "no descriptions for class\\(es\\) 'golden_retriever', 'cat'"),
        ({**good, "dog": ["d"], "bird": ["b"]}, "'dog', 'bird' that are not in the dataset"),
        ({**good, "Cat": ["z"], "CAT": ["z"]}, "'Cat', 'CAT' that are not in the dataset"),
    ]
    for content, pattern in cases:
        p = _write(tmp_path, content)
        with pytest.raises(DataError, match=pattern) as e:
            load_descriptions(p, _NAMES)
        assert str(p) in str(e.value)


def test_descriptions_ambiguous_and_many_missing(tmp_path: Path) -> None:
    p = _write(tmp_path, {"Sea Lion ": ["x"], "sea_lion": ["y"]})
    with pytest.raises(DataError, match="all match class 'sea lion'"):
        load_descriptions(p, ["sea lion"])
    names = [f"c{i}" for i in range(8)]
    p = _write(tmp_path, {"c0": ["x"]})
    with pytest.raises(DataError, match="'c1', 'c2', 'c3', 'c4', 'c5' and 2 more; add them"):
        load_descriptions(p, names)


def test_sample_descriptions_exact_and_filter() -> None:
    descs = {
        "a": ["short", "a sentence long enough", "another long sentence", "tiny"],
        "b": ["one more long sentence!", "and yet another long one"],
    }
    out = sample_descriptions(descs, m=2, min_chars=20, seed=0)
    # exactly m left after filtering: kept as is, in file order, no randomness
    assert out == {"a": ["a sentence long enough", "another long sentence"], "b": descs["b"]}


def test_sample_descriptions_without_replacement() -> None:
    sents = [f"sentence number {i:02d} is long" for i in range(10)]
    out = sample_descriptions({"a": sents}, m=4, min_chars=5, seed=3)
    expected_idx = sorted(random.Random(3).sample(range(10), 4))
    assert out["a"] == [sents[i] for i in expected_idx]
    assert len(set(out["a"])) == 4
    assert sample_descriptions({"a": sents}, m=4, min_chars=5, seed=3) == out
    draws = {tuple(sample_descriptions({"a": sents}, m=4, min_chars=5, seed=s)["a"]) for s in range(5)}
    assert len(draws) > 1


def test_sample_descriptions_with_replacement_fill() -> None:
    pool = ["first long sentence here", "second long sentence here"]
    out = sample_descriptions({"a": pool + ["short"]}, m=5, min_chars=20, seed=0)
    assert out["a"][:2] == pool
    assert out["a"][2:] == random.Random(0).choices(pool, k=3)
    assert len(out["a"]) == 5


def test_sample_descriptions_all_short_keeps_original() -> None:
    with pytest.warns(UserWarning, match="shorter than 20 characters.*'b'"):
        out = sample_descriptions({"a": ["long enough sentence, yes"], "b": ["tiny", "small"]}, m=2)
    assert out["b"] == ["tiny", "small"]
    with pytest.raises(DataError):
        sample_descriptions({"a": ["x"]}, m=0)


def test_template_sentences() -> None:
    assert template_sentences(["sea_lion", "Cat"]) == {
        "sea_lion": ["This is a photo of a sea lion."],
        "Cat": ["This is a photo of a Cat."],
    }
    assert template_sentences(["a_b"], "a {} here")["a_b"] == ["a a b here"]
    with pytest.raises(DataError):
        template_sentences(["x"], "no slot")


# ----------------------------------------------------------------------------- images


def test_eval_transform_resizes_shorter_side_then_centre_crops() -> None:
    # 32 x 16 (w x h), S = 8: resized to 16 x 8, the centre crop keeps resized columns 4..11,
    # i.e. original columns 8..23: the green middle half. Red and blue quarters fall outside.
    arr = np.zeros((16, 32, 3), np.uint8)
    arr[:, :8] = (255, 0, 0)
    arr[:, 8:24] = (0, 255, 0)
    arr[:, 24:] = (0, 0, 255)
    img = Image.fromarray(arr)
    out = eval_transform(8)(img)
    assert out.shape == (3, 8, 8) and out.dtype == torch.float32
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    # columns 2..5 of the crop are at least two resized pixels from a colour edge: pure green
    assert torch.allclose(out[:, :, 2:6], torch.tensor([0.0, 1.0, 0.0]).view(3, 1, 1), atol=2 / 255)
    # the crop edges border red (left) and blue (right), never the other way round
    assert out[0, :, 0].mean() > out[2, :, 0].mean()
    assert out[2, :, 7].mean() > out[0, :, 7].mean()
    assert out[1].mean() > 0.8
    # the very transform the runtime uses, not a re-implementation
    expected = torch.from_numpy(eval_image(img, 8).copy()).permute(2, 0, 1).float() / 255
    assert torch.equal(out, expected)


def test_eval_transform_tall_image_crops_vertically() -> None:
    arr = np.zeros((24, 12, 3), np.uint8)  # 1:2, shorter side already 12
    arr[:6] = 255
    arr[18:] = 255
    out = eval_transform(12)(Image.fromarray(arr))
    assert out.shape == (3, 12, 12)
    assert float(out.max()) == 0.0  # rows 6..17 kept: all black


def test_image_list_dataset(tmp_path: Path) -> None:
    rgb = _img(tmp_path / "a.png", (255, 0, 0), size=(20, 10))
    gray = tmp_path / "g.png"
    Image.new("L", (10, 10), 128).save(gray)
    ds = ImageListDataset([(str(rgb), 0), (str(gray), 1)], eval_transform(8))
    assert len(ds) == 2
    x, y = ds[0]
    assert y == 0 and x.shape == (3, 8, 8)
    assert torch.allclose(x[0], torch.ones(8, 8)) and float(x[1:].max()) == 0.0
    x, y = ds[1]
    assert y == 1 and x.shape == (3, 8, 8) and abs(float(x.mean()) - 128 / 255) < 1e-6
    tx, _ = ImageListDataset([(str(rgb), 0)], train_transform(6))[0]
    assert tx.shape == (3, 6, 6) and tx.dtype == torch.float32 and float(tx.max()) <= 1.0


def test_corrupt_and_truncated_images_raise_data_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"this is not an image")
    good = _img(tmp_path / "big.jpg", (1, 2, 3), size=(64, 64))
    trunc = tmp_path / "trunc.jpg"
    trunc.write_bytes(good.read_bytes()[:200])
    missing = tmp_path / "missing.png"
    for path in (bad, trunc, missing):
        ds = ImageListDataset([(str(path), 0)], eval_transform(8))
        with pytest.raises(DataError, match="cannot decode image") as e:
            ds[0]
        assert str(path) in str(e.value)


def test_split_file_dataset_feeds_image_dataset(tmp_path: Path) -> None:
    root = _make_split_dataset(tmp_path, "eurosat")
    s = DATASETS["eurosat"](root)
    x, y = ImageListDataset(s.test, eval_transform(4))[2]
    assert x.shape == (3, 4, 4) and y == 2
    shutil.rmtree(root / "2750" / "c0")
    with pytest.raises(DataError, match="c0"):
        ImageListDataset(s.test, eval_transform(4))[0]


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_oversized_image_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    big = _img(tmp_path / "big.png", size=(20, 20))
    for limit in (300, 100):  # PIL warns past the limit and refuses past twice the limit
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
        with pytest.raises(DataError, match="cannot decode image") as e:
            ImageListDataset([(str(big), 0)], eval_transform(8))[0]
        assert str(big) in str(e.value)
