"""PLH: the prototype-guided label hierarchy of DGA (METHODS.md 5.1).

Class prototypes (mean unit image feature per class) are merged bottom-up by centroid linkage
(a merged cluster's prototype is the mean of its members). Levels are cut from that one merge
sequence, so they nest: level l groups are unions of level l-1 groups. Level 1 is the finest.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.cluster.hierarchy import linkage

from dga.errors import ConfigError


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
