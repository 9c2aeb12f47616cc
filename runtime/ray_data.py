"""dga-infer on Ray Data: the same package, columns, errors and resume, over a local Ray or a cluster.

    from dga.runtime.ray_data import infer_to_parquet
    run = infer_to_parquet("photos/", "run.deploy", "preds/", resume=True)   # a local Ray
    run = infer_to_parquet("/shared/photos", "/shared/run.deploy", "/shared/preds",
                           address="auto", actors=16)   # on a node of an existing cluster
    print(run.line())

The pipeline is ``ray.data.read_binary_files(paths, include_paths=True)`` -> ``map_batches
(BatchPredictor, compute=ActorPoolStrategy(size=N))`` -> ``write_parquet(out_dir)``; the paths are
``listing.scan_inputs(inputs).files``, the candidates of the local executor (its skipped files are
counted as there). ``BatchPredictor`` holds
one ``Predictor`` per actor (the package is loaded once, in ``__init__``), decodes each row with
``decode.decode_bytes`` and returns the rows of the local executor's CSV (``path``, ``label_i``,
``prob_i``, level columns) plus ``error`` (the reason code, "" for a good row) and ``message``.

Decisions:

* **No exception leaves a batch.** Ray fails the whole job on an exception in ``map_batches`` and
  ``DataContext.max_errored_blocks`` would drop whole blocks without a record, so every decode
  failure becomes a row with its reason code. Files Ray's reader could not even open (a dangling
  link, no read permission, a non-UTF-8 name Parquet cannot hold) are found in the driver before
  the job starts and written as error rows of their own part.
* **Resume is ours.** Ray's checkpointing is not used: with ``resume=True`` the ``path`` column
  of the Parquet files already in ``out_dir`` says what is done (good rows and error rows alike,
  as the local executor skips paths in its errors file), only the rest is read, and each run
  writes new part files next to the old ones, never rewriting one. A part a killed run left
  unreadable is renamed ``_<name>.broken`` (a leading ``_`` hides it from Parquet readers of the
  folder) and its files are predicted again. Without
  ``resume`` an ``out_dir`` that already holds parts is refused.
* **Resources.** Each actor takes ``cpus_per_actor`` CPUs (and ``gpus_per_actor`` GPUs): the pool
  must leave at least one CPU free, otherwise the read task never gets a CPU and the job waits
  forever; that is checked before the job starts and refused in one line.
* **Ray's own lifecycle.** When Ray is already initialised in this process (``ray.init`` by the
  caller), it is used as it is and left running. Otherwise ``infer_to_parquet`` connects to
  ``address`` (a cluster, whose settings are its own) or starts a local Ray with usage statistics
  off and no dashboard, in both cases with the workers' logs kept out of the driver's output, and
  disconnects or shuts it down when done. A local Ray's temp folder is made fresh under the
  system temp folder and removed afterwards.
* **Paths.** Ray reads absolute paths (its workers do not share the driver's working folder); the
  ``path`` column holds the strings of the listing, as the local executor writes them.

Ray, pyarrow and pandas are imported lazily: they come with the ``[ray]`` extra.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dga.errors import ConfigError

READ_CPUS = 1.0  # what one read (and write) task of Ray Data asks for
DRIVER_PART = "dga-unreadable-{run}.parquet"  # error rows found before the job started


# --- the rows --------------------------------------------------------------------------------


def output_columns(topk: int, level_names: list[str]) -> list[str]:
    """``path, label_1, prob_1, ..., label_k, prob_k, <levels>, error, message``."""
    cols = ["path"]
    for i in range(1, topk + 1):
        cols += [f"label_{i}", f"prob_{i}"]
    return cols + list(level_names) + ["error", "message"]


def output_schema(topk: int, level_names: list[str]):
    """The Arrow schema of every part: labels/probs/levels are null on error rows."""
    import pyarrow as pa

    fields = [pa.field("path", pa.string(), nullable=False)]
    for i in range(1, topk + 1):
        fields += [pa.field(f"label_{i}", pa.string()), pa.field(f"prob_{i}", pa.float32())]
    fields += [pa.field(name, pa.int32()) for name in level_names]
    fields += [pa.field("error", pa.string(), nullable=False), pa.field("message", pa.string(), nullable=False)]
    return pa.schema(fields)


def parquet_path(path: str) -> str:
    """The ``path`` column's string for a listed path: itself, unless it is not valid UTF-8 (Parquet
    strings must be), then with U+FFFD for the bytes that are not."""
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        return path.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _table(rows: dict[str, list], topk: int, level_names: list[str]):
    import pyarrow as pa

    schema = output_schema(topk, level_names)
    return pa.table({name: pa.array(rows[name], type=schema.field(name).type) for name in schema.names},
                    schema=schema)


def _empty_rows(topk: int, level_names: list[str]) -> dict[str, list]:
    return {name: [] for name in output_columns(topk, level_names)}


def _add_error(rows: dict[str, list], path: str, reason: str, message: str) -> None:
    for name in rows:
        rows[name].append(None)
    rows["path"][-1], rows["error"][-1], rows["message"][-1] = path, reason, message


class BatchPredictor:
    """A callable class for ``Dataset.map_batches``: one ``Predictor`` per actor.

    ``batch`` has the columns of ``read_binary_files(..., include_paths=True)``: ``bytes`` (the
    encoded files) and ``path``. ``roots`` maps an absolute path prefix back to the string the
    listing gave (``{"/home/me/photos": "photos"}``) so the ``path`` column reads like the local
    executor's. Returns a ``pyarrow.Table`` with ``output_schema``'s columns, one row per input row.
    """

    def __init__(self, package: str | os.PathLike[str], backend: str = "auto", precision: str = "auto",
                 topk: int = 5, batch_size: int = 64, threads: int | None = None, draft: bool = True,
                 roots: dict[str, str] | None = None):
        from dga.runtime.predictor import Predictor

        self.predictor = Predictor.from_package(package, backend=backend, precision=precision, topk=topk,
                                                batch_size=batch_size, threads=threads, draft=draft)
        self.topk = self.predictor.topk_k
        self.level_names = self.predictor.package.level_names()
        self.draft = draft
        self.roots = sorted((roots or {}).items(), key=lambda kv: -len(kv[0]))  # the longest prefix first

    def _given(self, path: str) -> str:
        for absolute, given in self.roots:
            if path == absolute:
                return given
            prefix = absolute.rstrip("/") + "/"
            if path.startswith(prefix):
                rel = path[len(prefix):]
                return rel if given in ("", ".") else os.path.join(given, rel)
        return path

    def __call__(self, batch) -> object:
        from dga.runtime.decode import DecodeError, decode_bytes

        paths = [self._given(str(p)) for p in batch["path"]]
        data = batch["bytes"]
        s0 = self.predictor.package.s0
        images, good, errors = [], [], {}
        for i, (path, blob) in enumerate(zip(paths, data, strict=True)):
            try:
                images.append(decode_bytes(bytes(blob), s0, draft=self.draft, name=path))
                good.append(i)
            except DecodeError as exc:
                errors[i] = exc
            except Exception as exc:  # noqa: BLE001 - one bad file must never fail the job
                errors[i] = DecodeError("corrupt", f"{path} could not be decoded ({type(exc).__name__}: {exc}).")
        names = self.predictor.classnames
        probs = self.predictor.run(np.stack(images))[1] if images else np.zeros((0, len(names)), np.float32)
        top = np.argsort(-probs, axis=1, kind="stable")[:, :self.topk]  # as Predictor.iter_results
        rows = _empty_rows(self.topk, self.level_names)
        row_of = {i: n for n, i in enumerate(good)}
        for i, path in enumerate(paths):
            if i in errors:
                _add_error(rows, path, errors[i].reason, errors[i].message)
                continue
            n = row_of[i]
            rows["path"].append(path)
            for k, j in enumerate(top[n], start=1):
                rows[f"label_{k}"].append(names[j])
                rows[f"prob_{k}"].append(float(probs[n, j]))
            for name, level in zip(self.level_names, self.predictor.package.levels_of(int(top[n][0])), strict=True):
                rows[name].append(int(level))
            rows["error"].append("")
            rows["message"].append("")
        return _table(rows, self.topk, self.level_names)


# --- resume ----------------------------------------------------------------------------------


def part_files(out_dir: Path) -> list[Path]:
    return sorted(p for p in out_dir.glob("*.parquet") if p.is_file() and not p.name.startswith(("_", ".")))


def read_done(out_dir: Path, log=None) -> tuple[set[str], set[str]]:
    """(paths with a prediction, paths with an error) in the parts of ``out_dir``. A part that
    cannot be read (a killed run's partial file) is renamed ``_<name>.broken``; its files are redone."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    done, failed = set(), set()
    for part in part_files(out_dir):
        try:
            table = pq.read_table(part, columns=["path", "error"])
        except (OSError, pa.ArrowException) as exc:
            broken = part.with_name(f"_{part.name}.broken")
            part.rename(broken)
            if log:
                log(f"warning: {part} cannot be read ({exc}); renamed to {broken.name}, its files are predicted again")
            continue
        for path, error in zip(table.column("path").to_pylist(), table.column("error").to_pylist(), strict=True):
            (failed if error else done).add(path)
    return done, failed - done


# --- what the driver checks --------------------------------------------------------------------


def unreadable(path: str):
    """The ``DecodeError`` the local executor would report for a file Ray's reader cannot open
    (missing, not a regular file, no read permission), or None when it can be read."""
    from dga.runtime.decode import DecodeError, _open_path

    try:
        st = os.stat(path)
        if stat.S_ISREG(st.st_mode) and os.access(path, os.R_OK):
            return None
    except OSError:
        pass
    try:
        _open_path(path, path).close()
    except DecodeError as exc:
        return exc
    return None


@dataclass
class Resources:
    actors: int
    cpus_per_actor: float
    gpus_per_actor: float
    threads: int | None


def plan_resources(total_cpus: float, total_gpus: float, actors: int | None, cpus_per_actor: float | None,
                   gpus_per_actor: float | None, threads: int | None) -> Resources:
    """The actor pool for a cluster of ``total_cpus`` / ``total_gpus``; ConfigError (one line) when
    it cannot leave a CPU for the read and write tasks or asks for more GPUs than there are."""
    cpa = 1.0 if cpus_per_actor is None else float(cpus_per_actor)
    gpa = 0.0 if gpus_per_actor is None else float(gpus_per_actor)
    if cpa <= 0 or gpa < 0 or (actors is not None and actors < 1):
        raise ConfigError("--ray-actors must be at least 1, --ray-cpus-per-actor above 0 and "
                          "--ray-gpus-per-actor 0 or more")
    spare = total_cpus - READ_CPUS
    fit = int(spare // cpa) if spare > 0 else 0
    if gpa > 0 and total_gpus != float("inf"):  # inf: not known yet (before a local Ray starts)
        fit = min(fit, int(total_gpus // gpa))
    if fit < 1 or (actors is not None and actors > fit):
        n = actors or 1
        gpus = f" and {total_gpus:g} GPUs" if gpa > 0 else ""
        each = f"{cpa:g} CPU" + (f" + {gpa:g} GPU" if gpa > 0 else "")
        need = f"{n * cpa + READ_CPUS:g} CPUs ({READ_CPUS:g} for reading files)" + (
            f" and {n * gpa:g} GPUs" if gpa > 0 else "")
        advice = (f"use --ray-actors {fit} or fewer" if fit >= 1 else
                  "lower --ray-cpus-per-actor / --ray-gpus-per-actor, or use a bigger cluster")
        raise ConfigError(f"the Ray cluster has {total_cpus:g} CPUs{gpus}: {n} actor(s) of {each} each need "
                          f"{need}; {advice}")
    n = actors or fit
    return Resources(n, cpa, gpa, threads if threads is not None else max(1, int(cpa)))


def temp_base() -> str:
    """Where a local Ray's temp folder goes: its unix sockets must stay under ~100 characters."""
    base = tempfile.gettempdir()
    return base if len(base) <= 40 else "/tmp"


# --- the run ----------------------------------------------------------------------------------


@dataclass
class RayRun:
    """What ``infer_to_parquet`` did."""

    ok: int  # this call's good rows
    failed: int  # this call's error rows
    wall_s: float
    out: Path
    parts: list[Path] = field(default_factory=list)  # the part files this call wrote
    skipped: int = 0  # listed files an earlier run already wrote (resume)
    failed_earlier: int = 0  # of those, the ones it wrote as errors
    actors: int = 0
    batch_size: int = 0
    skipped_files: list = field(default_factory=list)  # listing.SkippedFile: files of the walk that are not images

    @property
    def all_ok(self) -> bool:
        return not (self.failed or self.failed_earlier)

    @property
    def images_per_s(self) -> float:
        return self.ok / self.wall_s if self.wall_s > 0 else 0.0

    def to_json(self) -> dict:
        return {"images_ok": self.ok, "images_failed": self.failed, "wall_s": round(self.wall_s, 3),
                "images_per_s": round(self.images_per_s, 2), "executor": "ray", "actors": self.actors,
                "batch_size": self.batch_size, "out": str(self.out), "parts": [p.name for p in self.parts],
                "skipped": self.skipped, "failed_earlier": self.failed_earlier,
                "files_skipped": len(self.skipped_files)}

    def line(self) -> str:
        earlier = f", {self.failed_earlier} of them failed" if self.failed_earlier else ""
        skipped = f"; {self.skipped} already in {self.out} skipped{earlier}" if self.skipped else ""
        return (f"{self.ok} images ok, {self.failed} failed, {len(self.skipped_files)} non-image files skipped in "
                f"{self.wall_s:.1f} s ({self.images_per_s:.1f} images/s; "
                f"Ray, {self.actors} actor{'s' if self.actors != 1 else ''}, batch {self.batch_size}{skipped})")


def use_own_token() -> None:
    """For a process that starts one local Ray and ends with it (``dga-infer``): Ray's token
    authentication with a random token of the process's own, in ``RAY_AUTH_MODE`` /
    ``RAY_AUTH_TOKEN``, inherited by the Ray processes it starts. Without it a local ``ray.init``
    writes a token to ``~/.ray/auth_token`` that every later local Ray reuses. Does nothing when Ray
    is already imported (it reads these variables once) or either variable is set."""
    if "ray" in sys.modules or "RAY_AUTH_MODE" in os.environ or "RAY_AUTH_TOKEN" in os.environ:
        return
    import secrets

    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)


def _import_ray():
    import ray  # noqa: F401 - a missing [ray] extra fails here, before anything is written
    import ray.data

    return ray


def infer_to_parquet(
    inputs: str | Path,
    model: str | Path,
    out_dir: str | Path,
    *,
    backend: str = "auto",
    precision: str = "auto",
    batch_size: int = 64,
    threads: int | None = None,
    topk: int = 5,
    draft: bool = True,
    resume: bool = False,
    address: str | None = None,
    actors: int | None = None,
    cpus_per_actor: float | None = None,
    gpus_per_actor: float | None = None,
    num_cpus: int | None = None,
    progress: bool | None = None,
    summary: str | Path | None = None,
    log=None,
) -> RayRun:
    """Predict every image under ``inputs`` with Ray Data into Parquet parts under ``out_dir``.

    ``model`` is a deployment package directory, readable at the same path on every node of a
    cluster (as ``inputs`` and ``out_dir``). ``address`` connects to an existing cluster (passed to
    ``ray.init``); without it a local Ray with ``num_cpus`` CPUs (default: all) is started, unless
    Ray is already initialised in this process. ``actors`` defaults to as many as fit, leaving a CPU
    for reading; ``threads`` (ONNX Runtime intra-op threads per actor) to the actor's CPUs.
    ``log`` receives warning lines (default: stderr). User errors raise ``ConfigError`` before Ray
    starts when they can be known then.
    """
    from dga.runtime.listing import scan_inputs
    from dga.runtime.package import DeployPackage

    log = log or (lambda line: print(line, file=sys.stderr))
    ray = _import_ray()
    if batch_size < 1 or topk < 1:
        raise ConfigError("--batch-size and --topk must be at least 1")
    package = DeployPackage.load(model)  # a bad package fails here, not in every actor
    k = min(topk, len(package.classnames))
    levels = package.level_names()
    bs = min(batch_size, package.max_batch)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {out_dir} is a file; --executor ray writes a folder of Parquet parts")
    if not out_dir.resolve().parent.is_dir():
        raise ConfigError(f"cannot write {out_dir}: its parent folder does not exist")
    if part_files(out_dir) and not resume:
        raise ConfigError(f"{out_dir} already holds Parquet parts; pass --resume to continue that run, "
                          "or choose another --out")
    if not address and not ray.is_initialized():  # a local Ray: a pool too big is refused before it starts
        plan_resources(float(num_cpus or os.cpu_count() or 1), float("inf"), actors, cpus_per_actor, gpus_per_actor,
                       threads)
    started = time.perf_counter()
    listing = scan_inputs(inputs)
    listed = [str(p) for p in listing.files]
    skipped = failed_earlier = 0
    if resume and out_dir.is_dir():
        _check_columns(out_dir, output_schema(k, levels))
        done, failed_before = read_done(out_dir, log)
        keys = [parquet_path(p) for p in listed]
        skipped = sum(1 for p in keys if p in done or p in failed_before)
        failed_earlier = sum(1 for p in keys if p in failed_before)
        listed = [p for p, key in zip(listed, keys, strict=True) if key not in done and key not in failed_before]
    out_dir.mkdir(exist_ok=True)

    run_id = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]
    rows = _empty_rows(k, levels)
    feed = []
    for path in listed:
        key = parquet_path(path)
        if key != path:
            _add_error(rows, key, "unreadable", f"{key} has a file name that is not valid UTF-8, which Parquet "
                                                "cannot hold; rename the file.")
            continue
        err = unreadable(path)
        if err is not None:
            _add_error(rows, path, err.reason, err.message)
        else:
            feed.append(path)
    run = RayRun(0, len(rows["path"]), 0.0, out_dir, skipped=skipped, failed_earlier=failed_earlier, batch_size=bs,
                 skipped_files=listing.skipped)
    if rows["path"]:
        import pyarrow.parquet as pq

        part = out_dir / DRIVER_PART.format(run=run_id)
        pq.write_table(_table(rows, k, levels), part)
        run.parts.append(part)

    if feed:
        before = set(part_files(out_dir))
        with _ray_running(ray, address, num_cpus) as totals:
            res = plan_resources(*totals, actors, cpus_per_actor, gpus_per_actor, threads)
            run.actors = res.actors
            roots = {os.path.abspath(p): p for p in _roots(inputs)}
            _execute(ray, [os.path.abspath(p) for p in feed], out_dir, res, bs, progress,
                     dict(package=str(Path(model).resolve()), backend=backend, precision=precision, topk=k,
                          batch_size=bs, threads=res.threads, draft=draft, roots=roots))
        new = sorted(set(part_files(out_dir)) - before)
        run.parts += new
        ok, failed, seen = _count(new)
        run.ok, run.failed = ok, run.failed + failed
        missing = [p for p in feed if p not in seen]
        if missing:  # never expected: a file that vanished between the listing and Ray's read
            import pyarrow.parquet as pq

            rows = _empty_rows(k, levels)
            for path in missing:
                err = unreadable(path)
                _add_error(rows, path, err.reason if err else "unreadable",
                           err.message if err else f"{path} was not read by Ray (it changed during the run).")
            part = out_dir / f"dga-missing-{run_id}.parquet"
            pq.write_table(_table(rows, k, levels), part)
            run.parts.append(part)
            run.failed += len(missing)
    run.wall_s = time.perf_counter() - started
    if summary:
        from dga.fsutil import atomic_write

        atomic_write(summary, json.dumps(run.to_json(), indent=1))
    return run


def _roots(inputs: str | Path) -> list[str]:
    """The prefix strings the listing's paths start with: the input argument as ``Path`` prints it."""
    return [str(Path(inputs))]


def _check_columns(out_dir: Path, schema) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    for part in part_files(out_dir):
        try:
            names = pq.read_schema(part).names
        except (OSError, pa.ArrowException):
            continue  # read_done renames it
        if names != schema.names:
            raise ConfigError(f"{part} has columns {','.join(names)}, not {','.join(schema.names)} (another --topk "
                              "or package); use a new --out or drop --resume")


def _count(parts: list[Path]) -> tuple[int, int, set[str]]:
    import pyarrow.parquet as pq

    ok = failed = 0
    seen: set[str] = set()
    for part in parts:
        table = pq.read_table(part, columns=["path", "error"])
        for path, error in zip(table.column("path").to_pylist(), table.column("error").to_pylist(), strict=True):
            seen.add(path)
            if error:
                failed += 1
            else:
                ok += 1
    return ok, failed, seen


class _ray_running:
    """Use the Ray already initialised in this process, or start one (and shut it down after)."""

    def __init__(self, ray, address: str | None, num_cpus: int | None):
        self.ray, self.address, self.num_cpus = ray, address, num_cpus
        self.started = False
        self.temp_dir: str | None = None
        self.environ: dict[str, str | None] = {}  # variables set here -> their earlier values

    def _setenv(self, name: str, value: str) -> None:
        self.environ.setdefault(name, os.environ.get(name))
        os.environ[name] = value

    def __enter__(self) -> tuple[float, float]:
        ray = self.ray
        if not ray.is_initialized():
            if "RAY_USAGE_STATS_ENABLED" not in os.environ:
                self._setenv("RAY_USAGE_STATS_ENABLED", "0")
            try:
                if self.address:  # the cluster's own settings (auth, dashboard, logging) are left as they are
                    try:
                        ray.init(address=self.address, log_to_driver=False)
                    except (ConnectionError, RuntimeError, ValueError) as exc:
                        reason = " ".join(str(exc).split())[:300]
                        raise ConfigError(f"cannot connect to the Ray cluster at {self.address} ({reason}); "
                                          "check --ray-address, and the cluster's auth token when it uses one"
                                          ) from exc
                else:
                    if self.num_cpus is not None and self.num_cpus < 1:
                        raise ConfigError("num_cpus must be at least 1")
                    self.temp_dir = tempfile.mkdtemp(prefix="dga-ray-", dir=temp_base())
                    ray.init(num_cpus=self.num_cpus or os.cpu_count() or 1, _temp_dir=self.temp_dir,
                             include_dashboard=False, log_to_driver=False, logging_level="WARNING")
            except BaseException:
                self._cleanup()
                raise
            self.started = True
        totals = ray.cluster_resources()
        return float(totals.get("CPU", 0)), float(totals.get("GPU", 0))

    def __exit__(self, *exc) -> None:
        if self.started:
            self.ray.shutdown()
        self._cleanup()

    def _cleanup(self) -> None:
        if self.temp_dir:
            _remove_when_released(self.temp_dir)
            self.temp_dir = None
        for name, value in self.environ.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        self.environ = {}


def _remove_when_released(folder: str, wait_s: float = 10.0) -> None:
    """Remove a local Ray's temp folder once its processes have let go of it (they exit just after
    ``ray.shutdown`` returns and may still write a log line)."""
    deadline = time.monotonic() + wait_s
    while True:
        shutil.rmtree(folder, ignore_errors=True)
        if not os.path.exists(folder) or time.monotonic() > deadline:
            return
        time.sleep(0.2)


def _execute(ray, paths: list[str], out_dir: Path, res: Resources, batch_size: int, progress: bool | None,
             predictor_kwargs: dict) -> None:
    import logging

    show = progress if progress is not None else sys.stderr.isatty()
    ctx = ray.data.DataContext.get_current()
    loggers = [logging.getLogger("ray.data"), logging.getLogger("ray.data._internal.progress")]
    saved = ctx.enable_progress_bars, [lg.level for lg in loggers]
    ctx.enable_progress_bars = show
    if not show:  # no bars, nor Ray Data's progress log lines and its note that bars are off
        loggers[0].setLevel(logging.WARNING)
        loggers[1].setLevel(logging.ERROR)
    try:
        ds = ray.data.read_binary_files(paths, include_paths=True, num_cpus=READ_CPUS)
        ds = ds.map_batches(BatchPredictor, fn_constructor_kwargs=predictor_kwargs, batch_size=batch_size,
                            batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=res.actors),
                            num_cpus=res.cpus_per_actor, num_gpus=res.gpus_per_actor or None)
        ds.write_parquet(str(out_dir.resolve()))
    finally:
        ctx.enable_progress_bars = saved[0]
        for lg, level in zip(loggers, saved[1], strict=True):
            lg.setLevel(level)
