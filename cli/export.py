"""dga-export: bake a model bundle into one fused ONNX graph (fp32 + fp16) and a TensorRT engine."""

from __future__ import annotations

from pathlib import Path

import typer

from dga.cli.common import epilog, run_app, single_command

EPILOG = epilog([
    'dga-export --ckpt pets.dga --out pets.deploy',
    'dga-export --ckpt pets.dga --out pets.deploy --max-batch 256 --opt-batch 64 --engine',
    'dga-export --ckpt pets.dga --out pets-fast.deploy --views no-crops --eval-data data/pets',
    'dga-export --ckpt pets.dga --out pets.deploy --int8 dynamic --eval-data data/pets   # + CPU int8 graph',
], 'The package holds model.onnx (fp32), model.fp16.onnx (unless --precision fp32), model.int8.onnx (with '
   '--int8), deploy.json and, with --engine on a host with TensorRT and an NVIDIA GPU, engines/<key>.plan.')


def export(
    ckpt: Path = typer.Option(..., "--ckpt", help="Model bundle directory written by dga-train."),
    out: Path = typer.Option(..., "--out", "-o", help="Deployment package directory to write, e.g. run.deploy."),
    precision: str = typer.Option("fp16", help="fp16: write model.onnx and model.fp16.onnx, engine from fp16; "
                                               "fp32: model.onnx only, engine from it."),
    max_batch: int = typer.Option(256, help="Largest batch the package is built and checked for."),
    opt_batch: int = typer.Option(64, help="Batch size TensorRT optimises for."),
    engine: bool = typer.Option(False, "--engine", help="Also build a TensorRT engine (needs TensorRT and a GPU)."),
    workspace_gib: float = typer.Option(4.0, help="TensorRT builder workspace limit in GiB."),
    verify: bool = typer.Option(True, "--verify/--no-verify", help="Self-check ONNX Runtime against torch."),
    verify_batches: str = typer.Option("1,7,64", help="Batch sizes of the self-check (capped at --max-batch)."),
    verify_images: Path = typer.Option(None, help="Folder of real images for the self-check [generated]."),
    views: str = typer.Option("all", help="all | no-crops (DGA without the VG crop views: faster)."),
    eval_data: Path = typer.Option(None, help="Labelled dataset: measure and record top-1 accuracy of the torch "
                                              "module and each graph (e.g. to weigh --views no-crops)."),
    eval_split: str = typer.Option("test", help="Split of --eval-data to measure on."),
    opset: int = typer.Option(18, help="ONNX opset (17 or newer)."),
    int8: str = typer.Option(None, "--int8", metavar="dynamic|static",
                             help="Also write model.int8.onnx for CPUs, the encoder's MatMul/Gemm quantized: dynamic "
                                  "(int8 weights; the faster one on CPUs without VNNI) or static (QDQ, calibrated)."),
    int8_agreement: float = typer.Option(None, help="Keep the int8 graph only if its top-1 agreement with the fp32 "
                                                    "torch module on the self-check and golden images is at least "
                                                    "this percentage [99]."),
    calib_images: Path = typer.Option(None, help="Folder of real images calibrating --int8 static (first 64) "
                                                 "[the self-check images]."),
) -> None:
    """Export a bundle to a deployment package and check that it reproduces the trained model."""
    from dga.errors import ConfigError
    from dga.export.package import ExportOptions
    from dga.export.workflow import export_bundle

    try:
        batches = [int(b) for b in verify_batches.split(",")]
    except ValueError as exc:
        raise ConfigError(f"--verify-batches {verify_batches!r} must be comma-separated integers") from exc
    if int8 is None and int8_agreement is not None:
        raise ConfigError("--int8-agreement is the gate of --int8: give --int8 dynamic or --int8 static with it")
    opts = ExportOptions(precision=precision, max_batch=max_batch, opt_batch=opt_batch, verify=verify,
                         verify_batches=batches, views=views, opset=opset, eval_data=eval_data,
                         eval_split=eval_split, int8=int8)
    if int8_agreement is not None:
        opts.int8_agreement = int8_agreement
    export_bundle(ckpt, out, opts, verify_images=verify_images, engine=engine, workspace_gib=workspace_gib,
                  calib_images=calib_images, log=typer.echo)


app = single_command(export, export.__doc__, EPILOG)


def main() -> None:
    run_app(app)


if __name__ == "__main__":
    main()
