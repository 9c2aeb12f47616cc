"""Self-check of an exported package: ONNX checker, then ONNX Runtime vs the torch module.

The comparator and its tolerances are the runtime's (``dga.runtime.compare``: fp32 max |logit
difference| <= 1e-3 and 100 % top-1 agreement; fp16 >= 99.5 % top-1; int8 >= the export's
``int8_top1_percent``), so the export host and a deployment host (dga-verify) judge by the same
rules. Graphs other than fp32 run in a child process at the optimisation level the runtime's CPU
runner uses for them (a crash in ONNX Runtime must not take the exporter down).
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
from dga.runtime.backends.onnxruntime import optimisation_level
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


def run_in_child(onnx_path: Path, images: np.ndarray, level: str,
                 chunk: int | None = None) -> tuple[np.ndarray | None, str]:
    """ONNX Runtime in a child process; (logits, "") or (None, reason) if it could not run.

    ``chunk``: call the graph on at most this many images at a time (``main`` below), as the
    runtime's CPU runner does; None: one call.
    """
    with tempfile.TemporaryDirectory() as tmp:
        inp, out = Path(tmp) / "in.npy", Path(tmp) / "out.npy"
        np.save(inp, images)
        cmd = [sys.executable, "-m", "dga.runtime.ort_child", str(onnx_path), str(inp), str(out), level]
        if chunk is not None:
            cmd = [sys.executable, "-m", "dga.export.verify", str(onnx_path), str(inp), str(out), level, str(chunk)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
            return None, f"onnxruntime could not run it ({tail})"
        return np.load(out), ""


def cpu_level(precision: str) -> str:
    """The ONNX Runtime optimisation level the runtime's CPU runner loads this precision's graph at."""
    return optimisation_level(precision, on_gpu=False)


def check_chunk(precision: str) -> int | None:
    """Images per call when checking a precision. Dynamic int8 computes its activation scales over
    everything in one call, so an image's logits depend on the other images of the call: int8 is
    checked one image per call (each image's own result, the same in every batch of the check);
    the other graphs in one call per batch. ``golden_check`` runs the runtime's own runner."""
    return 1 if precision == "int8" else None


def verify_package(package: Path, reference: DeployModule, images: np.ndarray, batches: list[int],
                   precisions: list[str], tolerances: dict | None = None) -> list[Check]:
    """Check every ONNX file of the package at each batch size against the fp32 torch module.

    ``tolerances``: overrides of the runtime's defaults (``int8_top1_percent`` from --int8-agreement).
    """
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
                got, note = run_in_child(path, x, cpu_level(precision), check_chunk(precision))
                if got is None:
                    checks.append(Check(precision, batch, float("nan"), float("nan"), 0, False, note, ran=False))
                    continue
            result = judge(ref, got, precision, tolerances)
            diff, agree, ties, passed = result.max_abs_diff, result.top1_agreement, result.near_ties, result.passed
            if precision != "fp32" and batch != largest:
                # fp16 and int8 are judged on the largest (superset) batch of images only: with few images one
                # flip would be several percent.
                passed, note = True, "informational; judged at the largest batch"
            elif ties:
                note = f"{ties} near-tie flip(s) not counted"
            checks.append(Check(precision, batch, diff, agree, ties, bool(passed), note))
    return checks


def golden_check(package: Path, precision: str, timeout: float = 600.0) -> Check:
    """A finished package's golden images through ONNX Runtime's CPU runner, run and judged exactly as
    dga-verify's ``onnxruntime cpu`` row does (its child, its image set, the manifest's tolerances)."""
    from dga.runtime.package import DeployPackage
    from dga.runtime.verifier import SINGLE_IMAGES, RunnerCheck, run_child

    pkg = DeployPackage.load(package)
    reference = pkg.reference()
    expected = np.concatenate([reference.logits, reference.logits[:SINGLE_IMAGES]])  # as verifier.verify
    result, logits = run_child(pkg, RunnerCheck("onnxruntime", "cpu", precision, status="run"), 0, None, timeout)
    note = f"the {len(reference.logits)} golden images as dga-verify runs them"
    if result["status"] != "ran" or logits is None:
        return Check(precision, len(expected), float("nan"), float("nan"), 0, False,
                     f"{note}: {result.get('reason', result['status'])}", ran=False)
    outcome = judge(expected, logits, precision, pkg.tolerances)
    return Check(precision, len(expected), outcome.max_abs_diff, outcome.top1_agreement, outcome.near_ties,
                 outcome.passed, note)


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


def main(argv: list[str]) -> int:
    """Child of ``run_in_child`` with a chunk: model.onnx inputs.npy outputs.npy level chunk."""
    model, inputs, outputs, level, chunk = argv
    session = make_session(model, level)
    images, step = np.load(inputs), max(1, int(chunk))
    parts = [session.run(["logits"], {"images": images[i:i + step]})[0] for i in range(0, max(len(images), 1), step)]
    np.save(outputs, np.concatenate(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
