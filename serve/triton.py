"""A Triton Inference Server model repository from a deployment package, and its offline validation.

    REPO/
      dga/            python backend: the project's runtime (Predictor, decode_bytes) inside Triton
        config.pbtxt  inputs image_bytes (TYPE_STRING [1]) or images (TYPE_UINT8 [S0, S0, 3])
        labels.txt
        1/model.py    imports dga.serve.backend from the environment Triton's python stub runs in
        1/package/    the deployment package, copied (the repository is self-contained)
      dga_onnx/       platform onnxruntime_onnx: 1/model.onnx (fp32, or fp16), for the official images
      dga_trt/        platform tensorrt_plan: 1/model.plan (only with engine=True)

Only the standard library, numpy and the runtime are imported; validation parses each config with
tritonclient's ModelConfig proto (imported when it runs) and reads the graphs' inputs and outputs
with onnxruntime.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from dga.errors import DgaError
from dga.runtime.engine_key import file_sha256
from dga.runtime.package import ENGINES_DIR, MANIFEST, ONNX_FILES, DeployPackage, external_data_name

PYTHON_MODEL = "dga"
ONNX_MODEL = "dga_onnx"
TRT_MODEL = "dga_trt"
LABELS = "labels.txt"
PACKAGE_DIR = "package"  # under PYTHON_MODEL/1/
BYTES_INPUT = "image_bytes"
OUTPUTS = ("logits", "probs")
KINDS = {"cpu": "KIND_CPU", "gpu": "KIND_GPU"}
PRECISIONS = ("fp32", "fp16")
HASH_PREFIX = "sha256:"  # parameters "sha256:<package file>" -> that file's sha256 in deploy.json
FILE_PREFIX = "file:"  # parameters "file:<path in the model dir>" -> the package file it is a copy of
ONNX_TYPES = {"tensor(uint8)": "TYPE_UINT8", "tensor(float)": "TYPE_FP32", "tensor(float16)": "TYPE_FP16",
              "tensor(string)": "TYPE_STRING"}

MODEL_PY = '''"""Triton python-backend model: the dga runtime (dga.serve.backend) over the package in ./package."""

from dga.serve.backend import TritonPythonModel  # noqa: F401  (dga comes from the environment Triton runs in)
'''


class RepositoryError(DgaError):
    """A Triton model repository cannot be written, or one on disk is not valid for its package."""


@dataclass(frozen=True)
class Options:
    """What the configs say beyond the package's own facts."""

    precision: str = "fp32"  # graph copied into dga_onnx (and run by the python model)
    kind: str = "cpu"  # instance_group kind: cpu | gpu
    instances: int = 1  # instances of each model
    max_batch: int | None = None  # max_batch_size (None: the package's batch profile maximum)
    preferred_batch: tuple[int, ...] = ()  # dynamic_batching preferred_batch_size (default: the profile's opt)
    max_queue_delay_us: int = 2000  # dynamic_batching max_queue_delay_microseconds
    engine: bool = False  # also write dga_trt from the package's TensorRT engine for this GPU
    models: tuple[str, ...] = (PYTHON_MODEL, ONNX_MODEL)  # which models to write (TRT_MODEL added by engine)


@dataclass
class Summary:
    repository: Path
    models: dict[str, str] = field(default_factory=dict)  # name -> platform/backend
    validated: bool = False
    note: str = ""

    def lines(self) -> list[str]:
        out = [f"{name}: {kind}" for name, kind in self.models.items()]
        out.append(f"{self.repository}: {len(self.models)} models, "
                   + ("every config valid" if self.validated else f"not validated ({self.note})"))
        return out


# -- writing ---------------------------------------------------------------------------------------

def _q(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)  # a protobuf text-format string literal (UTF-8, double quotes)


def _dims(dims) -> str:
    return "[ " + ", ".join(str(int(d)) for d in dims) + " ]"


def _tensor(name: str, dtype: str, dims, extra: str = "") -> str:
    return f"  {{ name: {_q(name)} data_type: {dtype} dims: {_dims(dims)}{extra} }}"


def _params(params: dict[str, str]) -> str:
    return "".join(f"parameters {{ key: {_q(k)} value {{ string_value: {_q(v)} }} }}\n" for k, v in params.items())


def render_config(name: str, head: str, max_batch: int, inputs: list[str], outputs: list[str], opts: Options,
                  preferred: list[int], params: dict[str, str], warmup_input: tuple[str, str, list[int]]) -> str:
    wname, wtype, wdims = warmup_input
    return (
        f"name: {_q(name)}\n{head}\n"
        f"max_batch_size: {max_batch}\n"
        "input [\n" + ",\n".join(inputs) + "\n]\n"
        "output [\n" + ",\n".join(outputs) + "\n]\n"
        f"dynamic_batching {{\n  preferred_batch_size: {_dims(preferred)}\n"
        f"  max_queue_delay_microseconds: {opts.max_queue_delay_us}\n}}\n"
        f"instance_group [ {{ count: {opts.instances} kind: {KINDS[opts.kind]} }} ]\n"
        "model_warmup [ {\n  name: \"zero_batch\"\n  batch_size: 1\n"
        f"  inputs {{ key: {_q(wname)} value {{ data_type: {wtype} dims: {_dims(wdims)} zero_data: true }} }}\n}} ]\n"
        + _params(params)
    )


def _check_options(pkg: DeployPackage, opts: Options) -> tuple[int, list[int]]:
    if opts.kind not in KINDS:
        raise RepositoryError(f"instance kind {opts.kind!r} must be one of {', '.join(KINDS)}")
    if opts.precision not in PRECISIONS or opts.precision not in pkg.precisions():
        raise RepositoryError(f"{pkg.path} has no {opts.precision} graph (it has {', '.join(pkg.precisions())})")
    if opts.instances < 1:
        raise RepositoryError(f"--instances must be at least 1, got {opts.instances}")
    if opts.max_queue_delay_us < 0:
        raise RepositoryError(f"the queue delay must not be negative, got {opts.max_queue_delay_us}")
    if any("\n" in name or "\r" in name for name in pkg.classnames):
        raise RepositoryError(f"{pkg.path}: a class name holds a line break, which Triton's labels file cannot hold")
    max_batch = pkg.max_batch if opts.max_batch is None else opts.max_batch
    if not 1 <= max_batch <= pkg.max_batch:
        raise RepositoryError(f"max batch {max_batch} must be between 1 and the package's batch maximum "
                              f"{pkg.max_batch}")
    preferred = sorted(set(opts.preferred_batch)) or [min(int(pkg.facts["batch"].get("opt", max_batch)), max_batch)]
    bad = [b for b in preferred if not 1 <= b <= max_batch]
    if bad:
        raise RepositoryError(f"preferred batch size {bad[0]} must be between 1 and the max batch {max_batch}")
    unknown = set(opts.models) - {PYTHON_MODEL, ONNX_MODEL}
    if unknown or not opts.models:
        raise RepositoryError(f"models must be among {PYTHON_MODEL}, {ONNX_MODEL}")
    return max_batch, preferred


def package_hashes(pkg: DeployPackage) -> dict[str, str]:
    return {HASH_PREFIX + name: rec["sha256"] for name, rec in sorted(pkg.facts["files"].items())}


def io_tensors(pkg: DeployPackage) -> tuple[list[str], list[str]]:
    s0, c = pkg.s0, len(pkg.classnames)
    inputs = [_tensor(pkg.input_name, "TYPE_UINT8", [s0, s0, 3])]
    outputs = [_tensor(name, "TYPE_FP32", [c], f" label_filename: {_q(LABELS)}" if name == "probs" else "")
               for name in pkg.output_names]
    return inputs, outputs


def gpu_engine(pkg: DeployPackage, precision: str) -> tuple[str, int]:
    """The package's TensorRT plan for this GPU and TensorRT version: (path, its profile's max batch)."""
    from dga.runtime.backends import tensorrt_importable
    from dga.runtime.backends.tensorrt import find_engine

    if not tensorrt_importable():
        raise RepositoryError("--engine needs TensorRT on this host (pip install 'dga[tensorrt]') to tell which "
                              "engine of the package fits its GPU")
    import tensorrt as trt

    name, capability = _gpu_name()
    key, plan = find_engine(pkg, precision, trt.__version__, name, capability)
    return plan, key.profile.max_batch


def _gpu_name() -> tuple[str, str]:
    """(name, compute capability) of GPU 0, from torch when it is installed, else from nvidia-smi."""
    try:
        import torch

        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            return props.name, f"{props.major}.{props.minor}"
    except ImportError:
        pass
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,compute_cap", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30, check=True).stdout
        name, cap = (part.strip() for part in out.splitlines()[0].split(","))
        return name, cap
    except (OSError, subprocess.SubprocessError, ValueError, IndexError) as exc:
        raise RepositoryError(f"--engine needs an NVIDIA GPU to match the package's engines against ({exc})") from exc


def _copy_package(pkg: DeployPackage, dest: Path) -> None:
    """The package's listed files (and its engines) into ``dest``; every file checked against deploy.json."""
    pkg.check_files()
    dest.mkdir(parents=True)
    shutil.copy2(pkg.path / MANIFEST, dest / MANIFEST)
    for name in pkg.facts["files"]:
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(pkg.path / name, dest / name)
    if (pkg.path / ENGINES_DIR).is_dir():
        shutil.copytree(pkg.path / ENGINES_DIR, dest / ENGINES_DIR)


def write_repository(package: str | Path, out: str | Path, opts: Options | None = None, overwrite: bool = False,
                     validate: bool = True) -> Summary:
    """Write the repository for ``package`` to ``out`` (built in a temporary directory beside it, then
    renamed into place) and, when tritonclient is importable and ``validate`` is on, validate it."""
    opts = opts or Options()
    pkg = DeployPackage.load(package)
    max_batch, preferred = _check_options(pkg, opts)
    out = Path(out)
    if out.exists() and not overwrite:
        raise RepositoryError(f"{out} already exists: pass --overwrite to replace it, or choose another --out")
    plan = None
    if opts.engine:
        plan, plan_max = gpu_engine(pkg, opts.precision)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        summary = Summary(out)
        labels = "".join(name + "\n" for name in pkg.classnames)
        hashes = package_hashes(pkg)
        inputs, outputs = io_tensors(pkg)
        s0 = pkg.s0
        image_warmup = (pkg.input_name, "TYPE_UINT8", [s0, s0, 3])
        onnx_name = ONNX_FILES[opts.precision]
        if ONNX_MODEL in opts.models:
            d = tmp / ONNX_MODEL
            (d / "1").mkdir(parents=True)
            shutil.copy2(pkg.onnx_path(opts.precision), d / "1" / "model.onnx")
            files = {FILE_PREFIX + "1/model.onnx": onnx_name}
            data = external_data_name(onnx_name)
            if data in pkg.facts["files"]:  # the graph names its data file: keep that name beside it
                shutil.copy2(pkg.path / data, d / "1" / data)
                files[FILE_PREFIX + "1/" + data] = data
            (d / LABELS).write_text(labels)
            (d / "config.pbtxt").write_text(render_config(
                ONNX_MODEL, 'platform: "onnxruntime_onnx"', max_batch, inputs, outputs, opts, preferred,
                {**files, **hashes}, image_warmup))
            summary.models[ONNX_MODEL] = "onnxruntime_onnx"
        if plan is not None:
            d = tmp / TRT_MODEL
            (d / "1").mkdir(parents=True)
            shutil.copy2(plan, d / "1" / "model.plan")
            plan_rel = Path(plan).relative_to(pkg.path).as_posix()
            trt_max = min(max_batch, plan_max)
            trt_opts = Options(**{**opts.__dict__, "kind": "gpu"})
            (d / LABELS).write_text(labels)
            (d / "config.pbtxt").write_text(render_config(
                TRT_MODEL, 'platform: "tensorrt_plan"', trt_max, inputs, outputs, trt_opts,
                [b for b in preferred if b <= trt_max] or [trt_max],
                {FILE_PREFIX + "1/model.plan": plan_rel, HASH_PREFIX + plan_rel: file_sha256(Path(plan)), **hashes},
                image_warmup))
            summary.models[TRT_MODEL] = "tensorrt_plan"
        if PYTHON_MODEL in opts.models:
            d = tmp / PYTHON_MODEL
            (d / "1").mkdir(parents=True)
            (d / "1" / "model.py").write_text(MODEL_PY)
            _copy_package(pkg, d / "1" / PACKAGE_DIR)
            (d / LABELS).write_text(labels)
            py_inputs = [_tensor(BYTES_INPUT, "TYPE_STRING", [1], " optional: true"),
                         inputs[0][:-2] + " optional: true }"]
            params = {"package": f"1/{PACKAGE_DIR}", "precision": opts.precision, **hashes}
            (d / "config.pbtxt").write_text(render_config(
                PYTHON_MODEL, 'backend: "python"', max_batch, py_inputs, outputs, opts, preferred, params,
                image_warmup))
            summary.models[PYTHON_MODEL] = "python"
        if validate:
            try:
                check_repository(tmp, hash_files=False)  # the copies were hashed as they were made
                summary.validated = True
            except RepositoryError as exc:  # name the directory the user asked for, not the temporary one
                raise RepositoryError(str(exc).replace(str(tmp), str(out))) from exc
            except ModuleNotFoundError as exc:
                summary.note = f"{exc.name} is not installed: pip install 'dga[serve]', then dga-triton --check"
        else:
            summary.note = "validation off"
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary


# -- validation ------------------------------------------------------------------------------------

def parse_config(path: Path):
    """config.pbtxt -> tritonclient's ModelConfig message, or a RepositoryError naming the field."""
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ModuleNotFoundError as exc:  # protobuf comes with tritonclient: name the package of the extra
        raise ModuleNotFoundError(f"No module named 'tritonclient' ({exc})", name="tritonclient") from exc

    try:
        return text_format.Parse(path.read_text(encoding="utf-8"), model_config_pb2.ModelConfig())
    except text_format.ParseError as exc:
        raise RepositoryError(f"{path}: {exc}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise RepositoryError(f"{path} cannot be read ({exc})") from exc


def _graph_io(onnx_path: Path) -> tuple[dict, dict]:
    """{name: (TYPE_*, dims after the batch dim)} of a graph's inputs and outputs, from onnxruntime."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise RepositoryError(f"{onnx_path} is not a graph onnxruntime can load ({str(exc).splitlines()[0]})") from exc

    def table(args) -> dict:
        return {a.name: (ONNX_TYPES.get(a.type, a.type), [d if isinstance(d, int) else -1 for d in a.shape[1:]])
                for a in args}

    return table(sess.get_inputs()), table(sess.get_outputs())


def _package_io(pkg: DeployPackage) -> tuple[dict, dict]:
    s0, c = pkg.s0, len(pkg.classnames)
    return ({pkg.input_name: ("TYPE_UINT8", [s0, s0, 3])}, {name: ("TYPE_FP32", [c]) for name in pkg.output_names})


def _check_io(where: Path, kind: str, tensors, expected: dict, skip: tuple[str, ...] = ()) -> None:
    from tritonclient.grpc import model_config_pb2

    names = {t.name for t in tensors}
    for name in expected:
        if name not in names:
            raise RepositoryError(f"{where}: {kind} '{name}' of the graph is missing")
    for t in tensors:
        if t.name in skip:
            continue
        if t.name not in expected:
            raise RepositoryError(f"{where}: {kind} '{t.name}' is not a {kind} of the graph "
                                  f"(it has {', '.join(expected)})")
        dtype, dims = expected[t.name]
        got = model_config_pb2.DataType.Name(t.data_type)
        if got != dtype:
            raise RepositoryError(f"{where}: {kind} '{t.name}' data_type is {got}; the graph's is {dtype}")
        if list(t.dims) != dims:
            raise RepositoryError(f"{where}: {kind} '{t.name}' dims are {list(t.dims)}; the graph's are {dims}")


def _check_hash(where: Path, file: Path, expected: str | None, field_name: str) -> None:
    if not file.is_file():
        raise RepositoryError(f"{where}: {field_name}: {file} is missing")
    if expected is None:
        raise RepositoryError(f"{where}: parameters lack the sha256 of {file.name}")
    if file_sha256(file) != expected:
        raise RepositoryError(f"{where}: {file} does not match the sha256 in its parameters ({field_name})")


def check_model(model_dir: Path, hash_files: bool = True) -> str:
    """Validate one model directory; returns its platform/backend. Raises RepositoryError."""
    where = model_dir / "config.pbtxt"
    if not where.is_file():
        raise RepositoryError(f"{model_dir} has no config.pbtxt")
    cfg = parse_config(where)
    params = {k: v.string_value for k, v in cfg.parameters.items()}
    kind = cfg.backend or cfg.platform
    if cfg.name and cfg.name != model_dir.name:
        raise RepositoryError(f"{where}: name '{cfg.name}' differs from its directory '{model_dir.name}'")
    if kind == "python":
        pkg_dir = model_dir / params.get("package", "")  # relative to the model directory
        if "package" not in params or not (pkg_dir / MANIFEST).is_file():
            raise RepositoryError(f"{where}: parameters 'package' must name the package copied into the model "
                                  f"directory ({pkg_dir / MANIFEST} is missing)")
        if not (model_dir / "1" / "model.py").is_file():
            raise RepositoryError(f"{where}: backend python: {model_dir / '1' / 'model.py'} is missing")
        pkg = DeployPackage.load(pkg_dir)
        for name, rec in pkg.facts["files"].items():
            if params.get(HASH_PREFIX + name) != rec["sha256"]:
                raise RepositoryError(f"{where}: parameters '{HASH_PREFIX + name}' differs from {pkg_dir / MANIFEST}")
            if hash_files:
                _check_hash(where, pkg_dir / name, rec["sha256"], "parameters 'package'")
        precision = params.get("precision", "fp32")
        if precision not in pkg.precisions():
            raise RepositoryError(f"{where}: parameters 'precision' {precision!r}: the package has "
                                  f"{', '.join(pkg.precisions())}")
        graph_in, graph_out = _graph_io(pkg.onnx_path(precision, check_hash=False))
        by_name = {t.name: t for t in cfg.input}
        if BYTES_INPUT not in by_name:
            raise RepositoryError(f"{where}: input '{BYTES_INPUT}' is missing")
        b = by_name[BYTES_INPUT]
        from tritonclient.grpc import model_config_pb2

        if b.data_type != model_config_pb2.TYPE_STRING or list(b.dims) != [1] or not b.optional:
            raise RepositoryError(f"{where}: input '{BYTES_INPUT}' must be optional TYPE_STRING dims [ 1 ]")
        if not all(t.optional for t in cfg.input):
            raise RepositoryError(f"{where}: every input of the python model must be optional (a request gives one)")
        _check_io(where, "input", cfg.input, graph_in, skip=(BYTES_INPUT,))
    elif kind == "onnxruntime_onnx":
        file = model_dir / "1" / (cfg.default_model_filename or "model.onnx")
        files = {k[len(FILE_PREFIX):]: v for k, v in params.items() if k.startswith(FILE_PREFIX)}
        if "1/model.onnx" not in files:
            raise RepositoryError(f"{where}: parameters lack '{FILE_PREFIX}1/model.onnx'")
        for rel, pkg_name in files.items():
            if hash_files or not (model_dir / rel).is_file():
                _check_hash(where, model_dir / rel, params.get(HASH_PREFIX + pkg_name),
                            f"parameters '{FILE_PREFIX}{rel}'")
        graph_in, graph_out = _graph_io(file)
        _check_io(where, "input", cfg.input, graph_in)
        pkg = None
    elif kind == "tensorrt_plan":
        plan = model_dir / "1" / (cfg.default_model_filename or "model.plan")
        pkg_name = params.get(FILE_PREFIX + "1/model.plan")
        if pkg_name is None:
            raise RepositoryError(f"{where}: parameters lack '{FILE_PREFIX}1/model.plan'")
        if hash_files or not plan.is_file():
            _check_hash(where, plan, params.get(HASH_PREFIX + pkg_name), f"parameters '{FILE_PREFIX}1/model.plan'")
        graph_in, graph_out = None, None  # a plan is read by TensorRT only: checked against the labels below
        pkg = None
    else:
        raise RepositoryError(f"{where}: backend/platform {kind!r} is not one dga-triton writes")
    if graph_out is not None:
        _check_io(where, "output", cfg.output, graph_out)
    if cfg.max_batch_size < 1:
        raise RepositoryError(f"{where}: max_batch_size must be at least 1 (the graphs take a batch dimension)")
    if pkg is not None and cfg.max_batch_size > pkg.max_batch:
        raise RepositoryError(f"{where}: max_batch_size {cfg.max_batch_size} is above the package's batch maximum "
                              f"{pkg.max_batch}")
    for b in cfg.dynamic_batching.preferred_batch_size:
        if not 1 <= b <= cfg.max_batch_size:
            raise RepositoryError(f"{where}: dynamic_batching preferred_batch_size {b} is outside 1..max_batch_size")
    for w in cfg.model_warmup:
        if not 1 <= w.batch_size <= cfg.max_batch_size:
            raise RepositoryError(f"{where}: model_warmup '{w.name}' batch_size {w.batch_size} is outside "
                                  f"1..max_batch_size")
    for out in cfg.output:
        if out.label_filename:
            labels = model_dir / out.label_filename
            if not labels.is_file():
                raise RepositoryError(f"{where}: output '{out.name}' label_filename: {labels} is missing")
            n = len(labels.read_text(encoding="utf-8").splitlines())
            if list(out.dims) != [n]:
                raise RepositoryError(f"{where}: output '{out.name}' label_filename {out.label_filename} has {n} "
                                      f"labels for dims {list(out.dims)}")
    if not any(o.label_filename for o in cfg.output):
        raise RepositoryError(f"{where}: no output names a label_filename")
    return kind


def check_repository(repo: str | Path, hash_files: bool = True) -> Summary:
    """Validate every model of a repository dga-triton wrote (first problem raised as RepositoryError)."""
    repo = Path(repo)
    if not repo.is_dir():
        raise RepositoryError(f"no model repository at {repo}")
    models = sorted(p for p in repo.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not models:
        raise RepositoryError(f"{repo} holds no model directories")
    summary = Summary(repo)
    for model_dir in models:
        summary.models[model_dir.name] = check_model(model_dir, hash_files)
    summary.validated = True
    return summary
