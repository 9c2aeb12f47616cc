"""The GPU suite (bench/gpu.py, bench/gpu_suite.sh) on the CPU: tiny backbone, batches 1 and 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dga.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
TINY = "dga-test-vit-p32"


def test_suite_on_the_cpu_writes_one_json_with_every_measurement(tmp_path):
    from dga.bench.gpu import EAGER, FUSED, FUSED_COMPILE, FUSED_GRAPHS, FUSED_MATMUL, GpuSuiteOptions, run_gpu_suite

    opts = GpuSuiteOptions(device="cpu", batches=[1, 2], budget_s=120, backbone=TINY, precision="fp32",
                           compile="off", e2e_images=6, e2e_batch=2, e2e_rounds=1, max_config_s=0.05,
                           workers=1, command="python -m dga.bench.gpu --device cpu")
    lines: list[str] = []
    path = run_gpu_suite(opts, tmp_path / "results", log=lines.append)
    data = json.loads(path.read_text())
    assert path == tmp_path / "results" / f"gpu-cpu-{data['date'][:10]}.json"
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # written atomically: no temporary left
    assert data["command"] == "python -m dga.bench.gpu --device cpu" and data["suite"] == "gpu"
    assert data["device"] == "cpu" and data["gpu"] is None and data["torch"] == torch.__version__
    assert (data["method"], data["views"], data["classes"], data["backbone"]) == ("dga", 7, 32, TINY)
    flops, peak = data["encoder_flops_per_view"], data["peak_matmul_flops_per_s"]
    assert data["flops_per_image"] == 7 * flops and flops > 0 and peak > 0
    rows = {(r["variant"], r["batch"]): r for r in data["rows"]}
    assert set(rows) == {(v, b) for v in (EAGER, FUSED_MATMUL, FUSED) for b in (1, 2)}
    for r in rows.values():
        assert r["kind"] == "model-only" and r["precision"] == "fp32" and r["calls"] >= 3
        assert r["images_per_s"] == pytest.approx(r["batch"] / (r["latency_ms"] / 1000))
        assert r["views_per_s"] == pytest.approx(7 * r["images_per_s"])
        assert r["fraction_of_peak"] == pytest.approx(r["images_per_s"] * 7 * flops / peak)
    assert {s["what"] for s in data["skipped"]} == {FUSED_GRAPHS, FUSED_COMPILE}  # no GPU, --compile off
    e2e = data["end_to_end"]
    assert (e2e["images"], e2e["decoded"], e2e["batch"], e2e["rounds"]) == (6, 6, 2, 1)
    assert e2e["runner"] == "torch-cuda:cpu" and e2e["cuda_graphs"] is False
    assert e2e["ratio"] == pytest.approx(e2e["end_to_end_images_per_s"] / e2e["model_only_images_per_s"])
    assert e2e["end_to_end_views_per_s"] == pytest.approx(7 * e2e["end_to_end_images_per_s"])
    assert [t["value"] is None for t in data["targets"]] == [False, True, True]  # batches 8 and 256 not run
    assert data["elapsed_s"] > 0 and lines[-1].startswith(f"wrote {path}")


def _row(variant: str, batch: int, ips: float, fraction: float = 0.0) -> dict:
    return {"variant": variant, "batch": batch, "images_per_s": ips, "fraction_of_peak": fraction}


def test_targets_take_the_best_fused_variant():
    from dga.bench.gpu import EAGER, FUSED, FUSED_GRAPHS, FUSED_MATMUL, targets

    rows = [_row(EAGER, 1, 10.0), _row(FUSED_MATMUL, 1, 20.0), _row(FUSED_GRAPHS, 1, 35.0),
            _row(EAGER, 8, 50.0), _row(FUSED, 8, 70.0),
            _row(EAGER, 256, 90.0, 0.2), _row(FUSED, 256, 300.0, 0.45), _row(FUSED_GRAPHS, 256, 320.0, 0.6)]
    one, eight, peak = targets(rows)
    assert one["value"] == pytest.approx(3.5) and one["met"] and one["variant"] == FUSED_GRAPHS
    assert eight["value"] == pytest.approx(1.4) and not eight["met"]
    assert peak["value"] == pytest.approx(0.6) and peak["met"] and "fp16 matmul peak" in peak["what"]
    assert [t["met"] for t in targets([])] == [False, False, False]


def test_budget_shares_what_is_left():
    from dga.bench.gpu import Budget

    now = [0.0]
    budget = Budget(100.0, clock=lambda: now[0])
    assert budget.left() == 100.0 and budget.share(4, 2.0) == 2.0  # 0.5 * 100 / 4 = 12.5, capped at 2
    now[0] = 98.0
    assert budget.elapsed() == 98.0 and budget.share(4, 2.0) == pytest.approx(0.25)  # 0.5 * 2 / 4
    now[0] = 120.0
    assert budget.left() == -20.0 and budget.share(4, 2.0) == 0.05  # never below 0.05 s


def test_names_options_and_missing_modules(monkeypatch):
    from dga.bench import gpu

    assert gpu.device_slug("NVIDIA H200") == "nvidia-h200"
    assert gpu.device_slug("NVIDIA GeForce RTX 4090 (24 GB)") == "nvidia-geforce-rtx-4090-24-gb"
    for bad, needle in [({"batches": [0, 8]}, "--batches"), ({"compile": "maybe"}, "--compile"),
                        ({"device": "gpu"}, "--device 'gpu'"), ({"precision": "int8"}, "--precision")]:
        with pytest.raises(ConfigError, match=needle):
            gpu.GpuSuiteOptions(**bad).validate()
    opts, out = gpu.parse_args(["--device", "cpu", "--batches", "1,2", "--out", "somewhere"])
    assert opts.batches == [1, 2] and out == Path("somewhere")
    assert opts.command == "python -m dga.bench.gpu --device cpu --batches 1,2 --out somewhere"
    assert gpu.missing_modules() == []
    monkeypatch.setitem(gpu.NEEDED, "dga_no_such_module", "the thing it names")
    (line,) = gpu.missing_modules()
    assert line.startswith("cannot import dga_no_such_module (") and line.endswith("install the thing it names")


def test_without_cuda_the_wrapper_and_the_suite_say_so_in_one_line(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this host has a CUDA GPU")
    wrapper = [str(ROOT / "bench" / "gpu_suite.sh"), "--python", sys.executable]
    proc = subprocess.run([*wrapper, "--device", "cuda", "--out", str(tmp_path)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "needs a CUDA GPU" in proc.stderr
    assert list(tmp_path.iterdir()) == []
    empty = tmp_path / "wheelhouse"
    empty.mkdir()
    proc = subprocess.run([*wrapper, "--wheelhouse", str(empty)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr == f"gpu_suite.sh: --wheelhouse {empty} holds no .whl files\n"
    proc = subprocess.run([str(ROOT / "bench" / "gpu_suite.sh"), "--python", str(tmp_path / "nope")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.startswith("gpu_suite.sh: no Python at") and \
        proc.stderr.count("\n") == 1
