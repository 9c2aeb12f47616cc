"""dga-infer --executor ray: Ray Data over a local Ray with 2 CPUs gives the local executor's rows.

Every Ray job runs in a subprocess with a timeout (a resource deadlock hangs rather than fails), its
Ray temp folder under a short folder of /tmp (unix socket paths are limited to ~100 characters),
and afterwards no Ray process of that folder may be left.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("ray")
pq = pytest.importorskip("pyarrow.parquet")

BIN = Path(sys.executable).parent
TIMEOUT = 150  # seconds per Ray job: one takes ~15 s here


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """30 small JPEG/PNG images in two folders, plus a truncated JPEG, a zero-byte file, a text file
    named .jpg and a dangling link."""
    root = tmp_path_factory.mktemp("ray_photos")
    (root / "sub").mkdir()
    rng = np.random.default_rng(3)
    for i in range(24):
        Image.fromarray(rng.integers(0, 256, (40 + i, 56, 3), dtype=np.uint8)).save(root / f"{i:02d}.jpg")
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (60, 48 + i, 3), dtype=np.uint8)).save(root / "sub" / f"{i}.png")
    data = (root / "00.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (root / "zero.jpg").write_bytes(b"")
    (root / "text.jpg").write_bytes(b"not an image, only text\n" * 8)
    os.symlink(root / "absent.jpg", root / "dangling.jpg")
    return root


@pytest.fixture(scope="module")
def local(folder, tiny_package, tmp_path_factory) -> dict:
    """What dga-infer's local executor writes for the same folder: rows by path, errors by path."""
    from dga.runtime.run_folder import infer_to_files

    out = tmp_path_factory.mktemp("ray_local") / "preds.csv"
    run = infer_to_files(folder, tiny_package, out, backend="onnxruntime", batch_size=8, progress=False)
    assert run.summary.ok == 30 and run.summary.failed == 4
    with open(out, newline="") as f:
        rows = {r["path"]: r for r in csv.DictReader(f)}
    errors = {e["path"]: e for e in map(json.loads, run.errors.read_text().splitlines())}
    return {"rows": rows, "errors": errors}


@pytest.fixture
def ray_tmp():
    """A short folder for Ray's temp files; afterwards no Ray process of it is left (leftovers are
    killed by PID, and fail the test)."""
    base = tempfile.mkdtemp(prefix="r", dir="/tmp")
    yield Path(base)
    left = _ray_processes(base, wait_s=10)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    shutil.rmtree(base, ignore_errors=True)
    assert not left, f"Ray processes left running: {left}"


def _ray_processes(base: str, wait_s: float = 0.0) -> list[int]:
    """PIDs of processes whose command line names ``base`` (raylet, gcs_server, ...) or that hold a
    file under it open (workers and agents rename themselves ``ray::...`` but keep their logs open)."""
    deadline = time.monotonic() + wait_s
    while True:
        pids = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == os.getpid():
                continue
            try:
                if base in Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(entry))
                    continue
                for fd in os.listdir(f"/proc/{entry}/fd"):
                    try:
                        if os.readlink(f"/proc/{entry}/fd/{fd}").startswith(base):
                            pids.append(int(entry))
                            break
                    except OSError:
                        pass
            except OSError:
                pass  # gone, or not ours to read
        if not pids or time.monotonic() > deadline:
            return pids
        time.sleep(0.5)


def _stop(pids: list[int], base: str) -> None:
    """Stop the processes of a cluster started with ``ray start`` by PID (never ``ray stop``, which
    would stop every Ray of this user)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        pids = _ray_processes(base, wait_s=5)
        if not pids:
            return


def _env(base: Path) -> dict:
    # dga-infer makes its local Ray's temp folder under the system temp folder: TMPDIR puts it in base.
    return {**os.environ, "TMPDIR": str(base), "RAY_USAGE_STATS_ENABLED": "0"}


def _rows(out: Path, parts: list[Path] | None = None) -> list[dict]:
    rows = []
    for part in parts if parts is not None else sorted(out.glob("*.parquet")):
        rows += pq.read_table(part).to_pylist()
    return rows


def _assert_like_local(rows: list[dict], local: dict) -> None:
    good = {r["path"]: r for r in rows if not r["error"]}
    bad = {r["path"]: r for r in rows if r["error"]}
    assert sorted(good) == sorted(local["rows"])
    assert {p: (r["error"], r["message"]) for p, r in bad.items()} == {
        p: (e["reason"], e["message"]) for p, e in local["errors"].items()}
    for path, row in good.items():
        want = local["rows"][path]
        probs = [row[f"prob_{i}"] for i in range(1, 6)]
        assert np.allclose(probs, [float(want[f"prob_{i}"]) for i in range(1, 6)], atol=1e-5), path
        for i in range(1, 6):  # a label may swap with its neighbour only when their probabilities tie
            if row[f"label_{i}"] != want[f"label_{i}"]:
                near = [abs(probs[i - 1] - probs[j - 1]) for j in (i - 1, i + 1) if 1 <= j <= 5]
                assert min(near) < 1e-5, (path, i)
        assert str(row["level_1"]) == want["level_1"] and row["message"] == ""
    for row in bad.values():
        assert row["label_1"] is None and row["prob_1"] is None and row["level_1"] is None


def test_batch_predictor_gives_the_local_rows(folder, tiny_package, local):
    """The map_batches class on its own (no Ray): decode errors are rows, good rows are dga-infer's."""
    from dga.runtime.ray_data import BatchPredictor, output_columns

    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "dangling.jpg")
    batch = {"path": np.array([str(p.resolve()) for p in files], dtype=object),
             "bytes": np.array([p.read_bytes() for p in files], dtype=object)}
    fn = BatchPredictor(tiny_package, backend="onnxruntime", batch_size=8, roots={str(folder.resolve()): str(folder)})
    table = fn(batch)
    assert table.column_names == output_columns(5, ["level_1"])
    rows = table.to_pylist()
    assert [r["path"] for r in rows] == [str(p) for p in files]  # in order, with the listing's strings
    local = {"rows": local["rows"], "errors": {p: e for p, e in local["errors"].items()
                                               if not p.endswith("dangling.jpg")}}
    _assert_like_local(rows, local)
    assert fn({"path": np.array([], dtype=object), "bytes": np.array([], dtype=object)}).num_rows == 0


def test_ray_executor_matches_local_and_resumes(folder, tiny_package, local, ray_tmp, tmp_path):
    out = tmp_path / "preds"
    start = time.perf_counter()
    proc = subprocess.run([str(BIN / "dga-infer"), str(folder), "--model", str(tiny_package), "--executor", "ray",
                           "--out", str(out), "--backend", "onnxruntime", "--batch-size", "8", "--no-progress",
                           "--summary", str(tmp_path / "s.json")],
                          capture_output=True, text=True, env=_env(ray_tmp), timeout=TIMEOUT)
    first_s = time.perf_counter() - start
    assert proc.returncode == 3, proc.stderr  # the bad files
    assert "30 images ok, 4 failed" in proc.stderr.splitlines()[-1]
    summary = json.loads((tmp_path / "s.json").read_text())
    assert (summary["images_ok"], summary["images_failed"], summary["actors"]) == (30, 4, 1)
    rows = _rows(out)
    assert sorted(r["path"] for r in rows) == sorted([*local["rows"], *local["errors"]])  # each file once
    _assert_like_local(rows, local)
    assert not _ray_processes(str(ray_tmp), wait_s=10)  # Ray gone ...
    assert not list(ray_tmp.glob("dga-ray-*"))  # ... its temp folder removed (ONNX Runtime leaves a .ses file)

    # A partial run: one part of the job lost (as when a run is killed before writing it).
    parts = sorted(p for p in out.glob("*.parquet") if not p.name.startswith("dga-unreadable"))
    assert len(parts) >= 2
    lost = {r["path"] for r in _rows(out, [parts[0]])}
    parts[0].unlink()
    kept = {p: p.stat().st_mtime_ns for p in out.glob("*.parquet")}
    # The resumed run from Python, on a Ray the caller started (left running for the caller).
    script = textwrap.dedent(f"""
        import json, ray
        from dga.runtime.ray_data import infer_to_parquet
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _temp_dir={str(ray_tmp / "own")!r})
        run = infer_to_parquet({str(folder)!r}, {str(tiny_package)!r}, {str(out)!r}, backend="onnxruntime",
                               batch_size=8, resume=True, progress=False)
        print(json.dumps({{**run.to_json(), "still_up": ray.is_initialized(), "all_ok": run.all_ok}}))
        ray.shutdown()
    """)
    start = time.perf_counter()
    env = {**_env(ray_tmp), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "t" * 32}  # no ~/.ray/auth_token
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=TIMEOUT)
    resume_s = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr
    run = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (run["images_ok"], run["images_failed"], run["skipped"]) == (len(lost), 0, 34 - len(lost))
    assert run["failed_earlier"] == 4 and not run["all_ok"] and run["still_up"]
    new = set(out.glob("*.parquet")) - set(kept)
    assert new and {p.name for p in new} == set(run["parts"])  # new parts only ...
    assert {p: p.stat().st_mtime_ns for p in kept} == kept  # ... the old ones untouched
    assert {r["path"] for r in _rows(out, sorted(new))} == lost
    rows = _rows(out)
    assert len(rows) == 34 and len({r["path"] for r in rows}) == 34
    _assert_like_local(rows, local)

    # Nothing left to do: Ray is not even started; the earlier failures still exit 3.
    start = time.perf_counter()
    proc = subprocess.run([str(BIN / "dga-infer"), str(folder), "--model", str(tiny_package), "--executor", "ray",
                           "--out", str(out), "--resume", "--no-progress"],
                          capture_output=True, text=True, env=_env(ray_tmp), timeout=TIMEOUT)
    assert proc.returncode == 3, proc.stderr
    assert "0 images ok, 0 failed" in proc.stderr and "34 already in" in proc.stderr
    assert set(out.glob("*.parquet")) == set(kept) | new
    print(f"Ray first run {first_s:.1f} s, resumed run {resume_s:.1f} s, "
          f"nothing left {time.perf_counter() - start:.1f} s")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_existing_cluster_by_address(folder, tiny_package, local, ray_tmp, tmp_path):
    """--ray-address: a cluster started with `ray start --head` (token authentication, on 127.0.0.1)."""
    import secrets

    env = {**_env(ray_tmp), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    port = _free_port()
    start = subprocess.run([str(BIN / "ray"), "start", "--head", "--node-ip-address", "127.0.0.1", "--num-cpus", "2",
                            "--port", str(port), "--ray-client-server-port", str(_free_port()),
                            "--temp-dir", str(ray_tmp / "cluster"), "--include-dashboard", "false",
                            "--disable-usage-stats"], capture_output=True, text=True, env=env, timeout=TIMEOUT)
    try:
        assert start.returncode == 0, start.stderr
        out = tmp_path / "preds"
        proc = subprocess.run([str(BIN / "dga-infer"), str(folder / "sub"), "--model", str(tiny_package),
                               "--executor", "ray", "--ray-address", f"127.0.0.1:{port}", "--out", str(out),
                               "--backend", "onnxruntime", "--no-progress"],
                              capture_output=True, text=True, env=env, timeout=TIMEOUT)
        assert proc.returncode == 0, proc.stderr
        assert "6 images ok, 0 failed" in proc.stderr.splitlines()[-1]
        rows = _rows(out)
        assert len(rows) == 6
        _assert_like_local(rows, {"rows": {p: r for p, r in local["rows"].items() if "/sub/" in p}, "errors": {}})
    finally:
        _stop(_ray_processes(str(ray_tmp)), str(ray_tmp))


def _main(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    from dga.cli import infer

    monkeypatch.setattr(sys, "argv", ["dga-infer", *args])
    with pytest.raises(SystemExit) as exc:
        infer.main()
    return exc.value.code, capsys.readouterr().err


def test_option_checks_fail_before_ray_starts(monkeypatch, capsys, folder, tiny_package, tmp_path):
    base = [str(folder), "--model", str(tiny_package)]
    cases = [
        ([*base, "--executor", "ray"], "needs --out DIR"),
        ([*base, "--executor", "ray", "--out", str(tmp_path / "o"), "--errors", "e.jsonl", "--fail-fast"],
         "not used by --executor ray: --errors, --fail-fast"),
        ([*base, "--out", str(tmp_path / "p.csv"), "--ray-actors", "2"], "only used by --executor ray: --ray-actors"),
        ([*base, "--executor", "spark"], "must be one of local, ray"),
        ([*base, "--executor", "ray", "--out", str(tmp_path / "o"), "--ray-actors", str((os.cpu_count() or 1) + 1)],
         "use --ray-actors"),
    ]
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.parquet").write_bytes(b"")
    cases.append(([*base, "--executor", "ray", "--out", str(tmp_path / "full")], "pass --resume"))
    for args, message in cases:
        code, err = _main(monkeypatch, capsys, *args)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and message in lines[0], (args, err)
    assert not (tmp_path / "o").exists()  # nothing written


def test_a_cluster_that_refuses_the_connection_is_one_line():
    from dga.errors import ConfigError
    from dga.runtime.ray_data import _ray_running

    class Refusing:
        def is_initialized(self):
            return False

        def init(self, **kwargs):
            raise ConnectionError("Failed to connect to Ray cluster at 10.0.0.9:6379")

    with pytest.raises(ConfigError, match="cannot connect to the Ray cluster at 10.0.0.9:6379"):
        with _ray_running(Refusing(), "10.0.0.9:6379", None):
            pass


def test_plan_resources_leaves_a_cpu_for_reading():
    from dga.errors import ConfigError
    from dga.runtime.ray_data import plan_resources

    assert plan_resources(2, 0, None, None, None, None).actors == 1
    assert plan_resources(16, 0, None, 4, None, None).actors == 3
    res = plan_resources(32, 4, None, 2, 1, None)
    assert (res.actors, res.threads, res.gpus_per_actor) == (4, 2, 1.0)
    for args, message in [((2, 0, 2, None, None, None), "use --ray-actors 1 or fewer"),
                          ((1, 0, None, None, None, None), "lower --ray-cpus-per-actor"),
                          ((8, 1, 2, None, 1, None), "2 GPUs")]:
        with pytest.raises(ConfigError, match=message):
            plan_resources(*args)


def test_a_missing_ray_extra_is_named(tmp_path, folder, tiny_package):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(textwrap.dedent("""
        import sys

        class BlockRay:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "ray":
                    raise ModuleNotFoundError(f"No module named {name!r}", name=name)
                return None

        sys.meta_path.insert(0, BlockRay())
    """))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([str(BIN / "dga-infer"), str(folder), "--model", str(tiny_package), "--executor", "ray",
                           "--out", str(tmp_path / "o")], capture_output=True, text=True, env=env, timeout=60)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "pip install 'dga[ray]'" in lines[0]


def test_resume_reads_the_parts_and_sets_a_broken_one_aside(tmp_path):
    from dga.runtime.ray_data import _add_error, _empty_rows, _table, part_files, read_done

    rows = _empty_rows(1, [])
    rows["path"].append("a.jpg")
    rows["label_1"].append("cat")
    rows["prob_1"].append(0.5)
    rows["error"].append("")
    rows["message"].append("")
    _add_error(rows, "b.jpg", "empty", "b.jpg is empty (zero bytes).")
    pq.write_table(_table(rows, 1, []), tmp_path / "one.parquet")
    (tmp_path / "two.parquet").write_bytes(b"PAR1 cut short by a killed run")
    lines = []
    assert read_done(tmp_path, lines.append) == ({"a.jpg"}, {"b.jpg"})
    assert (tmp_path / "_two.parquet.broken").is_file() and not (tmp_path / "two.parquet").exists()
    assert part_files(tmp_path) == [tmp_path / "one.parquet"] and "predicted again" in lines[0]
    assert pq.read_table(tmp_path).num_rows == 2  # Parquet readers of the folder skip the set-aside part
