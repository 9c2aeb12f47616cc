"""The small-CLIP pretraining loop (issue 5): learns, is reproducible, and its weights reload."""

from __future__ import annotations

import json
import math

import pytest
import torch

from dga.train.pretrain import MODEL_NAME, pretrain


def _run(out, **kw):
    args = dict(steps=40, seed=3, batch=16, pool=16, lr=5e-4, log_every=5, eval_n=8, eval_native=False, plot=False)
    args.update(kw)
    return pretrain(out, **args)


def test_pretrain_learns_reproducibly_and_reloads(tmp_path):
    from dga.train.backbone import load_backbone

    a = _run(tmp_path / "a", plot=True)
    losses = a["losses"]
    assert len(losses) == 8 and all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.7 * losses[0], losses
    assert (tmp_path / "a" / "loss.png").is_file() and (tmp_path / "a" / "CARD.md").is_file()
    assert (tmp_path / "a" / "metrics.jsonl").read_text().count("\n") == len(losses) + 1
    assert set(a["zero_shot"]) >= {"full", "size", "colour", "fill", "shape"}

    b = _run(tmp_path / "b")
    assert b["losses"] == losses  # same seed, same curve

    weights = tmp_path / "a" / "weights.safetensors"
    assert weights.stat().st_size <= 25e6
    bb = load_backbone(MODEL_NAME, str(weights))
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    trained = a["model_obj"].eval()
    with torch.no_grad():
        ref = trained.half().float().encode_image(x)  # the saved copy is fp16
        got = bb.encode_image(x)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
    assert bb.encode_text(["a photo of a small red striped triangle."]).shape == (1, 128)


def test_shipped_weights_loss_curve_reproduces(tmp_path):
    """The committed weights' recipe, replayed for its first 20 steps, gives the committed loss curve."""
    from dga.train.backbone import SHIPPED_WEIGHTS_DIR
    from dga.train.pretrain import RECIPE_FILE

    shipped = SHIPPED_WEIGHTS_DIR / MODEL_NAME
    recipe = json.loads((shipped / RECIPE_FILE).read_text())
    logged = [json.loads(line) for line in (shipped / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in logged if "step" in r]
    n = 2 * recipe["log_every"]
    replay = pretrain(tmp_path, **recipe, stop_after=n, eval_n=0, plot=False, card=False)
    expected = [r["loss"] for r in logged if r["step"] <= n]
    assert len(replay["losses"]) == len(expected) == 2
    # same seed, same batches, same augmentations: equal up to float reduction order across CPUs
    assert replay["losses"] == pytest.approx(expected, rel=0.02), (replay["losses"], expected)


def _plain_model_input(batch_u8, image_size, mean, std, flip, gen, zoom_p):
    """The batched formulation the in-place pipeline restates (before it was made fast)."""
    import torch.nn.functional as F

    from dga.train.pretrain import zoom_out

    x = batch_u8.permute(0, 3, 1, 2).float().div(255.0)
    x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    x = zoom_out(x, gen, zoom_p)  # out of place
    return ((x - mean) / std).contiguous()


def test_in_place_model_input_is_bit_identical_to_the_batched_formula():
    from dga.train.pretrain import _to_model_input

    g = torch.Generator().manual_seed(5)
    batch = torch.randint(0, 256, (24, 64, 64, 3), dtype=torch.uint8, generator=g)
    flip = torch.rand(24, generator=g) < 0.5
    assert 0 < int(flip.sum()) < 24
    mean = torch.tensor((0.48, 0.46, 0.41)).view(1, 3, 1, 1)
    std = torch.tensor((0.27, 0.26, 0.28)).view(1, 3, 1, 1)
    ref = _plain_model_input(batch, 224, mean, std, flip, torch.Generator().manual_seed(9), 0.5)
    got = _to_model_input(batch, 224, mean, std, flip, torch.Generator().manual_seed(9), 0.5)
    assert got.is_contiguous() and got.shape == (24, 3, 224, 224)
    assert torch.equal(got, ref)
    # and the augmentation did something: some images framed, some flipped
    plain = _to_model_input(batch, 224, mean, std)
    assert not torch.equal(got, plain)


def test_keep_freed_memory_is_harmless_to_call_twice():
    import platform

    from dga.train.pretrain import keep_freed_memory

    applied = keep_freed_memory()
    assert keep_freed_memory() == applied
    assert applied == (platform.system() == "Linux" and platform.libc_ver()[0] == "glibc")


def test_compare_runs_by_hand(tmp_path):
    from dga.train.pretrain import compare_runs

    def write(folder, losses, full):
        folder.mkdir()
        rows = [json.dumps({"step": 10 * (i + 1), "loss": v}) for i, v in enumerate(losses)]
        rows.append(json.dumps({"eval": {"zero_shot": {"full": full}}}))
        (folder / "metrics.jsonl").write_text("\n".join(rows) + "\n")

    write(tmp_path / "ref", [4.0, 2.0, 1.0], 0.5)
    write(tmp_path / "rep", [4.0, 2.2, 0.9], 0.45)
    c = compare_runs(tmp_path / "rep", tmp_path / "ref")
    assert c["steps_compared"] == 3 and c["identical_steps"] == 1 and c["first_differing_step"] == 20
    assert c["rel_diff_max"] == pytest.approx(0.1) and c["max_at_step"] in (20, 30)  # 0.2/2 and 0.1/1
    assert c["rel_diff_median"] == pytest.approx(0.1)
    assert c["within_5_percent"] == pytest.approx(1 / 3)
    assert c["tail_mean_loss"] == {"replay": pytest.approx(7.1 / 3), "reference": pytest.approx(7 / 3)}
    assert c["zero_shot_full"] == {"zero_shot": {"replay": 0.45, "reference": 0.5}}
