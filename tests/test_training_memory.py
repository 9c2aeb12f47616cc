"""Training memory: micro-batches and gradient checkpointing give the same update; the estimate's arithmetic.

A step in micro-batches (gradient accumulation, each micro-batch's mean loss weighted by its
share) must move the prompts as one step on the whole batch does, for DGA (hierarchical loss,
UPF, HKP, random crops) and DVP (PRM head over K prompts); checkpointing the encoder blocks must
give the gradients of the plain backward pass. The estimate is checked against numbers worked
out by hand for ViT-B/16, and against what autograd really keeps on a tiny ViT.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from dga.errors import ConfigError
from dga.train.backbone import BackboneInfo, FrozenCLIP, load_backbone
from dga.train.config import MethodConfig, TrainConfig
from dga.train.data.coop import load_dataset
from dga.train.data.descriptions import load_descriptions
from dga.train.data.fewshot import fewshot_splits
from dga.train.data.images import eval_transform
from dga.train.memory import (
    RUNTIME_OVERHEAD,
    EncoderShape,
    MemoryPlan,
    block_floats,
    bytes_per_view,
    encoder_shape,
    fixed_bytes,
    parse_memory_size,
    plan_memory,
    stem_floats,
    step_bytes,
)
from dga.train.methods import PrepareContext, assemble, create, get_method
from dga.train.run import TrainJob, run_training
from dga.train.trainer import Trainer, grad_checkpointing, make_loader

TINY = "dga-test-vit-p32"
SHOTS = 4
SEED = 0


@pytest.fixture(scope="module")
def splits_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("splits")


def fresh(shapes_data, splits_dir, backbone, method: str):
    """An untrained model of ``method`` on the tiny backbone, and 11 training images (eval transform)."""
    root, _, files = shapes_data
    few = fewshot_splits(load_dataset(root, None, 0.2, 0.2, seed=0), SHOTS, SEED, splits_dir)
    mcfg = MethodConfig(level_sizes=[4, 2]) if method == "dga" else MethodConfig()
    roles = {"dga": (), "dvp-cls": ("default",)}[method]
    descriptions = {r: load_descriptions(files[r], few.classnames) for r in roles}

    def batches():
        return make_loader(few.train, eval_transform(mcfg.s0), 12, False, 0, 0)

    ctx = PrepareContext(backbone, few.classnames, mcfg, descriptions, batches, seed=SEED)
    torch.manual_seed(SEED)
    model, cfg = create(ctx, method)
    x, y = next(iter(make_loader(few.train, eval_transform(mcfg.s0), 11, True, 3, 0)))
    return model, cfg, x, y


def steps(model, method: str, x, y, plan: MemoryPlan, n_steps: int = 2) -> tuple[torch.Tensor, list]:
    """Programs after ``n_steps`` SGD steps (momentum 0.9, lr 40) on (x, y), and each step's (loss sum, correct)."""
    cfg = TrainConfig(batch_size=len(y), seed=SEED, device="cpu")
    trainer = Trainer(model, get_method(method), cfg, [], [], Path("unused"), {}, progress=False, memory=plan)
    opt = torch.optim.SGD(model.trainable_parameters(), lr=cfg.lr, momentum=cfg.momentum)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    model.train()
    torch.manual_seed(11)  # the random crops of both runs come from the same stream
    out = []
    with grad_checkpointing(model, plan.grad_checkpointing):
        for _ in range(n_steps):
            out.append(trainer.train_step(x, y, opt, scaler))
    return model.stack.programs.detach().clone(), out


@pytest.mark.parametrize("method", ["dga", "dvp-cls"])
@pytest.mark.parametrize("plan", [MemoryPlan(micro_batch=4), MemoryPlan(micro_batch=1),
                                  MemoryPlan(micro_batch=5, grad_checkpointing=True)],
                         ids=["micro4", "micro1", "micro5+checkpointing"])
def test_micro_batches_make_the_step_of_the_whole_batch(method, plan, shapes_data, splits_dir, backbone):
    model, cfg, x, y = fresh(shapes_data, splits_dir, backbone, method)
    twin = assemble(cfg, model.learned_state(), backbone)  # the same untrained model, separate prompts
    start = model.stack.programs.detach().clone()
    whole, whole_stats = steps(model, method, x, y, MemoryPlan())
    split, split_stats = steps(twin, method, x, y, plan)
    assert (whole - start).abs().max() > 1e-2, "the step moved no prompt: the comparison would be empty"
    assert torch.allclose(split, whole, rtol=0, atol=1e-6), (split - whole).abs().max()
    for (loss_a, correct_a), (loss_b, correct_b) in zip(whole_stats, split_stats, strict=True):
        assert loss_b == pytest.approx(loss_a, rel=1e-6) and correct_b == correct_a
    assert not backbone.clip.visual.transformer.grad_checkpointing, "checkpointing is switched off after the steps"


def saved_bytes(fn) -> tuple[int, torch.Tensor]:
    """(bytes of the tensors autograd keeps for fn()'s backward pass, fn's result); fn adds the
    storages of the parameters to the set it is given, which are not counted."""
    params = set()
    seen: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(params)
    return sum(seen.values()), out


def test_checkpointing_gives_the_gradients_of_the_plain_backward(shapes_data, splits_dir, backbone):
    model, _, x, y = fresh(shapes_data, splits_dir, backbone, "dga")
    model.train()
    crops = model.stack.draw_crops(len(y), torch.Generator().manual_seed(4))
    grads, kept = [], []
    for ckpt in (False, True):
        model.stack.programs.grad = None

        def forward(params):
            params.update(p.untyped_storage().data_ptr() for p in backbone.parameters())
            return model.loss(model(x, crops=crops), y)

        with grad_checkpointing(model, ckpt):
            nbytes, loss = saved_bytes(forward)
            loss.backward()
        grads.append(model.stack.programs.grad.clone())
        kept.append(nbytes)
    assert grads[0].abs().max() > 0
    assert torch.allclose(grads[1], grads[0], rtol=0, atol=1e-7), (grads[1] - grads[0]).abs().max()
    # The two blocks of the tiny ViT keep at least their LayerNorm inputs, q/k/v, attention output and MLP
    # hidden layer (6TW + TM = 32000 floats) per image-view; with checkpointing at least half of that goes.
    views = len(y) * model.stack.num_views
    assert kept[0] - kept[1] > 0.5 * views * 2 * 32_000 * 4, f"checkpointing kept {kept[1]} of {kept[0]} bytes"


def test_checkpointing_needs_a_vit():
    clip = nn.Module()
    clip.visual = nn.Conv2d(3, 4, 3)
    info = BackboneInfo("tiny-cnn", None, "embedded", (0.5,) * 3, (0.25,) * 3, 224, 100.0, 4)
    frozen = FrozenCLIP(clip, info)
    with pytest.raises(ConfigError, match="--grad-checkpointing needs a ViT image encoder; tiny-cnn has a Conv2d"):
        frozen.set_grad_checkpointing(True)
    with pytest.raises(ConfigError, match="memory estimate covers ViT image encoders; tiny-cnn has a Conv2d"):
        encoder_shape(frozen)


# ----------------------------------------------------------------------------------------------
# the estimate: arithmetic worked out by hand, and a bound on what autograd keeps
# ----------------------------------------------------------------------------------------------

VIT_B16 = EncoderShape(tokens=197, width=768, heads=12, mlp=3072, layers=12, image_size=224)


def test_estimate_arithmetic_for_vit_b16():
    # block = 6*197*768 + 197*3072 + 12*197^2 = 907776 + 605184 + 465708
    assert block_floats(VIT_B16) == 1_978_668
    # stem = 3*224^2 + 2*197*768 = 150528 + 302592
    assert stem_floats(VIT_B16) == 453_120
    # plain: 4 * (453120 + 13 * 1978668) = 4 * 26175804
    assert bytes_per_view(VIT_B16, checkpointing=False) == 104_703_216
    # checkpointing: 4 * (453120 + 12*197*768 + 2 * 1978668) = 4 * (453120 + 1815552 + 3957336)
    assert bytes_per_view(VIT_B16, checkpointing=True) == 24_904_032
    # 24 images x 7 views, no checkpointing, nothing fixed: 168 * 104703216 = 17590140288, x 1.5 slack
    assert step_bytes(VIT_B16, 7, 24, False, 0) == 26_385_210_432
    assert step_bytes(VIT_B16, 7, 1, True, 5) == 5 + 7 * 24_904_032 * 3 // 2 == 261_492_341


FIXED = 2 * 10**9


# per image of 7 views, with the 1.5 slack: 7 * 104703216 * 1.5 = 1099383768 plain,
# 7 * 24904032 * 1.5 = 261492336 with checkpointing
@pytest.mark.parametrize("budget, micro, ckpt, expected", [
    # whole batch of 64 fits: 2e9 + 64 * 1099383768
    (FIXED + 70_360_561_152, None, None, MemoryPlan(None, False, FIXED + 70_360_561_152, FIXED + 70_360_561_152)),
    # 12 GB: 10e9 // 1099383768 = 9 images without checkpointing
    (12 * 10**9, None, None, MemoryPlan(9, False, 12 * 10**9, FIXED + 9 * 1_099_383_768)),
    # 3 GB: not one image without (1e9 < 1099383768); with: 1e9 // 261492336 = 3
    (3 * 10**9, None, None, MemoryPlan(3, True, 3 * 10**9, FIXED + 3 * 261_492_336)),
    # 16 images asked for at 12 GB: 9 fit without checkpointing, so it is switched on (38 would fit)
    (12 * 10**9, 16, None, MemoryPlan(16, True, 12 * 10**9, FIXED + 16 * 261_492_336)),
    # checkpointing asked for at 12 GB: 10e9 // 261492336 = 38 images
    (12 * 10**9, None, True, MemoryPlan(38, True, 12 * 10**9, FIXED + 38 * 261_492_336)),
])
def test_plan_fits_the_budget(budget, micro, ckpt, expected):
    assert plan_memory(VIT_B16, 7, 64, FIXED, budget, micro, ckpt) == expected


def test_plan_too_small_a_budget_is_one_line():
    # 2e9 + 1 image with checkpointing = 2261492336 bytes
    with pytest.raises(ConfigError, match=r"--max-memory 2.10 GB is below the estimated 2.26 GB for 1 image\(s\) "
                                          r"x 7 views with gradient checkpointing: raise --max-memory$"):
        plan_memory(VIT_B16, 7, 64, FIXED, 2_100_000_000)
    # checkpointing forbidden: 2e9 + 1099383768 = 3.10 GB
    with pytest.raises(ConfigError, match=r"below the estimated 3.10 GB .* without gradient checkpointing: raise "
                                          r"--max-memory or allow --grad-checkpointing"):
        plan_memory(VIT_B16, 7, 64, FIXED, 2_500_000_000, checkpointing=False)


@pytest.mark.parametrize("text, size", [("12GB", 12 * 10**9), ("16GiB", 16 * 2**30), ("1.5 gb", 1_500_000_000),
                                        ("512MiB", 512 * 2**20), ("800mb", 800 * 10**6)])
def test_memory_sizes(text, size):
    assert parse_memory_size(text) == size


@pytest.mark.parametrize("text", ["12", "12 GX", "lots", "-1GB", "0GB"])
def test_memory_size_errors(text):
    with pytest.raises(ConfigError, match=r"--max-memory '.*' (is not a memory size: write a number and a unit, "
                                          r"e\.g\. 12GB or 16GiB|must be more than 0 bytes)"):
        parse_memory_size(text)


def test_encoder_shape_and_fixed_memory_of_the_tiny_model(shapes_data, splits_dir, backbone):
    # dga-test-vit-p32: 224 / 32 = 7 -> 49 patches + class token; width 64, 64 / 32 = 2 heads, MLP 4 x 64
    assert encoder_shape(backbone) == EncoderShape(tokens=50, width=64, heads=2, mlp=256, layers=2, image_size=224)
    model, _, _, _ = fresh(shapes_data, splits_dir, backbone, "dga")
    programs = 5 * 3 * 224 * 224  # delta_0, two level prompts, two scale prompts
    text = 9 * 64 + 4 * 64 + 2 * 64  # T_0 and the two level texts
    clip = sum(p.numel() for p in backbone.parameters())
    assert fixed_bytes(model) == 4 * (clip + programs + text + 2 * programs) + RUNTIME_OVERHEAD


def test_estimate_bounds_what_autograd_keeps():
    """On the tiny ViT-B/16-shaped model: the estimate is above what is kept, and not far above."""
    p16 = load_backbone("dga-test-vit-p16", None, seed=0)
    shape = encoder_shape(p16)
    assert shape == EncoderShape(tokens=197, width=128, heads=2, mlp=512, layers=2, image_size=224)

    def kept(n: int, ckpt: bool) -> int:
        def forward(params):
            params.update(p.untyped_storage().data_ptr() for p in p16.parameters())
            return p16.encode_image(torch.rand(n, 3, 224, 224, requires_grad=True))

        p16.clip.visual.set_grad_checkpointing(ckpt)
        try:
            nbytes, out = saved_bytes(forward)
            out.sum().backward()
        finally:
            p16.clip.visual.set_grad_checkpointing(False)
        return nbytes

    for ckpt in (False, True):
        per_view = kept(2, ckpt) - kept(1, ckpt)
        assert 0 < per_view <= bytes_per_view(shape, ckpt), (ckpt, per_view)
    plain = kept(2, False) - kept(1, False)
    assert bytes_per_view(shape, False) < 2 * plain


# ----------------------------------------------------------------------------------------------
# a whole run: the options reach the trainer and the manifest
# ----------------------------------------------------------------------------------------------


def job(shapes_data, splits_dir, out: Path, **train) -> TrainJob:
    root = shapes_data[0]
    return TrainJob(data=root, out=out, method="dga", backbone=TINY, pretrained=None, shots=SHOTS,
                    splits_dir=splits_dir, method_cfg=MethodConfig(level_sizes=[4, 2]),
                    train_cfg=TrainConfig(epochs=2, batch_size=12, lr=100.0, seed=SEED, device="cpu", **train),
                    plots=False, progress=False)


def test_a_run_in_micro_batches_trains_the_same_prompts(shapes_data, splits_dir, tmp_path):
    from safetensors.torch import load_file

    plain, split = tmp_path / "plain.dga", tmp_path / "split.dga"
    run_training(job(shapes_data, splits_dir, plain))
    run_training(job(shapes_data, splits_dir, split, micro_batch=5, grad_checkpointing=True))
    a = load_file(str(plain / "tensors.safetensors"))["model.stack.programs"]
    b = load_file(str(split / "tensors.safetensors"))["model.stack.programs"]
    assert torch.count_nonzero(a) > 0
    assert torch.allclose(a, b, rtol=0, atol=1e-5), (a - b).abs().max()
    manifest = json.loads((split / "manifest.json").read_text())
    memory = manifest["training"]["memory"]
    assert (memory["micro_batch"], memory["grad_checkpointing"], memory["max_memory"]) == (5, True, None)
    assert memory["estimate_bytes"] > RUNTIME_OVERHEAD
    assert manifest["training"]["schedule"]["micro_batch"] == 5
    assert json.loads((plain / "manifest.json").read_text())["training"]["memory"]["micro_batch"] is None


def test_max_memory_picks_the_plan_and_says_so(shapes_data, splits_dir, backbone, tmp_path, caplog):
    # per image: 7 views x bytes_per_view(tiny p32, plain) x 1.5; allow exactly 3 images over the fixed part
    out = tmp_path / "budget.dga"
    j = job(shapes_data, splits_dir, out)
    j.train_cfg.epochs = 1
    shape = EncoderShape(tokens=50, width=64, heads=2, mlp=256, layers=2, image_size=224)
    # fixed part of this model (see test_encoder_shape_and_fixed_memory_of_the_tiny_model)
    model_fixed = 4 * (sum(p.numel() for p in backbone.parameters()) + 3 * 5 * 3 * 224 * 224 + 15 * 64) \
        + RUNTIME_OVERHEAD
    per_image = 7 * bytes_per_view(shape, False) * 3 // 2  # with the allocator slack
    j.train_cfg.max_memory = model_fixed + 3 * per_image + 1
    with caplog.at_level("WARNING", logger="dga.train"):
        run_training(j)
    memory = json.loads((out / "manifest.json").read_text())["training"]["memory"]
    assert memory == {"micro_batch": 3, "grad_checkpointing": False, "max_memory": j.train_cfg.max_memory,
                      "estimate_bytes": model_fixed + 3 * per_image}
    assert any("training in micro-batches of 3 images, gradient checkpointing off" in r.message
               for r in caplog.records)


# ----------------------------------------------------------------------------------------------
# the benchmark, on the tiny ViT (two configurations, one step each)
# ----------------------------------------------------------------------------------------------


def test_train_memory_benchmark_writes_its_json(tmp_path, capsys):
    from dga.bench.train_memory import main

    out = tmp_path / "train-memory.json"
    argv = ["--backbone", "dga-test-vit-p16", "--shots", "1", "--classes", "4", "--micro-batch", "2",
            "--steps", "1", "--warmup", "0", "--configs", "plain,micro-batch-2+checkpointing", "--out", str(out)]
    assert main(argv) == 0, capsys.readouterr()
    result = json.loads(out.read_text())
    assert result["command"] == "python -m dga.bench.train_memory " + " ".join(argv)
    assert (result["backbone"], result["images"], result["batch"]) == ("dga-test-vit-p16", 4, 4)
    assert list(result["configs"]) == ["plain", "micro-batch-2+checkpointing"]
    plain, both = result["configs"]["plain"], result["configs"]["micro-batch-2+checkpointing"]
    assert (plain["micro_batch"], plain["grad_checkpointing"]) == (None, False)
    assert (both["micro_batch"], both["grad_checkpointing"]) == (2, True)
    # 4 classes: one hierarchy level of 2 groups (round(4 / 4) = 1 -> 2; round(4 / 16) -> 2 is not smaller),
    # so 1 + 1 + 2 x 2 = 6 views
    shape = EncoderShape(tokens=197, width=128, heads=2, mlp=512, layers=2, image_size=224)
    for r, images, ckpt in ((plain, 4, False), (both, 2, True)):
        assert r["views"] == 6 and len(r["step_seconds"]) == 1 and r["seconds_per_step"] > 0
        assert r["peak_rss_bytes"] >= r["rss_before_steps_bytes"] > 0
        assert r["estimate_bytes"] - RUNTIME_OVERHEAD > images * 6 * bytes_per_view(shape, ckpt)
