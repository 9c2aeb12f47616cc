"""Any folder of class sub-folders, with or without train/val/test sub-folders.

Two layouts are recognised:

A. ``root/train/<class>/*`` plus optional ``root/val/<class>/*`` and ``root/test/<class>/*``.
   A missing val (or test) split is carved out of train, stratified per class and seeded.
B. ``root/<class>/*`` with no split folders: val and test are carved out by the fractions.

Class order is the sorted list of class folder names (of ``train`` in layout A), so labels do not
depend on the file system's listing order. Files are recognised by extension only: decoding every
file up front would be far too slow for large folders, and a bad file is reported when it is read.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

from dga.errors import DataError

from .splits import DatasetSplits, Item

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})


def is_image_file(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def list_images(directory: str | os.PathLike[str], recursive: bool = True) -> list[str]:
    """Absolute paths of image files under ``directory``, sorted (stable across machines).

    Hidden files and folders (``.``-prefixed) are skipped: they are editor or OS droppings such as
    ``._foo.jpg`` resource forks, never intended images.
    """
    top = os.path.abspath(directory)
    out: list[str] = []
    if recursive:
        for dirpath, dirnames, filenames in os.walk(top, followlinks=True):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            out.extend(
                os.path.join(dirpath, f) for f in filenames if not f.startswith(".") and is_image_file(f)
            )
    else:
        with os.scandir(top) as it:
            out = [
                e.path for e in it if not e.name.startswith(".") and is_image_file(e.name) and e.is_file()
            ]
    out.sort()
    return out


def class_folders(directory: Path) -> list[str]:
    """Sorted names of the non-hidden sub-folders of ``directory``."""
    with os.scandir(directory) as it:
        return sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))


def check_fractions(val_fraction: float, test_fraction: float) -> None:
    for label, f in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= f < 1.0:
            raise DataError(f"{label} is {f}; give a value in [0, 1).")
    if val_fraction + test_fraction >= 1.0:
        raise DataError(
            f"val_fraction + test_fraction is {val_fraction + test_fraction}; "
            "it must be below 1 so that training images remain."
        )


def carve(
    per_class: list[list[str]], fractions: list[float], seed: int
) -> tuple[list[Item], list[list[Item]]]:
    """Stratified, seeded split of each class's items into the rest plus one part per fraction.

    Each part takes ``round(n * fraction)`` items of a class of ``n``, at least one when the
    fraction is positive, and the rest keeps at least one item: a class with very few images
    gives up its val images first, then its test images, rather than vanish from training.
    One ``random.Random(seed)`` shuffles the classes in label order, so the result depends only on
    the sorted listing and the seed. Returns (rest, parts), each sorted by label then path.
    """
    rng = random.Random(seed)
    rest: list[Item] = []
    parts: list[list[Item]] = [[] for _ in fractions]
    for label, paths in enumerate(per_class):
        n = len(paths)
        counts = [max(1, round(n * f)) if f > 0 else 0 for f in fractions]
        # Give back from the first part (val) before later ones (test) until one item remains.
        i = 0
        while n - sum(counts) < 1 and i < len(counts):
            if counts[i] > 0:
                counts[i] -= 1
            else:
                i += 1
        order = list(paths)
        rng.shuffle(order)
        start = 0
        for part, k in zip(parts, counts, strict=True):
            part.extend((p, label) for p in sorted(order[start : start + k]))
            start += k
        rest.extend((p, label) for p in sorted(order[start:]))
    return rest, parts


def _read_classes(split_dir: Path, classnames: list[str] | None) -> list[list[str]]:
    """Images per class of one split folder.

    ``classnames=None`` means this folder defines the classes (train, or the root in layout B):
    it must have class folders and each must hold images. Otherwise the order is given, a folder
    outside it is an error, and a class may be absent or empty (a small test set can lack one).
    """
    found = class_folders(split_dir)
    defining = classnames is None
    if defining:
        if not found:
            raise DataError(
                f"no class folders in {split_dir}; put each class's images in its own sub-folder."
            )
        classnames = found
    else:
        known = set(classnames)
        unknown = [c for c in found if c not in known]
        if unknown:
            raise DataError(
                f"{split_dir} has class folder(s) {_names(unknown)} that are not in the training "
                "classes; add them to train or remove them."
            )
    per_class = [list_images(split_dir / c) if (split_dir / c).is_dir() else [] for c in classnames]
    if defining:
        empty = [c for c, paths in zip(classnames, per_class, strict=True) if not paths]
        if empty:
            raise DataError(
                f"class folder(s) {_names(empty)} in {split_dir} contain no images "
                f"(extensions {', '.join(sorted(IMAGE_EXTENSIONS))}); add images or remove the folder."
            )
    return per_class


def _names(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _flatten(per_class: list[list[str]]) -> list[Item]:
    return [(p, label) for label, paths in enumerate(per_class) for p in paths]


def load_imagefolder(
    root: str | os.PathLike[str],
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> DatasetSplits:
    """Load layout A (train/[val/][test/]) or layout B (class folders only); see the module doc.

    In layout A, ``val_fraction`` and ``test_fraction`` apply only to the splits that are missing
    and are carved out of ``train``; in layout B both are carved from each class.
    """
    check_fractions(val_fraction, test_fraction)
    base = Path(os.path.abspath(root))
    if not base.is_dir():
        raise DataError(f"dataset folder {base} does not exist; check the path.")
    name = base.name

    if (base / "train").is_dir():
        classnames = class_folders(base / "train")
        train_pc = _read_classes(base / "train", None)
        given = {
            s: _flatten(_read_classes(base / s, classnames))
            for s in ("val", "test")
            if (base / s).is_dir()
        }
        missing = [s for s in ("val", "test") if s not in given]
        fractions = {"val": val_fraction, "test": test_fraction}
        train, parts = carve(train_pc, [fractions[s] for s in missing], seed)
        given.update(dict(zip(missing, parts, strict=True)))
        return DatasetSplits(classnames, train, given["val"], given["test"], name, str(base))

    if any((base / s).is_dir() for s in ("val", "test")):
        raise DataError(
            f"{base} has val/ or test/ but no train/ folder; add train/ (layout A) or use class "
            "folders directly under the root (layout B)."
        )
    classnames = class_folders(base)
    per_class = _read_classes(base, None)
    train, (val, test) = carve(per_class, [val_fraction, test_fraction], seed)
    return DatasetSplits(classnames, train, val, test, name, str(base))
