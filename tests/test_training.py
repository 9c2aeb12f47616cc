"""End-to-end training of every method on the tiny random backbone and the shapes dataset.

Each job is a real ``dga.train.run.run_training`` call (few shots, few epochs, CPU) whose bundle
is then reloaded: the loss must fall, the reloaded model must reproduce the trained one bit for
bit, and the manifest must record what METHODS.md says each method is made of. Also: the same
seed gives the same bytes, an interrupted run resumes to the uninterrupted result, and each DGA
ablation switch changes the model the way METHODS.md 5.4 describes.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import dga.train.run as run_mod
from dga.errors import ConfigError
from dga.train.bundle import load_bundle
from dga.train.config import MethodConfig, TrainConfig
from dga.train.data.coop import load_dataset
from dga.train.data.descriptions import load_descriptions
from dga.train.data.fewshot import fewshot_splits
from dga.train.data.images import eval_transform
from dga.train.methods import PrepareContext, assemble, create
from dga.train.resume import load_state
from dga.train.run import TrainJob, run_training
from dga.train.trainer import STATE_FILE, Trainer, make_loader

TINY = "dga-test-vit-p32"
SHOTS = 4
BATCH = 12
SEED = 0  # the conftest ``backbone`` fixture is the tiny model initialised with seed 0

ROLES = {
    "vp": (),
    "ar": (),
    "attrvr": ("des", "dist"),
    "dvp-cse": ("cause0", "cause1", "cause2"),
    "dvp-cls": ("default",),
    "dga": ("default",),
}


@pytest.fixture(scope="module")
def splits_dir(tmp_path_factory) -> Path:
    """Few-shot split files of this module, kept out of the shared dataset folder."""
    return tmp_path_factory.mktemp("splits")


def make_job(shapes_data, splits_dir, method: str, out: Path, *, epochs: int = 4, lr: float = 300.0,
             method_cfg: MethodConfig | None = None, resume: bool = False, plots: bool = True) -> TrainJob:
    root, _, files = shapes_data
    return TrainJob(
        data=root, out=out, method=method, backbone=TINY, pretrained=None, shots=SHOTS, splits_dir=splits_dir,
        descriptions={r: files[r] for r in ROLES[method]},
        method_cfg=method_cfg or MethodConfig(),
        train_cfg=TrainConfig(epochs=epochs, batch_size=BATCH, lr=lr, seed=SEED),
        resume=resume, plots=plots, progress=False,
    )


def capture_saved_model(monkeypatch) -> dict:
    """Record the model object run_training hands to save_bundle (the trained model itself)."""
    seen: dict = {}
    original = run_mod.save_bundle

    def spy(out, model, cfg, classnames, training, extra_files=None):
        seen["model"], seen["cfg"] = model, cfg
        return original(out, model, cfg, classnames, training, extra_files)

    monkeypatch.setattr(run_mod, "save_bundle", spy)
    return seen


def fresh_model(shapes_data, splits_dir, backbone, method: str, method_cfg: MethodConfig | None = None):
    """The untrained model run_training starts from (same data, seed, descriptions, backbone)."""
    root, _, files = shapes_data
    few = fewshot_splits(load_dataset(root, None, 0.2, 0.2, seed=0), SHOTS, SEED, splits_dir)
    cfg = method_cfg or MethodConfig()
    descriptions = {r: load_descriptions(files[r], few.classnames) for r in ROLES[method]}

    def batches():
        return make_loader(few.train, eval_transform(cfg.s0), BATCH, False, 0, 0)

    ctx = PrepareContext(backbone, few.classnames, cfg, descriptions, batches, seed=SEED)
    torch.manual_seed(SEED)
    model, mcfg = create(ctx, method)
    return model.eval(), mcfg, few


def fixed_batch(few, s0: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All few-shot training images, eval transform (deterministic), one batch."""
    return next(iter(make_loader(few.train, eval_transform(s0), len(few.train), False, 0, 0)))


@torch.no_grad()
def eval_loss(model, x, y) -> float:
    model.eval()
    return model.loss(model(x), y).item()


# ----------------------------------------------------------------------------------------------
# every method: the loss falls, the bundle reloads exactly, the manifest says what it is
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", list(ROLES))
def test_method_trains_and_bundle_reloads(method, shapes_data, splits_dir, backbone, tmp_path, monkeypatch):
    seen = capture_saved_model(monkeypatch)
    mcfg = MethodConfig(level_sizes=[4, 2]) if method == "dga" else None  # L = 2 on 9 classes
    out = tmp_path / f"{method}.dga"
    path, result, training = run_training(make_job(shapes_data, splits_dir, method, out, method_cfg=mcfg))
    assert path == out and out.is_dir()
    assert not out.with_name(out.name + ".work").exists(), "the work folder is removed after success"
    assert result.epochs_run == 4 and len(result.metrics) == 4

    # (c) the files of a bundle
    names = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    expected = {"manifest.json", "tensors.safetensors", "metrics.jsonl", "plots/training_curves.png"}
    if method == "dga":
        expected.add("plots/hierarchy.png")
    if method.startswith("dvp"):
        expected.add("plots/prm.png")
    assert names == expected
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]

    bundle = load_bundle(out)
    manifest = bundle.manifest
    assert manifest["method"]["name"] == method

    # (a) the loss on a fixed batch of training images falls: before = the fresh model of the
    # same job, after = the bundle (best-on-validation checkpoint).
    before, before_cfg, few = fresh_model(shapes_data, splits_dir, backbone, method, mcfg)
    x, y = fixed_batch(few, before_cfg["s0"])
    # the fresh model is the same model at initialisation: every fixed (non-learned) tensor agrees
    learned = {"stack.programs", "head.prm"}
    trained_state = bundle.model.learned_state()
    for name, tensor in before.learned_state().items():
        if name not in learned:
            assert torch.equal(tensor, trained_state[name]), name
    assert torch.count_nonzero(before.stack.programs) == 0
    assert torch.count_nonzero(bundle.model.stack.programs) > 0, "training moved no prompt"
    loss_before, loss_after = eval_loss(before, x, y), eval_loss(bundle.model, x, y)
    assert loss_after < loss_before - 1e-2, (method, loss_before, loss_after)

    # (b) the reloaded bundle reproduces the trained model's logits exactly
    trained = seen["model"].eval()
    with torch.no_grad():
        ref, got = trained(x), bundle.model(x)
    assert torch.equal(ref.logits, got.logits)
    assert len(ref.level_logits) == len(got.level_logits)
    for a, b in zip(ref.level_logits, got.level_logits, strict=True):
        assert torch.equal(a, b)

    # (d) method-specific facts of the manifest
    cfg = manifest["method"]["config"]
    shapes = manifest["tensors"]["shapes"]
    views = manifest["views"]
    if method == "vp":
        assert manifest["input"]["prompt"] == "overlay" and manifest["input"]["s0"] == 224
        assert shapes["model.stack.programs"] == [1, 3, 224, 224]
    elif method in ("ar", "attrvr"):
        assert manifest["input"]["prompt"] == "pad" and manifest["input"]["s0"] == 192
        assert len(views) == 1 and shapes["model.stack.programs"] == [1, 3, 224, 224]
    if method == "attrvr":
        assert shapes["model.head.des"][:2] == [9, 20] and shapes["model.head.dist"][:2] == [9, 20]
        assert set(manifest["heads"]["sentences"]) == {"des", "dist"}
    if method.startswith("dvp"):
        assert cfg["prompts"] == 3 and len(views) == 3
        assert shapes["model.stack.programs"] == [3, 3, 224, 224]
        m_prime = 3 * 20 if method == "dvp-cse" else 20
        assert shapes["model.head.prm"] == [9, m_prime]
        prm = bundle.model.head.prm.double()
        # each sample adds k counts to its class: sum_v n[c, v] = k * N_c, so every row sums to 1,
        # and every entry is a count divided by k * N_c = 3 * SHOTS
        assert torch.allclose(prm.sum(dim=1), torch.ones(9, dtype=torch.float64), atol=1e-6)
        counts = prm * 3 * SHOTS
        assert torch.allclose(counts, counts.round(), atol=1e-4)
        assert not torch.allclose(prm, torch.full_like(prm, 1.0 / m_prime)), "PRM never re-estimated"
        owner = bundle.model.head.owner
        if method == "dvp-cse":
            assert set(manifest["heads"]["sentences"]) == {"cause0", "cause1", "cause2"}
            # description index i * m + j belongs to prompt (cause) i
            assert torch.equal(owner, torch.arange(3).repeat_interleave(20).expand(9, -1))
        else:
            assert set(owner.unique().tolist()) <= {0, 1, 2}
    if method == "dga":
        h = manifest["hierarchy"]
        assert h["level_sizes"] == [4, 2]
        n_levels, n_scales, n_crops = 2, cfg["scales"], cfg["crops"]
        assert (n_scales, n_crops, cfg["crop_step"], cfg["s0"]) == (2, 2, 32, 192)
        assert len(views) == 1 + n_levels + n_scales * n_crops == 7
        assert shapes["model.stack.programs"] == [1 + n_levels + n_scales, 3, 224, 224]
        for level, size in enumerate(h["level_sizes"]):
            assert sorted(set(h["parents"][level])) == list(range(size))
            assert shapes[f"model.head.level_text_{level}"][0] == size
        # global view mixes delta_0 and the level prompts equally (HKP, prompt side)
        third = 1.0 / 3
        assert views[0]["name"] == "global" and views[0]["mix"] == pytest.approx([third, third, third, 0, 0])
        assert [v["name"] for v in views[1:3]] == ["level1", "level2"]
        # crops: scale e has side S0 - 32 e; fixed boxes centre then top-left
        crops = [(v["name"], v["side"], v["box"]) for v in views[3:]]
        assert crops == [
            ("scale1/center", 160, [16, 16]), ("scale1/top-left", 160, [0, 0]),
            ("scale2/center", 128, [32, 32]), ("scale2/top-left", 128, [0, 0]),
        ]
        assert views[3]["mix"] == [0, 0, 0, 1, 0] and views[5]["mix"] == [0, 0, 0, 0, 1]


# ----------------------------------------------------------------------------------------------
# determinism and resume
# ----------------------------------------------------------------------------------------------


def split_safetensors(path: Path) -> tuple[dict, bytes]:
    """(parsed JSON header, raw tensor bytes) of a safetensors file.

    The header is compared parsed: safetensors writes its ``__metadata__`` map in hash order, so
    two saves of the same tensors may differ in the order of those keys (and only there).
    """
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def test_same_seed_gives_identical_tensors(shapes_data, splits_dir, tmp_path):
    a, b = tmp_path / "a.dga", tmp_path / "b.dga"
    run_training(make_job(shapes_data, splits_dir, "dvp-cls", a, epochs=2, plots=False))
    run_training(make_job(shapes_data, splits_dir, "dvp-cls", b, epochs=2, plots=False))
    header_a, data_a = split_safetensors(a / "tensors.safetensors")
    header_b, data_b = split_safetensors(b / "tensors.safetensors")
    assert header_a == header_b
    assert data_a == data_b, "same job, same seed: the tensor bytes must be identical"
    # and a different seed does give different prompts (the check above can fail)
    c = tmp_path / "c.dga"
    job = make_job(shapes_data, splits_dir, "dvp-cls", c, epochs=1, plots=False)
    job.train_cfg.seed = SEED + 1
    run_training(job)
    ta, tc = load_file(str(a / "tensors.safetensors")), load_file(str(c / "tensors.safetensors"))
    assert not torch.equal(ta["model.stack.programs"], tc["model.stack.programs"])


def test_interrupted_run_resumes_to_the_uninterrupted_result(shapes_data, splits_dir, tmp_path, monkeypatch):
    cfg = MethodConfig(crops=1)  # DGA: random crops and level prompts, kept small
    full = tmp_path / "full.dga"
    run_training(make_job(shapes_data, splits_dir, "dga", full, epochs=3, method_cfg=cfg, plots=False))

    out = tmp_path / "cut.dga"
    work = out.with_name(out.name + ".work")
    calls = {"n": 0}
    original_validate = Trainer.validate

    def dying_validate(self):
        calls["n"] += 1
        if calls["n"] == 3:  # validation of the third epoch: epochs 1 and 2 are checkpointed
            raise KeyboardInterrupt
        return original_validate(self)

    monkeypatch.setattr(Trainer, "validate", dying_validate)
    with pytest.raises(KeyboardInterrupt):
        run_training(make_job(shapes_data, splits_dir, "dga", out, epochs=3, method_cfg=MethodConfig(crops=1),
                              plots=False))
    monkeypatch.setattr(Trainer, "validate", original_validate)
    assert not out.exists(), "an interrupted run must not leave a bundle"
    assert (work / STATE_FILE).is_file()
    state = load_state(work / STATE_FILE)
    assert state["epoch"] == 2 and len(state["metrics"]) == 2
    assert not list(tmp_path.glob(".cut.dga.tmp-*"))

    # resuming with other settings is refused, and the checkpoint is kept
    other = make_job(shapes_data, splits_dir, "dga", out, epochs=3, lr=100.0, method_cfg=MethodConfig(crops=1),
                     resume=True, plots=False)
    with pytest.raises(ConfigError, match="interrupted run with other settings"):
        run_training(other)
    assert (work / STATE_FILE).is_file() and not out.exists()

    _, result, _ = run_training(make_job(shapes_data, splits_dir, "dga", out, epochs=3,
                                         method_cfg=MethodConfig(crops=1), resume=True, plots=False))
    assert result.epochs_run == 3 and [r["epoch"] for r in result.metrics] == [1, 2, 3]
    assert not work.exists()
    a, b = load_file(str(full / "tensors.safetensors")), load_file(str(out / "tensors.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    rows_full = [json.loads(r) for r in (full / "metrics.jsonl").read_text().splitlines()]
    rows_cut = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["train_loss"] for r in rows_full] == [r["train_loss"] for r in rows_cut]
    assert [r["val_acc"] for r in rows_full] == [r["val_acc"] for r in rows_cut]


def test_resume_without_a_checkpoint_starts_afresh(shapes_data, splits_dir, tmp_path):
    out = tmp_path / "r.dga"
    _, result, _ = run_training(make_job(shapes_data, splits_dir, "ar", out, epochs=1, resume=True, plots=False))
    assert result.epochs_run == 1 and (out / "manifest.json").is_file()


# ----------------------------------------------------------------------------------------------
# DGA ablations (METHODS.md 5.4)
# ----------------------------------------------------------------------------------------------


def train_dga(shapes_data, splits_dir, tmp_path, name: str, **switches):
    out = tmp_path / f"{name}.dga"
    cfg = MethodConfig(level_sizes=[4, 2], **switches)
    run_training(make_job(shapes_data, splits_dir, "dga", out, epochs=1, method_cfg=cfg, plots=False))
    bundle = load_bundle(out)
    for key, value in switches.items():
        assert bundle.manifest["method"]["config"][key] is value
    return bundle


@pytest.fixture(scope="module")
def probe(shapes_data):
    root = shapes_data[0]
    items = load_dataset(root, None, 0.2, 0.2, seed=0).test[:6]
    return next(iter(make_loader(items, eval_transform(192), 6, False, 0, 0)))[0]


def rebuilt(bundle, **changes):
    """The bundle's learned tensors assembled under a changed configuration (no training)."""
    return assemble({**bundle.cfg, **changes}, bundle.model.learned_state(), bundle.model.backbone).eval()


def test_dga_no_hkp(shapes_data, splits_dir, tmp_path, probe):
    bundle = train_dga(shapes_data, splits_dir, tmp_path, "nohkp", hkp=False)
    views = bundle.manifest["views"]
    assert views[0]["name"] == "global" and views[0]["mix"] == [1.0, 0.0, 0.0, 0.0, 0.0]  # delta_0 alone
    assert len(views) == 7
    parent1 = torch.tensor(bundle.manifest["hierarchy"]["parents"][0])
    with torch.no_grad():
        # With lambda = 1 the output is z^SG alone: exactly the expansion of the level-1 logits.
        out = rebuilt(bundle, lam=1.0)(probe)
        # With HKP on, the same tensors give something else (redistribution and averaging).
        out_hkp = rebuilt(bundle, lam=1.0, hkp=True)(probe)
        # The trained no-HKP model mixes z^VG and that expansion with lambda = 0.7.
        out_trained = bundle.model(probe)
    assert torch.allclose(out.logits, out.level_logits[0][:, parent1], atol=1e-5)
    assert not torch.allclose(out_hkp.logits, out_hkp.level_logits[0][:, parent1], atol=1e-3)
    z_vg = rebuilt(bundle, lam=0.0)
    with torch.no_grad():
        expected = 0.3 * z_vg(probe).logits + 0.7 * out.logits
    assert torch.allclose(out_trained.logits, expected, atol=1e-4)


def test_dga_no_sg(shapes_data, splits_dir, tmp_path):
    bundle = train_dga(shapes_data, splits_dir, tmp_path, "nosg", sg=False)
    m = bundle.manifest
    assert m["hierarchy"] is None
    assert [v["name"] for v in m["views"]] == ["global", "scale1/center", "scale1/top-left",
                                               "scale2/center", "scale2/top-left"]
    assert not any(k.startswith("model.head.level_text") for k in m["tensors"]["shapes"])
    assert m["tensors"]["shapes"]["model.stack.programs"] == [3, 3, 224, 224]
    assert bundle.model.head.n_levels == 0


def test_dga_no_upf(shapes_data, splits_dir, tmp_path, probe):
    bundle = train_dga(shapes_data, splits_dir, tmp_path, "noupf", upf=False)
    assert len(bundle.manifest["views"]) == 7
    model = bundle.model
    t0 = bundle.model.learned_state()["head.t0"]
    scale = bundle.manifest["backbone"]["logit_scale"]
    with torch.no_grad():
        feats = model.encode_views(probe)
        z = scale * feats @ t0.T  # [B, V, C]: every view scored against the class text
        # With lambda = 0 the output is z^VG; without UPF each scale's crops are averaged equally.
        expected = (z[:, 0] + z[:, 3:5].mean(1) + z[:, 5:7].mean(1)) / 3
        got = rebuilt(bundle, lam=0.0)(probe).logits
        # With UPF on, and H0 = log C (the largest entropy there is, so no view is cut off and the
        # near-uniform logits of a random backbone still get unequal weights), crops are weighted.
        weighted = rebuilt(bundle, lam=0.0, upf=True, h0=math.log(9))(probe).logits
    assert torch.allclose(got, expected, atol=1e-4)
    assert not torch.allclose(weighted, expected, atol=1e-4)


def test_dga_no_vg(shapes_data, splits_dir, tmp_path):
    bundle = train_dga(shapes_data, splits_dir, tmp_path, "novg", vg=False)
    views = bundle.manifest["views"]
    assert [v["name"] for v in views] == ["global", "level1", "level2"]
    assert all(v["side"] == 0 and v["box"] is None for v in views)
    assert bundle.manifest["tensors"]["shapes"]["model.stack.programs"] == [3, 3, 224, 224]
