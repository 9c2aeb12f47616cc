"""The int8 CPU variant: dga-export --int8 dynamic|static, its agreement gate, and the runtime running it.

The tiny test backbone (dga-test-vit-p32) has 2 residual blocks of width 64, so its encoder has
2 x 4 linear layers (attention in-projection and out-projection, the MLP's two layers) plus the
output projection: 9 MatMuls with a constant weight, the only nodes int8 may touch. Its weights
are random, so logits lie close together and int8 flips a few top-1 labels; the packages here are
exported with --int8-agreement 0 (which must pass) and the gate itself is tested at 100.1 (which
no agreement can reach).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import pytest

BIN = Path(sys.executable).parent
BLOCKS, WIDTH, EMBED = 2, 64, 64  # train/model_configs/dga-test-vit-p32.json: vision layers, width, embed_dim
ENCODER_LINEARS = BLOCKS * 4 + 1
SMALL = ["--max-batch", "8", "--opt-batch", "8", "--verify-batches", "1,7"]


def _run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / args[0]), *args[1:]], capture_output=True, text=True, timeout=timeout)


def _ops(path: Path) -> Counter:
    return Counter(n.op_type for n in onnx.load(str(path)).graph.node)


@pytest.fixture(scope="module")
def bundle(tiny_package) -> Path:
    return tiny_package.parent / "m.dga"  # the bundle conftest's tiny_package was exported from


@pytest.fixture(scope="module")
def dynamic_package(bundle, shapes_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("int8_dynamic") / "d.deploy"
    done = _run("dga-export", "--ckpt", str(bundle), "--out", str(out), *SMALL, "--int8", "dynamic",
                "--int8-agreement", "0", "--eval-data", str(shapes_data[0]))
    assert done.returncode == 0, done.stderr
    return out


@pytest.fixture(scope="module")
def static_package(bundle, shapes_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("int8_static") / "s.deploy"
    done = _run("dga-export", "--ckpt", str(bundle), "--out", str(out), *SMALL, "--precision", "fp32",
                "--int8", "static", "--int8-agreement", "0", "--calib-images", str(shapes_data[0] / "val"))
    assert done.returncode == 0, done.stderr
    return out


def _manifest(package: Path) -> dict:
    return json.loads((package / "deploy.json").read_text())


# ----------------------------------------------------------------------------------------------
# what is quantized


def test_fp32_graph_has_the_encoder_linears_by_name(tiny_package):
    from dga.export.quantize import encoder_linear_nodes, load_graph

    names = encoder_linear_nodes(load_graph(tiny_package / "model.onnx"))
    assert len(names) == ENCODER_LINEARS
    per_block = {"attn/in_proj/MatMul", "attn/out_proj/MatMul", "mlp/c_fc/MatMul", "mlp/c_proj/MatMul"}
    for b in range(BLOCKS):
        assert {f"/encoder/transformer/resblocks.{b}/{p}" for p in per_block} <= set(names)
    assert "/encoder/MatMul" in names  # the output projection


def test_dynamic_quantizes_only_the_encoder_linears(tiny_package, dynamic_package):
    fp32, int8 = _ops(tiny_package / "model.onnx"), _ops(dynamic_package / "model.int8.onnx")
    assert int8["MatMulInteger"] == int8["DynamicQuantizeLinear"] == ENCODER_LINEARS
    assert int8["MatMul"] == fp32["MatMul"] - ENCODER_LINEARS  # attention q.k, attn.v and the heads stay fp32
    assert int8["Softmax"] == fp32["Softmax"] and int8["Conv"] == fp32["Conv"] == 1  # patch embedding stays fp32
    assert int8["QuantizeLinear"] == int8["DequantizeLinear"] == 0
    model = onnx.load(str(dynamic_package / "model.int8.onnx"))
    inits = {i.name: i for i in model.graph.initializer}
    consumer = {i: n for n in model.graph.node for i in n.input}
    for node in model.graph.node:
        if node.op_type == "MatMulInteger":
            assert node.name.startswith("/encoder/"), node.name
            assert inits[node.input[1]].data_type == onnx.TensorProto.INT8  # the weight, stored as int8
        if node.op_type == "DynamicQuantizeLinear":  # the activation of exactly one of those matmuls
            assert consumer[node.output[0]].op_type == "MatMulInteger"


def test_static_is_qdq_per_channel_on_the_encoder_linears_only(tiny_package, static_package):
    model = onnx.load(str(static_package / "model.int8.onnx"))
    producer = {o: n for n in model.graph.node for o in n.output}
    inits = {i.name: i for i in model.graph.initializer}
    assert _ops(static_package / "model.int8.onnx")["MatMul"] == _ops(tiny_package / "model.onnx")["MatMul"]
    quantized = []
    for node in model.graph.node:
        if node.op_type == "MatMul":
            fed = [producer.get(i) for i in node.input]
            dq = [p is not None and p.op_type == "DequantizeLinear" for p in fed]
            if any(dq):
                assert all(dq) and node.name.startswith("/encoder/"), node.name
                quantized.append(node)
        if node.op_type == "Softmax":  # float in, float out: no quantize step on either side
            assert producer[node.input[0]].op_type != "DequantizeLinear"
            assert all(n.op_type != "QuantizeLinear" for n in model.graph.node if node.output[0] in n.input)
    assert len(quantized) == ENCODER_LINEARS
    in_proj = next(n for n in quantized if n.name == "/encoder/transformer/resblocks.0/attn/in_proj/MatMul")
    weight_dq = producer[in_proj.input[1]]
    weight, scale = inits[weight_dq.input[0]], inits[weight_dq.input[1]]
    assert weight.data_type == onnx.TensorProto.INT8 and list(weight.dims) == [WIDTH, 3 * WIDTH]
    assert list(scale.dims) == [3 * WIDTH]  # one scale per output channel (q, k, v of the width each)
    proj = next(n for n in quantized if n.name == "/encoder/MatMul")
    assert list(inits[producer[proj.input[1]].input[1]].dims) == [EMBED]


def test_int8_graph_says_int8_in_its_metadata(dynamic_package):
    props = {p.key: p.value for p in onnx.load(str(dynamic_package / "model.int8.onnx")).metadata_props}
    assert props["precision"] == "int8"
    assert "onnx.infer" not in props  # the quantizer's own marker is not a deployment fact


# ----------------------------------------------------------------------------------------------
# the manifest


def test_manifest_records_int8(dynamic_package, static_package, shapes_data):
    d, s = _manifest(dynamic_package), _manifest(static_package)
    assert d["precisions"] == ["fp32", "fp16", "int8"] and s["precisions"] == ["fp32", "int8"]
    for facts in (d, s):
        assert "model.int8.onnx" in facts["files"]
        assert facts["reference"]["tolerances"]["int8_top1_percent"] == 0
        assert facts["int8"]["quantized_nodes"] == ENCODER_LINEARS
        rows = [c for c in facts["self_check"]["checks"] if c["precision"] == "int8"]
        assert [r["batch"] for r in rows] == [1, 7] and all(r["passed"] for r in rows)
    assert d["int8"]["mode"] == "dynamic" and d["int8"]["calibration"] is None
    classes = len(shapes_data[1])
    assert s["int8"]["mode"] == "static"
    assert s["int8"]["calibration"] == {"images": 4 * classes, "source": "given"}  # val: 4 per class, under 64
    accuracy = d["accuracy"]
    assert accuracy["images"] == 4 * classes and set(accuracy["top1_percent"]) == {
        "torch", "onnx_fp32", "onnx_fp16", "onnx_int8"}
    correct = accuracy["top1_percent"]["onnx_int8"] * accuracy["images"] / 100
    assert abs(correct - round(correct)) < 1e-9  # a whole number of the 36 test images


def test_gate_refuses_an_agreement_no_graph_can_reach(bundle, tmp_path):
    out = tmp_path / "never.deploy"
    done = _run("dga-export", "--ckpt", str(bundle), "--out", str(out), *SMALL, "--precision", "fp32",
                "--int8", "dynamic", "--int8-agreement", "100.1")
    assert done.returncode == 2
    err = done.stderr.strip()
    assert err.count("\n") == 0 and err.startswith("error: int8 self-check failed: top-1 agreement")
    assert "below --int8-agreement 100.1%" in err and "nothing was written" in err
    assert not out.exists() and list(tmp_path.iterdir()) == []  # no package, no temporary folder


def test_option_errors_are_one_line(bundle, tmp_path):
    cases = [(["--int8-agreement", "50"], "--int8-agreement is the gate of --int8"),
             (["--int8", "dynamic", "--calib-images", str(tmp_path)], "--calib-images is for --int8 static"),
             (["--int8", "fast"], "--int8 'fast' must be one of dynamic, static"),
             (["--int8", "dynamic", "--no-verify"], "drop --no-verify"),
             (["--int8", "static", "--calib-images", str(tmp_path / "nowhere")], "is not a folder of images")]
    def run(args: list[str]) -> subprocess.CompletedProcess:
        return _run("dga-export", "--ckpt", str(bundle), "--out", str(tmp_path / "x.deploy"), *args)

    with ThreadPoolExecutor(max_workers=3) as pool:  # each child is mostly torch's import
        runs = list(pool.map(run, [args for args, _ in cases]))
    for (args, needle), done in zip(cases, runs, strict=True):
        assert done.returncode == 2 and done.stderr.count("\n") == 1 and needle in done.stderr, (args, done.stderr)
    assert not (tmp_path / "x.deploy").exists()


# ----------------------------------------------------------------------------------------------
# the runtime


def test_verify_passes_the_int8_rows(dynamic_package, tmp_path):
    done = _run("dga-verify", str(dynamic_package), "--json", str(tmp_path / "v.json"))
    assert done.returncode == 0, done.stdout + done.stderr
    rows = [c for c in json.loads((tmp_path / "v.json").read_text())["checks"]
            if c["precision"] == "int8" and c["status"] != "skipped"]
    assert [(r["runner"], r["provider"], r["status"]) for r in rows] == [("onnxruntime", "cpu", "pass")]
    assert rows[0]["rule"] == "top-1 agreement >= 0 % (near ties excepted)"  # the manifest's threshold


def test_infer_with_int8_writes_a_row_per_image(dynamic_package, shapes_data, tmp_path):
    root, classes, _ = shapes_data
    out = tmp_path / "preds.csv"
    done = _run("dga-infer", str(root / "test"), "--model", str(dynamic_package), "--precision", "int8",
                "--out", str(out))
    assert done.returncode == 0, done.stderr
    lines = out.read_text().splitlines()
    assert len(lines) == 1 + 4 * len(classes)
    assert all(line.split(",")[1] in classes for line in lines[1:])


def test_a_package_without_int8_refuses_it_in_one_line(tiny_package, shapes_data, tmp_path):
    done = _run("dga-infer", str(shapes_data[0] / "test"), "--model", str(tiny_package), "--precision", "int8",
                "--out", str(tmp_path / "p.csv"))
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "has no int8 graph (it has fp32, fp16)" in done.stderr


def test_predictor_runs_int8_on_the_cpu(dynamic_package):
    from dga.runtime import Predictor
    from dga.runtime.package import DeployPackage

    golden = DeployPackage.load(dynamic_package).reference()
    p = Predictor.from_package(dynamic_package, backend="onnxruntime", precision="int8")
    try:
        assert p.runner.precision == "int8" and p.runner.name == "onnxruntime:CPUExecutionProvider"
        out = p.predict(golden.images)
    finally:
        p.close()
    assert out.logits.shape == golden.logits.shape
    np.testing.assert_allclose(out.probs.sum(1), 1.0, atol=1e-5)
    # int8 moves logits a little, never far: the quantization step of each weight is 1/127 of its range.
    assert 0 < float(np.abs(out.logits - golden.logits).max()) < 0.5


# ----------------------------------------------------------------------------------------------
# quantize_int8 on its own


def test_quantize_rejects_bad_input_in_one_sentence(tiny_package, tmp_path):
    from dga.errors import ConfigError, InputError, PackageError
    from dga.export.quantize import quantize_int8

    src = tiny_package / "model.onnx"
    with pytest.raises(ConfigError, match="must be one of dynamic, static"):
        quantize_int8(src, tmp_path / "q.onnx", "int4")
    with pytest.raises(ConfigError, match="needs calibration images"):
        quantize_int8(src, tmp_path / "q.onnx", "static")
    with pytest.raises(InputError, match="must be uint8"):
        quantize_int8(src, tmp_path / "q.onnx", "static", np.zeros((2, 192, 192, 3), np.float32))
    with pytest.raises(InputError, match="the graph takes 192 px"):
        quantize_int8(src, tmp_path / "q.onnx", "static", np.zeros((2, 64, 64, 3), np.uint8))
    with pytest.raises(PackageError, match="does not exist"):
        quantize_int8(tmp_path / "none.onnx", tmp_path / "q.onnx")
    (tmp_path / "bad.onnx").write_bytes(b"not a graph")
    with pytest.raises(PackageError, match="not a readable ONNX graph"):
        quantize_int8(tmp_path / "bad.onnx", tmp_path / "q.onnx")
    with pytest.raises(ConfigError, match="has no input 'pixels'"):
        quantize_int8(src, tmp_path / "q.onnx", input_name="pixels")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.onnx"]


def test_quantize_external_data_graph(tiny_package, tmp_path):
    """A source with external data gives an int8 graph with external data, and the same numbers."""
    from dga.export.quantize import quantize_int8
    from dga.runtime.ort_child import make_session

    src = tmp_path / "src"
    src.mkdir()
    model = onnx.load(str(tiny_package / "model.onnx"))
    onnx.save(model, str(src / "model.onnx"), save_as_external_data=True, location="model.onnx.data",
              size_threshold=1024)
    before = sorted(p.name for p in src.iterdir())
    inline = quantize_int8(tiny_package / "model.onnx", tmp_path / "inline.int8.onnx")
    external = quantize_int8(src / "model.onnx", tmp_path / "model.int8.onnx")
    assert (tmp_path / "model.int8.onnx.data").is_file() and not (tmp_path / "inline.int8.onnx.data").exists()
    assert sorted(p.name for p in src.iterdir()) == before  # nothing left beside the source
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inline.int8.onnx", "model.int8.onnx",
                                                          "model.int8.onnx.data", "src"]
    images = np.load(tiny_package / "reference.npz")["images"][:4]
    a = make_session(str(inline)).run(["logits"], {"images": images})[0]
    b = make_session(str(external)).run(["logits"], {"images": images})[0]
    np.testing.assert_array_equal(a, b)


def test_gate_sentences_and_option_checks():
    from dga.errors import ConfigError
    from dga.export.package import ExportOptions, gate_failure
    from dga.export.verify import Check

    opts = ExportOptions(int8="dynamic", int8_agreement=99.0)
    golden = Check("int8", 19, 0.013, 94.74, 0, False, "the 16 golden images as dga-verify runs them")
    message = gate_failure(golden, opts)
    assert "94.74% on the 16 golden images as dga-verify runs them, below --int8-agreement 99%" in message
    batch = gate_failure(Check("int8", 64, 0.02, 98.44, 0, False), opts)
    assert "98.44% at batch 64, below --int8-agreement 99%" in batch
    crashed = gate_failure(Check("int8", 7, float("nan"), float("nan"), 0, False, "onnxruntime could not run it",
                                 ran=False), opts)
    assert crashed.startswith("the int8 graph could not be checked: onnxruntime could not run it")
    for bad, needle in [({"int8_agreement": -1.0}, "a percentage of 0 or more"),
                        ({"int8_agreement": float("nan")}, "a percentage of 0 or more"),
                        ({"int8": "static", "verify": False}, "drop --no-verify"),
                        ({"calib_images": np.zeros((1, 8, 8, 3), np.uint8)}, "--calib-images is for --int8 static")]:
        with pytest.raises(ConfigError, match=needle):
            ExportOptions(**bad).validate()
