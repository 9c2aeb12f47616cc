"""One runner of dga-verify, in its own process: ``python -m dga.runtime.verify_child SPEC_JSON``.

Opens the runner through the runtime's own backends (the code dga-infer runs), feeds it the
package's golden images as one batch (in chunks of the runner's max batch) and then the first few
one at a time, and writes ``result.json`` (+ ``logits.npy``) into the spec's ``out`` folder. A
runner that cannot be opened here (no GPU, no engine, no bundle) is reported as skipped; with
``"scope": "runner"`` when none of that runner's rows can run here either (no CUDA GPU).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from dga.errors import DgaError
from dga.runtime.package import DeployPackage


def open_check_runner(package: DeployPackage, spec: dict):
    """(runner, provider label, reason it was not what was asked for or "")."""
    runner_kind, provider, precision = spec["runner"], spec["provider"], spec["precision"]
    if runner_kind == "onnxruntime":
        import onnxruntime as ort

        from dga.runtime.backends.onnxruntime import OnnxRuntimeRunner, provider_chain
        from dga.runtime.verifier import EP_NAMES

        wanted = EP_NAMES[provider]
        chain = provider_chain(ort.get_available_providers(), precision, spec["device"])
        chain = chain[[p[0] if isinstance(p, tuple) else p for p in chain].index(wanted):]
        runner = OnnxRuntimeRunner(package, precision, spec["device"], providers=chain)
        got = runner.provider
        return runner, provider, "" if got == wanted else f"{wanted} could not start here (onnxruntime used {got})"
    if runner_kind == "tensorrt":
        from dga.runtime.backends.tensorrt import TensorRTRunner

        runner = TensorRTRunner(package, precision, spec["device"])
        return runner, "gpu", ""
    if runner_kind == "torch-cuda":
        from dga.runtime.backends.torch_cuda import TorchCudaRunner

        # spec["device"] is a GPU index; "cpu" runs the same code without CUDA (tests).
        runner = TorchCudaRunner(package, precision, spec["device"], bundle=spec.get("bundle"))
        return runner, "gpu" if runner.device.type == "cuda" else "cpu", ""
    from dga.runtime.backends import torch_cuda
    from dga.runtime.backends.torch_ref import TorchRunner

    device = "cuda" if torch_cuda() else "cpu"
    return TorchRunner(package, device=device, bundle=spec.get("bundle")), device, ""


def run(spec: dict) -> dict:
    out = Path(spec["out"])
    package = DeployPackage.load(spec["package"])
    images = package.reference(check_hash=False).images  # the parent hashed every file just before
    try:
        runner, provider, mismatch = open_check_runner(package, spec)
    except (DgaError, ImportError) as exc:
        # The provider was found on this host before the child started: a graph it cannot load is a
        # failure. TensorRT (no GPU, no engine built for it) and torch (no bundle) can be absent.
        status = "FAIL" if spec["runner"] == "onnxruntime" else "skipped"
        scope = {"scope": "runner"} if getattr(exc, "runner_wide", False) else {}  # no row of it can run here
        return {"status": status, "reason": " ".join(str(exc).split()), **scope}
    if mismatch:
        runner.close()
        return {"status": "skipped", "reason": mismatch, "provider": provider}
    try:
        step = max(1, runner.max_batch)
        batched = [runner.infer(images[i:i + step])[0] for i in range(0, len(images), step)]
        single = [runner.infer(images[i:i + 1])[0] for i in range(min(spec["single_images"], len(images)))]
        logits = np.concatenate(batched + single).astype(np.float32)
    finally:
        runner.close()
    np.save(out / "logits.npy", logits)
    return {"status": "ran", "name": runner.name, "provider": provider}


def main(argv: list[str]) -> int:
    spec = json.loads(argv[0])
    result = run(spec)
    (Path(spec["out"]) / "result.json").write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
