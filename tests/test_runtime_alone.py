"""The runtime installs and runs without the training stack.

A child interpreter gets a ``sys.meta_path`` finder (through ``sitecustomize`` on PYTHONPATH, so
the processes it starts inherit it) that makes torch, torchvision, open_clip, scipy, sklearn,
matplotlib, onnx, onnxscript and safetensors unimportable, as on a host with ``pip install dga``
alone. There the runtime must predict, dga-infer and dga-verify must work, and the training CLIs
must say which extra to install.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

BLOCKED = ("torch", "torchvision", "open_clip", "scipy", "sklearn", "matplotlib", "onnx", "onnxscript",
           "safetensors")
BIN = Path(sys.executable).parent

SITECUSTOMIZE = f"""
import sys

BLOCKED = {set(BLOCKED)!r}


class BlockTrainingStack:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None


sys.meta_path.insert(0, BlockTrainingStack())
"""

PROBE = """
import json, sys
from pathlib import Path

import numpy as np

import dga.cli.infer, dga.cli.verify, dga.runtime, dga.runtime.verifier  # noqa: F401
from dga.runtime import Predictor, verify

pkg, folder = sys.argv[1], sys.argv[2]
p = Predictor.from_package(pkg, backend="onnxruntime")
results = list(p.predict_folder(folder))
ref = np.load(Path(pkg) / "reference.npz")
pred = p.predict(ref["images"])
report = verify(pkg)
print(json.dumps({
    "labels": [r.label for r in results],
    "ok": [r.ok for r in results],
    "max_diff": float(np.abs(pred.logits - ref["logits"]).max()),
    "checks": [[c.runner, c.provider, c.precision, c.status, c.reason] for c in report.checks],
    "verified": report.ok,
    "loaded": sorted({m.split(".")[0] for m in sys.modules} & set(sys.argv[3].split(","))),
}))
"""


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict:
    site = tmp_path_factory.mktemp("block_torch")
    (site / "sitecustomize.py").write_text(textwrap.dedent(SITECUSTOMIZE))
    path = os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return {**os.environ, "PYTHONPATH": path}


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("alone_photos")
    rng = np.random.default_rng(7)
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (90 + 10 * i, 120, 3), dtype=np.uint8)).save(root / f"{i}.jpg")
    return root


def _run(cmd: list[str], env: dict, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)


def test_torch_is_blocked(env):
    proc = _run([sys.executable, "-c", "import torch"], env)
    assert proc.returncode != 0 and "No module named 'torch'" in proc.stderr


def test_runtime_runs_without_the_training_stack(env, tiny_package, photos):
    proc = _run([sys.executable, "-c", PROBE, str(tiny_package), str(photos), ",".join(BLOCKED)], env)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["loaded"] == []  # not one module of the training stack was imported
    assert len(out["labels"]) == 5 and all(out["ok"])
    classnames = json.loads((tiny_package / "deploy.json").read_text())["classnames"]
    assert set(out["labels"]) <= set(classnames)
    assert out["max_diff"] <= 1e-3  # the golden logits, reproduced without torch
    status = {(r, p, prec): (s, why) for r, p, prec, s, why in out["checks"]}
    assert status[("onnxruntime", "cpu", "fp32")][0] == "pass"
    assert status[("onnxruntime", "cpu", "fp16")][0] == "pass"
    assert status[("tensorrt", "gpu", "fp16")][0] == "skipped"
    assert status[("torch", "-", "fp32")] == ("skipped", "torch not installed (pip install 'dga[train]')")
    assert out["verified"] is True


def test_infer_and_verify_commands_without_torch(env, tiny_package, photos, tmp_path):
    infer = _run([str(BIN / "dga-infer"), str(photos), "--model", str(tiny_package), "--out",
                  str(tmp_path / "p.csv"), "--no-progress"], env)
    assert infer.returncode == 0, infer.stderr
    assert len((tmp_path / "p.csv").read_text().splitlines()) == 1 + 5
    verify = _run([str(BIN / "dga-verify"), str(tiny_package), "--json", str(tmp_path / "v.json")], env)
    assert verify.returncode == 0, verify.stderr + verify.stdout
    assert "tensorrt not installed" in verify.stdout and "torch not installed" in verify.stdout
    report = json.loads((tmp_path / "v.json").read_text())
    assert report["ok"] is True and not any(c["status"] == "FAIL" for c in report["checks"])
    required = _run([str(BIN / "dga-verify"), str(tiny_package), "--require", "tensorrt"], env)
    assert required.returncode == 3
    assert "required (--require tensorrt) but skipped: tensorrt not installed" in required.stdout


@pytest.mark.parametrize("command", ["dga-train", "dga-eval", "dga-export", "dga-demo", "dga-bench", "dga-compare"])
def test_training_commands_name_the_extra(command, env, tmp_path):
    args = {"dga-train": [str(tmp_path), "--out", str(tmp_path / "x.dga")],
            "dga-export": ["--ckpt", str(tmp_path), "--out", str(tmp_path / "x.deploy")],
            "dga-demo": ["--out", str(tmp_path / "demo")],
            "dga-bench": ["--ckpt", str(tmp_path), "--out", str(tmp_path / "bench")],
            "dga-eval": [str(tmp_path / "x.dga"), str(tmp_path)],
            "dga-compare": ["--out", str(tmp_path / "cmp"), "--rows", "zero-shot", "--seeds", "1"]}[command]
    proc = _run([str(BIN / command), *args], env)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert "pip install 'dga[train]'" in lines[0]
