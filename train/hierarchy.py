"""PLH: the prototype-guided label hierarchy of DGA (METHODS.md 5.1).

Class prototypes (mean unit image feature per class) are merged bottom-up by centroid linkage
(a merged cluster's prototype is the mean of its members). Levels are cut from that one merge
sequence, so they nest: level l groups are unions of level l-1 groups. Level 1 is the finest.

A super-class (group) is named in description files by its ``group_key`` (``dga.train.describe``,
re-exported here): its member class names, in the dataset's class order, joined by ``" + "`` (a
group of one class is that class's name).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.cluster.hierarchy import linkage

from dga.errors import ConfigError, DataError
from dga.train.data.descriptions import normalise_name
from dga.train.data.imagefolder import _names
from dga.train.describe import group_key  # the one definition, shared with dga-describe --kind hierarchy


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def default_level_sizes(num_classes: int, levels: int = 2) -> list[int]:
    """S_l = max(2, round(C / 4^l)), kept only while strictly decreasing (and below C)."""
    sizes: list[int] = []
    prev = num_classes
    for level in range(1, levels + 1):
        s = max(2, _round_half_up(num_classes / 4**level))
        if s >= prev:
            break
        sizes.append(s)
        prev = s
    return sizes


def check_level_sizes(sizes: list[int], num_classes: int) -> list[int]:
    prev = num_classes
    for s in sizes:
        if not 2 <= s < prev:
            raise ConfigError(
                f"level sizes {sizes} must be strictly decreasing, below the {num_classes} classes "
                f"and at least 2"
            )
        prev = s
    return list(sizes)


def class_prototypes(feats: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Mean of each class's unit-normalised image features: [N, D], [N] -> [C, D]."""
    feats = torch.nn.functional.normalize(feats.float(), dim=-1)
    sums = torch.zeros(num_classes, feats.shape[1], dtype=feats.dtype).index_add_(0, labels, feats)
    counts = torch.bincount(labels, minlength=num_classes).clamp(min=1).unsqueeze(1)
    missing = torch.nonzero(torch.bincount(labels, minlength=num_classes) == 0).flatten().tolist()
    if missing:
        raise ConfigError(f"classes {missing[:5]} have no training images, so no prototype for the hierarchy")
    return sums / counts


@dataclass
class Hierarchy:
    level_sizes: list[int]
    parents: list[list[int]]  # per level, parent group index of each class
    linkage: list[list[float]]  # scipy linkage matrix, for the dendrogram

    def to_json(self) -> dict:
        return {"level_sizes": self.level_sizes, "parents": self.parents, "linkage": self.linkage}

    @classmethod
    def from_json(cls, d: dict) -> Hierarchy:
        return cls(list(d["level_sizes"]), [list(p) for p in d["parents"]], [list(r) for r in d["linkage"]])

    @property
    def num_levels(self) -> int:
        return len(self.level_sizes)


def build_hierarchy(prototypes: np.ndarray, level_sizes: list[int]) -> Hierarchy:
    """Agglomerate C prototypes and cut the merge sequence at each level size.

    Cutting by replaying the first C - S_l merges (rather than by distance) gives exactly S_l
    groups even where centroid linkage is not monotone. Group ids are numbered in order of
    their smallest member class, so the result does not depend on scipy's internal ids.
    """
    protos = np.asarray(prototypes, dtype=np.float64)
    c = protos.shape[0]
    check_level_sizes(level_sizes, c)
    z = linkage(protos, method="centroid", metric="euclidean")
    parents = []
    for size in level_sizes:
        parent = list(range(c))  # union-find over original classes

        def find(i: int, parent=parent) -> int:
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        members = {i: [i] for i in range(c)}
        for step in range(c - size):
            a, b = int(z[step, 0]), int(z[step, 1])
            ra, rb = find(members[a][0]), find(members[b][0])
            parent[rb] = ra
            members[c + step] = members[a] + members[b]
        roots = [find(i) for i in range(c)]
        order: dict[int, int] = {}
        for r in roots:
            order.setdefault(r, len(order))
        parents.append([order[r] for r in roots])
    return Hierarchy(list(level_sizes), parents, z.tolist())


def superclass_text(class_text: torch.Tensor, parent: list[int] | torch.Tensor, num_groups: int) -> torch.Tensor:
    """Normalised mean of the member classes' normalised text embeddings: [C, D] -> [S, D]."""
    t = torch.nn.functional.normalize(class_text.float(), dim=-1)
    idx = torch.as_tensor(parent, dtype=torch.long)
    sums = torch.zeros(num_groups, t.shape[1]).index_add_(0, idx, t)
    return torch.nn.functional.normalize(sums, dim=-1)


GROUP_SEPARATOR = " + "  # what group_key joins member names with (dga.train.describe owns the key)


def level_groups(parent: list[int], num_groups: int) -> list[list[int]]:
    """Member class indices of each group of one level, in class order: [[c, ...] per group]."""
    groups: list[list[int]] = [[] for _ in range(num_groups)]
    for c, g in enumerate(parent):
        groups[int(g)].append(c)
    return groups


def _member_set(key: str) -> frozenset[str]:
    return frozenset(normalise_name(n) for n in key.split(GROUP_SEPARATOR.strip()))


HOW_TO_DESCRIBE = (
    "Describe this bundle's hierarchy: dga-describe --kind hierarchy --hierarchy RUN.dga, with RUN.dga "
    "trained on the same data, shots, seed, backbone and level sizes (the hierarchy is deterministic "
    "for those, so a run without --hierarchy-descriptions finds the same groups)"
)


def hierarchy_sentences(
    descs: dict[str, list[str]], classnames: list[str], hierarchy: Hierarchy
) -> tuple[list[list[list[str]]], dict[str, list[str]], list[str]]:
    """Sentences of every group of every level from a hierarchy description file.

    A group's key is matched exactly first, then by its member names as a set, each folded like
    class names (case, underscores, spacing), so a hand-written ``"Dog+cat"`` finds ``cat + dog``.
    Returns (sentences per level per group, {group key: sentences} of the groups used, in level
    and group order, keys of the file that match no group). A group without sentences is a
    DataError naming its members; unused keys are only reported (the caller warns).
    """
    by_set: dict[frozenset[str], list[str]] = {}
    for k in descs:
        by_set.setdefault(_member_set(k), []).append(k)
    used_keys: set[str] = set()
    per_level: list[list[list[str]]] = []
    used: dict[str, list[str]] = {}
    missing: list[str] = []
    for level, (size, parent) in enumerate(zip(hierarchy.level_sizes, hierarchy.parents, strict=True), start=1):
        level_sentences: list[list[str]] = []
        for members in level_groups(parent, size):
            names = [classnames[c] for c in members]
            key = group_key(names)
            if key in descs:
                found = key
            else:
                candidates = by_set.get(frozenset(normalise_name(n) for n in names), [])
                if len(candidates) > 1:
                    raise DataError(
                        f"--hierarchy-descriptions file: keys {_names(candidates)} all name the group of "
                        f"{_names(names)}; keep one."
                    )
                found = candidates[0] if candidates else None
            if found is None:
                missing.append(f"level {level} group of {_names(names, limit=8)} (key {key!r})")
                level_sentences.append([])
                continue
            used_keys.add(found)
            used[key] = list(descs[found])
            level_sentences.append(list(descs[found]))
        per_level.append(level_sentences)
    if missing:
        shown = "; ".join(missing[:3]) + (f"; and {len(missing) - 3} more" if len(missing) > 3 else "")
        extra = [k for k in descs if k not in used_keys]
        stale = f" The file's keys {_names(extra)} name no group of it." if extra else ""
        raise DataError(
            f"the --hierarchy-descriptions file has no sentences for {len(missing)} group(s) of the label "
            f"hierarchy found in the training images: {shown}.{stale} {HOW_TO_DESCRIBE}."
        )
    extra = [k for k in descs if k not in used_keys]
    return per_level, used, extra
