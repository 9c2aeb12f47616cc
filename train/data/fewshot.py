"""Few-shot splits, drawn once and written to a JSON file keyed by shots and seed.

The file ``<split_dir>/shot_<K>-seed_<S>.json`` is the record of which images a run trained on.
When it exists it is reused, so every run and every user with the same file trains on the same
images even if their file listings or Python versions would draw differently. Paths inside it are
relative to the dataset root where possible, so the file can be shared between machines.

Sampling, following CoOp: K images per class from train, and ``min(K, 4)`` per class from val
(CoOp's ``generate_fewshot_dataset(train, val, num_shots=K)`` with val capped at 4 shots keeps
model selection cheap and leaves the few-shot budget to training). Test is never subsampled.
"""

from __future__ import annotations

import json
import os
import random
import warnings
from pathlib import Path
from typing import Any

from dga.errors import DataError
from dga.fsutil import atomic_write

from .splits import DatasetSplits, Item

FORMAT_VERSION = 1
VAL_SHOTS_CAP = 4


def split_file_path(split_dir: str | os.PathLike[str], shots: int, seed: int) -> Path:
    return Path(split_dir) / f"shot_{shots}-seed_{seed}.json"


def _draw(items: list[Item], classnames: list[str], k: int, rng: random.Random, what: str) -> list[Item]:
    """``k`` items per class (all of a smaller class, with one warning naming such classes)."""
    per_class: list[list[Item]] = [[] for _ in classnames]
    for item in items:
        per_class[item[1]].append(item)
    out: list[Item] = []
    short: list[str] = []
    for label, group in enumerate(per_class):
        if len(group) <= k:
            if len(group) < k:
                short.append(f"{classnames[label]!r} ({len(group)})")
            out.extend(group)
        else:
            # Keep the listing order among the chosen: the file reads naturally and is stable.
            chosen = sorted(rng.sample(range(len(group)), k))
            out.extend(group[i] for i in chosen)
    if short:
        warnings.warn(
            f"{what}: {len(short)} class(es) have fewer than {k} images, all are used: "
            + ", ".join(short[:5])
            + (f" and {len(short) - 5} more." if len(short) > 5 else "."),
            stacklevel=3,
        )
    return out


def _format(obj: dict[str, Any]) -> str:
    """JSON with one item per line: readable and diff-friendly for files of thousands of items."""
    lines = []
    for key, value in obj.items():
        if isinstance(value, list) and value and isinstance(value[0], list):
            body = ",\n".join("  " + json.dumps(v, ensure_ascii=False) for v in value)
            lines.append(f"{json.dumps(key)}: [\n{body}\n ]")
        else:
            lines.append(f"{json.dumps(key)}: {json.dumps(value, ensure_ascii=False)}")
    return "{\n " + ",\n ".join(lines) + "\n}\n"


def _write_atomic(path: Path, obj: Any) -> None:
    """Readers never see half a file; two runs racing to create it both leave a complete one."""
    atomic_write(path, _format(obj))


def _read_items(path: Path, obj: dict[str, Any], key: str, splits: DatasetSplits) -> list[Item]:
    entries = obj.get(key)
    if not isinstance(entries, list):
        raise DataError(f"few-shot split file {path} has no '{key}' list; delete it to regenerate it.")
    items: list[Item] = []
    for i, e in enumerate(entries):
        if not (
            isinstance(e, list) and len(e) == 2 and isinstance(e[0], str) and type(e[1]) is int
        ):
            raise DataError(
                f"few-shot split file {path}: {key}[{i}] is {e!r}, not [path, label]; "
                "delete it to regenerate it."
            )
        items.append((splits.abspath(e[0]), e[1]))
    # The file must describe this copy of the dataset: every item must be in the split it was
    # drawn from, with the same label. Otherwise it was made from other data.
    known = dict(splits.split(key))
    foreign = [p for p, lab in items if known.get(p) != lab]
    if foreign:
        raise DataError(
            f"few-shot split file {path} lists {len(foreign)} {key} image(s) not in this dataset's "
            f"{key} split with that label (e.g. {foreign[0]}); delete it or use another --splits-dir."
        )
    return items


def _load_existing(path: Path, splits: DatasetSplits, shots: int, seed: int) -> tuple[list[Item], list[Item]]:
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(
            f"few-shot split file {path} is not valid JSON (line {e.lineno}: {e.msg}); "
            "delete it to regenerate it."
        ) from e
    if not isinstance(obj, dict):
        raise DataError(f"few-shot split file {path} is not a JSON object; delete it to regenerate it.")
    if obj.get("classnames") != splits.classnames:
        raise DataError(
            f"few-shot split file {path} was made for other classes than dataset {splits.name!r}; "
            "delete it or use another --splits-dir."
        )
    if obj.get("shots") != shots or obj.get("seed") != seed:
        raise DataError(
            f"few-shot split file {path} records shots={obj.get('shots')!r}, seed={obj.get('seed')!r}, "
            f"not {shots} and {seed}; delete it or use another --splits-dir."
        )
    return _read_items(path, obj, "train", splits), _read_items(path, obj, "val", splits)


def fewshot_splits(
    splits: DatasetSplits,
    shots: int | str | None,
    seed: int,
    split_dir: str | os.PathLike[str],
) -> DatasetSplits:
    """The K-shot subset of ``splits`` (test unchanged), read from or written to ``split_dir``.

    ``shots=None`` or ``"all"`` returns ``splits`` unchanged (full data; nothing is written).
    Draws use one ``random.Random(seed)``: train classes in label order, then val classes.
    A dataset without a val split gives an empty few-shot val.
    """
    if shots is None or shots == "all":
        return splits
    if isinstance(shots, bool) or not isinstance(shots, int) or shots <= 0:
        raise DataError(f"shots is {shots!r}; give a positive number of images per class, or 'all'.")
    path = split_file_path(split_dir, shots, seed)
    if path.exists():
        train, val = _load_existing(path, splits, shots, seed)
    else:
        rng = random.Random(seed)
        train = _draw(splits.train, splits.classnames, shots, rng, f"{splits.name} train")
        val_k = min(shots, VAL_SHOTS_CAP)
        val = _draw(splits.val, splits.classnames, val_k, rng, f"{splits.name} val") if splits.val else []
        _write_atomic(
            path,
            {
                "format": FORMAT_VERSION,
                "dataset": splits.name,
                "shots": shots,
                "seed": seed,
                "val_shots": val_k,
                "classnames": splits.classnames,
                "train": [[splits.relpath(p), lab] for p, lab in train],
                "val": [[splits.relpath(p), lab] for p, lab in val],
            },
        )
    return DatasetSplits(splits.classnames, train, val, splits.test, splits.name, splits.root)
