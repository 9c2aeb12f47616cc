"""A whole training job, from a data folder to a written bundle (what ``dga-train`` runs)."""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dga.errors import ConfigError
from dga.train.backbone import load_backbone
from dga.train.bundle import save_bundle, sha256_file, writable_tmp_dir
from dga.train.config import MethodConfig, TrainConfig
from dga.train.data.coop import load_dataset
from dga.train.data.descriptions import load_descriptions, load_hierarchy_descriptions
from dga.train.data.fewshot import fewshot_splits
from dga.train.data.images import eval_transform
from dga.train.memory import format_bytes, plan_for
from dga.train.methods import PrepareContext, create, get_method
from dga.train.methods.dga import HIERARCHY_ROLE
from dga.train.trainer import METRICS_FILE, Trainer, TrainResult, make_loader, resolve_device

log = logging.getLogger("dga.train")


@dataclass
class TrainJob:
    data: Path
    out: Path
    method: str = "dga"
    backbone: str = "ViT-B-16"
    pretrained: str | None = "openai"
    dataset: str | None = None  # CoOp name, "imagefolder", or detected
    shots: int | None = 16
    splits_dir: Path | None = None
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    # role -> JSON file: "default", "des", "dist", "cause<i>" ({class: sentences}) and, DGA only,
    # "hierarchy" ({group key: sentences}, the super-classes of the hierarchy levels)
    descriptions: dict[str, Path] = field(default_factory=dict)
    method_cfg: MethodConfig = field(default_factory=MethodConfig)
    train_cfg: TrainConfig = field(default_factory=TrainConfig)
    resume: bool = False
    plots: bool = True
    progress: bool | None = None

    @property
    def workdir(self) -> Path:
        return self.out.with_name(self.out.name + ".work")


def description_flags(role: str) -> str:
    if role.startswith("cause"):
        return "--cause (once per cause)"
    return {"default": "--descriptions", "des": "--des", "dist": "--dist",
            HIERARCHY_ROLE: "--hierarchy-descriptions"}[role]


def read_description_file(role: str, path: Path, classnames: list[str]) -> dict[str, list[str]]:
    """A validated description file: class-keyed for every role but DGA's super-class file."""
    if role == HIERARCHY_ROLE:
        return load_hierarchy_descriptions(path)
    return load_descriptions(path, classnames)


def _check_output(out: Path) -> None:
    """Fail before hours of training if the bundle could not be written."""
    tmp = writable_tmp_dir(out)
    shutil.rmtree(tmp, ignore_errors=True)


def run_training(job: TrainJob) -> tuple[Path, TrainResult, dict]:
    spec = get_method(job.method)
    job.method_cfg.validate()
    job.train_cfg.validate()
    if job.method == "dvp-cse" and job.descriptions:
        causes = sorted(r for r in job.descriptions if r.startswith("cause"))
        if causes:
            job.method_cfg.prompts = len(causes)  # K = number of cause files given
    if HIERARCHY_ROLE in job.descriptions and job.method != "dga":
        raise ConfigError(f"--hierarchy-descriptions describes DGA's label hierarchy; method {job.method} "
                          "has none: drop the option or use --method dga")
    needed = spec.description_roles(job.method_cfg)
    missing = [r for r in needed if r not in job.descriptions]
    if missing:
        raise ConfigError(f"method {job.method} needs description files: pass "
                          f"{', '.join(sorted({description_flags(r) for r in missing}))}")
    _check_output(job.out)

    seed = job.train_cfg.seed
    full = load_dataset(job.data, job.dataset, job.val_fraction, job.test_fraction, seed=0)
    splits_dir = job.splits_dir or Path(job.data) / "split_fewshot"
    few = fewshot_splits(full, job.shots, seed, splits_dir)
    classnames = few.classnames
    descriptions = {role: read_description_file(role, path, classnames) for role, path in job.descriptions.items()}
    description_sha256 = {role: sha256_file(Path(path)) for role, path in job.descriptions.items()}

    device = resolve_device(job.train_cfg.device)
    backbone = load_backbone(job.backbone, job.pretrained, seed=seed, device=device)
    s0 = job.method_cfg.s0

    def train_batches():
        return make_loader(few.train, eval_transform(s0), job.train_cfg.batch_size, False, 0, job.train_cfg.workers)

    ctx = PrepareContext(backbone, classnames, job.method_cfg, descriptions, train_batches, seed=seed)
    torch.manual_seed(seed)
    model, cfg = create(ctx, job.method)
    tc = job.train_cfg
    memory = plan_for(model, tc.batch_size, tc.max_memory, tc.micro_batch, tc.grad_checkpointing)
    if tc.max_memory is not None:
        ctx.notes.append(f"--max-memory {format_bytes(tc.max_memory)}: training in {memory.describe()}")
    for note in ctx.notes:
        log.warning(note)
    fingerprint = {
        "method": cfg["method"], "config": {k: v for k, v in cfg.items() if k != "sentences"},
        "train": tc.settings(), "backbone": [job.backbone, job.pretrained],
        "data": str(Path(job.data).resolve()), "shots": job.shots, "descriptions": description_sha256,
    }
    if job.workdir.exists() and not job.resume:
        shutil.rmtree(job.workdir)
    trainer = Trainer(model, spec, tc, few.train, few.val, job.workdir, fingerprint, job.progress, memory)
    result = trainer.fit(resume=job.resume)

    training = {
        "dataset": {"path": str(Path(job.data).resolve()), "name": few.name, "classes": len(classnames),
                    "train_images": len(few.train), "val_images": len(few.val)},
        "shots": job.shots, "seed": seed, "epochs": job.train_cfg.epochs, "schedule": job.train_cfg.to_json(),
        "best_val_acc": result.best_val_acc, "best_epoch": result.best_epoch,
        "wall_time_s": round(result.wall_time_s, 2), "device": str(device), "notes": ctx.notes,
        "memory": memory.to_json(),  # how steps ran (micro-batch, checkpointing), chosen or given
        "descriptions": {r: str(p) for r, p in job.descriptions.items()},
        "descriptions_sha256": description_sha256,  # which files (hence which sentences) made the text rows
    }
    extra = {METRICS_FILE: job.workdir / METRICS_FILE}
    if job.plots:
        extra.update(make_plots(job.workdir, model, cfg, classnames, result))
    path = save_bundle(job.out, model.cpu(), cfg, classnames, training, extra)
    shutil.rmtree(job.workdir, ignore_errors=True)
    return path, result, training


def make_plots(workdir: Path, model, cfg: dict, classnames: list[str], result: TrainResult) -> dict[str, Path]:
    """Pictures a user would rather look at than read: curves, hierarchy, PRM."""
    from dga.train import plots

    out = {"plots/training_curves.png": plots.plot_training_curves(result.metrics, workdir / "curves.png")}
    if cfg.get("hierarchy"):
        h = cfg["hierarchy"]
        out["plots/hierarchy.png"] = plots.plot_dendrogram(h["linkage"], classnames, h["parents"],
                                                           workdir / "hierarchy.png")
    prm = getattr(model.head, "prm", None)
    if prm is not None:
        group = cfg["m"] if cfg["method"] == "dvp-cse" else None
        out["plots/prm.png"] = plots.plot_prm(prm.detach().cpu().numpy(), classnames, workdir / "prm.png", group)
    return out

