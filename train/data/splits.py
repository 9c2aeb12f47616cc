"""The one in-memory form every dataset loader returns.

Loaders differ only in how they find images and labels on disk; everything downstream (few-shot
sampling, training, evaluation) sees a ``DatasetSplits`` with absolute paths and contiguous integer
labels, so it never needs to know which layout the data came from.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from dga.errors import DataError

Item = tuple[str, int]

SPLIT_NAMES = ("train", "val", "test")


@dataclass
class DatasetSplits:
    """Class names and (absolute path, label) lists for train, val and test.

    ``root`` is the dataset directory the data was read from. Few-shot split files store paths
    relative to it, so a file written by one user is valid for another whose copy of the dataset
    lives elsewhere. It may be empty when the items do not share a root.
    """

    classnames: list[str]
    train: list[Item]
    val: list[Item]
    test: list[Item]
    name: str
    root: str = field(default="")

    def __post_init__(self) -> None:
        # Labels outside [0, C) would surface much later as an index error deep inside a loss;
        # catching them here names the dataset instead.
        n = len(self.classnames)
        if len(set(self.classnames)) != n:
            dupes = sorted({c for c in self.classnames if self.classnames.count(c) > 1})
            raise DataError(f"dataset {self.name!r} has duplicate class names {dupes}; rename them.")
        for split in SPLIT_NAMES:
            for path, label in getattr(self, split):
                if not isinstance(label, int) or isinstance(label, bool) or not 0 <= label < n:
                    raise DataError(
                        f"dataset {self.name!r}: {split} item {path} has label {label!r}, "
                        f"outside [0, {n}); fix the split file."
                    )

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    def split(self, name: str) -> list[Item]:
        """The items of ``train``, ``val`` or ``test`` by name (for ``--split`` options)."""
        if name not in SPLIT_NAMES:
            raise DataError(f"unknown split {name!r}; use one of {', '.join(SPLIT_NAMES)}.")
        return getattr(self, name)

    def relpath(self, path: str) -> str:
        """``path`` relative to ``root`` (POSIX separators) when inside it, else unchanged."""
        if self.root:
            rel = os.path.relpath(path, self.root)
            if not rel.startswith(".." + os.sep) and rel != ".." and not os.path.isabs(rel):
                return rel.replace(os.sep, "/")
        return path

    def abspath(self, path: str) -> str:
        """Inverse of :meth:`relpath`: resolve a stored path against ``root``."""
        return resolve(self.root, path)

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict (paths relative to ``root`` where possible)."""
        out: dict[str, Any] = {"name": self.name, "root": self.root, "classnames": list(self.classnames)}
        for split in SPLIT_NAMES:
            out[split] = [[self.relpath(p), lab] for p, lab in getattr(self, split)]
        return out

    @classmethod
    def from_json(cls, obj: dict[str, Any], root: str | None = None) -> DatasetSplits:
        """Rebuild from :meth:`to_json` output; ``root`` overrides the stored root."""
        try:
            base = obj["root"] if root is None else root
            classnames = [str(c) for c in obj["classnames"]]
            lists = {s: [(str(p), int(lab)) for p, lab in obj[s]] for s in SPLIT_NAMES}
            name = str(obj["name"])
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"dataset description is malformed ({e!r}); regenerate it.") from e
        return cls(
            classnames=classnames,
            name=name,
            root=str(base),
            **{s: [(resolve(str(base), p), lab) for p, lab in lists[s]] for s in SPLIT_NAMES},
        )


def resolve(root: str, path: str) -> str:
    """A stored path (POSIX separators, relative to ``root`` unless absolute) as an OS path."""
    if os.path.isabs(path) or not root:
        return path
    return os.path.join(root, *path.split("/"))
