"""dga-triton: the Triton model repository written from a package, and its offline validation.

No server here (tests/test_serve.py runs one): the configs are parsed with tritonclient's
ModelConfig proto and checked against the graphs; a damaged repository is refused with one line
naming the file and the field.
"""

from __future__ import annotations

import importlib.util
import io
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dga.runtime.decode import decode_bytes
from dga.runtime.engine_key import file_sha256
from dga.runtime.package import DeployPackage
from dga.serve import triton as tr
from dga.serve.backend import request_images

pytestmark = pytest.mark.skipif(importlib.util.find_spec("tritonclient") is None,
                                reason="tritonclient (the [serve] extra) is not installed")


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    from dga.cli import triton as cli

    monkeypatch.setattr(sys, "argv", ["dga-triton", *args])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


@pytest.fixture(scope="module")
def repo(tiny_package, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("triton") / "repo"
    summary = tr.write_repository(tiny_package, out)
    assert summary.validated and set(summary.models) == {"dga", "dga_onnx"}
    return out


def kind_name(kind: int) -> str:
    from tritonclient.grpc import model_config_pb2

    return model_config_pb2.ModelInstanceGroup.Kind.Name(kind)


def damaged(repo: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "repo"
    shutil.copytree(repo, copy)
    return copy


def test_repository_layout_configs_and_hashes(repo, tiny_package):
    pkg = DeployPackage.load(tiny_package)
    assert sorted(p.name for p in repo.iterdir()) == ["dga", "dga_onnx"]
    assert file_sha256(repo / "dga_onnx/1/model.onnx") == pkg.facts["files"]["model.onnx"]["sha256"]
    assert (repo / "dga/1/model.py").is_file() and (repo / "dga/1/package/deploy.json").is_file()
    for model in ("dga", "dga_onnx"):
        cfg = tr.parse_config(repo / model / "config.pbtxt")
        assert cfg.name == model and cfg.max_batch_size == pkg.max_batch == 8
        assert list(cfg.dynamic_batching.preferred_batch_size) == [8]
        assert cfg.dynamic_batching.max_queue_delay_microseconds == 2000
        assert [(kind_name(g.kind), g.count) for g in cfg.instance_group] == [("KIND_CPU", 1)]
        assert [w.batch_size for w in cfg.model_warmup] == [1]
        assert (repo / model / "labels.txt").read_text().splitlines() == pkg.classnames
        params = {k: v.string_value for k, v in cfg.parameters.items()}
        for name, rec in pkg.facts["files"].items():
            assert params["sha256:" + name] == rec["sha256"]
        outputs = {o.name: (list(o.dims), o.label_filename) for o in cfg.output}
        assert outputs == {"logits": ([len(pkg.classnames)], ""), "probs": ([len(pkg.classnames)], "labels.txt")}
    cfg = tr.parse_config(repo / "dga/config.pbtxt")
    assert cfg.backend == "python"
    assert [(i.name, list(i.dims), i.optional) for i in cfg.input] == [
        ("image_bytes", [1], True), ("images", [pkg.s0, pkg.s0, 3], True)]
    assert tr.parse_config(repo / "dga_onnx/config.pbtxt").platform == "onnxruntime_onnx"


def test_cli_writes_with_options_and_checks(tiny_package, tmp_path, monkeypatch, capsys):
    out = tmp_path / "r"
    rc, stdout, _ = run_cli(monkeypatch, capsys, str(tiny_package), "--out", str(out), "--precision", "fp16",
                            "--kind", "gpu", "--instances", "2", "--max-batch", "4", "--preferred-batch", "2",
                            "--preferred-batch", "4", "--max-queue-delay-us", "500")
    assert rc == 0 and "every config valid" in stdout
    pkg = DeployPackage.load(tiny_package)
    assert file_sha256(out / "dga_onnx/1/model.onnx") == pkg.facts["files"]["model.fp16.onnx"]["sha256"]
    cfg = tr.parse_config(out / "dga/config.pbtxt")
    assert cfg.max_batch_size == 4 and list(cfg.dynamic_batching.preferred_batch_size) == [2, 4]
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 500
    assert [(kind_name(g.kind), g.count) for g in cfg.instance_group] == [("KIND_GPU", 2)]
    assert cfg.parameters["precision"].string_value == "fp16"
    rc, stdout, _ = run_cli(monkeypatch, capsys, "--check", str(out))
    assert rc == 0 and "2 models, every config valid" in stdout
    # an existing --out is kept unless --overwrite; nothing temporary is left beside it
    rc, _, err = run_cli(monkeypatch, capsys, str(tiny_package), "--out", str(out))
    assert rc == 2 and "--overwrite" in err
    rc, _, _ = run_cli(monkeypatch, capsys, str(tiny_package), "--out", str(out), "--overwrite")
    assert rc == 0 and tr.parse_config(out / "dga/config.pbtxt").max_batch_size == 8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]


@pytest.mark.parametrize("args, message", [
    (["--max-batch", "9"], "between 1 and the package's batch maximum 8"),
    (["--preferred-batch", "16"], "preferred batch size 16"),
    (["--kind", "tpu"], "instance kind 'tpu'"),
    (["--instances", "0"], "--instances must be at least 1"),
    (["--engine"], "--engine needs TensorRT"),
])
def test_cli_refuses_bad_options(tiny_package, tmp_path, monkeypatch, capsys, args, message):
    if args == ["--engine"] and importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed here")
    rc, _, err = run_cli(monkeypatch, capsys, str(tiny_package), "--out", str(tmp_path / "r"), *args)
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir()), "a refused repository left files behind"


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


@pytest.mark.parametrize("damage, message", [
    (lambda r: _edit(r / "dga_onnx/config.pbtxt", "max_batch_size", "max_batch"), "dga_onnx/config.pbtxt:"),
    (lambda r: _edit(r / "dga/config.pbtxt", "KIND_CPU", "KIND_TPU"), "dga/config.pbtxt:"),
    (lambda r: _edit(r / "dga_onnx/config.pbtxt", "dims: [ 192, 192, 3 ]", "dims: [ 224, 224, 3 ]"),
     "input 'images' dims are [224, 224, 3]; the graph's are [192, 192, 3]"),
    (lambda r: _edit(r / "dga/config.pbtxt", 'name: "logits" data_type: TYPE_FP32',
                     'name: "logits" data_type: TYPE_FP16'), "output 'logits' data_type is TYPE_FP16"),
    (lambda r: _edit(r / "dga_onnx/config.pbtxt", '{ name: "images"', '{ name: "pixels"'),
     "input 'images' of the graph is missing"),
    (lambda r: (r / "dga_onnx/1/model.onnx").write_bytes((r / "dga_onnx/1/model.onnx").read_bytes() + b"x"),
     "does not match the sha256"),
    (lambda r: (r / "dga/1/package/reference.npz").unlink(), "reference.npz is missing"),
    (lambda r: (r / "dga/labels.txt").write_text("only\ntwo\n"), "has 2 labels for dims [9]"),
    (lambda r: _edit(r / "dga/config.pbtxt", "max_batch_size: 8", "max_batch_size: 16"),
     "above the package's batch maximum 8"),
    (lambda r: _edit(r / "dga/config.pbtxt", "batch_size: 1", "batch_size: 12"), "model_warmup"),
])
def test_check_refuses_a_damaged_repository(repo, tmp_path, monkeypatch, capsys, damage, message):
    bad = damaged(repo, tmp_path)
    damage(bad)
    rc, _, err = run_cli(monkeypatch, capsys, "--check", str(bad))
    assert rc == 2 and message in err, err
    assert len(err.strip().splitlines()) == 1 and "config.pbtxt" in err


def test_missing_tritonclient_names_the_extra(repo, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tritonclient.grpc", None)
    rc, _, err = run_cli(monkeypatch, capsys, "--check", str(repo))
    assert rc == 2 and "[serve] extra" in err


def _jpeg(rng: np.random.Generator, w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def test_backend_request_images_decode_as_dga_infer():
    rng = np.random.default_rng(0)
    data = [_jpeg(rng, 120, 90), _jpeg(rng, 64, 200)]
    arrays = {"image_bytes": np.array([[d] for d in data], dtype=object), "images": None}
    got = request_images(arrays, 32)
    assert got.dtype == np.uint8 and got.shape == (2, 32, 32, 3)
    assert np.array_equal(got, np.stack([decode_bytes(d, 32) for d in data]))
    pixels = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    assert np.array_equal(request_images({"image_bytes": None, "images": pixels}, 32), pixels)
    with pytest.raises(ValueError, match="not-an-image: image_bytes\\[1\\]"):
        broken = np.array([[data[0]], [b"hello, not an image"]], dtype=object)
        request_images({"image_bytes": broken, "images": None}, 32)
    with pytest.raises(ValueError, match="exactly one"):
        request_images({"image_bytes": None, "images": None}, 32)
    with pytest.raises(ValueError, match="exactly one"):
        request_images({"image_bytes": arrays["image_bytes"], "images": pixels}, 32)


def test_engine_model_from_the_package_plan(tiny_package, tmp_path, monkeypatch):
    """dga_trt from the plan find_engine picks (TensorRT itself is stubbed out: no GPU needed)."""
    pkg = tmp_path / "pkg"
    shutil.copytree(tiny_package, pkg)
    plan = pkg / "engines" / "fake.plan"
    plan.parent.mkdir(exist_ok=True)
    plan.write_bytes(b"not a real engine")
    monkeypatch.setattr(tr, "gpu_engine", lambda package, precision: (str(plan), 4))
    summary = tr.write_repository(pkg, tmp_path / "r", tr.Options(engine=True))
    assert summary.validated and summary.models["dga_trt"] == "tensorrt_plan"
    cfg = tr.parse_config(tmp_path / "r/dga_trt/config.pbtxt")
    assert cfg.platform == "tensorrt_plan" and cfg.max_batch_size == 4
    assert kind_name(cfg.instance_group[0].kind) == "KIND_GPU"
    assert (tmp_path / "r/dga_trt/1/model.plan").read_bytes() == plan.read_bytes()
    (tmp_path / "r/dga_trt/1/model.plan").write_bytes(b"another engine")
    with pytest.raises(tr.RepositoryError, match="dga_trt/config.pbtxt: .*does not match the sha256"):
        tr.check_repository(tmp_path / "r")


def test_serve_without_the_extra_names_it(tiny_package, monkeypatch, capsys):
    from dga.cli import serve as cli
    from dga.serve import server

    monkeypatch.setattr(server, "_find_pytriton", lambda: None)
    monkeypatch.setattr(sys, "argv", ["dga-serve", str(tiny_package)])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "needs pytriton, which comes with the [serve] extra" in err
    assert len(err.strip().splitlines()) == 1


def test_written_without_tritonclient_or_torch(tiny_package, tmp_path):
    """A runtime-only host writes the repository (and says it did not validate it) without torch or onnx."""
    import subprocess

    code = ("import sys\n"
            "for m in ('torch', 'onnx', 'tritonclient', 'tritonclient.grpc', 'google.protobuf'):\n"
            "    sys.modules[m] = None\n"
            "from dga.serve.triton import write_repository\n"
            f"s = write_repository({str(tiny_package)!r}, {str(tmp_path / 'r')!r})\n"
            "print(s.validated, s.note)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.startswith("False tritonclient is not installed: pip install 'dga[serve]'"), out.stdout
    assert tr.check_repository(tmp_path / "r").validated
