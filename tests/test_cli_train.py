"""dga-train / dga-eval from the outside: help, a real tiny run, and every user error as one line.

The console scripts run in subprocesses for help, one training + evaluation and one error; the
remaining error paths call the same ``main()`` in-process (same code path, ``error: ...`` on
stderr and exit code 2) to keep the suite fast. Each error must leave the output folder empty:
no bundle, no hidden ``.m.dga.tmp-*`` directory, no ``.work`` folder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dga.errors import BackboneError

TINY = "dga-test-vit-p32"
BIN = Path(sys.executable).parent


def script(name: str, module: str) -> list[str]:
    """The installed console script, or ``python -m`` of its module where it is not installed."""
    exe = BIN / name
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", module]


TRAIN = script("dga-train", "dga.cli.train")
EVAL = script("dga-eval", "dga.cli.evaluate")


def run(cmd: list[str], cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2", "PYTHONWARNINGS": "ignore"}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


@pytest.fixture
def outdir(tmp_path) -> Path:
    d = tmp_path / "out"
    d.mkdir()
    return d


def base_args(shapes_data, outdir: Path, splits: Path) -> list[str]:
    root = shapes_data[0]
    return [str(root), "--out", str(outdir / "m.dga"), "--backbone", TINY, "--pretrained", "none",
            "--shots", "4", "--epochs", "1", "--batch-size", "12", "--splits-dir", str(splits),
            "--device", "cpu", "--no-plots"]


# ----------------------------------------------------------------------------------------------
# subprocess: help, one real run, one error
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cmd", [TRAIN, EVAL], ids=["dga-train", "dga-eval"])
def test_help(cmd, tmp_path):
    res = run([*cmd, "--help"], tmp_path, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "Examples" in res.stdout and "Usage" in res.stdout
    assert "dga-train" in res.stdout or "dga-eval" in res.stdout


def test_train_then_eval(shapes_data, tmp_path):
    root, _, files = shapes_data
    out = tmp_path / "run.dga"
    report = tmp_path / "report.json"
    res = run([*TRAIN, str(root), "--out", str(out), "--method", "dga", "--backbone", TINY, "--pretrained", "none",
               "--descriptions", str(files["default"]), "--shots", "4", "--epochs", "1", "--batch-size", "16",
               "--level-sizes", "3", "--scales", "1", "--crops", "1", "--lr", "100",
               "--splits-dir", str(tmp_path / "splits"), "--device", "cpu"], tmp_path)
    assert res.returncode == 0, res.stderr
    assert f"wrote {out}" in res.stdout and "best validation accuracy" in res.stdout
    assert error_lines(res.stderr) == []
    assert (out / "manifest.json").is_file() and (out / "plots" / "hierarchy.png").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.dga", "splits"]  # no .work, no .tmp-*

    res = run([*EVAL, str(out), str(root), "--split", "test", "--json", str(report), "--device", "cpu"], tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("dga on test (36 images): accuracy ")
    assert "level 1 (3 groups)" in res.stdout
    rep = json.loads(report.read_text())
    assert rep["method"] == "dga" and rep["split"] == "test" and rep["samples"] == 36
    assert 0.0 <= rep["accuracy"] <= 100.0
    assert sorted(rep["per_class_accuracy"]) == sorted(shapes_data[1])
    confusion = rep["confusion"]
    assert len(confusion) == 9 and all(len(row) == 9 for row in confusion)
    assert [sum(row) for row in confusion] == [4] * 9  # 4 test images per class
    correct = sum(confusion[i][i] for i in range(9))
    assert rep["accuracy"] == pytest.approx(100.0 * correct / 36)
    assert [lv["level"] for lv in rep["hierarchy"]] == [1] and rep["hierarchy"][0]["groups"] == 3
    assert not report.with_name(report.name + ".tmp").exists()


def test_error_in_a_subprocess(shapes_data, outdir, tmp_path):
    res = run([*TRAIN, *base_args(shapes_data, outdir, tmp_path / "splits"), "--method", "nosuch"], tmp_path)
    assert res.returncode == 2
    assert error_lines(res.stderr) == [error_lines(res.stderr)[0]]
    assert "unknown method 'nosuch'" in res.stderr and "dga" in error_lines(res.stderr)[0]
    assert "Traceback" not in res.stderr
    assert list(outdir.iterdir()) == []


# ----------------------------------------------------------------------------------------------
# in-process: every user error is one ``error:`` line, exit code 2, nothing written
# ----------------------------------------------------------------------------------------------


def call_main(main, argv: list[str], monkeypatch, capsys) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as info:
        main()
    cap = capsys.readouterr()
    return info.value.code, cap.out, cap.err


def drop_class(path: Path, dest: Path, name: str) -> Path:
    data = json.loads(path.read_text())
    del data[name]
    dest.write_text(json.dumps(data))
    return dest


ERRORS = {
    # id: (extra arguments (callable of (files, tmp) -> list), fragments of the one error line)
    "unknown-backbone": (lambda f, t: ["--backbone", "ViT-Q-99"], ["unknown backbone 'ViT-Q-99'"]),
    "unknown-method": (lambda f, t: ["--method", "dgaa"], ["unknown method 'dgaa'", "attrvr"]),
    "attrvr-without-files": (lambda f, t: ["--method", "attrvr"],
                             ["method attrvr needs description files", "--des", "--dist"]),
    "attrvr-without-dist": (lambda f, t: ["--method", "attrvr", "--des", str(f["des"])],
                            ["method attrvr needs description files: pass --dist"]),
    "dvp-cls-without-descriptions": (lambda f, t: ["--method", "dvp-cls"],
                                     ["method dvp-cls needs description files: pass --descriptions"]),
    "descriptions-missing-a-class": (
        lambda f, t: ["--method", "dvp-cls", "--descriptions",
                      str(drop_class(f["default"], t / "partial.json", "green_square"))],
        ["partial.json", "has no descriptions for class(es) 'green_square'"]),
    "descriptions-malformed": (
        lambda f, t: ["--method", "dga", "--descriptions", str(_write(t / "broken.json", '{"red_circle": ['))],
        ["broken.json", "is not valid JSON"]),
    "descriptions-file-missing": (
        lambda f, t: ["--method", "dga", "--descriptions", str(t / "nope.json")],
        ["description file", "nope.json", "does not exist"]),
    "pretrained-file-missing": (lambda f, t: ["--pretrained", str(t / "weights.pt")],
                                ["weights.pt", "neither a published tag", "nor an existing file"]),
    "s0-300": (lambda f, t: ["--s0", "300"], ["--s0 300 must be in 1..224"]),
    "crops-9": (lambda f, t: ["--crops", "9"], ["--crops 9 must be in 1..5"]),
    "level-sizes-text": (lambda f, t: ["--level-sizes", "8,two"], ["--level-sizes '8,two'"]),
    "epochs-0": (lambda f, t: ["--epochs", "0"], ["--epochs 0 must be at least 1"]),
    "micro-batch-0": (lambda f, t: ["--micro-batch", "0"], ["--micro-batch 0 must be in 1..12"]),
    "micro-batch-over-batch": (lambda f, t: ["--micro-batch", "13"], ["--micro-batch 13 must be in 1..12",
                                                                      "at most --batch-size"]),
    "max-memory-no-unit": (lambda f, t: ["--max-memory", "12"],
                           ["--max-memory '12' is not a memory size", "e.g. 12GB or 16GiB"]),
    # 1 GB is less than the fixed 1 GiB runtime allowance alone
    "max-memory-too-small": (lambda f, t: ["--max-memory", "1GB"],
                             ["--max-memory 1.00 GB is below the estimated", "with gradient checkpointing",
                              "raise --max-memory"]),
}


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize("case", list(ERRORS))
def test_train_user_errors(case, shapes_data, outdir, tmp_path, monkeypatch, capsys):
    from dga.cli.train import main

    extra, fragments = ERRORS[case]
    argv = ["dga-train", *base_args(shapes_data, outdir, tmp_path / "splits"), *extra(shapes_data[2], tmp_path)]
    code, out, err = call_main(main, argv, monkeypatch, capsys)
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert list(outdir.iterdir()) == [], "an error must leave no bundle and no temporary folder"


def test_memory_options_reach_the_manifest(shapes_data, outdir, tmp_path, monkeypatch, capsys):
    from dga.cli.train import main

    argv = ["dga-train", *base_args(shapes_data, outdir, tmp_path / "splits"), "--method", "ar",
            "--max-memory", "64GB", "--micro-batch", "5", "--no-grad-checkpointing"]
    code, out, err = call_main(main, argv, monkeypatch, capsys)
    assert code == 0, err
    manifest = json.loads((outdir / "m.dga" / "manifest.json").read_text())
    memory = manifest["training"]["memory"]
    assert (memory["micro_batch"], memory["grad_checkpointing"], memory["max_memory"]) == (5, False, 64 * 10**9)
    assert any("training in micro-batches of 5 images, gradient checkpointing off" in note
               for note in manifest["training"]["notes"])


def test_train_data_folder_missing(outdir, tmp_path, monkeypatch, capsys):
    from dga.cli.train import main

    argv = ["dga-train", str(tmp_path / "no-such-data"), "--out", str(outdir / "m.dga"), "--backbone", TINY,
            "--pretrained", "none", "--method", "ar", "--epochs", "1"]
    code, _, err = call_main(main, argv, monkeypatch, capsys)
    assert code == 2
    assert err.count("error:") == 1 and "no-such-data" in err and "does not exist" in err
    assert list(outdir.iterdir()) == []


def test_train_out_folder_missing(shapes_data, tmp_path, monkeypatch, capsys):
    from dga.cli.train import main

    target = tmp_path / "missing-parent" / "m.dga"
    argv = ["dga-train", str(shapes_data[0]), "--out", str(target), "--backbone", TINY, "--pretrained", "none",
            "--method", "ar", "--epochs", "1", "--splits-dir", str(tmp_path / "splits")]
    code, _, err = call_main(main, argv, monkeypatch, capsys)
    assert code == 2
    assert err.startswith("error: cannot write") and "missing-parent" in err and "does not exist" in err
    assert err.count("\n") == 1
    assert not (tmp_path / "missing-parent").exists()


def test_eval_missing_bundle(shapes_data, tmp_path, monkeypatch, capsys):
    from dga.cli.evaluate import main

    code, _, err = call_main(main, ["dga-eval", str(tmp_path / "absent.dga"), str(shapes_data[0])],
                             monkeypatch, capsys)
    assert code == 2
    assert err.startswith("error: no model bundle at") and "absent.dga" in err and err.count("\n") == 1


def test_usage_error_is_not_a_traceback(monkeypatch, capsys):
    from dga.cli.train import main

    code, _, err = call_main(main, ["dga-train", "data", "--out", "x.dga", "--epochs", "many"], monkeypatch, capsys)
    assert code == 2 and "Traceback" not in err
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert "Invalid value for '--epochs'" in err and "'dga-train --help'" in err
    code, _, err = call_main(main, ["dga-train", "data"], monkeypatch, capsys)
    assert code == 2 and "Missing option '--out'" in err and "Traceback" not in err and err.count("\n") == 1


# ----------------------------------------------------------------------------------------------
# pretrained tags without a network
# ----------------------------------------------------------------------------------------------


def test_unknown_tag_for_the_tiny_model():
    from dga.train.backbone import load_backbone

    with pytest.raises(BackboneError, match="'openai' for dga-test-vit-p32 are neither a published tag"):
        load_backbone(TINY, "openai")


def test_published_tag_without_network_names_the_fix(monkeypatch):
    """The download fails (OSError, as offline); open_clip tries it before building the model."""
    import open_clip.factory

    from dga.train.backbone import load_backbone

    calls = []

    def offline(cfg, *args, **kwargs):
        calls.append(cfg)
        raise OSError("Network is unreachable")

    monkeypatch.setattr(open_clip.factory, "download_pretrained", offline)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BackboneError) as info:
        load_backbone("RN50", "openai")
    assert calls, "the (stubbed) download was attempted"
    msg = str(info.value)
    assert "could not fetch the 'openai' weights of RN50 (no network?)" in msg
    assert "--pretrained with a local weight file" in msg
