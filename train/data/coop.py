"""The 11 few-shot benchmarks and ImageNet in the layout of the CoOp repository (DATASETS.md).

Most datasets ship a split file ``split_zhou_<Name>.json`` = ``{"train": [[relpath, label,
classname], ...], "val": [...], "test": [...]}`` with paths relative to an image folder; using
those fixed splits is what makes numbers comparable with the published ones. FGVC-Aircraft is read
from its ``variants.txt`` / ``images_variant_<split>.txt`` files and ImageNet from ``train/`` and
``val/`` class folders plus ``classnames.txt``, as CoOp does.

Each loader takes the dataset's own directory (``$DATA/oxford_pets``); given the parent
``$DATA`` instead it descends into CoOp's folder name for that dataset. Only the image folder's
existence is checked: stat'ing 100k files up front costs minutes on network storage, and a missing
file is reported by name when it is decoded.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dga.errors import DataError

from .imagefolder import _names, class_folders, list_images, load_imagefolder
from .splits import DatasetSplits, Item


@dataclass(frozen=True)
class SplitFileSpec:
    """Where a split-file dataset keeps its images and its split file (relative to its dir)."""

    key: str
    folder: str  # CoOp's directory name under $DATA
    image_dir: str  # "" = the dataset directory itself
    split_file: str


SPLIT_FILE_DATASETS: dict[str, SplitFileSpec] = {
    s.key: s
    for s in (
        SplitFileSpec("oxford_pets", "oxford_pets", "images", "split_zhou_OxfordPets.json"),
        SplitFileSpec("dtd", "dtd", "images", "split_zhou_DescribableTextures.json"),
        SplitFileSpec("caltech101", "caltech-101", "101_ObjectCategories", "split_zhou_Caltech101.json"),
        SplitFileSpec("eurosat", "eurosat", "2750", "split_zhou_EuroSAT.json"),
        SplitFileSpec("food101", "food-101", "images", "split_zhou_Food101.json"),
        SplitFileSpec("oxford_flowers", "oxford_flowers", "jpg", "split_zhou_OxfordFlowers.json"),
        SplitFileSpec("stanford_cars", "stanford_cars", "", "split_zhou_StanfordCars.json"),
        SplitFileSpec("sun397", "sun397", "SUN397", "split_zhou_SUN397.json"),
        SplitFileSpec("ucf101", "ucf101", "UCF-101-midframes", "split_zhou_UCF101.json"),
        SplitFileSpec("resisc45", "resisc45", "NWPU-RESISC45", "split_mlai_Resisc45.json"),
    )
}

AIRCRAFT_FOLDER = "fgvc_aircraft"
IMAGENET_FOLDER = "imagenet"
# ImageNet has no val split of its own besides the one used as test: carve this share of train
# (at least IMAGENET_MIN_VAL per class, enough for the few-shot val of min(shots, 4)), seed fixed so
# every user gets the same images.
IMAGENET_VAL_FRACTION = 0.01
IMAGENET_MIN_VAL = 4
IMAGENET_VAL_SEED = 0


def _dataset_dir(root: str | os.PathLike[str], marker: str, folder: str) -> Path:
    """The directory holding ``marker``: ``root`` itself, or ``root/folder`` (CoOp's $DATA)."""
    base = Path(os.path.abspath(root))
    if not base.is_dir():
        raise DataError(f"dataset folder {base} does not exist; check the path.")
    if not (base / marker).exists() and (base / folder / marker).exists():
        return base / folder
    return base


def _require_dir(path: Path, what: str) -> None:
    if not path.is_dir():
        raise DataError(f"{what} {path} is missing; lay the dataset out as in CoOp's DATASETS.md.")


def _require_file(path: Path, what: str) -> None:
    if not path.is_file():
        raise DataError(f"{what} {path} is missing; lay the dataset out as in CoOp's DATASETS.md.")


def read_split_file(split_path: Path, image_dir: Path, name: str, root: Path) -> DatasetSplits:
    """Parse a CoOp split JSON; class names come from the third field, ordered by label."""
    _require_file(split_path, "split file")
    _require_dir(image_dir, "image folder")
    try:
        with open(split_path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(
            f"split file {split_path} is not valid JSON (line {e.lineno}: {e.msg}); re-download it."
        ) from e
    if not isinstance(data, dict) or not all(isinstance(data.get(s), list) for s in ("train", "val", "test")):
        raise DataError(
            f"split file {split_path} must be an object with lists 'train', 'val' and 'test'; re-download it."
        )
    prefix = str(image_dir)
    names: dict[int, str] = {}
    lists: dict[str, list[Item]] = {}
    for split in ("train", "val", "test"):
        items: list[Item] = []
        for i, entry in enumerate(data[split]):
            ok = (
                isinstance(entry, list)
                and len(entry) == 3
                and isinstance(entry[0], str)
                and isinstance(entry[1], int)
                and not isinstance(entry[1], bool)
                and isinstance(entry[2], str)
            )
            if not ok:
                raise DataError(
                    f"split file {split_path}: {split}[{i}] is {entry!r}, not [relpath, label, classname]; "
                    "re-download it."
                )
            rel, label, cname = entry
            if names.setdefault(label, cname) != cname:
                raise DataError(
                    f"split file {split_path} gives label {label} two names, {names[label]!r} and "
                    f"{cname!r}; re-download it."
                )
            items.append((os.path.join(prefix, rel), label))
        lists[split] = items
    if sorted(names) != list(range(len(names))):
        missing = sorted(set(range(max(names, default=-1) + 1)) - set(names))
        raise DataError(
            f"split file {split_path}: labels must be 0..C-1 without gaps (missing {missing[:5]}); "
            "re-download it."
        )
    classnames = [names[i] for i in range(len(names))]
    return DatasetSplits(classnames, lists["train"], lists["val"], lists["test"], name, str(root))


def _split_file_loader(spec: SplitFileSpec) -> Callable[[Path], DatasetSplits]:
    def load(root: str | os.PathLike[str]) -> DatasetSplits:
        base = _dataset_dir(root, spec.split_file, spec.folder)
        image_dir = base / spec.image_dir if spec.image_dir else base
        return read_split_file(base / spec.split_file, image_dir, spec.key, base)

    load.__name__ = f"load_{spec.key}"
    load.__doc__ = (
        f"Load {spec.key} from ``{spec.split_file}`` with images under ``{spec.image_dir or '.'}/``."
    )
    return load


def load_fgvc_aircraft(root: str | os.PathLike[str]) -> DatasetSplits:
    """FGVC-Aircraft (variant level): class order is ``variants.txt``, images ``images/<id>.jpg``."""
    base = _dataset_dir(root, "variants.txt", AIRCRAFT_FOLDER)
    variants_path = base / "variants.txt"
    _require_file(variants_path, "class list")
    image_dir = base / "images"
    _require_dir(image_dir, "image folder")
    classnames = [ln.strip() for ln in variants_path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if not classnames:
        raise DataError(f"class list {variants_path} is empty; re-download the dataset.")
    label_of = {c: i for i, c in enumerate(classnames)}
    lists: dict[str, list[Item]] = {}
    for split in ("train", "val", "test"):
        path = base / f"images_variant_{split}.txt"
        _require_file(path, "split list")
        items: list[Item] = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            parts = line.strip().split(" ", 1)
            if not parts[0]:
                continue
            if len(parts) != 2 or parts[1].strip() not in label_of:
                raise DataError(
                    f"{path} line {n} ({line.strip()!r}) does not name a variant from {variants_path}; "
                    "re-download the dataset."
                )
            items.append((str(image_dir / f"{parts[0]}.jpg"), label_of[parts[1].strip()]))
        lists[split] = items
    return DatasetSplits(classnames, lists["train"], lists["val"], lists["test"], "fgvc_aircraft", str(base))


def load_imagenet(root: str | os.PathLike[str]) -> DatasetSplits:
    """ImageNet: ``train/<wnid>/``, ``val/<wnid>/`` (CoOp puts both under ``images/``) and
    ``classnames.txt`` (``<wnid> <name>``). Labels follow sorted wnids; val is the test split and
    a seeded share of train (see ``IMAGENET_VAL_FRACTION``) becomes val for model selection.
    """
    base = _dataset_dir(root, "classnames.txt", IMAGENET_FOLDER)
    names_path = base / "classnames.txt"
    _require_file(names_path, "class name list")
    image_dir = base / "images" if (base / "images" / "train").is_dir() else base
    _require_dir(image_dir / "train", "training image folder")
    _require_dir(image_dir / "val", "validation image folder")
    names: dict[str, str] = {}
    for line in names_path.read_text(encoding="utf-8").splitlines():
        parts = line.strip().split(" ", 1)
        if parts[0]:
            names[parts[0]] = parts[1].strip() if len(parts) == 2 else parts[0]
    wnids = class_folders(image_dir / "train")
    if not wnids:
        raise DataError(f"no class folders in {image_dir / 'train'}; extract the training images there.")
    unnamed = [w for w in wnids if w not in names]
    if unnamed:
        raise DataError(f"{names_path} has no name for class folder(s) {_names(unnamed)}; add them.")
    known = set(wnids)
    extra = [w for w in class_folders(image_dir / "val") if w not in known]
    if extra:
        raise DataError(
            f"{image_dir / 'val'} has class folder(s) {_names(extra)} missing from train; "
            "fix the extraction."
        )
    per_class = [list_images(image_dir / "train" / w, recursive=False) for w in wnids]
    # One rng over the classes in label order: deterministic given the sorted listing.
    train: list[Item] = []
    val: list[Item] = []
    rng = random.Random(IMAGENET_VAL_SEED)
    for label, paths in enumerate(per_class):
        k = min(max(IMAGENET_MIN_VAL, round(len(paths) * IMAGENET_VAL_FRACTION)), max(len(paths) - 1, 0))
        chosen = set(rng.sample(range(len(paths)), k))
        val.extend((p, label) for i, p in enumerate(paths) if i in chosen)
        train.extend((p, label) for i, p in enumerate(paths) if i not in chosen)
    test: list[Item] = []
    for label, w in enumerate(wnids):
        d = image_dir / "val" / w
        if d.is_dir():
            test.extend((p, label) for p in list_images(d, recursive=False))
    return DatasetSplits([names[w] for w in wnids], train, val, test, "imagenet", str(base))


DATASETS: dict[str, Callable[[Path], DatasetSplits]] = {
    **{key: _split_file_loader(spec) for key, spec in SPLIT_FILE_DATASETS.items()},
    "fgvc_aircraft": load_fgvc_aircraft,
    "imagenet": load_imagenet,
}


def detect_layout(root: str | os.PathLike[str]) -> str | None:
    """The ``DATASETS`` key whose marker files are in ``root``, or None (then: ImageFolder).

    Markers: the split file; ``variants.txt`` + ``images_variant_train.txt`` for Aircraft;
    ``classnames.txt`` + ``train/`` (or ``images/train/``) for ImageNet.
    """
    base = Path(root)
    if not base.is_dir():
        return None
    for key, spec in SPLIT_FILE_DATASETS.items():
        if (base / spec.split_file).is_file():
            return key
    if (base / "variants.txt").is_file() and (base / "images_variant_train.txt").is_file():
        return "fgvc_aircraft"
    has_train = (base / "train").is_dir() or (base / "images" / "train").is_dir()
    if (base / "classnames.txt").is_file() and has_train:
        return "imagenet"
    return None


def load_dataset(
    root: str | os.PathLike[str],
    name: str | None = None,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> DatasetSplits:
    """One entry point for the command line: a named CoOp dataset, a detected one, or ImageFolder.

    ``name`` may be a ``DATASETS`` key or ``"imagefolder"``; the fractions and seed apply only to
    ImageFolder data (CoOp datasets have fixed splits).
    """
    if name is None:
        name = detect_layout(root) or "imagefolder"
    if name == "imagefolder":
        return load_imagefolder(root, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
    if name not in DATASETS:
        raise DataError(
            f"unknown dataset {name!r}; use one of {', '.join(sorted(DATASETS))} or imagefolder."
        )
    return DATASETS[name](Path(root))


__all__ = ["DATASETS", "detect_layout", "load_dataset", "read_split_file"]
