"""dga-train: learn visual-reprogramming prompts for a frozen CLIP and write a model bundle."""

from __future__ import annotations

from pathlib import Path

import typer

from dga.cli.common import epilog, run_app, single_command

EPILOG = epilog([
    'dga-train data/oxford_pets --method dga --backbone ViT-B-16 --pretrained openai --shots 16 --out pets.dga',
    'dga-train my_images/ --method attrvr --des desattr.json --dist distattr.json --out mine.dga',
    'dga-train my_images/ --method dvp-cse --cause shape.json --cause colour.json --cause texture.json --out dvp.dga',
    'dga-train my_images/ --method dga --no-hkp --epochs 50 --out ablation.dga',
    'dga-train my_images/ --method dga --hierarchy-descriptions h.json --out described.dga',
    'dga-train my_images/ --method dga --max-memory 12GB --out fits.dga',
], "")


def train(
    data: Path = typer.Argument(..., help="Dataset root: ImageFolder (train/val/test or class folders) or a CoOp "
                                          "benchmark folder (detected)."),
    out: Path = typer.Option(..., "--out", "-o", help="Bundle directory to write, e.g. run.dga."),
    method: str = typer.Option("dga", help="vp | ar | attrvr | dvp-cse | dvp-cls | dga."),
    backbone: str = typer.Option("ViT-B-16", help="open_clip model name (or dga-test-vit-p32 for a tiny one)."),
    pretrained: str = typer.Option("openai", help="Pretrained tag, a local weight file, or 'none' (random init)."),
    dataset: str = typer.Option(None, help="Force a layout: a CoOp name (oxford_pets, dtd, ...) or imagefolder."),
    shots: int = typer.Option(16, help="Images per class drawn from the train split (0 = all)."),
    seed: int = typer.Option(1, help="Seed of the few-shot draw, description sampling and training."),
    splits_dir: Path = typer.Option(None, help="Where few-shot split JSON files live [DATA/split_fewshot]."),
    val_fraction: float = typer.Option(0.2, help="ImageFolder without val/: fraction carved for validation."),
    test_fraction: float = typer.Option(0.2, help="ImageFolder without split folders: fraction for test."),
    descriptions: Path = typer.Option(None, help="Class descriptions JSON {class: [sentence, ...]} (DGA, DVP-cls)."),
    des: Path = typer.Option(None, help="AttrVR DesAttr descriptions JSON."),
    dist: Path = typer.Option(None, help="AttrVR DistAttr descriptions JSON."),
    cause: list[Path] = typer.Option(None, help="DVP-cse: one descriptions JSON per cause (repeat; K = count)."),
    hierarchy_descriptions: Path = typer.Option(
        None, help="DGA: super-class descriptions JSON {group key: [sentence, ...]} for the hierarchy levels "
                   "(dga-describe --kind hierarchy); default: mean of the member classes' texts."),
    s0: int = typer.Option(192, help="Image side inside the 224 padding frame."),
    template: str = typer.Option("This is a photo of a {}.", help="Text template when no descriptions are given."),
    m: int = typer.Option(20, help="Descriptions sampled per class (per cause)."),
    min_chars: int = typer.Option(20, help="Descriptions shorter than this are dropped."),
    topk: int = typer.Option(3, help="AttrVR top-k mean / DVP PRM top-k."),
    alpha: float = typer.Option(0.5, help="AttrVR weight of DesAttr logits."),
    prompts: int = typer.Option(3, help="DVP-cls: number of k-means clusters (prompts)."),
    levels: int = typer.Option(2, help="DGA: hierarchy levels L."),
    level_sizes: str = typer.Option(None, help="DGA: explicit level sizes, finest first, e.g. '8,2'."),
    scales: int = typer.Option(2, help="DGA: crop scales E."),
    crop_step: int = typer.Option(32, help="DGA: crop side step Delta (S_e = S0 - Delta * e)."),
    crops: int = typer.Option(2, help="DGA: crops per scale J (1..5)."),
    h0: float = typer.Option(1.2, help="DGA: UPF entropy threshold in nats."),
    lam: float = typer.Option(0.7, help="DGA: weight lambda of the semantic branch."),
    hkp: bool = typer.Option(True, "--hkp/--no-hkp", help="DGA ablation: hierarchical knowledge propagation."),
    sg: bool = typer.Option(True, "--sg/--no-sg", help="DGA ablation: semantic-granularity branch."),
    upf: bool = typer.Option(True, "--upf/--no-upf", help="DGA ablation: entropy-weighted crop fusion."),
    vg: bool = typer.Option(True, "--vg/--no-vg", help="DGA ablation: visual-granularity (crop) branch."),
    epochs: int = typer.Option(200, help="Training epochs."),
    batch_size: int = typer.Option(64, help="Batch size."),
    lr: float = typer.Option(40.0, help="SGD learning rate (cosine-annealed every iteration)."),
    momentum: float = typer.Option(0.9, help="SGD momentum."),
    weight_decay: float = typer.Option(0.0, help="SGD weight decay."),
    crop_scale: float = typer.Option(0.08, help="Smallest area fraction of RandomResizedCrop (0.08 = torchvision)."),
    device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N."),
    workers: int = typer.Option(0, help="Data loader worker processes."),
    amp: bool = typer.Option(True, "--amp/--no-amp", help="Autocast (fp16) on CUDA."),
    micro_batch: int = typer.Option(None, help="Images per forward/backward pass; their gradients add up to one "
                                               "step of the whole batch (the same update) [whole batch]."),
    grad_checkpointing: bool = typer.Option(
        None, "--grad-checkpointing/--no-grad-checkpointing",
        help="Recompute each encoder block in the backward pass instead of keeping its activations (ViT "
             "backbones; less memory, more compute) [off, or chosen by --max-memory]."),
    max_memory: str = typer.Option(None, help="Memory budget of the training device, e.g. 12GB or 16GiB: "
                                              "--micro-batch and --grad-checkpointing, where not given, are "
                                              "chosen from an estimate (ViT backbones)."),
    resume: bool = typer.Option(False, help="Continue an interrupted run from OUT.work/."),
    plots: bool = typer.Option(True, "--plots/--no-plots", help="Write PNG plots into the bundle."),
) -> None:
    """Train a visual-reprogramming method on a frozen open_clip backbone; write a .dga bundle."""
    from dga.errors import ConfigError
    from dga.train.config import MethodConfig, TrainConfig
    from dga.train.memory import parse_memory_size
    from dga.train.run import TrainJob, run_training

    try:
        sizes = [int(s) for s in level_sizes.split(",")] if level_sizes else None
    except ValueError as exc:
        raise ConfigError(f"--level-sizes {level_sizes!r} must be comma-separated integers, e.g. 8,2") from exc
    roles = {"default": descriptions, "des": des, "dist": dist, "hierarchy": hierarchy_descriptions}
    roles.update({f"cause{i}": p for i, p in enumerate(cause or [])})
    job = TrainJob(
        data=data, out=out, method=method, backbone=backbone,
        pretrained=None if pretrained.lower() in ("none", "random", "") else pretrained,
        dataset=dataset, shots=shots or None, splits_dir=splits_dir, val_fraction=val_fraction,
        test_fraction=test_fraction, descriptions={r: p for r, p in roles.items() if p is not None},
        method_cfg=MethodConfig(s0=s0, template=template, m=m, min_chars=min_chars, topk=topk, alpha=alpha,
                                prompts=prompts, levels=levels, level_sizes=sizes, scales=scales,
                                crop_step=crop_step, crops=crops, h0=h0, lam=lam, hkp=hkp, sg=sg, upf=upf, vg=vg),
        train_cfg=TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, momentum=momentum,
                              weight_decay=weight_decay, seed=seed, workers=workers, device=device, amp=amp,
                              crop_scale=crop_scale, micro_batch=micro_batch, grad_checkpointing=grad_checkpointing,
                              max_memory=parse_memory_size(max_memory) if max_memory is not None else None),
        resume=resume, plots=plots,
    )
    path, result, training = run_training(job)
    acc = "n/a (no validation split)" if result.best_val_acc is None else f"{result.best_val_acc:.2f}%"
    typer.echo(f"wrote {path}  (best validation accuracy {acc} at epoch {result.best_epoch}, "
               f"{training['wall_time_s']:.1f}s)")


app = single_command(train, train.__doc__, EPILOG)


def main() -> None:
    run_app(app)


if __name__ == "__main__":
    main()
