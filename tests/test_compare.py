"""dga-compare's bookkeeping, without training: what is reused, what is re-run, what the table shows."""

from __future__ import annotations

import json

from dga.bench import methods


def _setup(tmp_path, monkeypatch):
    from dga.train.scenebench import write_descriptions

    data = tmp_path / "data"
    (data / "train").mkdir(parents=True)  # present: run_compare does not generate the benchmark
    write_descriptions(data)
    trained: list[str] = []

    def fake_train_row(cfg, row, seed, template, bundle):
        trained.append(f"{row.name}|{seed}")
        return {"test_acc": 80.0 + len(trained), "val_acc": 0.0, "best_epoch": 1, "train_s": 0.0}

    monkeypatch.setattr(methods, "train_row", fake_train_row)
    monkeypatch.setattr(methods, "zero_shot_accuracy", lambda cfg, template: 75.0)
    return data, trained


def _cfg(data, out, rows):
    return methods.CompareConfig(data=data, out=out, seeds=(1,), rows=rows)


def test_resume_reruns_only_rows_whose_inputs_changed(tmp_path, monkeypatch):
    data, trained = _setup(tmp_path, monkeypatch)
    out = tmp_path / "out"
    methods.run_compare(_cfg(data, out, ("zero-shot", "VP", "DVP-cse")), log=lambda s: None)
    assert trained == ["VP|1", "DVP-cse|1"]
    methods.run_compare(_cfg(data, out, ("zero-shot", "VP", "DVP-cse")), log=lambda s: None)
    assert trained == ["VP|1", "DVP-cse|1"]  # nothing changed: nothing re-run

    # A cause file is read by DVP-cse only.
    causes = json.loads((data / "cause_colour.json").read_text())
    causes[next(iter(causes))].append("one more sentence about the colour of this class.")
    (data / "cause_colour.json").write_text(json.dumps(causes))
    lines: list[str] = []
    methods.run_compare(_cfg(data, out, ("zero-shot", "VP", "DVP-cse")), log=lines.append)
    assert trained == ["VP|1", "DVP-cse|1", "DVP-cse|1"]
    assert any("description files changed" in line for line in lines)

    # The default descriptions are read by every trained row (not by zero-shot).
    (data / "descriptions.json").write_text((data / "descriptions.json").read_text() + "\n")
    results = methods.run_compare(_cfg(data, out, ("zero-shot", "VP", "DVP-cse")), log=lambda s: None)
    assert trained[3:] == ["VP|1", "DVP-cse|1"]
    assert results["runs"]["zero-shot|1"]["test_acc"] == 75.0
    assert results["runs"]["DVP-cse|1"]["test_acc"] == 85.0  # the fifth training call

    # A regenerated image (one byte is enough) makes every row stale, zero-shot included.
    (data / "test" / "a").mkdir(parents=True)
    (data / "test" / "a" / "0.png").write_bytes(b"x")
    zs_calls = []
    monkeypatch.setattr(methods, "zero_shot_accuracy", lambda cfg, template: zs_calls.append(1) or 70.0)
    results = methods.run_compare(_cfg(data, out, ("zero-shot", "VP", "DVP-cse")), log=lambda s: None)
    assert trained[5:] == ["VP|1", "DVP-cse|1"] and zs_calls == [1]
    assert results["runs"]["zero-shot|1"]["test_acc"] == 70.0


def test_table_keeps_rows_not_run_this_time(tmp_path, monkeypatch):
    data, trained = _setup(tmp_path, monkeypatch)
    out = tmp_path / "out"
    methods.run_compare(_cfg(data, out, ("zero-shot", "AR", "DGA")), log=lambda s: None)
    methods.run_compare(_cfg(data, out, ("VP",)), log=lambda s: None)
    table = (out / "results.md").read_text()
    rows = [line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| ") and "seed" not in line]
    assert rows == ["zero-shot", "VP", "AR", "DGA"]  # every stored row, in the table's order
    assert "| VP | 83.0 |" in table and "+8.0" in table  # VP: third training call, vs zero-shot 75.0
