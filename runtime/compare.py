"""Comparing a runner's logits with the trained module's (Polygraphy-style comparator), numpy only.

One implementation for the exporter's self-check (export/verify.py) and the verifier on a
deployment host (runtime/verify.py). The rules (DESIGN.md 5):

- fp32: max |logit difference| <= ``fp32_max_abs_logit`` and every top-1 the same, except flips
  where the reference's two best logits are within ``near_tie`` (a flip there is rounding, not a
  wrong graph);
- fp16: top-1 agreement >= ``fp16_top1_percent``, near ties counted as agreeing; the logit
  difference is reported, not judged;
- int8: the same rule with ``int8_top1_percent`` (quantization moves logits more than fp16).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dga.runtime.package import FP16_TOP1_PERCENT, FP32_MAX_ABS_LOGIT, INT8_TOP1_PERCENT, NEAR_TIE

DEFAULT_TOLERANCES = {"fp32_max_abs_logit": FP32_MAX_ABS_LOGIT, "fp16_top1_percent": FP16_TOP1_PERCENT,
                      "int8_top1_percent": INT8_TOP1_PERCENT, "near_tie": NEAR_TIE}


@dataclass
class Comparison:
    max_abs_diff: float
    top1_agreement: float  # percent
    near_ties: int  # top-1 flips where the reference's top-2 margin is within the near-tie band
    passed: bool
    rule: str  # the rule applied, in words


def differences(reference: np.ndarray, candidate: np.ndarray, near_tie: float = NEAR_TIE) -> tuple[float, float, int]:
    """(max |difference|, top-1 agreement %, flips that are near ties of the reference)."""
    if reference.shape != candidate.shape:
        raise ValueError(f"outputs of shape {candidate.shape} cannot be compared with the reference's "
                         f"{reference.shape}")
    diff = float(np.abs(reference.astype(np.float64) - candidate.astype(np.float64)).max()) if reference.size else 0.0
    if not len(reference):
        return diff, 100.0, 0
    ref_top, cand_top = reference.argmax(1), candidate.argmax(1)
    agree = 100.0 * float((ref_top == cand_top).mean())
    top2 = np.sort(reference, axis=1)[:, -2:] if reference.shape[1] > 1 else np.zeros((len(reference), 2))
    margin = top2[:, 1] - top2[:, 0]
    ties = int(((ref_top != cand_top) & (margin <= near_tie)).sum())
    return diff, agree, ties


def judge(reference: np.ndarray, candidate: np.ndarray, precision: str,
          tolerances: dict | None = None) -> Comparison:
    """Compare and apply the tolerance of ``precision`` ("fp32" exact-ish, anything else top-1)."""
    tol = {**DEFAULT_TOLERANCES, **(tolerances or {})}
    diff, agree, ties = differences(reference, candidate, tol["near_tie"])
    n = max(len(reference), 1)
    flips = round((100.0 - agree) * n / 100.0)
    if precision == "fp32":
        passed = bool(np.isfinite(diff) and diff <= tol["fp32_max_abs_logit"] and flips == ties)
        rule = f"max |dlogit| <= {tol['fp32_max_abs_logit']:g}, top-1 equal (near ties excepted)"
    else:
        key = "int8_top1_percent" if precision == "int8" else "fp16_top1_percent"
        passed = bool(np.isfinite(diff) and agree + 100.0 * ties / n >= tol[key])
        rule = f"top-1 agreement >= {tol[key]:g} % (near ties excepted)"
    return Comparison(diff, agree, ties, passed, rule)
