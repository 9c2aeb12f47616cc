"""Class description files (``{class_name: [sentence, ...]}``, the CuPL / CLIP_benchmark shape).

Description files are written by hand or by a language model for one naming of the classes and
are routinely off by case or underscores (``"Abyssinian"`` vs ``"abyssinian"``, ``"sea_lion"`` vs
``"sea lion"``), so keys are matched after folding those away. Anything beyond that (a missing or
extra class, a malformed value) is an error naming the classes: silently training with a class
that has no descriptions would be worse than stopping.
"""

from __future__ import annotations

import json
import os
import random
import warnings
from pathlib import Path

from dga.errors import DataError

from .imagefolder import _names

DEFAULT_TEMPLATE = "This is a photo of a {}."


def normalise_name(name: str) -> str:
    """Case-folded, underscores as spaces, whitespace collapsed: the key used for matching."""
    return " ".join(name.replace("_", " ").split()).casefold()


def _read_json(path: Path) -> object:
    if not path.is_file():
        raise DataError(f"description file {path} does not exist; check the path.")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(
            f"description file {path} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}); fix it."
        ) from e
    except UnicodeDecodeError as e:
        raise DataError(f"description file {path} is not UTF-8 text ({e.reason}); save it as UTF-8.") from e


def _check_values(path: Path, data: dict[str, object]) -> dict[str, list[str]]:
    bad = [k for k, v in data.items() if not isinstance(v, list) or not all(isinstance(s, str) for s in v)]
    if bad:
        raise DataError(
            f"description file {path}: the value of {_names(bad)} is not a list of strings; "
            "give each class a list of sentences."
        )
    empty = [k for k, v in data.items() if not v]
    if empty:
        raise DataError(
            f"description file {path}: {_names(empty)} has an empty list; "
            "give each class at least one sentence."
        )
    return {k: list(v) for k, v in data.items()}  # type: ignore[arg-type]


def _match(path: Path, keys: list[str], classnames: list[str]) -> dict[str, str]:
    """classname -> file key: exact match first, then the normalised form."""
    by_norm: dict[str, list[str]] = {}
    for k in keys:
        by_norm.setdefault(normalise_name(k), []).append(k)
    exact = set(keys)
    used: set[str] = set(c for c in classnames if c in exact)
    mapping: dict[str, str] = {}
    missing: list[str] = []
    for c in classnames:
        if c in exact:
            mapping[c] = c
            continue
        candidates = [k for k in by_norm.get(normalise_name(c), []) if k not in used]
        if len(candidates) > 1:
            raise DataError(
                f"description file {path}: keys {_names(candidates)} all match class {c!r}; keep one."
            )
        if not candidates:
            missing.append(c)
            continue
        mapping[c] = candidates[0]
        used.add(candidates[0])
    if missing:
        raise DataError(
            f"description file {path} has no descriptions for class(es) {_names(missing)}; add them."
        )
    extra = [k for k in keys if k not in used]
    if extra:
        raise DataError(
            f"description file {path} has class(es) {_names(extra)} that are not in the dataset; "
            "remove them or check that the file is for this dataset."
        )
    return mapping


def load_descriptions(path: str | os.PathLike[str], classnames: list[str]) -> dict[str, list[str]]:
    """Read and validate a description file; the result is keyed by ``classnames``, in their order."""
    path = Path(path)
    data = _read_json(path)
    if not isinstance(data, dict):
        raise DataError(
            f"description file {path} must be a JSON object {{class name: [sentences]}}, "
            f"not a {type(data).__name__}; fix it."
        )
    checked = _check_values(path, data)
    mapping = _match(path, list(checked), classnames)
    return {c: checked[mapping[c]] for c in classnames}


def load_hierarchy_descriptions(path: str | os.PathLike[str]) -> dict[str, list[str]]:
    """Read a super-class description file ``{group key: [sentence, ...]}`` (DGA's hierarchy levels).

    Only the shape is checked here (a JSON object of non-empty lists of strings); which keys it
    must have depends on the hierarchy, known once it is built (``dga.train.hierarchy``).
    """
    path = Path(path)
    data = _read_json(path)
    if not isinstance(data, dict):
        raise DataError(
            f"hierarchy description file {path} must be a JSON object {{group key: [sentences]}}, "
            f"not a {type(data).__name__}; fix it, or write it with dga-describe --kind hierarchy."
        )
    if not data:
        raise DataError(
            f"hierarchy description file {path} is empty; write it with "
            "dga-describe --kind hierarchy --hierarchy RUN.dga."
        )
    return _check_values(path, data)


def sample_descriptions(
    descs: dict[str, list[str]], m: int = 20, min_chars: int = 20, seed: int = 0
) -> dict[str, list[str]]:
    """Exactly ``m`` sentences per class, deterministic for a seed.

    Sentences shorter than ``min_chars`` (after stripping) are dropped as too thin to describe a
    class; a class left with none keeps its original list (with a warning) rather than fail, since
    some classes only have short names. Then, with one ``random.Random(seed)`` over the classes in
    dict order: a class with more than ``m`` sentences gets ``m`` drawn without replacement (kept in
    file order); one with exactly ``m`` keeps them all; one with fewer keeps all of them, in file
    order, followed by ``m - n`` drawn with replacement, so every sentence is used at least once
    and the heads see equally many sentences per class.
    """
    if m < 1:
        raise DataError(f"the number of descriptions per class is {m}; give at least 1.")
    rng = random.Random(seed)
    out: dict[str, list[str]] = {}
    kept_short: list[str] = []
    for cname, sentences in descs.items():
        if not sentences:
            raise DataError(f"class {cname!r} has no descriptions; give it at least one sentence.")
        pool = [s for s in sentences if len(s.strip()) >= min_chars]
        if not pool:
            kept_short.append(cname)
            pool = list(sentences)
        n = len(pool)
        if n > m:
            out[cname] = [pool[i] for i in sorted(rng.sample(range(n), m))]
        else:
            out[cname] = pool + rng.choices(pool, k=m - n)
    if kept_short:
        warnings.warn(
            f"all descriptions of {len(kept_short)} class(es) are shorter than {min_chars} characters; "
            f"using them anyway: {_names(kept_short)}.",
            stacklevel=2,
        )
    return out


def template_sentences(classnames: list[str], template: str = DEFAULT_TEMPLATE) -> dict[str, list[str]]:
    """One templated sentence per class (the zero-shot CLIP prompt), underscores as spaces."""
    if "{}" not in template:
        raise DataError(f"template {template!r} has no '{{}}' for the class name; add one.")
    return {c: [template.format(c.replace("_", " "))] for c in classnames}
