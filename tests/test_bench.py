"""dga-bench's logic on the tiny backbone: the baselines, the table, FLOPs, the plan, files (no timing claims)."""

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


def test_stacked_views_give_the_fused_numbers(dga_bundle):
    """The best torch a user would write (the model's own forward, views stacked) computes the same logits."""
    from dga.bench.reference import StackedViews
    from dga.export.deploy_module import DeployModule
    from dga.train.bundle import load_bundle
    from dga.train.synthetic import sample_images

    model = load_bundle(dga_bundle).model.eval()
    x = torch.from_numpy(sample_images(3, 192, seed=6))
    with torch.no_grad():
        torch.testing.assert_close(StackedViews(model)(x), DeployModule(model)(x)[0], atol=1e-5, rtol=1e-5)


def test_compile_module_compiles_or_says_why():
    from dga.bench.reference import compile_module

    torch.manual_seed(0)
    linear = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU()).eval()
    compiled, facts = compile_module(linear, [torch.randn(1, 8), torch.randn(3, 8)], timeout_s=300)
    assert "error" not in facts and facts["compile_s"] >= 0
    x = torch.randn(5, 8)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), linear(x))  # a batch size it was not compiled for: dynamic

    class Broken(torch.nn.Module):
        def forward(self, x):
            raise ValueError("no kernel for this")

    compiled, facts = compile_module(Broken(), [torch.randn(2, 8)], timeout_s=300)
    assert compiled is None and facts["error"].startswith("torch.compile failed: ") and "no kernel" in facts["error"]

    class Slow(torch.nn.Module):  # a module dynamo has not traced yet: tracing alone takes longer than 1 ms
        def forward(self, x):
            for _ in range(50):
                x = torch.tanh(x @ x.T @ x)
            return x

    compiled, facts = compile_module(Slow(), [torch.randn(4, 4)], timeout_s=0.001)
    assert compiled is None and facts["error"] == "torch.compile did not finish within 0.001 s"


def test_spread_by_hand():
    from dga.bench.measure import spread

    # [1, 2, 3, 4]: median 2.5; inclusive quartiles at 1 + 0.75 x (2 - 1) = 1.75 and 3 + 0.25 x (4 - 3) = 3.25
    assert spread([3, 1, 4, 2]) == {"median": 2.5, "min": 1.0, "max": 4.0, "q1": 1.75, "q3": 3.25}
    assert spread([7]) == {"median": 7.0, "min": 7.0, "max": 7.0, "q1": 7.0, "q3": 7.0}


def test_plan_fits_the_budget_by_hand():
    """Two configurations costing 0.5 and 1.5 s per image at batch 1; batches 1 and 2 (a call on 2 images
    is taken to cost 2 x 1.25 times the one-image cost), 3 rounds of 2 calls, end-to-end 4 images in
    batches of 2, 2 rounds, 3 passes, 0.5 s per image + 0.01 s decode.

    Table, 0.5-s config: batch 1: 3 rounds x 2 x 0.5 = 3 + 2 later warm-ups x 0.5 = 4; batch 2 (call
    1.25 s): first warm-up 1.25 + 3 x 2.5 = 8.75. 1.5-s config: batch 1: 3 x 3 = 9; batch 2 (call 3.75 s):
    3.75 + 3 x 7.5 = 26.25. Table 48. End-to-end: warm-up 2 images x 0.51 + 2 x 4 x 3 x 0.51 = 13.26.
    Budget 30: halving the calls per round (repeat 1: table 27, total 40.26) is not enough; end-to-end
    rounds 1 (7.14, total 34.14) neither; rounds 2 (table 19.5) fits: 26.64.
    """
    from dga.bench.measure import RunPlan, plan_run

    call_s = {"a": 0.5, "b": 1.5}
    requested = RunPlan([1, 2], rounds=3, repeat=2, min_time_s=0.0, e2e_images=4, e2e_batch=2, e2e_rounds=2)
    free = plan_run(call_s, 0.5, requested, None)
    assert free.estimated_s == pytest.approx(61.26) and free.gave_up == [] and free.fits
    assert plan_run(call_s, 0.5, requested, 60.0).gave_up == ["timed calls per round halved"]
    plan = plan_run(call_s, 0.5, requested, 30.0)
    assert plan.gave_up == ["timed calls per round halved", "end-to-end rounds 1", "rounds 2"]
    assert (plan.repeat, plan.e2e_rounds, plan.rounds, plan.batch_sizes) == (1, 1, 2, [1, 2])
    assert plan.estimated_s == pytest.approx(26.64) and plan.fits and plan.available_s == 30.0
    # 1 s cannot be met: one batch of end-to-end images (4.08), one round (table 12), batch 2 dropped
    # (table 0.5 + 1.5 = 2): 6.08 s, still over, so marked as not fitting
    tight = plan_run(call_s, 0.5, requested, 1.0)
    assert tight.gave_up[-3:] == ["end-to-end images one batch", "rounds 1", "batch 2 dropped"]
    assert tight.batch_sizes == [1] and tight.estimated_s == pytest.approx(6.08) and not tight.fits
    assert requested.batch_sizes == [1, 2] and requested.rounds == 3  # the request itself is left alone


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


@pytest.fixture
def cache_home(tmp_path, monkeypatch):
    """The measured ONNX Runtime chunk goes to a cache of the test's own."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("DGA_ORT_CPU_CHUNK", raising=False)


def test_run_bench_rows_table_and_files(dga_bundle, tmp_path, cache_home):
    from dga.bench.run import BenchOptions, markdown, run_bench, write_results

    opts = BenchOptions(batch_sizes=[1, 3], backends=["torch", "torch-stacked", "onnxruntime"],
                        precisions=["fp32", "int8-dynamic"], repeat=1, min_time_s=0.0, rounds=2, e2e_images=6,
                        e2e_batch=3, e2e_rounds=2, workers=1)
    result = run_bench(dga_bundle, opts, log=lambda line: None)
    kinds = [(r["kind"], r["precision"], r["batch"]) for r in result["rows"]]
    for b in (1, 3):  # on the CPU: the eager loop, stacked views, fused torch, and both ONNX graphs, per batch
        for kind, precision in (("eager per-view loop (papers)", "fp32"), ("views stacked, open_clip encoder", "fp32"),
                                ("fused, one encoder pass", "fp32"), ("fused ONNX graph", "fp32"),
                                ("fused ONNX graph", "int8-dynamic")):
            assert (kind, precision, b) in kinds
    lim = result["limit"]
    flops_per_image = lim["encoder_flops_per_view"] * lim["views"]
    for row in result["rows"]:
        assert len(row["rounds_images_per_s"]) == 2
        assert row["images_per_s"] == pytest.approx(row["batch"] / (row["latency_ms"] / 1000))
        lo, hi = min(row["rounds_images_per_s"]), max(row["rounds_images_per_s"])
        assert lo <= row["images_per_s"] <= hi  # the median of the rounds
        per_image = row["ms_per_image"]  # the same rounds in ms per image: 1000 / images/s
        assert per_image["min"] == pytest.approx(1000 / hi) and per_image["max"] == pytest.approx(1000 / lo)
        assert per_image["median"] == pytest.approx(1000 / row["images_per_s"])
        assert row["roofline"] == pytest.approx(row["images_per_s"] * flops_per_image / lim["peak_matmul_flops_per_s"])
        assert row["vs_eager"]["min"] <= row["vs_eager"]["median"] <= row["vs_eager"]["max"]
    eager = {r["batch"]: r for r in result["rows"] if r["kind"] == "eager per-view loop (papers)"}
    assert all(e["vs_eager"] == {"median": 1.0, "min": 1.0, "max": 1.0, "q1": 1.0, "q3": 1.0} for e in eager.values())
    onnx = [r for r in result["rows"] if r["kind"] == "fused ONNX graph"]
    assert all(r["cpu_chunk"] == result["cpu_chunks"][r["precision"]]["chunk"] for r in onnx)
    assert {c["source"] for c in result["cpu_chunks"].values()} <= {"measured", "cache"}
    agreement = {(a["kind"], a["precision"]): a for a in result["agreement"]}
    assert len(agreement) == 4 and all(a["images"] == 3 for a in agreement.values())
    for key in (("views stacked, open_clip encoder", "fp32"), ("fused ONNX graph", "fp32")):
        assert agreement[key]["top1_agreement"] == 1.0 and agreement[key]["max_abs_logit_diff"] < 1e-3
    assert 0.0 <= agreement["fused ONNX graph", "int8-dynamic"]["top1_agreement"] <= 1.0
    assert result["quantize"]["int8-dynamic"]["calibration_images"] is None
    plan = result["plan"]  # no budget: the requested settings
    assert (plan["batch_sizes"], plan["rounds"], plan["e2e_images"], plan["gave_up"]) == ([1, 3], 2, 6, [])
    assert result["budget_s"] is None and result["wall_s"] >= sum(result["phases_s"].values()) - 1
    e2e = result["end_to_end"]
    assert e2e["images"] == 6 and e2e["precision"] == "fp32"
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
    assert lim["views"] == result["views"] == 6
    assert lim["limit_images_per_s"] == pytest.approx(lim["peak_matmul_flops_per_s"] / flops_per_image)
    by_lib = lim["peak_matmul_flops_per_s_by_library"]  # on the CPU: torch and ONNX Runtime, the faster counts
    assert set(by_lib) == {"torch", "onnxruntime"} and lim["peak_matmul_flops_per_s"] == max(by_lib.values())
    assert result["machine"]["cpu_count"] >= 1 and "onnxruntime" in result["machine"]
    table = markdown(result, "run")
    assert table.count("| fused ONNX graph |") == 4 + 2  # 2 precisions x 2 batches, and 2 agreement rows
    assert "| folder | 6 generated JPEGs" in table and "| end-to-end / model-only |" in table
    assert "| decode alone, one worker |" in table and "| same rounds, decode at normal priority |" in table
    assert "ONNX Runtime CPU chunk, int8-dynamic:" in table and "Top-1 agreement with the eager loop" in table
    assert "| target | measured | met |" in table
    if sys.platform.startswith("linux"):  # /proc/stat: the hypervisor's share is recorded and shown
        assert 0 <= result["cpu_steal_table"] <= 1 and len(e2e["cpu_steal_per_round"]) == 2
        assert "CPU steal (time the hypervisor gave" in table
    js, md = write_results(result, tmp_path / "out", "run")
    assert json.loads(js.read_text())["rows"] == json.loads(json.dumps(result["rows"]))
    assert md.read_text() == table
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["run.json", "run.md"]
    assert np.isfinite([r["images_per_s"] for r in result["rows"]]).all()


def test_backbone_run_within_a_budget_from_the_command_line(tmp_path, cache_home, monkeypatch, capsys):
    """dga-bench --backbone: an untrained DGA model of real shape (24 classes -> 2 levels -> 7 views), planned
    to a budget, the plan, the phases and the command line recorded."""
    from dga.cli import bench as cli

    argv = ["dga-bench", "--backbone", "dga-test-vit-p32", "--backends", "onnxruntime", "--batch-sizes", "1,2",
            "--rounds", "3", "--repeat", "1", "--min-time", "0", "--e2e-images", "4", "--e2e-batch", "2",
            "--e2e-rounds", "1", "--workers", "1", "--budget-s", "100000", "--out", str(tmp_path), "--name", "b"]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exc:
        cli.main()
    assert exc.value.code in (0, None), capsys.readouterr().err
    result = json.loads((tmp_path / "b.json").read_text())
    assert result["views"] == 7 and result["backbone"] == "dga-test-vit-p32" and result["bundle"] is None
    assert result["bundle_built"] == {"backbone": "dga-test-vit-p32", "pretrained": "none (random init)",
                                      "classes": "scene-fills-24"}
    assert result["command"] == " ".join(argv)
    plan = result["plan"]
    assert plan["available_s"] < 100000 and plan["fits"] and plan["gave_up"] == [] and plan["rounds"] == 3
    assert {"bundle", "export", "runners", "table", "end_to_end"} <= set(result["phases_s"])
    assert [r["batch"] for r in result["rows"] if r["kind"] == "fused ONNX graph"] == [1, 2]
    assert "Plan: batch sizes 1, 2; 3 interleaved rounds" in (tmp_path / "b.md").read_text()


@pytest.mark.parametrize("args, message", [
    ([], "needs --ckpt BUNDLE"),
    (["--ckpt", "x.dga", "--backbone", "ViT-B-16"], "not both"),
    (["--backbone", "ViT-B-16", "--backends", "torch,tensorrt"], "--backends tensorrt: choose among"),
    (["--backbone", "ViT-B-16", "--precisions", "int4"], "--precisions int4: choose among"),
    (["--backbone", "ViT-B-16", "--batch-sizes", "1,eight"], "--batch-sizes '1,eight' must be"),
    (["--backbone", "ViT-B-16", "--budget-s", "0"], "--budget-s 0 must be a positive"),
])
def test_bad_options_get_one_line(args, message, monkeypatch, capsys):
    from dga.cli import bench as cli

    monkeypatch.setattr(sys, "argv", ["dga-bench", *args])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    err = capsys.readouterr().err
    assert exc.value.code == 2 and message in err and err.count("\n") == 1, err


def test_results_page_renders_the_new_fields_and_targets(tmp_path):
    """A hand-made file: ratios, roofline, spread, chunks, agreement, plan, and the targets judged from them."""
    from dga.bench import render

    def row(kind, precision, batch, ips, ratio, roof, backend="onnxruntime:CPUExecutionProvider"):
        return {"kind": kind, "backend": backend, "precision": precision, "batch": batch, "images_per_s": ips,
                "latency_ms": 1000 * batch / ips, "p90_ms": 1.0, "peak_rss_mb": 1.0, "roofline": roof,
                "ms_per_image": {"median": 1000 / ips, "min": 900 / ips, "max": 1100 / ips, "q1": 0, "q3": 0},
                "vs_eager": {"median": ratio, "min": ratio - 0.01, "max": ratio + 0.01, "q1": 0, "q3": 0}}

    eager = "eager per-view loop (papers)"
    data = {"date": "2000-01-01T00:00:00+00:00", "machine": {"cpu": "x86_64", "cpu_count": 2}, "bundle": None,
            "bundle_built": {"backbone": "ViT-B-16", "pretrained": "none (random init)", "classes": "scene-fills-24"},
            "method": "dga", "backbone": "ViT-B-16", "views": 7, "s0": 192, "command": "dga-bench --backbone ViT-B-16",
            "budget_s": 570, "wall_s": 560.0, "phases_s": {"bundle": 20.0, "table": 300.0},
            "plan": {"batch_sizes": [1, 8], "rounds": 2, "repeat": 1, "min_time_s": 0.2, "e2e_images": 8,
                     "e2e_batch": 8, "e2e_rounds": 1, "available_s": 300.0, "estimated_s": 290.0,
                     "gave_up": ["batch 32 dropped"], "fits": True},
            "cpu_chunks": {"fp32": {"chunk": 1, "source": "measured", "per_image_ms": {"1": 1800.0, "2": 1950.0}}},
            "rows": [row(eager, "fp32", 1, 0.44, 1.0, 0.5, "torch:cpu"), row(eager, "fp32", 8, 0.45, 1.0, 0.5,
                                                                                "torch:cpu"),
                     row("fused ONNX graph", "fp32", 1, 0.55, 1.25, 0.93), row("fused ONNX graph", "fp32", 8, 0.43,
                                                                               0.96, 0.88),
                     row("fused ONNX graph", "int8-dynamic", 8, 0.70, 1.55, 1.2)],
            "agreement": [{"kind": "fused ONNX graph", "backend": "onnxruntime:CPUExecutionProvider",
                           "precision": "int8-dynamic", "images": 8, "top1_agreement": 0.875,
                           "max_abs_logit_diff": 0.25}],
            "end_to_end": {"of_ceiling": 0.97, "shared_core_ceiling": 0.99},
            "limit": {"encoder_flops_per_view": 35e9, "views": 7, "peak_matmul_flops_per_s": 126e9,
                      "limit_images_per_s": 0.514}}
    assert render.targets(data) == [
        ("fused ONNX fp32 ≥ 1.0x the eager loop at every batch", "batch 1: 1.25x, batch 8: 0.96x", "no"),
        ("fused ONNX fp32 ≥ 90 % of the measured matmul peak at every batch", "batch 1: 93 %, batch 8: 88 %", "no"),
        ("int8 above the fp32 roofline (the fp32 matmul peak's images/s)", "best int8-dynamic at batch 8: 136 %",
         "yes"),
        ("end-to-end ≥ 95 % of the shared-core ceiling", "97 % (ceiling 99 % of model-only)", "yes")]
    (tmp_path / "real.json").write_text(json.dumps(data))
    page = render.render(tmp_path, "results")
    assert "| fused ONNX graph | onnxruntime:CPUExecutionProvider | fp32 | 8 | 0.43 | 0.96x (0.95–0.97) |" in page
    assert "| 2325.6 (2093.0–2558.1) | 88 % |" in page  # ms per image median (min–max), roofline
    assert "an untrained bundle built by `--backbone` (none (random init) weights" in page
    assert "Plan: batch sizes 1, 8; 2 interleaved rounds of 1 timed calls" in page and "batch 32 dropped" in page
    assert ("ONNX Runtime CPU chunk, fp32: 1 image(s) per call (measured at load); probe (images per call: ms per "
            "image) 1: 1800.0, 2: 1950.0.") in page
    assert "| fused ONNX graph | onnxruntime:CPUExecutionProvider | int8-dynamic | 87.5 % | 0.25 |" in page
    assert "= 0.51 images/s" in page and "| ONNX fp32 vs eager, batch 1 |" in page
    assert "| [real](#real) | 2000-01-01 | ViT-B-16 | 1.25x | 0.96x |" in page  # the summary: fp32 rows
