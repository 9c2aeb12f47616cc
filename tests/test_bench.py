"""dga-bench's logic on the tiny backbone: the reference loop, the table, FLOPs, files (no timing claims)."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from conftest import make_random_bundle


@pytest.fixture(scope="module")
def dga_bundle(backbone, shapes_data, tmp_path_factory):
    return make_random_bundle(backbone, shapes_data, "dga", tmp_path_factory.mktemp("b") / "m.dga", 11)


def test_reference_loop_gives_the_fused_numbers(dga_bundle):
    """The papers' per-view loop and the deployed module compute the same logits."""
    from dga.bench.reference import PerViewLoop
    from dga.export.deploy_module import DeployModule
    from dga.train.bundle import load_bundle
    from dga.train.synthetic import sample_images

    model = load_bundle(dga_bundle).model.eval()
    x = torch.from_numpy(sample_images(4, 192, seed=5))
    with torch.no_grad():
        torch.testing.assert_close(PerViewLoop(model)(x), DeployModule(model)(x)[0], atol=1e-5, rtol=1e-5)


def test_encoder_flops_by_hand(dga_bundle):
    """ViT-p32, width 64, 2 layers, 224 px: the matmul FLOPs written out from the architecture."""
    from dga.bench.run import encoder_flops
    from dga.train.bundle import load_bundle

    model = load_bundle(dga_bundle).model.eval()
    w, layers, patch, tokens, embed = 64, 2, 32, 7 * 7 + 1, 64
    patch_embed = 2 * 49 * (3 * patch * patch) * w
    per_layer = 2 * tokens * w * 3 * w + 2 * 2 * tokens * tokens * w + 2 * tokens * w * w + 2 * 2 * tokens * w * 4 * w
    assert encoder_flops(model, torch.device("cpu")) == patch_embed + layers * per_layer + 2 * w * embed


def test_shared_core_ceiling_by_hand():
    """Model alone: 20 ms per image on 2 cores, which it keeps 1.8 busy (36 core-ms per image); decode
    costs 6 core-ms per image. Together 42 core-ms / 2 cores = 21 ms per image: 20 / 21 = 95.2 %."""
    from dga.bench.run import shared_core_ceiling

    assert shared_core_ceiling(0.020, 0.036, 0.006, 2) == pytest.approx(20 / 21)
    # Decode that fits into the model's idle moments costs nothing: the model alone is the limit.
    assert shared_core_ceiling(0.020, 0.036, 0.004, 2) == pytest.approx(1.0)
    assert shared_core_ceiling(0.020, 0.036, 0.001, 2) == pytest.approx(1.0)
    # A model that keeps every core busy loses all of decode's time: 40 / (40 + 5) core-ms.
    assert shared_core_ceiling(0.020, 0.040, 0.005, 2) == pytest.approx(40 / 45)


def test_cpu_steal_by_hand(tmp_path):
    """/proc/stat's first line: user nice system idle iowait irq softirq steal (guest columns ignored)."""
    from dga.bench.measure import StealMeter, cpu_jiffies

    stat = tmp_path / "stat"
    stat.write_text("cpu  100 0 50 800 10 0 5 35 7 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n")
    assert cpu_jiffies(str(stat)) == (35, 1000)
    assert cpu_jiffies(str(tmp_path / "absent")) is None
    stat.write_text("intr 5\n")
    assert cpu_jiffies(str(stat)) is None
    reads = iter([(35, 1000), (85, 1260)])  # 50 of 260 jiffies stolen
    assert StealMeter(lambda: next(reads)).start().stop() == pytest.approx(50 / 260)
    assert StealMeter(lambda: None).start().stop() is None
    same = iter([(35, 1000), (35, 1000)])  # no time passed: unknown, not 0/0
    assert StealMeter(lambda: next(same)).start().stop() is None


def test_run_bench_rows_table_and_files(dga_bundle, tmp_path):
    from dga.bench.run import BenchOptions, markdown, run_bench, write_results

    opts = BenchOptions(batch_sizes=[1, 3], repeat=1, min_time_s=0.0, rounds=2, e2e_images=6, e2e_batch=3,
                        e2e_rounds=2, workers=1)
    result = run_bench(dga_bundle, opts, log=lambda line: None)
    kinds = [(r["kind"], r["batch"]) for r in result["rows"]]
    for b in (1, 3):  # on the CPU: the eager loop, fused torch, and the ONNX graph, at each batch size
        assert ("eager per-view loop (papers)", b) in kinds
        assert ("fused, one encoder pass", b) in kinds
        assert ("fused ONNX graph", b) in kinds
    for row in result["rows"]:
        assert len(row["rounds_images_per_s"]) == 2
        assert row["images_per_s"] == pytest.approx(row["batch"] / (row["latency_ms"] / 1000))
        lo, hi = min(row["rounds_images_per_s"]), max(row["rounds_images_per_s"])
        assert lo <= row["images_per_s"] <= hi  # the median of the rounds
    e2e = result["end_to_end"]
    assert e2e["images"] == 6
    rounds = e2e["rounds"]  # each round pairs an end-to-end pass with a model-only pass
    paired = [a / b for a, b in zip(rounds["end_to_end"], rounds["model_only"], strict=True)]
    assert len(paired) == 2 and e2e["round_ratios"] == pytest.approx(paired)
    assert e2e["ratio"] == pytest.approx((paired[0] + paired[1]) / 2)  # the median of two rounds
    assert e2e["ratio_of_medians"] == pytest.approx(e2e["end_to_end_images_per_s"] / e2e["model_only_images_per_s"])
    assert e2e["decode_priority"] == "low"  # the CPU runner shares its cores with decode
    assert e2e["decode_gave_way"] in (True, False)
    normal = e2e["normal_priority"]  # and the same rounds at normal priority, side by side
    assert len(normal["rounds"]) == 2 and normal["round_ratios"] == pytest.approx(
        [a / b for a, b in zip(normal["rounds"], rounds["model_only"], strict=True)])
    assert len(rounds["decode_one_worker"]) == 2 and e2e["decode_one_worker_images_per_s"] > 0
    assert 0 < e2e["shared_core_ceiling"] <= 1 and len(e2e["round_ceilings"]) == 2
    assert e2e["decode_cpu_ms_per_image"] > 0
    (c0, c1) = e2e["round_ceilings"]  # the median of two rounds' ratio / ceiling is their mean
    assert e2e["of_ceiling"] == pytest.approx((paired[0] / c0 + paired[1] / c1) / 2)
    assert set(e2e["cores_busy"]) == {"model_only", "end_to_end_auto", "end_to_end_normal", "decode_one_worker"}
    assert all(0 < v <= e2e["cores"] * 1.05 for v in e2e["cores_busy"].values())  # process CPU time / wall
    lim = result["limit"]
    assert lim["views"] == result["views"] == 6
    assert lim["limit_images_per_s"] == pytest.approx(lim["peak_matmul_flops_per_s"]
                                                      / (lim["encoder_flops_per_view"] * 6))
    by_lib = lim["peak_matmul_flops_per_s_by_library"]  # on the CPU: torch and ONNX Runtime, the faster counts
    assert set(by_lib) == {"torch", "onnxruntime"} and lim["peak_matmul_flops_per_s"] == max(by_lib.values())
    assert result["machine"]["cpu_count"] >= 1 and "onnxruntime" in result["machine"]
    table = markdown(result)
    assert table.count("| fused ONNX graph |") == 2 and "End-to-end over 6 JPEGs" in table
    assert "Where the time goes: decode alone on one worker" in table and "End-to-end / model-only: **" in table
    assert "decode threads at normal priority" in table
    if sys.platform.startswith("linux"):  # /proc/stat: the hypervisor's share is recorded and shown
        assert 0 <= result["cpu_steal_table"] <= 1 and len(e2e["cpu_steal_per_round"]) == 2
        assert "(steal, /proc/stat)" in table
    js, md = write_results(result, tmp_path / "out", "run")
    assert json.loads(js.read_text())["rows"] == json.loads(json.dumps(result["rows"]))
    assert md.read_text() == table
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["run.json", "run.md"]
    assert np.isfinite([r["images_per_s"] for r in result["rows"]]).all()
