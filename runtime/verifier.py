"""Verify a deployment package on the host it runs on (``dga-verify``; Polygraphy-style run/compare).

First the package itself: format version, manifest schema, the manifest digest every graph carries
(an edited deploy.json, or one from another package) and every file's sha256 (a tampered or foreign
package raises ``PackageError`` naming the file), all before any runner starts. Then every runner this host could have
runs the package's golden inputs (``reference.npz``) and is compared with the trained module's
stored outputs by ``dga.runtime.compare.judge``:

    onnxruntime  on the cpu, cuda and tensorrt-ep execution providers, each precision of the package
    tensorrt     the package's engine for this GPU (TensorRT and a CUDA GPU)
    torch        the torch module rebuilt from the bundle (the [train] extra and the bundle)
    torch-cuda   that module with CUDA graphs on a CUDA GPU, fp16 and fp32 as the package has them

A runner that cannot run here is "skipped" with the reason, never "pass"; ``require`` turns the
skip of a named runner into a failure. Each runner runs in a child process (verify_child.py), so
a crash inside a native library is one FAIL row, and this process never imports torch.
"""

from __future__ import annotations

import importlib.util
import json
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from dga.errors import ConfigError
from dga.runtime.compare import judge
from dga.runtime.package import DeployPackage

EP_NAMES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt-ep": "TensorrtExecutionProvider"}
REQUIRE_CHOICES = ("onnxruntime", "cpu", "cuda", "tensorrt-ep", "tensorrt", "torch", "torch-cuda")
TORCH_CUDA_PRECISIONS = ("fp16", "fp32")  # what the torch-cuda runner computes in
SINGLE_IMAGES = 3  # golden images also run one at a time: the batch-1 path of the engine
STATUSES = ("pass", "FAIL", "skipped")


@dataclass
class RunnerCheck:
    runner: str  # onnxruntime | tensorrt | torch | torch-cuda
    provider: str  # cpu | cuda | tensorrt-ep (ONNX Runtime), the device for tensorrt / torch / torch-cuda
    precision: str
    status: str = "skipped"  # pass | FAIL | skipped
    reason: str = ""
    max_abs_diff: float | None = None
    top1_agreement: float | None = None  # percent
    near_ties: int = 0
    rule: str = ""
    name: str = ""  # what actually ran, e.g. onnxruntime:CPUExecutionProvider
    seconds: float = 0.0

    def matches(self, token: str) -> bool:
        return token in (self.runner, self.provider)


@dataclass
class VerifyReport:
    package: str
    files_checked: list[str]
    reference_images: int
    reference_source: str
    checks: list[RunnerCheck]
    required: list[str] = field(default_factory=list)
    host: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Every runner that ran passed, and every required runner ran."""
        return all(c.status != "FAIL" for c in self.checks)

    def to_json(self) -> dict:
        return {"package": self.package, "ok": self.ok, "files_checked": self.files_checked,
                "reference": {"images": self.reference_images, "source": self.reference_source},
                "required": self.required, "host": self.host, "checks": [asdict(c) for c in self.checks]}

    def table(self) -> str:
        rows = [("runner", "provider", "precision", "status", "max|dlogit|", "top-1 agree", "note")]
        for c in self.checks:
            diff = "-" if c.max_abs_diff is None else f"{c.max_abs_diff:.3g}"
            agree = "-" if c.top1_agreement is None else f"{c.top1_agreement:.2f}%"
            note = c.reason or (f"{c.near_ties} near-tie flip(s) not counted" if c.near_ties else "")
            rows.append((c.runner, c.provider, c.precision, c.status, diff, agree, note))
        widths = [max(len(r[i]) for r in rows) for i in range(6)]
        lines = ["  ".join(v.ljust(w) for v, w in zip(r[:6], widths, strict=True)) + "  " + r[6] for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths) + "  ----")
        return "\n".join(line.rstrip() for line in lines)

    def summary(self) -> str:
        counts = {s: sum(c.status == s for c in self.checks) for s in STATUSES}
        verdict = "verified" if self.ok else "NOT verified"
        return (f"{self.package}: {verdict} ({counts['pass']} passed, {counts['FAIL']} failed, "
                f"{counts['skipped']} skipped; {len(self.files_checked)} files match deploy.json)")


def importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def planned_checks(package: DeployPackage, available_eps: list[str]) -> list[RunnerCheck]:
    """Every runner of the package, those this host cannot run already marked skipped with why."""
    checks: list[RunnerCheck] = []
    for provider, ep in EP_NAMES.items():
        for precision in package.precisions():
            check = RunnerCheck("onnxruntime", provider, precision, status="run")
            if ep not in available_eps:
                hint = "pip install 'dga[gpu]' on a CUDA host" if provider == "cuda" else \
                    "needs onnxruntime-gpu with TensorRT libraries" if provider == "tensorrt-ep" else ""
                check.status, check.reason = "skipped", f"onnxruntime has no {ep}" + (f" ({hint})" if hint else "")
            checks.append(check)
    for precision in package.precisions():
        check = RunnerCheck("tensorrt", "gpu", precision, status="run")
        if not importable("tensorrt"):
            check.status, check.reason = "skipped", "tensorrt not installed (pip install 'dga[tensorrt]')"
        elif not importable("torch"):
            check.status, check.reason = "skipped", "torch not installed (the TensorRT runner's CUDA buffers need it)"
        checks.append(check)
    check = RunnerCheck("torch", "-", "fp32", status="run")
    if not (importable("torch") and importable("open_clip")):
        check.status, check.reason = "skipped", "torch not installed (pip install 'dga[train]')"
    checks.append(check)
    for precision in [p for p in package.precisions() if p in TORCH_CUDA_PRECISIONS]:
        check = RunnerCheck("torch-cuda", "gpu", precision, status="run")
        if not (importable("torch") and importable("open_clip")):
            check.status, check.reason = "skipped", "torch not installed (pip install 'dga[train]' on a CUDA host)"
        checks.append(check)
    return checks


def run_child(package: DeployPackage, check: RunnerCheck, device: int, bundle: Path | None,
              timeout: float) -> tuple[dict, np.ndarray | None]:
    """One runner over the golden inputs in a child process: (its report, logits or None)."""
    with tempfile.TemporaryDirectory(prefix="dga-verify-") as tmp:
        spec = {"package": str(package.path), "runner": check.runner, "provider": check.provider,
                "precision": check.precision, "device": device, "bundle": str(bundle) if bundle else None,
                "single_images": SINGLE_IMAGES, "out": tmp}
        cmd = [sys.executable, "-m", "dga.runtime.verify_child", json.dumps(spec)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"status": "FAIL", "reason": f"did not finish within {timeout:g} s"}, None
        out = Path(tmp)
        if not (out / "result.json").is_file():
            how = f"killed by signal {-proc.returncode}" if proc.returncode < 0 else f"exit code {proc.returncode}"
            tail = (proc.stderr.strip().splitlines() or [""])[-1][:300]
            return {"status": "FAIL", "reason": f"the runner crashed ({how}) {tail}".strip()}, None
        result = json.loads((out / "result.json").read_text())
        logits = np.load(out / "logits.npy") if (out / "logits.npy").is_file() else None
        return result, logits


def verify(package: str | Path, require: list[str] | tuple[str, ...] = (), bundle: str | Path | None = None,
           device: int = 0, timeout: float = 600.0, log=None) -> VerifyReport:
    """Check the package, run every runner of this host over its golden inputs, compare (module doc)."""
    unknown = [r for r in require if r not in REQUIRE_CHOICES]
    if unknown:
        raise ConfigError(f"--require {unknown[0]!r} is not a runner: choose from {', '.join(REQUIRE_CHOICES)}")
    import onnxruntime as ort

    pkg = DeployPackage.load(package)  # schema and the manifest digest in every graph
    files = pkg.check_files()
    reference = pkg.reference()
    expected = np.concatenate([reference.logits, reference.logits[:SINGLE_IMAGES]])
    checks = planned_checks(pkg, ort.get_available_providers())
    for check in checks:
        if check.status != "run":
            continue
        if log:
            log(f"running {check.runner} {check.provider} {check.precision} ...")
        t = time.perf_counter()
        result, logits = run_child(pkg, check, device, Path(bundle) if bundle else None, timeout)
        check.seconds = round(time.perf_counter() - t, 2)
        check.name = result.get("name", "")
        check.provider = result.get("provider", check.provider)
        if result["status"] != "ran" or logits is None:
            check.status, check.reason = result["status"], result.get("reason", "")
            if result.get("scope") == "runner":  # e.g. no CUDA GPU: the runner's other rows cannot run either
                for other in checks:
                    if other.runner == check.runner and other.status == "run":
                        other.status, other.reason = check.status, check.reason
            continue
        try:
            outcome = judge(expected, logits, check.precision, pkg.tolerances)
        except ValueError as exc:
            check.status, check.reason = "FAIL", str(exc)
            continue
        check.status = "pass" if outcome.passed else "FAIL"
        check.max_abs_diff, check.top1_agreement = outcome.max_abs_diff, outcome.top1_agreement
        check.near_ties, check.rule = outcome.near_ties, outcome.rule
        if not outcome.passed:
            check.reason = f"outside tolerance: {outcome.rule}"
    for token in require:
        matching = [c for c in checks if c.matches(token)]
        if not any(c.status in ("pass", "FAIL") for c in matching):
            for c in matching:
                c.status, c.reason = "FAIL", f"required (--require {token}) but skipped: {c.reason}"
    host = {"python": platform.python_version(), "platform": platform.platform(),
            "onnxruntime": ort.__version__, "providers": ort.get_available_providers()}
    return VerifyReport(str(pkg.path), files, len(reference.images), reference.source, checks, list(require), host)
