"""Regression on the embedded benchmark with the shipped small CLIP (issue 5 acceptance).

A short schedule (8 shots x 2 epochs, VP 16 x 4; seed 1) of every method on scene-fills-24, through the same
``dga-compare`` machinery that produces the README table, compared with the backbone's zero-shot
accuracy on the same 240 test images (one image = 0.42 points); and the exported graph of a trained
bundle must score exactly the torch module's accuracy.

Stated margins over zero-shot are about half of what was measured here (zero-shot 65.8 %): AR +8.3,
AttrVR +12.5, DVP-cse +7.1, DVP-cls +8.3, DGA +13.8 at 8 shots x 2 epochs. VP runs 16 shots for
4 epochs (+6.7; 8 x 6 gave +7.1): at 8 shots x 2 epochs, 12 SGD steps, its unbounded watermark has
not yet moved off zero-shot (65.0).
"""

from __future__ import annotations

import json

import pytest

from dga.bench.methods import CompareConfig, run_compare

MARGINS = {"VP": 3.0, "AR": 4.0, "AttrVR": 6.0, "DVP-cse": 3.5, "DVP-cls": 4.0, "DGA": 7.0}  # points over zero-shot
SHORT_ROWS = ("AR", "AttrVR", "DVP-cse", "DVP-cls", "DGA")  # 8 shots x 2 epochs; VP: 16 x 4


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    from dga.train.scenebench import make_benchmark

    root = tmp_path_factory.mktemp("bench")
    make_benchmark(root / "data", per_split={"train": 8, "val": 4, "test": 10}, seed=5)
    cfg = CompareConfig(data=root / "data", out=root / "out", seeds=(1,), shots=8, epochs=2,
                        rows=("zero-shot", *SHORT_ROWS))
    return cfg, run_compare(cfg, log=lambda s: None)


@pytest.fixture(scope="module")
def compared_vp(tmp_path_factory):
    """VP at 16 shots x 4 epochs; the same 240 test images (a split's images depend only on the seed)."""
    from dga.train.scenebench import make_benchmark

    root = tmp_path_factory.mktemp("bench-vp")
    make_benchmark(root / "data", per_split={"train": 16, "val": 4, "test": 10}, seed=5)
    cfg = CompareConfig(data=root / "data", out=root / "out", seeds=(1,), shots=16, epochs=4,
                        rows=("zero-shot", "VP"))
    return cfg, run_compare(cfg, log=lambda s: None)


def _accuracies(results, row):
    return results["runs"][f"{row}|1"]["test_acc"], results["runs"]["zero-shot|1"]["test_acc"]


@pytest.mark.parametrize("row", sorted(MARGINS))
def test_method_beats_zero_shot(compared, compared_vp, row):
    acc, zs = _accuracies((compared_vp if row == "VP" else compared)[1], row)
    if row == "VP":
        assert zs == _accuracies(compared[1], "zero-shot")[1]  # the very same test images
    assert 50.0 < zs < 95.0  # the zero-shot model is real, not chance, and leaves room
    assert acc >= zs + MARGINS[row], f"{row}: {acc:.1f}% vs zero-shot {zs:.1f}%"


def test_table_and_resume(compared):
    cfg, results = compared
    table = (cfg.out / "results.md").read_text()
    for row in ("zero-shot", *SHORT_ROWS):
        assert f"| {row} |" in table
    before = json.loads((cfg.out / "results.json").read_text())
    again = run_compare(cfg, log=lambda s: None)  # everything is there: nothing is retrained
    assert again["runs"] == before["runs"]


def test_exported_graph_scores_what_torch_scores(compared, tmp_path):
    from dga.export.package import ExportOptions, export_package

    cfg, _ = compared
    bundle = cfg.out / "bundles" / "dga-s1.dga"
    package, _ = export_package(bundle, tmp_path / "pkg", ExportOptions(
        max_batch=16, opt_batch=16, verify_batches=[1, 16], eval_data=cfg.data))
    facts = json.loads((package / "deploy.json").read_text())["accuracy"]
    acc = facts["top1_percent"]
    assert facts["images"] == 240
    assert acc["onnx_fp32"] == acc["torch"], acc  # same images, same predictions: exactly equal
    if "onnx_fp16" in acc:  # fp16 may flip a near-tie or two
        assert abs(acc["onnx_fp16"] - acc["torch"]) <= 1.0, acc
