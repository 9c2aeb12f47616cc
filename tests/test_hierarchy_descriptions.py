"""DGA's super-class descriptions (--hierarchy-descriptions): the level text rows, errors, the CLI.

The hierarchy is still built from visual prototypes; a file ``{group key: [sentence, ...]}``
replaces only the text of each group (the mean of its member classes' texts by default). The
level text of a group must be the normalised mean of its encoded sentences, checked against the
backbone's text encoder directly.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dga.errors import DataError
from dga.train.bundle import load_bundle, sha256_file
from dga.train.config import MethodConfig, TrainConfig
from dga.train.data.descriptions import load_hierarchy_descriptions
from dga.train.data.imagefolder import list_images
from dga.train.data.images import eval_transform, open_rgb
from dga.train.hierarchy import group_key, level_groups
from dga.train.methods import PrepareContext, create
from dga.train.run import TrainJob, run_training

TINY = "dga-test-vit-p32"
SIZES = [4, 2]  # L = 2 on the 9 shape classes


def make_ctx(backbone, shapes_data, descriptions: dict) -> PrepareContext:
    root, classnames, _ = shapes_data
    classnames = list(classnames)
    transform = eval_transform(192)
    items = [(p, classnames.index(Path(p).parent.name)) for p in list_images(root / "train")]

    def train_batches():
        for i in range(0, len(items), 24):
            chunk = items[i : i + 24]
            yield torch.stack([transform(open_rgb(p)) for p, _ in chunk]), torch.tensor([y for _, y in chunk])

    cfg = MethodConfig(level_sizes=SIZES, scales=1, crops=1)
    return PrepareContext(backbone, classnames, cfg, descriptions, train_batches, seed=1)


def groups_of(hierarchy: dict, classnames: list[str]) -> list[list[list[str]]]:
    """Member names of every group of every level, as the hierarchy file names them."""
    return [[[classnames[c] for c in members] for members in level_groups(parent, size)]
            for size, parent in zip(hierarchy["level_sizes"], hierarchy["parents"], strict=True)]


def describe(hierarchy: dict, classnames: list[str]) -> dict[str, list[str]]:
    """A hand-written hierarchy file: 1 to 3 sentences per group (unequal counts on purpose)."""
    out: dict[str, list[str]] = {}
    for level, groups in enumerate(groups_of(hierarchy, classnames), start=1):
        for g, names in enumerate(groups):
            spoken = ", ".join(n.replace("_", " ") for n in names)
            sentences = [f"A level {level} family of shapes: {spoken}.", f"Group {g} gathers {spoken}.",
                         "Flat drawn shapes on a plain ground."]
            out[group_key(names)] = sentences[: 1 + (g + level) % 3]
    return out


@pytest.fixture(scope="module")
def default_model(backbone, shapes_data):
    """The DGA model without a hierarchy file (member-mean super-class texts) and its config."""
    return create(make_ctx(backbone, shapes_data, {}), "dga")


def test_level_text_is_the_mean_of_the_encoded_sentences(backbone, shapes_data, default_model):
    classnames = list(shapes_data[1])
    model0, cfg0 = default_model
    hdesc = describe(cfg0["hierarchy"], classnames)
    # a hand-written key: another member order and case still names the same group
    multi = next(k for k in hdesc if " + " in k)
    written = " + ".join(reversed(multi.split(" + "))).upper()
    hdesc = {(written if k == multi else k): v for k, v in hdesc.items()}
    hdesc["purple + hexagon"] = ["A group this hierarchy does not have."]
    ctx = make_ctx(backbone, shapes_data, {"hierarchy": hdesc})
    model, cfg = create(ctx, "dga")

    assert cfg["hierarchy"] == cfg0["hierarchy"], "the hierarchy is still built from the images"
    assert torch.equal(model.head.t0, model0.head.t0)
    for level, groups in enumerate(groups_of(cfg["hierarchy"], classnames)):
        got = getattr(model.head, f"level_text_{level}")
        default = getattr(model0.head, f"level_text_{level}")
        assert got.shape == default.shape == (len(groups), backbone.info.embed_dim)
        for g, names in enumerate(groups):
            key = group_key(names)
            sentences = hdesc[written] if key == multi else hdesc[key]
            with torch.no_grad():
                expected = torch.nn.functional.normalize(backbone.encode_text(sentences).float().mean(0), dim=0)
            assert torch.allclose(got[g], expected.cpu(), atol=1e-5), (level, key)
            assert not torch.allclose(got[g], default[g], atol=1e-3), (level, key)
    used = cfg["sentences"]["hierarchy"]
    assert multi in used and used[multi] == hdesc[written]
    assert "purple + hexagon" not in used
    assert any("purple + hexagon" in note and "not used" in note for note in ctx.notes), ctx.notes


def test_a_missing_group_is_an_error_naming_its_members(backbone, shapes_data, default_model):
    classnames = list(shapes_data[1])
    hdesc = describe(default_model[1]["hierarchy"], classnames)
    gone = next(k for k in hdesc if " + " in k)
    del hdesc[gone]
    with pytest.raises(DataError) as info:
        create(make_ctx(backbone, shapes_data, {"hierarchy": hdesc}), "dga")
    msg = str(info.value)
    for name in gone.split(" + "):
        assert repr(name) in msg, msg
    assert "dga-describe --kind hierarchy --hierarchy RUN.dga" in msg and "deterministic" in msg


def test_group_matching_rules():
    """Exact keys, then member names in any order and folding; two keys for one group are an error."""
    from dga.train.hierarchy import Hierarchy, hierarchy_sentences

    names = ["red_circle", "blue_circle", "green_square"]
    h = Hierarchy([2], [[0, 0, 1]], [])
    descs = {"Blue Circle + red circle": ["round"], "green_square": ["square"], "a + b": ["unused"]}
    per_level, used, extra = hierarchy_sentences(descs, names, h)
    assert per_level == [[["round"], ["square"]]]
    assert used == {"red_circle + blue_circle": ["round"], "green_square": ["square"]}
    assert extra == ["a + b"]
    with pytest.raises(DataError, match="all name the group of"):
        hierarchy_sentences({**descs, "blue_circle+red_circle": ["again"]}, names, h)


def test_file_unused_without_a_hierarchy(backbone, shapes_data):
    ctx = make_ctx(backbone, shapes_data, {"hierarchy": {"a + b": ["A sentence about a and b."]}})
    ctx.config.sg = False
    model, cfg = create(ctx, "dga")
    assert cfg["hierarchy"] is None and cfg["sentences"] is None
    assert any("--hierarchy-descriptions file is not used" in note for note in ctx.notes), ctx.notes


@pytest.mark.parametrize("text, fragment", [
    ('["not", "an", "object"]', "must be a JSON object"),
    ('{"a + b": [', "is not valid JSON"),
    ('{"a + b": "one sentence"}', "is not a list of strings"),
    ('{"a + b": []}', "has an empty list"),
    ("{}", "is empty"),
])
def test_malformed_hierarchy_file(text, fragment, tmp_path):
    path = tmp_path / "h.json"
    path.write_text(text)
    with pytest.raises(DataError, match=fragment):
        load_hierarchy_descriptions(path)
    with pytest.raises(DataError, match="does not exist"):
        load_hierarchy_descriptions(tmp_path / "nope.json")


# ----------------------------------------------------------------------------------------------
# dga-train --hierarchy-descriptions, end to end
# ----------------------------------------------------------------------------------------------


def run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2", "PYTHONWARNINGS": "ignore"}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def train_args(shapes_data, out: Path, splits: Path) -> list[str]:
    return [str(shapes_data[0]), "--out", str(out), "--method", "dga", "--backbone", TINY, "--pretrained", "none",
            "--shots", "4", "--epochs", "1", "--batch-size", "12", "--level-sizes", "4,2", "--scales", "1",
            "--crops", "1", "--splits-dir", str(splits), "--device", "cpu", "--no-plots"]


@pytest.fixture(scope="module")
def described(shapes_data, tmp_path_factory):
    """A first run without descriptions (its hierarchy), then its hierarchy file (the describe step)."""
    base = tmp_path_factory.mktemp("hdesc")
    first = base / "first.dga"
    run_training(TrainJob(data=shapes_data[0], out=first, method="dga", backbone=TINY, pretrained=None, shots=4,
                          splits_dir=base / "splits",
                          method_cfg=MethodConfig(level_sizes=SIZES, scales=1, crops=1),
                          train_cfg=TrainConfig(epochs=1, batch_size=12, seed=1, device="cpu"),
                          plots=False, progress=False))
    manifest = json.loads((first / "manifest.json").read_text())
    hfile = base / "h.json"
    hfile.write_text(json.dumps(describe(manifest["hierarchy"], manifest["classnames"])))
    return base, manifest, hfile


def test_cli_trains_with_hierarchy_descriptions(described, shapes_data, monkeypatch):
    base, first, hfile = described
    out = base / "described.dga"
    script = Path(sys.executable).with_name("dga-train")
    cmd = [str(script)] if script.is_file() else [sys.executable, "-m", "dga.cli.train"]
    res = run([*cmd, *train_args(shapes_data, out, base / "splits"), "--hierarchy-descriptions", str(hfile)], base)
    assert res.returncode == 0, res.stderr
    assert f"wrote {out}" in res.stdout

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["hierarchy"] == first["hierarchy"]
    assert manifest["training"]["descriptions"] == {"hierarchy": str(hfile)}
    assert manifest["training"]["descriptions_sha256"] == {"hierarchy": sha256_file(hfile)}
    hdesc = json.loads(hfile.read_text())
    assert manifest["heads"]["sentences"]["hierarchy"] == hdesc

    # the level text rows come from the stored tensors: loading encodes no text at all
    from dga.train.backbone import FrozenCLIP

    def no_text(self, sentences, batch_size=256):
        raise AssertionError("loading a bundle must not encode text")

    monkeypatch.setattr(FrozenCLIP, "encode_text", no_text)
    bundle = load_bundle(out)
    monkeypatch.undo()
    stored = load_file(str(out / "tensors.safetensors"))
    classnames = manifest["classnames"]
    for level, groups in enumerate(groups_of(manifest["hierarchy"], classnames)):
        text = getattr(bundle.model.head, f"level_text_{level}")
        assert torch.equal(text, stored[f"model.head.level_text_{level}"])
        with torch.no_grad():
            expected = torch.stack([torch.nn.functional.normalize(
                bundle.model.backbone.encode_text(hdesc[group_key(names)]).float().mean(0), dim=0)
                for names in groups])
        assert torch.allclose(text, expected, atol=1e-5)
    # the first run's (member-mean) text differs
    first_text = load_file(str(base / "first.dga" / "tensors.safetensors"))["model.head.level_text_0"]
    assert not torch.allclose(stored["model.head.level_text_0"], first_text, atol=1e-3)

    # the bundle exports like any DGA bundle
    from dga.export.package import ExportOptions, export_package

    opts = ExportOptions(precision="fp32", max_batch=2, opt_batch=2, verify_batches=[1])
    path, _ = export_package(out, base / "described.deploy", opts, log=lambda _line: None)
    assert (path / "deploy.json").is_file()


def call_main(argv: list[str], monkeypatch, capsys) -> tuple[int, str]:
    from dga.cli.train import main

    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as info:
        main()
    return info.value.code, capsys.readouterr().err


def test_cli_errors(described, shapes_data, tmp_path, monkeypatch, capsys):
    base, _, hfile = described
    outdir = tmp_path / "out"
    outdir.mkdir()
    args = ["dga-train", *train_args(shapes_data, outdir / "m.dga", base / "splits")]

    partial = json.loads(hfile.read_text())
    gone = next(k for k in partial if " + " in k)
    del partial[gone]
    (tmp_path / "partial.json").write_text(json.dumps(partial))
    (tmp_path / "broken.json").write_text('{"a": [')
    cases = [
        (["--hierarchy-descriptions", str(tmp_path / "partial.json")],
         [repr(gone.split(" + ")[0]), "dga-describe --kind hierarchy --hierarchy RUN.dga"]),
        (["--hierarchy-descriptions", str(tmp_path / "broken.json")], ["broken.json", "is not valid JSON"]),
        (["--hierarchy-descriptions", str(hfile), "--method", "ar"], ["--hierarchy-descriptions", "--method dga"]),
    ]
    for extra, fragments in cases:
        code, err = call_main([*args, *extra], monkeypatch, capsys)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
        for fragment in fragments:
            assert fragment in lines[0], (fragment, lines[0])
        assert list(outdir.iterdir()) == [], "an error must leave no bundle and no temporary folder"
