"""dga-bench --suite serve: requests/s and latency of the ``dga`` model behind a real Triton server.

Writes a repository for the package (the python-backend model only, as dga-serve does), starts
the tritonserver bundled in nvidia-pytriton on 127.0.0.1 with free ports, and at each concurrency
level sends a fixed number of single-image requests (encoded JPEGs of mixed sizes, ``image_bytes``)
from that many gRPC clients at once. Per level: requests/s over the level's wall time, p50/p99/
mean latency per request, and how many model executions the server's statistics counted (fewer
than requests: dynamic batching merged them). Every request loop is bounded in count; the server
is stopped and its folders removed however the run ends. Needs the [serve] extra.
"""

from __future__ import annotations

import io
import shlex
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from dga.errors import ConfigError


@dataclass
class ServeBenchOptions:
    concurrency: list[int] = field(default_factory=lambda: [1, 16])
    requests: int = 160  # per concurrency level
    images: int = 32  # distinct JPEGs, cycled
    instances: int = 1
    max_queue_delay_us: int = 2000
    warmup: int = 8
    ready_timeout_s: float = 120.0
    request_timeout_s: float = 60.0

    def validate(self) -> ServeBenchOptions:
        if not self.concurrency or min(self.concurrency) < 1:
            raise ConfigError("--concurrency must list levels of 1 or more clients")
        if self.requests < max(self.concurrency):
            raise ConfigError(f"--requests {self.requests} must be at least the largest concurrency level "
                              f"({max(self.concurrency)})")
        return self


def jpeg_payloads(n: int, seed: int = 0) -> list[bytes]:
    """``n`` JPEGs of mixed sizes (the decoder's work is part of what a request costs)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        h, w = (int(v) for v in rng.integers(160, 480, size=2))
        pixels = rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8)
        img = Image.fromarray(pixels).resize((w, h), Image.Resampling.BILINEAR)  # smooth, photo-like blocks
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def _stats(client, model: str) -> tuple[int, int]:
    """(successful inferences, executions) the server has counted for ``model``."""
    s = client.get_inference_statistics(model).model_stats[0]
    return int(s.inference_stats.success.count), int(s.execution_count)


def run_level(url: str, model: str, payloads: list[bytes], clients: int, requests: int,
              timeout_s: float) -> dict:
    """``requests`` single-image requests from ``clients`` concurrent gRPC clients."""
    import tritonclient.grpc as grpcclient

    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    shares = [requests // clients + (1 if i < requests % clients else 0) for i in range(clients)]

    def work(i: int) -> None:
        client = grpcclient.InferenceServerClient(url)
        try:
            for j in range(shares[i]):
                data = payloads[(i * 7 + j) % len(payloads)]
                inp = grpcclient.InferInput("image_bytes", [1, 1], "BYTES")
                inp.set_data_from_numpy(np.array([[data]], dtype=object))
                t = time.perf_counter()
                try:
                    client.infer(model, [inp], outputs=[grpcclient.InferRequestedOutput("probs")],
                                 client_timeout=timeout_s)
                except Exception as exc:  # counted and reported: a benchmark row with errors is not a result
                    with lock:
                        errors.append(str(exc).splitlines()[0][:200])
                    continue
                with lock:
                    latencies.append(time.perf_counter() - t)
        finally:
            client.close()

    stats_client = grpcclient.InferenceServerClient(url)
    before = _stats(stats_client, model)
    threads = [threading.Thread(target=work, args=(i,)) for i in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    after = _stats(stats_client, model)
    stats_client.close()
    ms = np.array(latencies) * 1000.0
    return {"concurrency": clients, "requests": requests, "ok": len(latencies), "errors": len(errors),
            "first_errors": errors[:3], "wall_s": round(wall, 3),
            "requests_per_s": round(len(latencies) / wall, 2) if wall > 0 else None,
            "p50_ms": round(float(np.percentile(ms, 50)), 2) if len(ms) else None,
            "p99_ms": round(float(np.percentile(ms, 99)), 2) if len(ms) else None,
            "mean_ms": round(float(ms.mean()), 2) if len(ms) else None,
            "inferences": after[0] - before[0], "executions": after[1] - before[1]}


def serve_bench(package: Path, opts: ServeBenchOptions, log=print) -> dict:
    from dga.bench.measure import machine
    from dga.runtime.package import DeployPackage
    from dga.serve.server import Endpoints, TritonServer, bundled_server, free_port
    from dga.serve.triton import PYTHON_MODEL, Options, write_repository

    opts.validate()
    bundled_server()  # a missing [serve] extra is one sentence before anything starts
    pkg = DeployPackage.load(package)
    payloads = jpeg_payloads(opts.images)
    with tempfile.TemporaryDirectory(prefix="dga-bench-serve-") as tmp:
        root = Path(tmp)
        write_repository(package, root / "repository", Options(models=(PYTHON_MODEL,), instances=opts.instances,
                                                               max_queue_delay_us=opts.max_queue_delay_us))
        host = "127.0.0.1"
        server = TritonServer(root / "repository", Endpoints(host, free_port(host), free_port(host), free_port(host)),
                              root / "work", log_file=root / "tritonserver.log")
        rows = []
        try:
            server.start()
            server.wait_ready(PYTHON_MODEL, opts.ready_timeout_s)
            url = f"{host}:{server.endpoints.grpc_port}"
            run_level(url, PYTHON_MODEL, payloads, 1, opts.warmup, opts.request_timeout_s)  # first calls load state
            for clients in opts.concurrency:
                row = run_level(url, PYTHON_MODEL, payloads, clients, opts.requests, opts.request_timeout_s)
                log(f"  concurrency {clients:>3}: {row['requests_per_s']} requests/s, p50 {row['p50_ms']} ms, "
                    f"p99 {row['p99_ms']} ms, {row['inferences']} requests in {row['executions']} executions"
                    + (f", {row['errors']} errors" if row["errors"] else ""))
                rows.append(row)
        finally:
            server.stop()
    return {"suite": "serve", "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "command": shlex.join(["dga-bench", *sys.argv[1:]]) if Path(sys.argv[0]).name == "dga-bench" else None,
            "machine": machine(), "package": {"method": pkg.facts["method"], "s0": pkg.s0,
                                              "classes": len(pkg.classnames), "max_batch": pkg.max_batch},
            "server": "tritonserver bundled in nvidia-pytriton, python-backend model 'dga' (dga.serve.backend)",
            "request": "one encoded JPEG per request (image_bytes), gRPC, output probs",
            "options": asdict(opts), "rows": rows}


def serve_markdown(result: dict) -> str:
    lines = [f"# dga-bench --suite serve ({result['date']})", "",
             f"{result['server']}; {result['request']}.", "",
             "| concurrency | requests | requests/s | p50 ms | p99 ms | mean ms | executions | errors |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        lines.append(f"| {r['concurrency']} | {r['requests']} | {r['requests_per_s']} | {r['p50_ms']} | "
                     f"{r['p99_ms']} | {r['mean_ms']} | {r['executions']} | {r['errors']} |")
    return "\n".join(lines) + "\n"


def serve_bench_to_files(package: Path, opts: ServeBenchOptions, out: Path, name: str | None = None,
                         log=print) -> tuple[Path, Path]:
    import json

    from dga.fsutil import atomic_write

    result = serve_bench(package, opts, log)
    stem = name or "serve-" + ("gpu" if result["machine"].get("gpu") else "cpu")
    js, md = Path(out) / f"{stem}.json", Path(out) / f"{stem}.md"
    atomic_write(js, json.dumps(result, indent=1))
    atomic_write(md, serve_markdown(result))
    return js, md
