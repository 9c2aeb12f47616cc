"""The torch-cuda runner on the CPU (same code minus CUDA graphs and pinning) and its CUDA parts
through a stand-in; torch's fused attention against nn.MultiheadAttention; the export unchanged."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dga.errors import PackageError

BIN = Path(sys.executable).parent


# ----------------------------------------------------------------------------------------------
# buckets


def test_batch_buckets_are_powers_of_two_up_to_the_max_batch():
    from dga.runtime.backends.torch_cuda import batch_buckets, bucket_for

    assert batch_buckets(256) == [1, 2, 4, 8, 16, 32, 64, 128, 256]
    assert batch_buckets(8) == [1, 2, 4, 8]
    assert batch_buckets(6) == [1, 2, 4, 6]
    assert batch_buckets(1) == [1]
    buckets = batch_buckets(6)
    assert [bucket_for(b, buckets) for b in range(1, 7)] == [1, 2, 4, 4, 6, 6]
    with pytest.raises(ValueError, match="batch 7 is larger than the runner's max batch 6"):
        bucket_for(7, buckets)
    with pytest.raises(ValueError, match="at least 1"):
        batch_buckets(0)


# ----------------------------------------------------------------------------------------------
# the runner on the CPU, against the package's golden outputs (the trained module's fp32 logits)


@pytest.fixture(scope="module")
def golden(tiny_package):
    from dga.runtime.package import DeployPackage

    pkg = DeployPackage.load(tiny_package)
    return pkg, pkg.reference()


@pytest.fixture(scope="module")
def fp32_runner(golden):
    from dga.runtime.backends.torch_cuda import TorchCudaRunner

    runner = TorchCudaRunner(golden[0], "fp32", device="cpu")
    yield runner
    runner.close()


def test_fp32_on_the_cpu_reproduces_the_golden_outputs_at_every_bucket(fp32_runner, golden):
    from dga.runtime.compare import judge

    pkg, ref = golden
    runner = fp32_runner
    assert runner.name == "torch-cuda:cpu" and runner.on_cpu and runner.precision == "fp32"
    assert runner.max_batch == pkg.max_batch == 8 and runner.buckets == [1, 2, 4, 8]
    assert runner.graphs == {} and runner.host_in is None  # no CUDA graphs, no pinned buffers on the CPU
    # 8 (a full bucket), 5 and 3 (padded to 8 and 4, sliced back) and 1 image.
    for lo, hi in [(0, 8), (8, 13), (13, 16), (5, 6)]:
        logits, probs = runner.infer(ref.images[lo:hi])
        assert logits.shape == probs.shape == (hi - lo, len(pkg.classnames))
        assert logits.dtype == probs.dtype == np.float32
        outcome = judge(ref.logits[lo:hi], logits, "fp32", pkg.tolerances)
        assert outcome.passed and outcome.max_abs_diff <= 1e-4, (lo, hi, outcome)
        np.testing.assert_allclose(probs, ref.probs[lo:hi], atol=1e-5)
    empty = runner.infer(ref.images[:0])
    assert empty[0].shape == (0, len(pkg.classnames))


def test_torch_tensors_are_taken_as_they_are(fp32_runner, golden):
    _, ref = golden
    from_numpy = fp32_runner.infer(ref.images[:3])[0]
    from_tensor = fp32_runner.infer(torch.from_numpy(ref.images[:3]))[0]
    np.testing.assert_array_equal(from_numpy, from_tensor)


def test_bad_batches_are_refused(fp32_runner, golden):
    _, ref = golden
    with pytest.raises(ValueError, match="batch 9 is larger than the runner's max batch 8"):
        fp32_runner.infer(np.concatenate([ref.images, ref.images])[:9])
    with pytest.raises(ValueError, match="shape"):
        fp32_runner.infer(ref.images[:2, :10])
    with pytest.raises(ValueError, match="uint8"):
        fp32_runner.infer(ref.images[:2].astype(np.float32))


def test_fp16_on_the_cpu_passes_the_fp16_rule(golden):
    from dga.runtime.backends.torch_cuda import TorchCudaRunner
    from dga.runtime.compare import judge

    pkg, ref = golden
    runner = TorchCudaRunner(pkg, "fp16", device="cpu")
    try:
        logits = np.concatenate([runner.infer(ref.images[:8])[0], runner.infer(ref.images[8:])[0]])
    finally:
        runner.close()
    outcome = judge(ref.logits, logits, "fp16", pkg.tolerances)
    assert outcome.passed, outcome
    assert 0 < outcome.max_abs_diff < 0.5  # half precision moves the logits, not the decisions


def test_without_cuda_it_says_so_in_one_sentence(tiny_package, tmp_path):
    from dga.runtime.backends import open_runner
    from dga.runtime.package import DeployPackage
    from dga.runtime.predictor import Predictor

    if torch.cuda.is_available():
        pytest.skip("this host has a CUDA GPU")
    pkg = DeployPackage.load(tiny_package)
    with pytest.raises(PackageError, match="torch-cuda backend needs a CUDA GPU and torch sees none"):
        open_runner(pkg, "torch-cuda")
    with pytest.raises(PackageError, match="needs a CUDA GPU"):
        Predictor.from_package(tiny_package, backend="torch-cuda")
    photos = tmp_path / "photos"
    photos.mkdir()
    from PIL import Image

    Image.new("RGB", (40, 30), (200, 10, 10)).save(photos / "a.jpg")
    proc = subprocess.run([str(BIN / "dga-infer"), str(photos), "--model", str(tiny_package), "--backend",
                           "torch-cuda", "--out", str(tmp_path / "p.csv")], capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "needs a CUDA GPU" in proc.stderr
    assert not (tmp_path / "p.csv").exists()


def test_only_fp16_and_fp32(golden):
    from dga.runtime.backends.torch_cuda import TorchCudaRunner

    with pytest.raises(PackageError, match="runs fp16 or fp32, not int8"):
        TorchCudaRunner(golden[0], "int8", device="cpu")


def test_the_predictor_runs_it_with_the_batched_jpeg_decoder(golden, tmp_path):
    pytest.importorskip("torchvision.io")
    from PIL import Image

    from dga.runtime.backends.torch_cuda import TorchCudaRunner
    from dga.runtime.predictor import Predictor

    pkg, ref = golden
    for i in range(5):
        Image.fromarray(ref.images[i]).save(tmp_path / f"{i}.jpg", quality=98)
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    runner = TorchCudaRunner(pkg, "fp32", device="cpu")
    predictor = Predictor(pkg, runner, topk=1, batch_size=4, gpu_decode="cpu")
    try:
        results = predictor.predict_paths(sorted(str(p) for p in tmp_path.iterdir()))
    finally:
        predictor.close()
    assert [r.ok for r in results] == [True] * 5 + [False] and results[5].error == "not-an-image"
    # JPEG at quality 98 of images already S0 x S0: the top-1 class of nearly every one is the golden one.
    golden_top = [pkg.classnames[j] for j in ref.logits[:5].argmax(1)]
    assert sum(r.label == g for r, g in zip(results, golden_top, strict=False)) >= 4


# ----------------------------------------------------------------------------------------------
# the CUDA parts through a stand-in: graph capture per bucket, replays reading the staged input


class RecordingGraphs:
    """Stand-in for torch.cuda.CUDAGraph / torch.cuda.graph with a CUDA graph's semantics: the call
    captured is replayed on the same input memory and writes into the same output tensors."""

    def __init__(self, runner):
        self.runner, self.captures, self.replays = runner, [], 0

    def CUDAGraph(self):  # noqa: N802 - the name it stands in for
        stand_in = self

        class Graph:
            def replay(self):
                stand_in.replays += 1
                outs = self.fn(self.x)
                for captured, new in zip(self.outs, outs, strict=True):
                    captured.copy_(new)

        return Graph()

    @contextlib.contextmanager
    def graph(self, graph, pool=None, stream=None):
        module, calls = self.runner.module, []

        def recording(x):
            outs = module(x)
            calls.append((x, outs))
            return outs

        self.runner.module = recording
        try:
            yield
        finally:
            self.runner.module = module
        (x, outs), = calls  # exactly one call is captured
        graph.fn, graph.x, graph.outs = module, x, outs
        self.captures.append(x.shape[0])


class TorchWithCuda:
    """torch, with its cuda namespace's graph API replaced by the stand-in."""

    def __init__(self, graphs: RecordingGraphs):
        self.cuda = graphs

    def __getattr__(self, name):
        return getattr(torch, name)


def test_one_graph_per_bucket_captured_lazily_and_replayed(golden):
    from dga.runtime.backends.torch_cuda import WARMUP_CALLS, TorchCudaRunner

    pkg, ref = golden
    runner = TorchCudaRunner(pkg, "fp32", device="cpu")
    graphs = RecordingGraphs(runner)
    runner.torch, runner.cuda_graphs = TorchWithCuda(graphs), True
    calls = []
    real = runner.module
    runner.module = lambda x: calls.append(x.shape[0]) or real(x)
    try:
        a = runner.infer(ref.images[:3])[0]  # bucket 4: warm-up calls, capture, replay
        # warm-up calls, the captured call and the replay: all on the bucket of 4
        assert graphs.captures == [4] and calls == [4] * (WARMUP_CALLS + 2) and graphs.replays == 1
        b = runner.infer(ref.images[8:11])[0]  # bucket 4 again: replay only, on the new images
        assert graphs.captures == [4] and graphs.replays == 2 and set(runner.graphs) == {4}
        runner.infer(ref.images[:8])  # bucket 8: a second graph
        assert graphs.captures == [4, 8] and set(runner.graphs) == {4, 8}
        # The captured input is the runner's device buffer, so replays see what each call staged.
        assert runner.graphs[4][0].x.data_ptr() == runner.dev_in.data_ptr()
    finally:
        runner.close()
    np.testing.assert_allclose(a, ref.logits[:3], atol=1e-4)
    np.testing.assert_allclose(b, ref.logits[8:11], atol=1e-4)


def test_compile_asks_for_one_program_per_bucket(golden, monkeypatch):
    from dga.runtime.backends.torch_cuda import TorchCudaRunner

    asked = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: asked.append(kw) or fn)
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    monkeypatch.setattr(config, name, 8)
    pkg, ref = golden
    runner = TorchCudaRunner(pkg, "fp32", device="cpu", compile=True)
    try:
        # On the CPU there are no CUDA graphs, so the default mode; one static shape per bucket.
        assert asked == [{"mode": "default", "dynamic": False}] and runner.compiled
        assert getattr(config, name) == 8  # 4 buckets fit under the limit already
        np.testing.assert_allclose(runner.infer(ref.images[:2])[0], ref.logits[:2], atol=1e-4)
    finally:
        runner.close()
    from dga.runtime.backends.torch_cuda import allow_recompiles

    allow_recompiles(torch, 9)  # max batch 256: 9 buckets
    assert getattr(config, name) == 10


# ----------------------------------------------------------------------------------------------
# torch's fused attention kernel in torch, the explicit form in an export


def _mha(embed: int = 32, heads: int = 4) -> torch.nn.MultiheadAttention:
    torch.manual_seed(0)
    mha = torch.nn.MultiheadAttention(embed, heads, batch_first=True).eval()
    with torch.no_grad():
        mha.in_proj_bias.normal_()
    return mha


@pytest.mark.parametrize("mask", [None, "bool", "float"])
def test_sdpa_attention_matches_multihead_attention(mask):
    from dga.export.attention import ExportAttention

    mha = _mha()
    x = torch.randn(3, 10, 32)
    attn_mask = None
    if mask == "bool":  # nn.MultiheadAttention: True = may not attend (a causal mask)
        attn_mask = torch.triu(torch.ones(10, 10, dtype=torch.bool), diagonal=1)
    elif mask == "float":
        attn_mask = torch.randn(10, 10)
    with torch.no_grad():
        expected = mha(x, x, x, need_weights=False, attn_mask=attn_mask)[0]
        for sdpa in (False, True):
            got = ExportAttention(mha, sdpa=sdpa)(x, x, x, need_weights=False, attn_mask=attn_mask)[0]
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_an_export_writes_the_explicit_form_whatever_sdpa_says(tmp_path):
    onnx = pytest.importorskip("onnx")
    from dga.export.attention import ExportAttention

    mha = _mha()
    x = torch.randn(2, 10, 32)
    ops = {}
    for sdpa in (False, True):
        module = ExportAttention(mha, sdpa=sdpa).eval()
        exported = torch.export.export(module, (x,))
        targets = [str(n.target) for n in exported.graph.nodes if n.op == "call_function"]
        assert not any("scaled_dot_product" in t for t in targets)
        path = tmp_path / f"attn-{sdpa}.onnx"
        torch.onnx.export(module, (x,), str(path), dynamo=True, opset_version=18, verbose=False)
        ops[sdpa] = [n.op_type for n in onnx.load(str(path)).graph.node]
        assert "Softmax" in ops[sdpa]
    assert ops[True] == ops[False]
    # Run in torch, the sdpa module goes through the fused kernel (same numbers).
    with torch.no_grad():
        torch.testing.assert_close(ExportAttention(mha, sdpa=True)(x)[0], ExportAttention(mha)(x)[0],
                                   atol=1e-5, rtol=1e-5)


def test_deploy_module_with_sdpa_gives_the_same_numbers(golden):
    from dga.export.attention import ExportAttention
    from dga.export.deploy_module import DeployModule
    from dga.runtime.backends.torch_ref import load_bundle_model

    pkg, ref = golden
    model = load_bundle_model(pkg)
    module = DeployModule(model, "fp32", sdpa=True).eval()
    attns = [m for m in module.modules() if isinstance(m, ExportAttention)]
    assert attns and all(m.sdpa for m in attns)
    assert not any(m.sdpa for m in DeployModule(model, "fp32").modules() if isinstance(m, ExportAttention))
    with torch.no_grad():
        logits, _ = module(torch.from_numpy(ref.images))
    np.testing.assert_allclose(logits.numpy(), ref.logits, atol=1e-4)
