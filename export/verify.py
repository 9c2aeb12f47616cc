"""Self-check of an exported package: ONNX checker, then ONNX Runtime vs the torch module.

The comparator and its tolerances are the runtime's (``dga.runtime.compare``: fp32 max |logit
difference| <= 1e-3 and 100 % top-1 agreement; fp16 >= 99.5 % top-1), so the export host and a
deployment host (dga-verify) judge by the same rules.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import torch

from dga.export.deploy_module import DeployModule
from dga.runtime.compare import judge
from dga.runtime.ort_child import make_session
from dga.runtime.package import ONNX_FILES


@dataclass
class Check:
    precision: str
    batch: int
    max_abs_diff: float
    top1_agreement: float  # percent
    near_ties: int  # disagreements where the reference's top-2 margin is below the tolerance
    passed: bool
    note: str = ""
    ran: bool = True  # False: the runner could not run here; reported as not run, never as passed


def torch_logits(module: DeployModule, images: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module(torch.from_numpy(images))[0].numpy()


def run_in_child(onnx_path: Path, images: np.ndarray, level: str) -> tuple[np.ndarray | None, str]:
    """ONNX Runtime in a child process; (logits, "") or (None, reason) if it could not run."""
    with tempfile.TemporaryDirectory() as tmp:
        inp, out = Path(tmp) / "in.npy", Path(tmp) / "out.npy"
        np.save(inp, images)
        cmd = [sys.executable, "-m", "dga.runtime.ort_child", str(onnx_path), str(inp), str(out), level]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
            return None, f"onnxruntime could not run it ({tail})"
        return np.load(out), ""


def verify_package(package: Path, reference: DeployModule, images: np.ndarray, batches: list[int],
                   precisions: list[str]) -> list[Check]:
    """Check every ONNX file of the package at each batch size against the fp32 torch module."""
    checks: list[Check] = []
    largest = max(batches)
    refs = {batch: torch_logits(reference, images[:batch]) for batch in batches}  # once, for all precisions
    for precision in precisions:
        path = package / ONNX_FILES[precision]
        onnx.checker.check_model(str(path))
        session = make_session(str(path), "all") if precision == "fp32" else None
        for batch in batches:
            x, ref = images[:batch], refs[batch]
            note = ""
            if session is not None:
                got = session.run(["logits"], {"images": x})[0]
            else:
                got, note = run_in_child(path, x, "extended")
                if got is None:
                    checks.append(Check(precision, batch, float("nan"), float("nan"), 0, False, note, ran=False))
                    continue
            result = judge(ref, got, precision)
            diff, agree, ties, passed = result.max_abs_diff, result.top1_agreement, result.near_ties, result.passed
            if precision != "fp32" and batch != largest:
                # fp16 is judged on the largest (superset) batch of images only: with few images one
                # flip would be several percent.
                passed, note = True, "informational; judged at the largest batch"
            elif ties:
                note = f"{ties} near-tie flip(s) not counted"
            checks.append(Check(precision, batch, diff, agree, ties, bool(passed), note))
    return checks


def report_table(checks: list[Check]) -> str:
    lines = ["precision  batch  max|dlogit|  top-1 agree  result", "---------  -----  -----------  -----------  ------"]
    for c in checks:
        result = "NOT RUN" if not c.ran else "ok" if c.passed else "FAIL"
        if c.note:
            result += f" ({c.note})"
        lines.append(f"{c.precision:<9}  {c.batch:>5}  {c.max_abs_diff:>11.3g}  {c.top1_agreement:>10.2f}%  {result}")
    return "\n".join(lines)


def checks_json(checks: list[Check]) -> list[dict]:
    return [asdict(c) for c in checks]
