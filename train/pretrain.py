"""Pretrain the project's small CLIP (``dga-shapes-vit-p32``) offline on the scene world (issue 5).

The data is the procedural image-caption world of :mod:`dga.train.scenes`. To keep the two CPU
cores on the model, a pool of scenes is rendered once at a small size (64 px by default) into a
uint8 array and its captions are tokenised once; every step then samples a batch from the pool
with a seeded generator, upsamples it to the model's 224 px (bilinear), applies a random
horizontal flip and normalises with the model's mean/std.

The loss is CLIP's symmetric contrastive loss with soft targets: every pair of samples in the
batch whose scenes share the same label (size, colour, fill, shape) is a positive, so repeated
captions are not pushed apart. The schedule is a fixed number of steps (reproducible), AdamW with
a 4 % linear warm-up then cosine decay. At the end the model is scored zero-shot on held-out
scenes (indices never used for training) against the caption of every attribute combination, and
saved in fp16 as ``weights.safetensors``, loadable by
``load_backbone("dga-shapes-vit-p32", ".../weights.safetensors")``.

Reproduce the shipped weights with::

    python -m dga.train.pretrain --out train/weights/dga-shapes-vit-p32 --steps N --seed 0
"""

from __future__ import annotations

import argparse
import ctypes
import itertools
import json
import math
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dga.train.scenes import COLOURS, FILLS, SHAPES, SIZES, TEMPLATES, Scene, example

MODEL_NAME = "dga-shapes-vit-p32"
EVAL_INDEX_START = 10_000_000  # held-out scenes: the training pool never reaches these indices
ATTRIBUTES = ("size", "colour", "fill", "shape")
RECIPE_FILE = "recipe.json"


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory instead of returning it to the system (process-wide).

    Each step allocates several 77 MB batch tensors; by default glibc maps every allocation over
    32 MB afresh and unmaps it when freed, so every step pays the page faults of touching ~0.5 GB
    of new memory (a third of the step time on the 2-core VM). With mmap off and trimming set
    high, the freed blocks are reused. Arithmetic is unchanged. Returns whether it applied
    (glibc only; elsewhere nothing happens).
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_max = -1, -4  # <malloc.h>
    return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))


def render_pool(seed: int, start: int, n: int, size: int) -> tuple[np.ndarray, list[str], list[Scene]]:
    """Render scenes ``start .. start+n-1`` of world ``seed``: uint8 [n, size, size, 3], captions, scenes."""
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    captions, scenes = [], []
    for k in range(n):
        img, cap, scene = example(seed, start + k, size=size)
        images[k] = np.asarray(img, dtype=np.uint8)
        captions.append(cap)
        scenes.append(scene)
    return images, captions, scenes


def _to_model_input(batch_u8: torch.Tensor, image_size: int, mean: torch.Tensor, std: torch.Tensor,
                    flip: torch.Tensor | None = None, gen: torch.Generator | None = None,
                    zoom_p: float = 0.0) -> torch.Tensor:
    """uint8 NHWC -> normalised float NCHW at ``image_size`` (optionally flipping rows where flip).

    Every step works in place on one contiguous NCHW tensor: the numbers are those of the plain
    batched formulation (checked bit for bit in the tests) at a fraction of the memory traffic;
    interpolating the permuted (channels-last) view instead was 5x slower here.
    """
    x = batch_u8.permute(0, 3, 1, 2).contiguous().float().div_(255.0)
    if x.shape[-1] != image_size:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    if flip is not None:
        for i in torch.nonzero(flip).flatten().tolist():
            x[i] = x[i].flip(-1)
    if zoom_p > 0 and gen is not None:
        x = zoom_out(x, gen, zoom_p, inplace=True)
    return x.sub_(mean).div_(std)


def zoom_out(x: torch.Tensor, gen: torch.Generator, p: float = 0.5, min_side: int = 160,
             inplace: bool = False) -> torch.Tensor:
    """Augmentation: with probability ``p`` shrink an image (float NCHW in [0, 1]) to a random side in
    [min_side, S] and place it at a random spot on a frame of grey, a random colour or noise.

    Visual reprogramming shows the frozen encoder exactly such pictures (an S0 image inside a learned
    frame); web-trained CLIPs have seen borders and letterboxing, a model trained only on full-frame
    renders has not and loses most of its accuracy to an 8-px grey border. ``inplace`` overwrites
    ``x`` (each image is read before it is replaced, so the result is the same).
    """
    n, _, size, _ = x.shape
    pick = torch.rand(n, generator=gen) < p
    sides = torch.randint(min_side, size + 1, (n,), generator=gen)
    kinds = torch.randint(0, 3, (n,), generator=gen)
    colours = torch.rand(n, 3, generator=gen)
    offsets = torch.rand(n, 2, generator=gen)
    noise = torch.rand(n, 3, 28, 28, generator=gen)  # coarse noise, upsampled below: cheap to draw
    out = x if inplace else x.clone()
    for i in torch.nonzero(pick).flatten().tolist():
        s = int(sides[i])
        frame = (torch.full((3, size, size), 0.5) if kinds[i] == 0 else
                 colours[i].view(3, 1, 1).expand(3, size, size).clone() if kinds[i] == 1 else
                 F.interpolate(noise[i : i + 1], size=(size, size), mode="nearest")[0])
        y0, x0 = (offsets[i] * (size - s)).long().tolist()
        frame[:, y0:y0 + s, x0:x0 + s] = F.interpolate(x[i : i + 1], size=(s, s), mode="bilinear",
                                                      align_corners=False, antialias=True)[0]
        out[i] = frame
    return out


def soft_clip_loss(img_feat: torch.Tensor, txt_feat: torch.Tensor, logit_scale: torch.Tensor,
                   labels: torch.Tensor) -> torch.Tensor:
    """Symmetric contrastive loss; samples with equal ``labels`` are all positives (soft targets)."""
    img = F.normalize(img_feat, dim=-1)
    txt = F.normalize(txt_feat, dim=-1)
    logits = logit_scale.exp() * img @ txt.t()
    eq = (labels[:, None] == labels[None, :]).float()
    target = eq / eq.sum(1, keepdim=True)  # eq is symmetric: the same targets serve both directions
    loss_i = -(target * F.log_softmax(logits, dim=1)).sum(1).mean()
    loss_t = -(target * F.log_softmax(logits.t(), dim=1)).sum(1).mean()
    return (loss_i + loss_t) / 2


def lr_at(step: int, steps: int, lr: float, warmup_frac: float = 0.04) -> float:
    """Linear warm-up over ``warmup_frac`` of the steps, then cosine decay to 0."""
    warm = max(1, int(round(warmup_frac * steps)))
    if step < warm:
        return lr * (step + 1) / warm
    progress = (step - warm) / max(1, steps - warm)
    return lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def all_labels() -> list[Scene]:
    """Every attribute combination, as scenes (background irrelevant)."""
    return [Scene(shape, colour, fill, size, "plain")
            for size, colour, fill, shape in itertools.product(SIZES, COLOURS, FILLS, SHAPES)]


@torch.no_grad()
def zero_shot(model, tokenizer, images_u8: np.ndarray, scenes: list[Scene], image_size: int,
              mean: torch.Tensor, std: torch.Tensor, templates: tuple[int, ...] = (0,),
              batch: int = 256, pad_to: int | None = None) -> dict[str, float]:
    """Accuracy of the argmax over every combination's caption, in full and per attribute."""
    model.eval()
    combos = all_labels()
    txt = []
    for t in templates:
        tok = tokenizer([c.caption(t) for c in combos])
        txt.append(F.normalize(model.encode_text(tok).float(), dim=-1))
    txt = F.normalize(torch.stack(txt).mean(0), dim=-1)
    preds = []
    for i in range(0, len(images_u8), batch):
        x = _to_model_input(torch.from_numpy(images_u8[i : i + batch]), image_size, mean, std)
        if pad_to:  # as AR's first step sees it: the image shrunk to pad_to inside a mid-grey frame
            a = (image_size - pad_to + 1) // 2
            x = F.pad(F.interpolate(x * std + mean, size=(pad_to, pad_to), mode="bilinear", antialias=True),
                      (a, image_size - pad_to - a, a, image_size - pad_to - a), value=0.5).sub(mean).div(std)
        f = F.normalize(model.encode_image(x).float(), dim=-1)
        preds.extend((f @ txt.t()).argmax(1).tolist())
    out = {"full": float(np.mean([combos[p].label == s.label for p, s in zip(preds, scenes, strict=True)]))}
    for a in ATTRIBUTES:
        out[a] = float(np.mean([getattr(combos[p], a) == getattr(s, a) for p, s in zip(preds, scenes, strict=True)]))
    out["n_images"] = len(scenes)
    out["n_classes"] = len(combos)
    return out


def _plot(records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3), dpi=100)
    ax.plot([r["step"] for r in records], [r["loss"] for r in records], lw=1)
    ax.set_xlabel("step")
    ax.set_ylabel("contrastive loss")
    ax.set_title(MODEL_NAME)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def build_model(seed: int):
    """The randomly initialised model (seeded) and its tokenizer, with project configs registered."""
    import open_clip

    from dga.train.backbone import register_project_configs

    register_project_configs()
    torch.manual_seed(seed)
    model = open_clip.create_model(MODEL_NAME, pretrained=None, device="cpu")
    tokenizer = open_clip.get_tokenizer(MODEL_NAME)
    return model, tokenizer


def pretrain(
    out_dir: str | os.PathLike,
    steps: int = 1600,
    seed: int = 0,
    batch: int = 128,
    lr: float = 1e-3,
    weight_decay: float = 0.1,
    warmup_frac: float = 0.04,
    pool: int = 30_000,
    pool_size: int = 64,
    zoom_p: float = 0.5,
    log_every: int = 10,
    eval_n: int = 2000,
    eval_native: bool = True,
    threads: int | None = 2,
    plot: bool = True,
    card: bool = True,
    stop_after: int | None = None,
) -> dict:
    """Pretrain ``dga-shapes-vit-p32`` for ``steps`` steps and write weights, metrics, plot, card.

    Returns a summary dict (losses, wall time, zero-shot accuracies, paths). ``stop_after`` runs only
    the first steps of the same schedule, rendering only the scenes they draw: the loss curve of a
    full run, cut short (how the reproduction test checks the shipped weights' curve).
    """
    t_start = time.time()
    keep_freed_memory()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if threads:
        torch.set_num_threads(threads)
    if stop_after is None:  # the arguments that decide the weights, for the reproduction test
        recipe = {"steps": steps, "seed": seed, "batch": batch, "lr": lr, "weight_decay": weight_decay,
                  "warmup_frac": warmup_frac, "pool": pool, "pool_size": pool_size, "zoom_p": zoom_p,
                  "log_every": log_every, "threads": threads}
        (out / RECIPE_FILE).write_text(json.dumps(recipe, indent=1) + "\n")
    model, tokenizer = build_model(seed)
    image_size = int(model.visual.image_size[0] if isinstance(model.visual.image_size, tuple | list)
                     else model.visual.image_size)
    pcfg = getattr(model.visual, "preprocess_cfg", {}) or {}
    mean = torch.tensor(pcfg.get("mean", (0.48145466, 0.4578275, 0.40821073))).view(1, 3, 1, 1)
    std = torch.tensor(pcfg.get("std", (0.26862954, 0.26130258, 0.27577711))).view(1, 3, 1, 1)

    batch = min(batch, pool)
    n_run = steps if stop_after is None else min(steps, stop_after)
    # Two generators: one draws the batches (so a short replay knows which scenes it needs), one the
    # augmentations.
    gen = torch.Generator().manual_seed(seed)
    aug = torch.Generator().manual_seed(seed + 1)
    t0 = time.time()
    if stop_after is None:
        images, captions, scenes = render_pool(seed, 0, pool, pool_size)
        where = torch.arange(pool)
    else:  # render only the scenes the first n_run batches draw: the same batches, a fraction of the work
        replay = torch.Generator().manual_seed(seed)
        needed = torch.unique(torch.cat([torch.randperm(pool, generator=replay)[:batch] for _ in range(n_run)]))
        images = np.empty((len(needed), pool_size, pool_size, 3), dtype=np.uint8)
        captions, scenes = [], []
        for k, i in enumerate(needed.tolist()):
            img, cap, scene = example(seed, i, size=pool_size)
            images[k] = np.asarray(img, dtype=np.uint8)
            captions.append(cap)
            scenes.append(scene)
        where = torch.full((pool,), -1, dtype=torch.long)
        where[needed] = torch.arange(len(needed))
    images_t = torch.from_numpy(images)
    tokens = tokenizer(captions)
    label_ids = {c.label: i for i, c in enumerate(all_labels())}
    labels = torch.tensor([label_ids[s.label] for s in scenes])
    render_s = time.time() - t0

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.98), eps=1e-6)
    metrics_path = out / "metrics.jsonl"
    records: list[dict] = []
    model.train()
    t_train = time.time()
    running, count = 0.0, 0
    with open(metrics_path, "w") as mf:
        for step in range(n_run):
            cur_lr = lr_at(step, steps, lr, warmup_frac)
            for g in opt.param_groups:
                g["lr"] = cur_lr
            idx = where[torch.randperm(pool, generator=gen)[:batch]]
            flip = torch.rand(batch, generator=aug) < 0.5
            x = _to_model_input(images_t[idx], image_size, mean, std, flip, aug, zoom_p)
            img_f = model.encode_image(x)
            txt_f = model.encode_text(tokens[idx])
            loss = soft_clip_loss(img_f, txt_f, model.logit_scale, labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            running += float(loss.detach())
            count += 1
            if (step + 1) % log_every == 0 or step + 1 == n_run:
                rec = {"step": step + 1, "loss": running / count, "lr": cur_lr,
                       "logit_scale": float(model.logit_scale.detach().exp()),
                       "elapsed_s": round(time.time() - t_train, 2)}
                records.append(rec)
                mf.write(json.dumps(rec) + "\n")
                mf.flush()
                running, count = 0.0, 0
        train_s = time.time() - t_train

        result: dict = {"model": MODEL_NAME, "seed": seed, "steps": steps, "batch": batch, "lr": lr,
                        "weight_decay": weight_decay, "warmup_frac": warmup_frac, "pool": pool,
                        "pool_size": pool_size, "zoom_p": zoom_p, "log_every": log_every,
                        "threads": torch.get_num_threads(),
                        "render_s": round(render_s, 1), "train_s": round(train_s, 1),
                        "images_per_s": round(n_run * batch / max(train_s, 1e-9), 1),
                        "final_loss": records[-1]["loss"] if records else float("nan")}
        if eval_n > 0:
            ev_imgs, _, ev_scenes = render_pool(seed, EVAL_INDEX_START, eval_n, pool_size)
            result["zero_shot"] = zero_shot(model, tokenizer, ev_imgs, ev_scenes, image_size, mean, std)
            result["zero_shot_ensemble"] = zero_shot(model, tokenizer, ev_imgs, ev_scenes, image_size, mean, std,
                                                     templates=tuple(range(len(TEMPLATES))))
            result["zero_shot_pad192"] = zero_shot(model, tokenizer, ev_imgs, ev_scenes, image_size, mean, std,
                                                   pad_to=192)
            if eval_native:
                nat_imgs, _, nat_scenes = render_pool(seed, EVAL_INDEX_START, eval_n, image_size)
                result["zero_shot_native"] = zero_shot(model, tokenizer, nat_imgs, nat_scenes, image_size, mean, std)
            mf.write(json.dumps({"eval": {k: v for k, v in result.items() if k.startswith("zero_shot")}}) + "\n")

    from safetensors.torch import save_file

    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    weights = out / "weights.safetensors"
    save_file(state, str(weights), metadata={"model": MODEL_NAME, "seed": str(seed), "steps": str(steps)})
    result["weights"] = str(weights)
    result["weights_bytes"] = weights.stat().st_size
    result["wall_s"] = round(time.time() - t_start, 1)
    result["losses"] = [r["loss"] for r in records]
    if plot and records:
        _plot(records, out / "loss.png")
    if card:
        _write_card(out, result)
    model.eval()
    result["model_obj"] = model
    return result


def _write_card(out: Path, r: dict) -> None:
    def acc_line(d: dict | None) -> str:
        if not d:
            return "not evaluated"
        return " | ".join(f"{a} {100 * d[a]:.1f} %" for a in ("full", *ATTRIBUTES))

    n_combo = len(SIZES) * len(COLOURS) * len(FILLS) * len(SHAPES)
    text = f"""# {MODEL_NAME}: a small CLIP pretrained from scratch on the scene world

Config `train/model_configs/{MODEL_NAME}.json`: ViT image tower 224 px, patch 32, width 128,
4 layers; text tower width 128, 3 layers, 2 heads, context 32, vocab 49,408; embed dim 128.
Weights: `weights.safetensors` (fp16, {r['weights_bytes'] / 1e6:.1f} MB). Load with
`dga.train.backbone.load_backbone("{MODEL_NAME}", "<dir>/weights.safetensors")`.

## Recipe
- Data: `dga.train.scenes.example(seed={r['seed']}, index, size={r['pool_size']})` for index
  0..{r['pool'] - 1} (pool rendered once, captions in 4 phrasings tokenised once); each step samples
  {r['batch']} from the pool (seeded `torch.Generator`), upsamples bilinearly to 224 px, random
  horizontal flip, with probability {r['zoom_p']} shrinks the image to a random side in [160, 224]
  on a frame of grey, a random colour or noise (`zoom_out`: robustness to reprogramming frames),
  normalises with the model's mean/std.
- Loss: symmetric contrastive loss, soft targets: samples whose scenes share `Scene.label` are all
  positives (row-normalised equality matrix); learnable logit scale clamped at 100.
- AdamW lr {r['lr']}, betas (0.9, 0.98), weight decay {r['weight_decay']} (not on embeddings, norms,
  biases, logit scale), {100 * r['warmup_frac']:.0f} % linear warm-up then cosine to 0, {r['steps']} steps,
  batch {r['batch']}, seed {r['seed']}, {r['threads']} CPU threads ({platform.processor() or platform.machine()}).
- Wall time {r['wall_s'] / 60:.1f} min (render {r['render_s']} s, train {r['train_s'] / 60:.1f} min,
  {r['images_per_s']} images/s). Final loss (mean of last logged window) {r['final_loss']:.4f}.

## Zero-shot accuracy
Held-out scenes: indices {EVAL_INDEX_START}.. of the same world ({r.get('zero_shot', {}).get('n_images', 0)}
images, never used for training), each scored against the captions of all {n_combo} combinations
("a photo of a {{size}} {{colour}} {{fill}} {{shape}}."); attribute accuracy is that of the
predicted combination's attribute.
- rendered at {r['pool_size']} px and upsampled (as in training): {acc_line(r.get('zero_shot'))}
- same, text ensemble of the 4 caption phrasings: {acc_line(r.get('zero_shot_ensemble'))}
- rendered natively at 224 px: {acc_line(r.get('zero_shot_native'))}
- as the first, shrunk to 192 px inside a mid-grey frame (what AR sees before training):
  {acc_line(r.get('zero_shot_pad192'))}

## Reproduce
```
python -m dga.train.pretrain --out {out} --steps {r['steps']} --seed {r['seed']} --batch {r['batch']} \\
    --lr {r['lr']} --pool {r['pool']} --pool-size {r['pool_size']} --zoom-p {r['zoom_p']}
```
Deterministic on CPU for a given seed and thread count. Mean loss per {r['log_every']} steps:
`metrics.jsonl` (last line: the evaluation), curve: `loss.png`.
"""
    (out / "CARD.md").write_text(text)


def _logged(folder: Path) -> tuple[dict[int, float], dict]:
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line.strip()]
    losses = {r["step"]: r["loss"] for r in rows if "step" in r}
    evals = next((r["eval"] for r in rows if "eval" in r), {})
    return losses, evals


def compare_runs(replay_dir: str | os.PathLike, reference_dir: str | os.PathLike) -> dict:
    """How closely a replay's logged loss curve and zero-shot evaluation follow a reference run's.

    Runs of one recipe are bit-identical on one CPU; across CPUs the float reduction order of the
    matmuls differs in the last bit and, training being chaotic, the curves drift apart slowly
    (the figures below say how far).
    """
    got, got_eval = _logged(Path(replay_dir))
    ref, ref_eval = _logged(Path(reference_dir))
    steps = sorted(set(got) & set(ref))
    if not steps:
        raise ValueError(f"{replay_dir} and {reference_dir} share no logged step")
    rel = np.array([abs(got[s] - ref[s]) / abs(ref[s]) for s in steps])
    differ = [s for s in steps if got[s] != ref[s]]
    tail = steps[-10:]
    return {"steps_compared": len(steps), "identical_steps": len(steps) - len(differ),
           "first_differing_step": differ[0] if differ else None,
           "rel_diff_median": float(np.median(rel)), "rel_diff_p90": float(np.quantile(rel, 0.9)),
           "rel_diff_max": float(rel.max()), "max_at_step": steps[int(rel.argmax())],
           "within_5_percent": float(np.mean(rel < 0.05)),
           "tail_mean_loss": {"replay": float(np.mean([got[s] for s in tail])),
                              "reference": float(np.mean([ref[s] for s in tail]))},
           "zero_shot_full": {k: {"replay": got_eval[k]["full"], "reference": ref_eval[k]["full"]}
                              for k in ref_eval if k in got_eval}}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=f"Pretrain {MODEL_NAME} on the procedural scene world.")
    p.add_argument("--out", required=True, help="output folder (weights, metrics, plot, card)")
    p.add_argument("--steps", type=int, default=1600)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--pool", type=int, default=30_000, help="number of pre-rendered training scenes")
    p.add_argument("--pool-size", type=int, default=64, help="render size of the pool (px)")
    p.add_argument("--zoom-p", type=float, default=0.5, help="probability of the shrink-onto-a-frame augmentation")
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--eval-n", type=int, default=2000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--compare-to", default=None, metavar="DIR",
                   help="a reference run (e.g. train/weights/dga-shapes-vit-p32): write OUT/compare.json")
    a = p.parse_args(argv)
    r = pretrain(a.out, steps=a.steps, seed=a.seed, batch=a.batch, lr=a.lr, weight_decay=a.weight_decay,
                 pool=a.pool, pool_size=a.pool_size, zoom_p=a.zoom_p, log_every=a.log_every,
                 eval_n=a.eval_n, threads=a.threads)
    r.pop("model_obj", None)
    r.pop("losses", None)
    if a.compare_to:
        r["compare"] = compare_runs(a.out, a.compare_to)
        (Path(a.out) / "compare.json").write_text(json.dumps(r["compare"], indent=1) + "\n")
    print(json.dumps(r, indent=2))


if __name__ == "__main__":
    main()
