"""The training loop: SGD + per-iteration cosine, best-on-validation, resumable, logged.

Reproducibility: each epoch reseeds torch from (seed, epoch) before drawing shuffles,
augmentations and random crops, so a run resumed at an epoch boundary continues exactly as
an uninterrupted one would (on the CPU; CUDA kernels may differ in the last bits).

Memory (train/memory.py): a step may run its batch in micro-batches with gradient accumulation,
and the encoder may recompute its blocks in the backward pass (gradient checkpointing); both
give the update of the whole batch, to float rounding.
"""

from __future__ import annotations

import json
import math
import random
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from dga.errors import ConfigError
from dga.fsutil import atomic_write
from dga.train.config import TrainConfig
from dga.train.data.images import ImageListDataset, eval_transform, train_transform
from dga.train.evaluate import accuracy_report, predict
from dga.train.memory import MemoryPlan
from dga.train.methods import MethodSpec
from dga.train.model import ReprogramModel
from dga.train.resume import as_stored, load_state, save_state
from dga.train.views import slice_crops

STATE_FILE = "last.safetensors"  # train/resume.py: safetensors + JSON, no pickle
LEGACY_STATE_FILE = "last.pt"  # the pickle older releases wrote: never loaded
METRICS_FILE = "metrics.jsonl"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {name} was asked for but no CUDA GPU is visible; use --device cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_loader(items, transform, batch_size: int, shuffle: bool, seed: int, workers: int) -> DataLoader:
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(ImageListDataset(items, transform), batch_size=batch_size, shuffle=shuffle,
                      generator=gen, num_workers=workers, persistent_workers=False)


def cosine_factor(iteration: int, total: int) -> float:
    """Cosine annealing from lr to 0 over all iterations, stepped every iteration."""
    return 0.5 * (1.0 + math.cos(math.pi * min(iteration, total) / max(total, 1)))


@contextmanager
def grad_checkpointing(model: ReprogramModel, enabled: bool):
    """Encoder blocks recomputed in the backward pass inside the block (training steps only)."""
    if not enabled:
        yield
        return
    model.backbone.set_grad_checkpointing(True)
    try:
        yield
    finally:
        model.backbone.set_grad_checkpointing(False)


@dataclass
class TrainResult:
    best_val_acc: float
    best_epoch: int
    epochs_run: int
    wall_time_s: float
    metrics: list[dict] = field(default_factory=list)


class Trainer:
    def __init__(self, model: ReprogramModel, spec: MethodSpec, cfg: TrainConfig, train_items, val_items,
                 workdir: Path, fingerprint: dict, progress: bool | None = None, memory: MemoryPlan | None = None):
        self.model, self.spec, self.cfg = model, spec, cfg
        self.memory = memory or MemoryPlan()
        # Passes without gradients (validation, PRM counting) need less memory per image than a
        # training step, so the micro-batch size that fits a step fits them as well.
        self.eval_batch_size = self.memory.chunk(cfg.batch_size)
        self.train_items, self.val_items = list(train_items), list(val_items)
        self.workdir = Path(workdir)
        self.fingerprint = fingerprint  # settings a resumed run must share
        self.device = resolve_device(cfg.device)
        self.s0 = model.stack.s0
        self.progress = sys.stderr.isatty() if progress is None else progress
        self.model.to(self.device)

    # -- data -------------------------------------------------------------------------------
    def train_loader(self, epoch: int, batch_size: int | None = None) -> DataLoader:
        # The order and augmentations depend on (seed, epoch) only, not on the batch size.
        return make_loader(self.train_items, train_transform(self.s0, self.cfg.crop_scale),
                           batch_size or self.cfg.batch_size, True, self.cfg.seed * 100_003 + epoch, self.cfg.workers)

    def val_loader(self) -> DataLoader:
        return make_loader(self.val_items, eval_transform(self.s0), self.eval_batch_size, False, 0, self.cfg.workers)

    def iters_per_epoch(self) -> int:
        return math.ceil(len(self.train_items) / self.cfg.batch_size)

    # -- state --------------------------------------------------------------------------------
    def _save_state(self, epoch, opt, sched, scaler, best, metrics) -> None:
        save_state(self.workdir / STATE_FILE, {
            "fingerprint": self.fingerprint, "epoch": epoch, "model": self.model.learned_state(),
            "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "scaler": scaler.state_dict(),
            "best": best, "metrics": metrics,
        })

    def _load_state(self, opt, sched, scaler):
        state = load_state(self.workdir / STATE_FILE)
        if state.get("fingerprint") != as_stored(self.fingerprint):  # tuples are stored as lists
            raise ConfigError(
                f"{self.workdir} holds an interrupted run with other settings; delete it, or drop --resume"
            )
        load_learned_state(self.model, state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        return state["epoch"], state["best"], state["metrics"]

    # -- loop ---------------------------------------------------------------------------------
    def fit(self, resume: bool = False) -> TrainResult:
        cfg, model, device = self.cfg, self.model, self.device
        self.workdir.mkdir(parents=True, exist_ok=True)
        params = model.trainable_parameters()
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        total = cfg.epochs * self.iters_per_epoch()
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda it: cosine_factor(it, total))
        use_amp = cfg.amp and device.type == "cuda"
        scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
        start = time.time()
        best = {"acc": -1.0, "epoch": -1, "state": None}
        metrics: list[dict] = []
        epoch0 = 0
        if resume and not (self.workdir / STATE_FILE).exists() and (self.workdir / LEGACY_STATE_FILE).exists():
            raise ConfigError(
                f"{self.workdir / LEGACY_STATE_FILE} is a pickled resume state of an older dga, which is not "
                f"loaded because unpickling a file can run code: drop --resume to train from the start"
            )
        if resume and (self.workdir / STATE_FILE).exists():
            epoch0, best, metrics = self._load_state(opt, sched, scaler)
        elif self.spec.on_train_start:
            seed_everything(cfg.seed * 100_003 - 1)
            self.spec.on_train_start(model, lambda: self.train_loader(-1, self.eval_batch_size), device)
        epochs = range(epoch0, cfg.epochs)
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=cfg.epochs, initial=epoch0, desc=f"train {model.method}", unit="epoch")
        for epoch in epochs:
            seed_everything(cfg.seed * 100_003 + epoch)
            model.train()
            loss_sum, correct, seen, t0 = 0.0, 0, 0, time.time()
            with grad_checkpointing(model, self.memory.grad_checkpointing):
                for x, y in self.train_loader(epoch):
                    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                    batch_loss, batch_correct = self.train_step(x, y, opt, scaler, use_amp, epoch)
                    sched.step()
                    loss_sum += batch_loss
                    correct += batch_correct
                    seen += len(y)
            if self.spec.on_epoch_end:
                self.spec.on_epoch_end(model, lambda e=epoch: self.train_loader(e, self.eval_batch_size), device)
            val_acc = self.validate()
            row = {"epoch": epoch + 1, "train_loss": loss_sum / max(seen, 1),
                   "train_acc": 100.0 * correct / max(seen, 1), "val_acc": val_acc,
                   "lr": opt.param_groups[0]["lr"], "epoch_time_s": time.time() - t0}
            metrics.append(row)
            # Validation picks the checkpoint; without a validation split the last epoch is kept.
            score = val_acc if val_acc is not None else float(epoch)
            if score > best["acc"] or (val_acc is None):
                best = {"acc": score, "epoch": epoch + 1, "state": model.learned_state()}
            write_metrics(self.workdir / METRICS_FILE, metrics)
            self._save_state(epoch + 1, opt, sched, scaler, best, metrics)
            if bar is not None:
                bar.set_postfix(loss=f"{row['train_loss']:.3f}", val=f"{val_acc if val_acc is not None else '-'}")
                bar.update(1)
        if bar is not None:
            bar.close()
        if best["state"] is not None:
            load_learned_state(model, best["state"])
        best_acc = best["acc"] if self.val_items else None
        return TrainResult(best_acc, best["epoch"], len(metrics), time.time() - start, metrics)

    def train_step(self, x: torch.Tensor, y: torch.Tensor, opt, scaler, use_amp: bool = False,
                   epoch: int = 0) -> tuple[float, int]:
        """One optimiser step on the batch (x, y); returns (summed loss, correct predictions).

        The forward/backward runs in micro-batches of ``memory.micro_batch`` images. Every method's
        loss is a mean over images of per-image terms (cross-entropies of logits that UPF, HKP, the
        level heads and DVP's PRM compute image by image; the PRM itself changes between epochs
        only), so the micro-batch means weighted by their shares n_i / N sum to the batch mean,
        and one step on the accumulated gradient is the step of the whole batch. The batch's
        random crops are drawn up front in the order a single forward pass draws them, so the
        crops and the random stream do not depend on the split either.
        """
        model, n = self.model, len(y)
        crops = model.stack.draw_crops(n) if model.training else None
        chunk = self.memory.chunk(n)
        opt.zero_grad(set_to_none=True)
        loss_sum, correct = 0.0, 0
        for lo in range(0, n, chunk):
            hi = min(n, lo + chunk)
            with torch.autocast(device_type=x.device.type, dtype=torch.float16, enabled=use_amp):
                out = model(x[lo:hi], crops=slice_crops(crops, lo, hi) if crops is not None else None)
                loss = model.loss(out, y[lo:hi])
            if not torch.isfinite(loss):
                raise ConfigError(f"the loss became {loss.item()} at epoch {epoch}; lower --lr (now {self.cfg.lr})")
            scaler.scale(loss if hi - lo == n else loss * ((hi - lo) / n)).backward()
            loss_sum += loss.item() * (hi - lo)
            correct += (out.logits.argmax(1) == y[lo:hi]).sum().item()
        scaler.step(opt)
        scaler.update()
        return loss_sum, correct

    def validate(self) -> float | None:
        if not self.val_items:
            return None
        res = predict(self.model, self.val_loader(), self.device)
        return accuracy_report(res["logits"], res["labels"], [""] * res["logits"].shape[1])["accuracy"]


def write_metrics(path: Path, metrics: list[dict]) -> None:
    """Rewrite the whole JSON-lines file, so a resumed run never repeats or loses a row."""
    atomic_write(path, "".join(json.dumps(row) + "\n" for row in metrics))


def load_learned_state(model: ReprogramModel, state: dict[str, torch.Tensor]) -> None:
    """Load a bundle/checkpoint state; every non-backbone tensor must be present, nothing extra."""
    expected = set(model.learned_state())
    got = set(state)
    if expected != got:
        raise ConfigError(f"saved state does not fit the model: missing {sorted(expected - got)[:3]}, "
                          f"unexpected {sorted(got - expected)[:3]}")
    model.load_state_dict(state, strict=False)
