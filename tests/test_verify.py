"""dga-verify and the package format: golden outputs, runner checks, refused packages."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dga.errors import ConfigError, PackageError

BIN = Path(sys.executable).parent


def _run(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / args[0]), *args[1:]], capture_output=True, text=True, timeout=timeout)


def _copy(package: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(package, tmp_path / package.name))


def _rehash(package: Path, name: str) -> None:
    """Record a file's new sha256 in deploy.json (a consistent package with other numbers)."""
    from dga.runtime.package import file_record

    facts = json.loads((package / "deploy.json").read_text())
    facts["files"][name] = file_record(package / name)
    (package / "deploy.json").write_text(json.dumps(facts))


# ----------------------------------------------------------------------------------------------
# the comparator, on hand-computed numbers


def test_judge_fp32_rules():
    from dga.runtime.compare import judge

    ref = np.array([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.5, 0.5005, 0.0]], dtype=np.float32)
    same = judge(ref, ref + np.float32(4e-4), "fp32")
    assert same.passed and same.max_abs_diff == pytest.approx(4e-4, abs=1e-7) and same.top1_agreement == 100.0
    # 2e-3 off on one logit: over the fp32 tolerance of 1e-3.
    off = ref.copy()
    off[0, 2] += 2e-3
    assert not judge(ref, off, "fp32").passed
    # Row 3 is a near tie (margin 5e-4 <= 2e-3): a flip there is not counted; a flip elsewhere is.
    tie = ref.copy()
    tie[2] = [0.5005, 0.5, 0.0]
    result = judge(ref, tie, "fp32")
    assert result.passed and result.near_ties == 1 and result.top1_agreement == pytest.approx(200 / 3)
    flip = ref.copy()
    flip[0] = [0.0, 1.0, 0.0]
    assert not judge(ref, flip, "fp32").passed


def test_judge_fp16_rules():
    from dga.runtime.compare import judge

    rng = np.random.default_rng(0)
    ref = rng.normal(size=(200, 5)).astype(np.float32)
    ref[np.arange(200), ref.argmax(1)] += 1.0  # clear winners: no near ties
    noisy = ref + np.float32(0.01)  # large for fp32, harmless for top-1
    assert judge(ref, noisy, "fp16").passed and not judge(ref, noisy, "fp32").passed
    one_flip = ref.copy()
    one_flip[0] = ref[0][::-1] if ref[0].argmax() != 2 else np.roll(ref[0], 1)
    r = judge(ref, one_flip, "fp16")  # 199 / 200 = 99.5 %: exactly at the threshold
    assert r.top1_agreement == 99.5 and r.passed
    two = one_flip.copy()
    two[1] = ref[1][::-1] if ref[1].argmax() != 2 else np.roll(ref[1], 1)
    assert not judge(ref, two, "fp16").passed  # 99.0 %
    with pytest.raises(ValueError, match="cannot be compared"):
        judge(ref, ref[:3], "fp16")


# ----------------------------------------------------------------------------------------------
# golden outputs in the package


def test_package_holds_golden_outputs(tiny_package):
    from dga.export.deploy_module import DeployModule
    from dga.export.package import select_views
    from dga.runtime.package import REFERENCE_IMAGES, DeployPackage, file_record
    from dga.train.bundle import load_bundle

    pkg = DeployPackage.load(tiny_package)
    facts = pkg.facts
    assert facts["version"] == 3 and facts["reference"]["file"] == "reference.npz"
    assert set(facts["files"]) == {"model.onnx", "model.fp16.onnx", "reference.npz"}
    for name, record in facts["files"].items():
        assert record == file_record(tiny_package / name)
    ref = pkg.reference()
    assert ref.images.shape == (REFERENCE_IMAGES, pkg.s0, pkg.s0, 3) and ref.images.dtype == np.uint8
    assert ref.source == "generated" and len(np.unique(ref.images.reshape(16, -1), axis=0)) == 16
    # The stored outputs are the bundle's torch module on the stored images.
    bundle = load_bundle(Path(facts["bundle"]["path"]))
    module = DeployModule(select_views(bundle, "all")[0], "fp32").eval()
    with torch.no_grad():
        logits, probs = module(torch.from_numpy(ref.images))
    np.testing.assert_allclose(ref.logits, logits.numpy(), atol=1e-5)
    np.testing.assert_allclose(ref.probs.sum(1), 1.0, atol=1e-5)
    np.testing.assert_allclose(ref.probs, torch.softmax(torch.from_numpy(ref.logits), 1).numpy(), atol=1e-5)


def test_given_images_become_the_golden_inputs():
    from dga.export.package import golden_inputs

    given = np.full((20, 8, 8, 3), 7, np.uint8)
    images, source = golden_inputs(given, 8)
    assert source == "given" and images.shape == (16, 8, 8, 3) and (images == 7).all()
    images, source = golden_inputs(given[:5], 8)
    assert source == "given+generated" and images.shape == (16, 8, 8, 3)
    assert (images[:5] == 7).all() and not (images[5:] == 7).all()


# ----------------------------------------------------------------------------------------------
# dga-verify on a good package


@pytest.fixture(scope="module")
def report(tiny_package):
    from dga.runtime import verify

    return verify(tiny_package)


def test_verify_runs_every_runner_of_this_host(report):
    rows = {(c.runner, c.provider, c.precision): c for c in report.checks}
    for precision in ("fp32", "fp16"):
        cpu = rows[("onnxruntime", "cpu", precision)]
        assert cpu.status == "pass" and cpu.name == "onnxruntime:CPUExecutionProvider"
        assert cpu.top1_agreement == 100.0
    assert rows[("onnxruntime", "cpu", "fp32")].max_abs_diff <= 1e-3
    torch_row = rows[("torch", "cpu", "fp32")]
    assert torch_row.status == "pass" and torch_row.max_abs_diff <= 1e-5
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        assert rows[("onnxruntime", "cuda", "fp32")].status == "skipped"
        assert "no CUDAExecutionProvider" in rows[("onnxruntime", "cuda", "fp32")].reason
    if importlib_find("tensorrt") is None:
        trt = rows[("tensorrt", "gpu", "fp16")]
        assert trt.status == "skipped" and trt.reason.startswith("tensorrt not installed")
        assert trt.max_abs_diff is None  # nothing ran, nothing measured
    assert report.ok and all(c.status in ("pass", "skipped") for c in report.checks)
    assert not any(c.status == "pass" and c.max_abs_diff is None for c in report.checks)


def importlib_find(name: str):
    import importlib.util

    return importlib.util.find_spec(name)


def test_verify_table_and_json(report):
    table = report.table().splitlines()
    assert table[0].split()[:6] == ["runner", "provider", "precision", "status", "max|dlogit|", "top-1"]
    assert len(table) == 2 + len(report.checks)
    data = json.loads(json.dumps(report.to_json()))
    assert data["ok"] is True and data["reference"] == {"images": 16, "source": "generated"}
    assert sorted(data["files_checked"]) == ["model.fp16.onnx", "model.onnx", "reference.npz"]


def test_require_turns_a_skip_into_a_failure(tiny_package):
    from dga.runtime import verify

    if importlib_find("tensorrt") is not None:
        pytest.skip("TensorRT is installed here")
    strict = verify(tiny_package, require=["tensorrt", "cpu"])
    assert not strict.ok
    trt = [c for c in strict.checks if c.runner == "tensorrt"]
    assert trt and all(c.status == "FAIL" and "required (--require tensorrt) but skipped" in c.reason for c in trt)
    assert all(c.status == "pass" for c in strict.checks if c.provider == "cpu" and c.runner == "onnxruntime")
    with pytest.raises(ConfigError, match="--require 'gpu0' is not a runner"):
        verify(tiny_package, require=["gpu0"])


def test_cli_exit_codes(tiny_package, tmp_path):
    ok = _run("dga-verify", str(tiny_package), "--json", str(tmp_path / "v.json"))
    assert ok.returncode == 0, ok.stderr
    assert "verified (" in ok.stdout and json.loads((tmp_path / "v.json").read_text())["ok"] is True
    if importlib_find("tensorrt") is None:
        strict = _run("dga-verify", str(tiny_package), "--require", "tensorrt")
        assert strict.returncode == 3 and "NOT verified" in strict.stdout
    usage = _run("dga-verify", str(tiny_package), "--require", "nope")
    assert usage.returncode == 2 and usage.stderr.count("\n") == 1


# ----------------------------------------------------------------------------------------------
# numbers that differ, runners that crash, packages that are refused


def test_changed_reference_fails_the_runners(tiny_package, tmp_path):
    from dga.runtime import verify

    pkg = _copy(tiny_package, tmp_path)
    with np.load(pkg / "reference.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["logits"] = arrays["logits"] + np.float32(0.01)  # fp32 runners must see 0.01 > 1e-3
    np.savez(pkg / "reference.npz", **arrays)
    _rehash(pkg, "reference.npz")
    result = verify(pkg)
    rows = {(c.runner, c.provider, c.precision): c for c in result.checks}
    fp32 = rows[("onnxruntime", "cpu", "fp32")]
    assert fp32.status == "FAIL" and fp32.max_abs_diff == pytest.approx(0.01, abs=1e-3)
    assert "outside tolerance" in fp32.reason
    assert rows[("onnxruntime", "cpu", "fp16")].status == "pass"  # top-1 unchanged: fp16's rule holds
    assert not result.ok


def test_unloadable_graph_is_a_failure_not_a_skip(tiny_package, tmp_path):
    import onnx

    from dga.runtime import verify

    pkg = _copy(tiny_package, tmp_path)
    # A model without a graph, carrying the real graph's metadata (so the manifest digest matches).
    broken = onnx.ModelProto(ir_version=10)
    broken.metadata_props.extend(onnx.load(str(pkg / "model.fp16.onnx"), load_external_data=False).metadata_props)
    (pkg / "model.fp16.onnx").write_bytes(broken.SerializeToString())
    _rehash(pkg, "model.fp16.onnx")
    rows = {(c.runner, c.provider, c.precision): c for c in verify(pkg).checks}
    bad = rows[("onnxruntime", "cpu", "fp16")]
    assert bad.status == "FAIL" and "cannot load" in bad.reason
    assert rows[("onnxruntime", "cpu", "fp32")].status == "pass"


@pytest.mark.parametrize("case,needle", [
    ("onnx-byte", "model.onnx does not match the sha256"),
    ("reference-byte", "reference.npz does not match the sha256"),
    ("missing-file", "model.fp16.onnx is missing"),
    ("version-1", "is package version 1; this dga reads version 3"),
    ("foreign", "is not a dga deployment manifest"),
    ("no-reference", "lacks 'reference'"),
    ("not-a-package", "no deployment package at"),
])
def test_tampered_or_foreign_package_is_refused(case, needle, tiny_package, tmp_path):
    from dga.runtime import verify
    from dga.runtime.predictor import Predictor

    pkg = _copy(tiny_package, tmp_path)
    facts = json.loads((pkg / "deploy.json").read_text())
    if case in ("onnx-byte", "reference-byte"):
        target = pkg / ("model.onnx" if case == "onnx-byte" else "reference.npz")
        data = bytearray(target.read_bytes())
        data[len(data) // 2] ^= 0x01
        target.write_bytes(bytes(data))
    elif case == "missing-file":
        (pkg / "model.fp16.onnx").unlink()
    elif case == "version-1":
        facts["version"] = 1
    elif case == "foreign":
        facts["format"] = "someone-elses"
    elif case == "no-reference":
        del facts["reference"]
    elif case == "not-a-package":
        (pkg / "deploy.json").unlink()
    if case in ("version-1", "foreign", "no-reference"):
        (pkg / "deploy.json").write_text(json.dumps(facts))
    with pytest.raises(PackageError, match=needle):
        verify(pkg)
    proc = _run("dga-verify", str(pkg))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and needle.split()[0] in proc.stderr
    if case in ("onnx-byte", "version-1", "foreign", "not-a-package"):  # what dga-infer reads
        with pytest.raises(PackageError, match=needle):
            Predictor.from_package(pkg, backend="onnxruntime")
        infer = _run("dga-infer", str(tmp_path), "--model", str(pkg), "--out", str(tmp_path / "p.csv"))
        assert infer.returncode == 2 and needle.split()[0] in infer.stderr and infer.stderr.count("\n") == 1


# ----------------------------------------------------------------------------------------------
# ONNX external data (graphs over protobuf's 2 GB limit), forced on the tiny configuration


@pytest.fixture(scope="module")
def external_package(backbone, shapes_data, tmp_path_factory) -> Path:
    from conftest import make_random_bundle

    from dga.export.package import ExportOptions, export_package

    base = tmp_path_factory.mktemp("external")
    bundle = make_random_bundle(backbone, shapes_data, "ar", base / "m.dga", 77)
    opts = ExportOptions(precision="fp32", max_batch=4, opt_batch=4, verify_batches=[1, 4], external_data=True)
    path, _ = export_package(bundle, base / "m.deploy", opts, log=lambda _line: None)
    return path


def test_external_data_is_part_of_the_package(external_package, tmp_path):
    from dga.runtime import verify
    from dga.runtime.package import DeployPackage, combined_digest, file_record, graph_digest
    from dga.runtime.predictor import Predictor

    facts = json.loads((external_package / "deploy.json").read_text())
    assert set(facts["files"]) == {"model.onnx", "model.onnx.data", "reference.npz"}
    assert facts["files"]["model.onnx.data"] == file_record(external_package / "model.onnx.data")
    # Most bytes are in the data file; the graph itself is small.
    assert facts["files"]["model.onnx.data"]["bytes"] > 10 * facts["files"]["model.onnx"]["bytes"]
    # Engine keys cover both files: the digest from deploy.json equals the one from the files.
    pkg = DeployPackage.load(external_package)
    expected = combined_digest(facts["files"]["model.onnx"]["sha256"], facts["files"]["model.onnx.data"]["sha256"])
    assert pkg.graph_digest("fp32") == graph_digest(external_package / "model.onnx") == expected
    assert expected not in (facts["files"]["model.onnx"]["sha256"], facts["files"]["model.onnx.data"]["sha256"])

    moved = Path(shutil.move(str(_copy(external_package, tmp_path)), str(tmp_path / "elsewhere.deploy")))
    report = verify(moved)
    cpu = [c for c in report.checks if c.runner == "onnxruntime" and c.provider == "cpu"]
    assert [c.status for c in cpu] == ["pass"] and report.ok
    ref = DeployPackage.load(moved).reference()
    predictor = Predictor.from_package(moved, backend="onnxruntime")
    np.testing.assert_allclose(predictor.predict(ref.images).logits, ref.logits, atol=1e-3)
    predictor.close()

    data = bytearray((moved / "model.onnx.data").read_bytes())
    data[-5] ^= 0x01
    (moved / "model.onnx.data").write_bytes(bytes(data))
    with pytest.raises(PackageError, match="model.onnx.data does not match the sha256"):
        Predictor.from_package(moved, backend="onnxruntime")
    with pytest.raises(PackageError, match="model.onnx.data does not match"):
        verify(moved)


# ----------------------------------------------------------------------------------------------
# the torch-cuda runner's rows


def test_torch_cuda_rows_are_skipped_with_the_reason_without_cuda(report):
    if torch.cuda.is_available():
        pytest.skip("this host has a CUDA GPU")
    rows = [c for c in report.checks if c.runner == "torch-cuda"]
    assert [(c.provider, c.precision) for c in rows] == [("gpu", "fp32"), ("gpu", "fp16")]  # the package's order
    for c in rows:
        assert c.status == "skipped" and c.max_abs_diff is None
        assert c.reason.startswith("the torch-cuda backend needs a CUDA GPU and torch sees none")
    # No CUDA is the runner's, not a precision's: its second row took no child process of its own.
    assert rows[1].seconds == 0.0 and rows[0].seconds > 0.0


def test_require_torch_cuda_fails_without_cuda(tiny_package):
    from dga.runtime import verify

    if torch.cuda.is_available():
        pytest.skip("this host has a CUDA GPU")
    strict = verify(tiny_package, require=["torch-cuda"])
    assert not strict.ok and strict.required == ["torch-cuda"]
    rows = [c for c in strict.checks if c.runner == "torch-cuda"]
    assert rows and all(c.status == "FAIL" and c.reason.startswith("required (--require torch-cuda) but skipped: "
                                                                   "the torch-cuda backend needs a CUDA GPU")
                        for c in rows)
    assert all(c.status == "pass" for c in strict.checks if c.runner == "onnxruntime" and c.provider == "cpu")


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_torch_cuda_child_on_the_cpu_is_judged_by_its_precision(tiny_package, tmp_path, precision):
    """The child's torch-cuda path with device "cpu" (the same code minus CUDA graphs), judged as dga-verify does."""
    from dga.runtime.compare import judge
    from dga.runtime.package import DeployPackage
    from dga.runtime.verifier import SINGLE_IMAGES
    from dga.runtime.verify_child import run

    spec = {"package": str(tiny_package), "runner": "torch-cuda", "provider": "gpu", "precision": precision,
            "device": "cpu", "bundle": None, "single_images": SINGLE_IMAGES, "out": str(tmp_path)}
    result = run(spec)
    assert result == {"status": "ran", "name": "torch-cuda:cpu", "provider": "cpu"}
    pkg = DeployPackage.load(tiny_package)
    ref = pkg.reference()
    logits = np.load(tmp_path / "logits.npy")
    expected = np.concatenate([ref.logits, ref.logits[:SINGLE_IMAGES]])
    outcome = judge(expected, logits, precision, pkg.tolerances)
    assert outcome.passed, outcome
    if precision == "fp32":
        assert outcome.max_abs_diff <= 1e-4
