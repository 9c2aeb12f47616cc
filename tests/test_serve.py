"""dga-serve: a real Triton server (the binary bundled in nvidia-pytriton) over the tiny package.

The server runs as a subprocess bound to 127.0.0.1 for the whole module and is stopped by its PID
(SIGTERM) at the end; no tritonserver may be left behind. Clients: tritonclient gRPC and HTTP, and
plain HTTP requests in the KServe v2 JSON and binary formats the manual shows. Every request loop
is bounded in count and in time.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("pytriton") is None or importlib.util.find_spec("tritonclient") is None,
    reason="nvidia-pytriton and tritonclient (the [serve] extra) are not installed in this environment")

READY_TIMEOUT = 240  # seconds for the server to start and load the model on a busy 2-core host
STOP_TIMEOUT = 60
CLIENT_TIMEOUT = 60  # seconds per request


def _free_port() -> int:
    from dga.serve.server import free_port

    return free_port("127.0.0.1")


def _tritonservers(grpc_port: int) -> list[int]:
    """PIDs of tritonserver processes serving on our gRPC port."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmd and cmd[0].endswith(b"tritonserver") and str(grpc_port).encode() in cmd:
            pids.append(int(proc.name))
    return pids


def start_serve(package: Path, log: Path, *extra: str) -> tuple[subprocess.Popen, dict, list[str]]:
    """dga-serve on free ports of 127.0.0.1, once it has printed its ready line."""
    ports = {"http": _free_port(), "grpc": _free_port(), "metrics": _free_port()}
    cmd = [sys.executable, "-m", "dga.cli.serve", str(package), "--host", "127.0.0.1",
           "--http-port", str(ports["http"]), "--grpc-port", str(ports["grpc"]), "--metrics-port",
           str(ports["metrics"]), "--ready-timeout", str(READY_TIMEOUT), *extra]
    with open(log, "wb") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(line.decode() for line in proc.stdout), daemon=True)
    reader.start()
    deadline = time.monotonic() + READY_TIMEOUT + 30
    while not any(line.startswith("ready:") for line in lines):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"dga-serve did not become ready (exit {proc.poll()}):\n{log.read_text()[-4000:]}")
        time.sleep(0.2)
    return proc, ports, lines


def stop_serve(proc: subprocess.Popen, ports: dict, log: Path, signum: int = signal.SIGTERM) -> None:
    """Stop dga-serve by its PID; it must exit 0 and leave no tritonserver behind."""
    proc.send_signal(signum)
    try:
        rc = proc.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        rc = proc.wait(10)
    for pid in _tritonservers(ports["grpc"]):
        os.kill(pid, signal.SIGKILL)
        pytest.fail(f"tritonserver {pid} was left running after dga-serve stopped")
    assert rc == 0, f"dga-serve exited with {rc}:\n{log.read_text()[-4000:]}"
    assert "stopped" in log.read_text()


@pytest.fixture(scope="module")
def server(tiny_package, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve") / "server.log"
    proc, ports, lines = start_serve(tiny_package, log, "--max-queue-delay-us", "20000")
    try:
        yield {**ports, "proc": proc, "log": log, "stdout": lines}
    finally:
        stop_serve(proc, ports, log)


@pytest.fixture(scope="module")
def grpc_client(server):
    import tritonclient.grpc as grpcclient

    return grpcclient.InferenceServerClient(f"127.0.0.1:{server['grpc']}")


@pytest.fixture(scope="module")
def predictor(tiny_package):
    from dga.runtime import Predictor

    return Predictor.from_package(tiny_package, backend="onnxruntime", precision="fp32")


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[Path]:
    """Generated images of several sizes and formats (a grey and an RGBA one among them)."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(7)
    paths = []
    for i, (w, h, fmt, mode) in enumerate([(320, 240, "JPEG", "RGB"), (97, 300, "PNG", "RGB"), (64, 64, "PNG", "L"),
                                           (500, 180, "JPEG", "RGB"), (210, 210, "PNG", "RGBA"),
                                           (150, 90, "WEBP", "RGB")]):
        base = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
        img = Image.fromarray(base).resize((w, h), Image.BILINEAR).convert(mode)
        path = root / f"img{i}.{fmt.lower()}"
        img.save(path, fmt)
        paths.append(path)
    return paths


def _bytes_input(module, datas: list[bytes]):
    arr = np.array([[d] for d in datas], dtype=object)
    inp = module.InferInput("image_bytes", list(arr.shape), "BYTES")
    inp.set_data_from_numpy(arr)
    return inp


def _images_input(module, images: np.ndarray, name: str = "images", dtype: str = "UINT8"):
    inp = module.InferInput(name, list(images.shape), dtype)
    inp.set_data_from_numpy(images)
    return inp


def test_ready_endpoints_and_config(server, grpc_client, tiny_package):
    import tritonclient.http as httpclient

    from dga.runtime.package import DeployPackage

    pkg = DeployPackage.load(tiny_package)
    assert any(f"127.0.0.1:{server['grpc']}" in line for line in server["stdout"])
    assert grpc_client.is_server_ready() and grpc_client.is_model_ready("dga")
    cfg = grpc_client.get_model_config("dga", as_json=True)["config"]
    assert cfg["backend"] == "python" and int(cfg["max_batch_size"]) == pkg.max_batch
    assert [i["name"] for i in cfg["input"]] == ["image_bytes", "images"]
    assert [o["name"] for o in cfg["output"]] == ["logits", "probs"]
    http = httpclient.InferenceServerClient(f"127.0.0.1:{server['http']}", network_timeout=CLIENT_TIMEOUT)
    try:
        assert http.is_server_live() and http.is_model_ready("dga")
        meta = http.get_model_metadata("dga")
        assert {o["name"]: o["shape"] for o in meta["outputs"]} == {
            "logits": [-1, len(pkg.classnames)], "probs": [-1, len(pkg.classnames)]}
    finally:
        http.close()
    with urllib.request.urlopen(f"http://127.0.0.1:{server['metrics']}/metrics", timeout=CLIENT_TIMEOUT) as r:
        assert b"nv_inference_request_success" in r.read()


def test_image_bytes_match_dga_infer(server, grpc_client, predictor, photos):
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    from dga.runtime.decode import decode_image

    expected_labels = [r.label for r in predictor.predict_paths(photos)]  # what dga-infer writes
    assert all(expected_labels)
    expected = predictor.predict(np.stack([decode_image(p, predictor.package.s0) for p in photos]))
    datas = [p.read_bytes() for p in photos]
    one_by_one = [grpc_client.infer("dga", [_bytes_input(grpcclient, [d])], client_timeout=CLIENT_TIMEOUT)
                  .as_numpy("logits")[0] for d in datas]
    http = httpclient.InferenceServerClient(f"127.0.0.1:{server['http']}", network_timeout=CLIENT_TIMEOUT)
    try:
        together = http.infer("dga", [_bytes_input(httpclient, datas)]).as_numpy("logits")
    finally:
        http.close()
    for logits in (np.stack(one_by_one), together):
        assert logits.shape == expected.logits.shape
        assert np.abs(logits - expected.logits).max() < 1e-3
        assert [predictor.classnames[j] for j in logits.argmax(1)] == expected_labels


def test_uint8_arrays_match_predictor(server, grpc_client, predictor, tiny_package):
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    images = np.load(Path(tiny_package) / "reference.npz")["images"][:8]
    expected = predictor.predict(images)
    result = grpc_client.infer("dga", [_images_input(grpcclient, images)], client_timeout=CLIENT_TIMEOUT)
    assert np.abs(result.as_numpy("logits") - expected.logits).max() < 1e-3
    assert np.abs(result.as_numpy("probs") - expected.probs).max() < 1e-4
    http = httpclient.InferenceServerClient(f"127.0.0.1:{server['http']}", network_timeout=CLIENT_TIMEOUT)
    try:
        got = http.infer("dga", [_images_input(httpclient, images[:3])]).as_numpy("logits")
    finally:
        http.close()
    assert np.abs(got - expected.logits[:3]).max() < 1e-3


def test_classification_strings(server, grpc_client, predictor, photos):
    import tritonclient.grpc as grpcclient

    data = photos[0].read_bytes()
    out = grpcclient.InferRequestedOutput("probs", class_count=3)
    result = grpc_client.infer("dga", [_bytes_input(grpcclient, [data])], outputs=[out], client_timeout=CLIENT_TIMEOUT)
    rows = result.as_numpy("probs")
    assert rows.shape == (1, 3)
    parsed = [item.decode().split(":", 2) for item in rows[0]]
    top = predictor.predict_paths([photos[0]])[0].topk[:3]
    assert [label for _, _, label in parsed] == [label for label, _ in top]
    for (score, index, label), (_, prob) in zip(parsed, top, strict=True):
        assert predictor.classnames[int(index)] == label and abs(float(score) - prob) < 1e-4


def test_kserve_json_and_binary_requests(server, predictor, photos, tiny_package):
    """The two plain-HTTP request forms of docs/deployment.md: JSON uint8 data, and binary image bytes."""
    url = f"http://127.0.0.1:{server['http']}/v2/models/dga/infer"
    image = np.load(Path(tiny_package) / "reference.npz")["images"][:1]
    body = {"inputs": [{"name": "images", "shape": list(image.shape), "datatype": "UINT8",
                        "data": image.reshape(-1).tolist()}],
            "outputs": [{"name": "probs", "parameters": {"classification": 3}}]}
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=CLIENT_TIMEOUT) as r:
        answer = json.loads(r.read())
    labels = [item.split(":", 2)[2] for item in answer["outputs"][0]["data"]]
    assert labels == [label for label, _ in predictor.predict(image).topk(3)[0]]
    data = photos[0].read_bytes()
    header = json.dumps({"inputs": [{"name": "image_bytes", "shape": [1, 1], "datatype": "BYTES",
                                     "parameters": {"binary_data_size": len(data) + 4}}],
                         "outputs": [{"name": "probs", "parameters": {"classification": 1}}]}).encode()
    req = urllib.request.Request(url, header + struct.pack("<I", len(data)) + data,
                                 {"Inference-Header-Content-Length": str(len(header)),
                                  "Content-Type": "application/octet-stream"})
    with urllib.request.urlopen(req, timeout=CLIENT_TIMEOUT) as r:
        answer = json.loads(r.read())
    assert answer["outputs"][0]["data"][0].split(":", 2)[2] == predictor.predict_paths([photos[0]])[0].label


def test_concurrent_clients_are_batched(server, grpc_client, tiny_package):
    import tritonclient.grpc as grpcclient

    clients, per_client = 16, 8
    images = np.load(Path(tiny_package) / "reference.npz")["images"][:clients]

    def stats() -> tuple[int, int]:
        s = grpc_client.get_inference_statistics("dga", as_json=True)["model_stats"][0]
        return int(s.get("inference_count", 0)), int(s.get("execution_count", 0))

    def work(i: int) -> int:
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{server['grpc']}")
        try:
            done = 0
            for _ in range(per_client):
                r = client.infer("dga", [_images_input(grpcclient, images[i:i + 1])], client_timeout=CLIENT_TIMEOUT)
                assert r.as_numpy("logits").shape == (1, 9)
                done += 1
            return done
        finally:
            client.close()

    before = stats()
    start = time.monotonic()
    with ThreadPoolExecutor(clients) as pool:
        done = list(pool.map(work, range(clients), timeout=600))
    assert sum(done) == clients * per_client and time.monotonic() - start < 600
    inferences, executions = (a - b for a, b in zip(stats(), before, strict=True))
    assert inferences == clients * per_client
    assert executions < inferences, f"{executions} executions for {inferences} requests: nothing was batched"


def test_bad_payloads_get_errors_and_the_server_keeps_serving(server, grpc_client, tiny_package):
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    images = np.load(Path(tiny_package) / "reference.npz")["images"]
    s0 = images.shape[1]
    bad = {
        "wrong dtype": [_images_input(grpcclient, images[:1].astype(np.float32), dtype="FP32")],
        "wrong shape": [_images_input(grpcclient, np.zeros((1, s0 // 2, s0 // 2, 3), np.uint8))],
        "batch above the maximum": [_images_input(grpcclient, np.zeros((9, s0, s0, 3), np.uint8))],
        "undecodable bytes": [_bytes_input(grpcclient, [b"these bytes are not an image"])],
        "empty bytes": [_bytes_input(grpcclient, [b""])],
        "wrong input name": [_images_input(grpcclient, images[:1], name="pixels")],
        "both inputs": [_images_input(grpcclient, images[:1]), _bytes_input(grpcclient, [b"x"])],
        "no input": [],
    }
    messages = {}
    for what, inputs in bad.items():
        with pytest.raises(InferenceServerException) as exc:
            grpc_client.infer("dga", inputs, client_timeout=CLIENT_TIMEOUT)
        messages[what] = str(exc.value)
        assert exc.value.status() == "StatusCode.INVALID_ARGUMENT", f"{what}: {exc.value}"
    assert "not-an-image" in messages["undecodable bytes"] and "empty" in messages["empty bytes"]
    assert "exactly one" in messages["both inputs"]
    result = grpc_client.infer("dga", [_images_input(grpcclient, images[:2])], client_timeout=CLIENT_TIMEOUT)
    assert result.as_numpy("logits").shape == (2, 9)
    assert server["proc"].poll() is None and grpc_client.is_model_ready("dga")


def test_an_error_in_one_request_leaves_the_others_of_its_batch_intact(server, tiny_package, photos):
    """Requests batched with an undecodable one still get their own answers."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    good = photos[0].read_bytes()

    def send(data: bytes) -> str:
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{server['grpc']}")
        try:
            client.infer("dga", [_bytes_input(grpcclient, [data])], client_timeout=CLIENT_TIMEOUT)
            return "ok"
        except InferenceServerException:
            return "error"
        finally:
            client.close()

    payloads = [good, b"broken", good, b"", good, good, b"broken", good] * 2
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(send, payloads, timeout=300))
    assert answers == ["ok" if p == good else "error" for p in payloads]


def _doc_block(marker: str) -> str:
    page = (Path(__file__).resolve().parents[1] / "docs" / "deployment.md").read_text(encoding="utf-8")
    blocks = re.findall(r"^```[a-z]*\n(.*?)^```", page, flags=re.M | re.S)
    found = [b for b in blocks if marker in b]
    assert len(found) == 1, f"docs/deployment.md has {len(found)} blocks with {marker!r}"
    return found[0]


def test_the_manuals_request_examples_run(server, predictor, photos, tmp_path):
    """docs/deployment.md's tritonclient and curl examples, as written (files and ports swapped in)."""
    jpg, png = photos[0], photos[1]
    code = (_doc_block('InferenceServerClient("127.0.0.1:8001")')
            .replace("127.0.0.1:8001", f"127.0.0.1:{server['grpc']}")
            .replace('"cat.jpg"', repr(str(jpg))).replace('"dog.png"', repr(str(png))))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    printed = [line for line in out.stdout.splitlines() if line.startswith("[")]
    assert [line.split(":", 2)[2].split("'")[0] for line in printed] == [
        r.label for r in predictor.predict_paths([jpg, png])]
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    script = (_doc_block("Inference-Header-Content-Length").replace("cat.jpg", str(jpg))
              .replace("127.0.0.1:8000", f"127.0.0.1:{server['http']}"))
    out = subprocess.run(["bash", "-c", "set -eo pipefail\n" + script], capture_output=True, text=True, timeout=120,
                         cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    answer = json.loads(out.stdout)
    top = [item.split(":", 2)[2] for item in answer["outputs"][0]["data"]]
    assert top == [label for label, _ in predictor.predict_paths([jpg])[0].topk[:3]]


def test_sigint_stops_the_server_cleanly(tiny_package, tmp_path):
    """Ctrl-C (SIGINT) is passed on like SIGTERM: exit 0, no server left, temporary folder removed."""
    proc, ports, lines = start_serve(tiny_package, tmp_path / "log", "--instances", "2")
    assert any(f"127.0.0.1:{ports['http']}" in line for line in lines)
    stop_serve(proc, ports, tmp_path / "log", signal.SIGINT)


def test_bench_serve_suite_measures_each_level(tiny_package, tmp_path):
    """dga-bench --suite serve: every request answered, counted by the server, batched at concurrency 4."""
    from dga.bench.serve import ServeBenchOptions, serve_bench_to_files

    opts = ServeBenchOptions(concurrency=[1, 4], requests=12, images=4, warmup=2, ready_timeout_s=READY_TIMEOUT)
    js, md = serve_bench_to_files(tiny_package, opts, tmp_path, "serve-test", log=lambda _line: None)
    result = json.loads(js.read_text())
    assert result["suite"] == "serve" and [r["concurrency"] for r in result["rows"]] == [1, 4]
    for row in result["rows"]:
        assert row["ok"] == row["requests"] == 12 and row["errors"] == 0
        assert row["inferences"] == 12  # the server counted exactly our requests
        assert 1 <= row["executions"] <= 12 and row["p50_ms"] <= row["p99_ms"]
        assert row["requests_per_s"] == pytest.approx(12 / row["wall_s"], rel=0.01)
    assert result["rows"][0]["executions"] == 12  # one client, one request at a time: nothing to merge
    assert "| 4 | 12 |" in md.read_text()
    assert not [p for p in Path(tempfile_dir()).iterdir() if p.name.startswith("dga-bench-serve-")]


def tempfile_dir() -> str:
    import tempfile

    return tempfile.gettempdir()
