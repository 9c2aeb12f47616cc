"""dga-describe against a real local HTTP server (tests/fake_openai.py, started as a subprocess):
parsing, cleaning, retries, fatal errors, the cache, resuming after kill -9, --offline, the cost
estimate, and the files it writes feeding dga-train."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import pytest

from dga.errors import DataError
from dga.train import describe as d

HERE = Path(__file__).resolve().parent
FAKE = HERE / "fake_openai.py"
BIN = Path(sys.executable).parent
DESCRIBE = [str(BIN / "dga-describe")] if (BIN / "dga-describe").is_file() else [sys.executable, "-m",
                                                                                  "dga.cli.describe"]
TINY = "dga-test-vit-p32"


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    env.update({"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2", "PYTHONWARNINGS": "ignore"}, **extra)
    return env


class FakeServer:
    def __init__(self, tmp: Path, script: dict, name: str = "server"):
        self.log_path = tmp / f"{name}.log.jsonl"
        script_path = tmp / f"{name}.script.json"
        script_path.write_text(json.dumps(script))
        self.proc = subprocess.Popen([sys.executable, str(FAKE), "--log", str(self.log_path), "--script",
                                      str(script_path), "--lifetime", "240"],
                                     stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline().strip()
        assert line.startswith("PORT "), line
        self.base_url = f"http://127.0.0.1:{int(line.split()[1])}/v1"

    def requests(self) -> list[dict]:
        if not self.log_path.is_file():
            return []
        return [e for e in map(json.loads, self.log_path.read_text().splitlines()) if not e.get("answered")]

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
        self.proc.wait(timeout=10)
        self.proc.stdout.close()


@pytest.fixture
def server_factory(tmp_path):
    servers: list[FakeServer] = []

    def start(script: dict, name: str = "server") -> FakeServer:
        srv = FakeServer(tmp_path, script, name)
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        srv.stop()


def opts(srv: FakeServer, kind: str = "cupl", **kw) -> d.DescribeOptions:
    base = {"base_url": srv.base_url, "model": "fake-model", "backoff": 0.05, "timeout": 10.0, "retries": 4,
            "concurrency": 4}
    base.update(kw)
    return d.DescribeOptions(kind=kind, **base)


def write_classes(tmp: Path, names: list[str], name: str = "classes.txt") -> Path:
    p = tmp / name
    p.write_text("# classes\n" + "\n".join(names) + "\n\n")
    return p


def quiet(_line: str) -> None:
    pass


# ----------------------------------------------------------------------------------------------
# parsing and cleaning
# ----------------------------------------------------------------------------------------------

GOOD = ["A red circle is a round red shape on white.", "The red circle has a smooth edge all around.",
        "A photo of a red circle on a plain background."]
ANSWERS = {
    "numbered": "Here are three:\n1. " + GOOD[0] + "\n2) " + GOOD[1] + "\n(3) " + GOOD[2] + "\nHope this helps!",
    "bullets": "- " + GOOD[0] + "\n* **" + GOOD[1] + "**\n\u2022 " + GOOD[2],
    "json-array": json.dumps(GOOD),
    "json-object": json.dumps({"descriptions": GOOD[:2], "more": [GOOD[2]]}),
    "fenced": "Sure:\n```json\n" + json.dumps(GOOD, indent=2) + "\n```\nAnything else?",
    "truncated-json": json.dumps(GOOD)[:-20],
    "prose": " ".join(GOOD),
}


@pytest.mark.parametrize("shape", sorted(ANSWERS))
def test_parse_answer_shapes(shape):
    kept = d.clean_sentences(d.parse_answer(ANSWERS[shape]), "red circle")
    expected = GOOD[:2] if shape == "truncated-json" else GOOD
    assert kept == expected


def test_clean_sentences_rules():
    seen: set[str] = set()
    raw = ["  A  red circle   is round,  ", "a RED circle is round!", "short red circle", "",
           "A red circle " + "word " * 60, "A blue square is a square shape.", "x" * 250 + " red circle",
           '"The red_circle has a smooth edge"', "A red circle: 2.5 cm across on the page."]
    kept = d.clean_sentences(raw, "red_circle".replace("_", " "), seen)
    # whitespace collapsed, deduplicated case-insensitively (punctuation ignored), length-limited,
    # the class name required (case, underscores and punctuation aside), wrapping quotes removed,
    # a full stop added
    assert kept == ["A red circle is round.", "The red_circle has a smooth edge.",
                    "A red circle: 2.5 cm across on the page."]
    assert d.clean_sentences(["A blue square is a square shape."], None) == ["A blue square is a square shape."]
    assert d.clean_sentences(["I cannot help with that, sorry."], "red circle") == []


def test_retry_after_seconds_and_http_date():
    now = time.time()
    assert d.retry_after_seconds("3") == 3.0
    assert d.retry_after_seconds("0.5") == 0.5
    date = format_datetime(datetime.fromtimestamp(now, UTC) + timedelta(seconds=30), usegmt=True)
    assert 28 <= d.retry_after_seconds(date, now=now) <= 31
    assert d.retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
    assert d.retry_after_seconds(None) is None and d.retry_after_seconds("soon") is None


def test_group_key_and_hierarchy_groups():
    assert d.group_key(["a"]) == "a" and d.group_key(["a", "b_c"]) == "a + b_c"
    manifest = {"classnames": ["a", "b", "c", "d"], "method": {"name": "dga"},
                "hierarchy": {"level_sizes": [3, 2], "parents": [[0, 0, 1, 2], [0, 0, 0, 1]]}}
    assert d.hierarchy_groups(manifest) == [(1, 0, ["a", "b"]), (1, 1, ["c"]), (1, 2, ["d"]),
                                            (2, 0, ["a", "b", "c"]), (2, 1, ["d"])]
    with pytest.raises(DataError, match="no label hierarchy"):
        d.hierarchy_groups({"classnames": ["a"], "method": {"name": "vp"}, "hierarchy": None})


def test_read_class_names(tmp_path):
    (tmp_path / "ds" / "train" / "b").mkdir(parents=True)
    (tmp_path / "ds" / "train" / "a").mkdir()
    (tmp_path / "ds" / "train" / ".hidden").mkdir()
    assert d.read_class_names(tmp_path / "ds") == ["a", "b"]
    assert d.read_class_names(write_classes(tmp_path, ["x y", "z_w"])) == ["x y", "z_w"]
    (tmp_path / "dup.txt").write_text("a\nb\na\n")
    with pytest.raises(DataError, match="more than once"):
        d.read_class_names(tmp_path / "dup.txt")
    with pytest.raises(DataError, match="does not exist"):
        d.read_class_names(tmp_path / "nope.txt")


def test_cache_ignores_a_torn_last_line(tmp_path):
    path = tmp_path / "c.jsonl"
    cache = d.Cache(path)
    cache.put({"key": "k1", "answer": "one"})
    with open(path, "ab") as fh:
        fh.write(b'{"key": "k2", "answ')  # killed mid-line
    cache = d.Cache(path)
    assert set(cache.entries) == {"k1"}
    cache.put({"key": "k3", "answer": "three"})  # starts on a line of its own
    assert set(d.Cache(path).entries) == {"k1", "k3"}


# ----------------------------------------------------------------------------------------------
# against the fake server
# ----------------------------------------------------------------------------------------------

SHAPES = ["json", "numbered", "bullets", "fenced", "object", "prose"]


def test_well_formed_answers_cache_rerun_and_offline(server_factory, tmp_path):
    names = [f"class_{s}" for s in SHAPES]
    srv = server_factory({"items": {f"class {s}": [s] for s in SHAPES}})
    out = tmp_path / "cupl.json"
    res = d.describe_command(write_classes(tmp_path, names), None, out, opts(srv), log=quiet)
    data = json.loads(out.read_text())
    assert list(data) == names and res.requests_made == len(names)
    for name in names:
        assert len(data[name]) == 20 and len(set(data[name])) == 20
        assert all(name.replace("_", " ") in s for s in data[name])
    reqs = srv.requests()
    assert len(reqs) == len(names) and sorted(r["item"] for r in reqs) == sorted(n.replace("_", " ") for n in names)
    assert all(r["seed"] == 0 and r["model"] == "fake-model" and r["auth"] == "" for r in reqs)
    assert "Describe what a class" in reqs[0]["prompt"]  # CuPL's first question
    cache = tmp_path / "cupl.cache.jsonl"  # next to --out by default
    lines = [json.loads(x) for x in cache.read_text().splitlines()]
    assert len(lines) == len(names) and {rec["item"] for rec in lines} == set(names)
    assert all(rec["usage"]["total_tokens"] == 480 and len(rec["key"]) == 64 for rec in lines)

    first = out.read_bytes()
    res = d.describe_command(write_classes(tmp_path, names), None, out, opts(srv), log=quiet)
    assert res.requests_made == 0 and len(srv.requests()) == len(names)  # nothing asked again
    assert out.read_bytes() == first
    out.unlink()
    d.describe_command(write_classes(tmp_path, names), None, out, opts(srv, offline=True), log=quiet)
    assert out.read_bytes() == first  # the same file from the cache alone

    # another seed or temperature is another cache key: asked again
    d.describe_command(write_classes(tmp_path, names[:1]), None, tmp_path / "s1.json",
                       opts(srv, seed=1, cache=cache), log=quiet)
    assert [r["seed"] for r in srv.requests()][-1] == 1


def test_transient_errors_are_retried(server_factory, tmp_path):
    date = format_datetime(datetime.now(UTC) + timedelta(seconds=1), usegmt=True)
    script = {"items": {
        "c429": [{"status": 429, "retry_after": "1"}, "json"],
        "c429date": [{"status": 429, "retry_after": date}, "json"],
        "c500": [{"status": 500}, {"status": 503}, "json"],
        "cslow": [{"sleep": 3}, "json"],
        "cdrop": ["drop", "json"],
    }}
    srv = server_factory(script)
    names = list(script["items"])
    out = tmp_path / "out.json"
    t0 = time.monotonic()
    d.describe_command(write_classes(tmp_path, names), None, out, opts(srv, kind="desattr", timeout=1.0,
                                                                      concurrency=5), log=quiet)
    assert time.monotonic() - t0 < 30
    data = json.loads(out.read_text())
    assert all(len(data[n]) == 20 for n in names)
    by_item: dict[str, list[dict]] = {}
    for r in srv.requests():
        by_item.setdefault(r["item"], []).append(r)
    assert {k: len(v) for k, v in by_item.items()} == {"c429": 2, "c429date": 2, "c500": 3, "cslow": 2, "cdrop": 2}
    assert by_item["c429"][1]["t"] - by_item["c429"][0]["t"] >= 0.9  # Retry-After honoured (seconds)
    assert all(r["seed"] == 0 for r in srv.requests())  # a retry is the same request
    assert "Describe the appearance of the object c429" in by_item["c429"][0]["prompt"]
    assert len((tmp_path / "out.cache.jsonl").read_text().splitlines()) == len(names)  # answers only


def test_retries_are_bounded(server_factory, tmp_path):
    srv = server_factory({"default": {"status": 500}})
    out = tmp_path / "out.json"
    with pytest.raises(d.DescribeError, match=r"failed 3 times \(last: HTTP 500\)"):
        d.describe_command(write_classes(tmp_path, ["a_b"]), None, out, opts(srv, retries=2), log=quiet)
    assert len(srv.requests()) == 3 and not out.exists()


def test_malformed_and_short_answers(server_factory, tmp_path):
    srv = server_factory({"items": {"good later": ["malformed", "json"], "short": ["short"],
                                    "never": ["malformed"]}})
    out = tmp_path / "out.json"
    lines: list[str] = []
    with pytest.raises(d.DescribeError) as info:
        d.describe_command(write_classes(tmp_path, ["good_later", "short", "never"]), None, out,
                           opts(srv, max_requests=3), log=lines.append)
    assert "'never'" in str(info.value) and "'good_later'" not in str(info.value) and "'short'" not in str(info.value)
    assert not out.exists() and not list(tmp_path.glob(".out.json.*"))  # nothing half-written
    counts = {}
    for r in srv.requests():
        counts[r["item"]] = counts.get(r["item"], 0) + 1
    assert counts == {"good later": 2, "short": 3, "never": 3}
    # every answer was cached: a second run with more requests only asks the new ones
    srv2 = server_factory({"items": {"short": ["short"], "never": ["json"]}}, "second")
    res = d.describe_command(write_classes(tmp_path, ["good_later", "short", "never"]), None, out,
                             opts(srv2, max_requests=4, cache=tmp_path / "out.cache.jsonl"), log=lines.append)
    assert sorted(r["item"] for r in srv2.requests()) == ["never", "short"]
    assert [r["seed"] for r in srv2.requests() if r["item"] == "never"] == [3]  # request 3 = seed 0 + 3
    data = json.loads(out.read_text())
    assert len(data["good_later"]) == 20 and len(data["short"]) == 8 and len(data["never"]) == 20
    assert res.short == ["short"] and any("fewer than 20" in line for line in lines)


def run_cli(args: list[str], env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*DESCRIBE, *args], capture_output=True, text=True, env=env or clean_env(),
                          timeout=timeout)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def test_auth_and_model_errors_are_one_line(server_factory, tmp_path):
    srv = server_factory({"items": {"k401": [{"status": 401}], "k404": [{"status": 404}]}})
    classes401 = write_classes(tmp_path, ["k401"])
    out = tmp_path / "o.json"
    common = ["--kind", "cupl", "--out", str(out), "--base-url", srv.base_url, "--model", "nosuch-model",
              "--backoff", "0.01"]
    res = run_cli([str(classes401), *common], env=clean_env(MY_KEY="sk-test"))
    assert res.returncode == 2 and len(error_lines(res.stderr)) == 1, res.stderr
    assert "HTTP 401" in res.stderr and "OPENAI_API_KEY" in res.stderr and "Traceback" not in res.stderr
    res = run_cli([str(classes401), *common, "--api-key-env", "MY_KEY"], env=clean_env(MY_KEY="sk-test"))
    assert res.returncode == 2 and "check the key in MY_KEY" in res.stderr
    assert srv.requests()[-1]["auth"] == "Bearer sk-test"  # the key from the variable, as a bearer token
    (tmp_path / "c404.txt").write_text("k404\n")
    res = run_cli([str(tmp_path / "c404.txt"), *common])
    assert res.returncode == 2 and len(error_lines(res.stderr)) == 1
    assert "model 'nosuch-model' is not served" in res.stderr and "--model" in res.stderr and "/models" in res.stderr
    assert len(srv.requests()) == 3  # fatal: no retries
    assert not out.exists()


def test_bad_request_errors_name_the_cause(server_factory, tmp_path):
    srv = server_factory({"items": {
        "ollama": [{"status": 400, "message": 'model "nosuch" not found, try pulling it first'}],
        "param": [{"status": 400, "message": "Unsupported parameter: 'seed' is not supported with this model."}]}})
    with pytest.raises(d.DescribeError, match="model 'fake-model' is not served at .*HTTP 400.*--model"):
        d.describe_command(write_classes(tmp_path, ["ollama"]), None, tmp_path / "a.json", opts(srv), log=quiet)
    with pytest.raises(d.DescribeError, match="rejected the request .*HTTP 400: Unsupported parameter: 'seed'"):
        d.describe_command(write_classes(tmp_path, ["param"]), None, tmp_path / "b.json", opts(srv), log=quiet)
    assert len(srv.requests()) == 2 and not (tmp_path / "a.json").exists() and not (tmp_path / "b.json").exists()


def test_offline_names_what_is_missing(tmp_path):
    classes = write_classes(tmp_path, ["alpha", "beta"])
    out = tmp_path / "o.json"
    res = run_cli([str(classes), "--kind", "cause", "--cause-set", "shape", "--out", str(out), "--offline"])
    assert res.returncode == 2 and len(error_lines(res.stderr)) == 1
    assert "--offline" in res.stderr and "'alpha', 'beta'" in res.stderr and not out.exists()
    res = run_cli([str(classes), "--kind", "cause", "--out", str(out)])
    assert res.returncode == 2 and "--cause-set" in res.stderr


def test_cost_estimate(server_factory, tmp_path, capsys):
    srv = server_factory({})
    classes = write_classes(tmp_path, ["a_1", "a_2", "a_3"])
    out = tmp_path / "o.json"
    lines: list[str] = []
    d.describe_command(classes, None, out, opts(srv, dry_run=True), log=lines.append)
    assert "requests still to make: 3 to 15" in lines[0] and "estimate from the prompt length" in lines[0]
    assert srv.requests() == [] and not out.exists()
    d.describe_command(write_classes(tmp_path, ["a_1"], "one.txt"), None, tmp_path / "one.json",
                       opts(srv, cache=tmp_path / "o.cache.jsonl"), log=quiet)
    lines.clear()
    d.describe_command(classes, None, out, opts(srv, dry_run=True), log=lines.append)
    assert "1 complete from the cache; requests still to make: 2 to 10" in lines[0]
    assert "about 960 to 4,800 tokens (from the usage the server reported for 1 cached answer(s))" in lines[0]


def test_resume_after_kill_9(server_factory, tmp_path):
    names = [f"slow_{i}" for i in range(6)]
    classes = write_classes(tmp_path, names)
    srv = server_factory({"delay": 0.4})
    out = tmp_path / "o.json"
    cache = tmp_path / "o.cache.jsonl"
    args = [str(classes), "--kind", "cupl", "--out", str(out), "--base-url", srv.base_url, "--model", "m",
            "--concurrency", "1"]
    proc = subprocess.Popen([*DESCRIBE, *args], env=clean_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if cache.is_file() and len(cache.read_text().splitlines()) >= 2:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    assert not out.exists()  # killed before the end: no output, not half of one
    answered = {(rec["item"].replace("_", " "), rec["seed"] + rec["request"])
                for rec in d.Cache(cache).entries.values()}
    assert 2 <= len(answered) < len(names)
    before = len(srv.requests())
    res = run_cli(args)
    assert res.returncode == 0, res.stderr
    again = [(r["item"], r["seed"]) for r in srv.requests()[before:]]
    assert again and not set(again) & answered  # nothing already answered is asked again
    assert len(again) <= len(names) - len(answered) + 1  # at most the one in flight at the kill
    # the same file as an uninterrupted run
    res = run_cli([*args[:4], str(tmp_path / "fresh.json"), *args[5:]])
    assert res.returncode == 0, res.stderr
    assert out.read_bytes() == (tmp_path / "fresh.json").read_bytes()


def test_ctrl_c_leaves_the_cache_and_no_output(server_factory, tmp_path):
    names = [f"int_{i}" for i in range(6)]
    srv = server_factory({"delay": 0.4})
    out = tmp_path / "o.json"
    cache = tmp_path / "o.cache.jsonl"
    proc = subprocess.Popen([*DESCRIBE, str(write_classes(tmp_path, names)), "--kind", "cupl", "--out", str(out),
                             "--base-url", srv.base_url, "--model", "m", "--concurrency", "1"],
                            env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (cache.is_file() and cache.read_text().count("\n") >= 1):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    stdout, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and "Traceback" not in err
    assert "interrupted:" in stdout and "run the same command again to continue" in stdout
    assert not out.exists() and 1 <= len(d.Cache(cache).entries) < len(names)


def test_concurrency_is_bounded(server_factory, tmp_path):
    srv = server_factory({"delay": 0.3})
    names = [f"par_{i}" for i in range(6)]
    d.describe_command(write_classes(tmp_path, names), None, tmp_path / "o.json", opts(srv, concurrency=2),
                       log=quiet)
    entries = [json.loads(x) for x in srv.log_path.read_text().splitlines()]
    spans = [(e["t"], e["t_done"]) for e in entries if e.get("answered")]
    assert len(spans) == len(names)
    events = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans])
    live = peak = 0
    for _, step in events:
        live += step
        peak = max(peak, live)
    assert peak == 2


def test_hierarchy_kind_over_a_bundle(server_factory, tmp_path):
    bundle = tmp_path / "run.dga"
    bundle.mkdir()
    manifest = {"format": "dga-bundle", "version": 1, "method": {"name": "dga"}, "backbone": {}, "input": {},
                "classnames": ["red_circle", "red_square", "blue_circle", "blue_square"], "views": [],
                "tensors": {}, "hierarchy": {"level_sizes": [3, 2], "parents": [[0, 0, 1, 2], [0, 0, 1, 1]]}}
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    srv = server_factory({})
    out = tmp_path / "h.json"
    res = run_cli(["--kind", "hierarchy", "--hierarchy", str(bundle), "--out", str(out), "--base-url",
                   srv.base_url, "--model", "m", "--backoff", "0.01"])
    assert res.returncode == 0, res.stderr
    data = json.loads(out.read_text())
    assert list(data) == ["red_circle + red_square", "blue_circle", "blue_square", "blue_circle + blue_square"]
    assert all(len(v) == 20 for v in data.values())
    prompts = [r["prompt"] for r in srv.requests()]
    assert any("classes: 'red circle', 'red square'. Describe what they have in common" in p for p in prompts)
    res = run_cli([str(tmp_path), "--kind", "hierarchy", "--hierarchy", str(bundle), "--out", str(out)])
    assert res.returncode == 2 and "no CLASSES" in res.stderr


def test_cli_help_and_lazy_imports():
    res = run_cli(["--help"])
    assert res.returncode == 0 and "Examples" in res.stdout and "--cause-set" in res.stdout
    code = "import sys, dga.cli.describe; print([m for m in ('torch', 'httpx', 'numpy') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ----------------------------------------------------------------------------------------------
# end to end: the files feed dga-train
# ----------------------------------------------------------------------------------------------


def test_generated_files_feed_dga_train(server_factory, shapes_data, tmp_path):
    from dga.train.data.descriptions import load_descriptions

    root, classnames, _ = shapes_data
    srv = server_factory({})
    files = {}
    for name, kind, cause in [("cupl", "cupl", None), ("des", "desattr", None), ("dist", "distattr", None),
                              ("shape", "cause", "shape"), ("colour", "cause", "colour")]:
        files[name] = tmp_path / f"{name}.json"
        d.describe_command(root, None, files[name], opts(srv, kind=kind, cause=cause, task="shape"), log=quiet)
        assert list(load_descriptions(files[name], list(classnames))) == list(classnames)
    prompts = [r["prompt"] for r in srv.requests()]
    assert any(p.startswith("Describe the shape of the shape image 'red circle'") for p in prompts)
    assert any(p.startswith("Describe the colour of the shape image") for p in prompts)
    assert any(p.startswith("Describe the unique appearance of a red circle from the other shape") for p in prompts)

    train = [str(BIN / "dga-train")] if (BIN / "dga-train").is_file() else [sys.executable, "-m", "dga.cli.train"]
    common = ["--backbone", TINY, "--pretrained", "none", "--shots", "2", "--epochs", "1", "--batch-size", "18",
              "--splits-dir", str(tmp_path / "splits"), "--device", "cpu", "--no-plots"]
    runs = {"attrvr": ["--des", str(files["des"]), "--dist", str(files["dist"])],
            "dvp-cse": ["--cause", str(files["shape"]), "--cause", str(files["colour"])],
            "dvp-cls": ["--descriptions", str(files["cupl"])]}
    for method, extra in runs.items():
        bundle = tmp_path / f"{method}.dga"
        res = subprocess.run([*train, str(root), "--method", method, "--out", str(bundle), *common, *extra],
                             capture_output=True, text=True, env=clean_env(), timeout=300)
        assert res.returncode == 0, f"{method}: {res.stderr[-2000:]}"
        manifest = json.loads((bundle / "manifest.json").read_text())
        assert manifest["method"]["name"] == method


def test_hierarchy_descriptions_feed_dga_train(server_factory, shapes_data, tmp_path):
    """train DGA -> describe its super-classes -> train DGA again on them: the same groups, described."""
    root, _, files = shapes_data
    srv = server_factory({})
    train = [str(BIN / "dga-train")] if (BIN / "dga-train").is_file() else [sys.executable, "-m", "dga.cli.train"]
    common = [str(root), "--method", "dga", "--backbone", TINY, "--pretrained", "none", "--shots", "2",
              "--epochs", "1", "--batch-size", "18", "--splits-dir", str(tmp_path / "splits"), "--device", "cpu",
              "--no-plots", "--descriptions", str(files["default"]), "--seed", "3"]
    first = subprocess.run([*train, *common, "--out", str(tmp_path / "a.dga")], capture_output=True, text=True,
                           env=clean_env(), timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    described = tmp_path / "h.json"
    d.describe_command(None, tmp_path / "a.dga", described, opts(srv, kind="hierarchy"), log=quiet)
    groups = json.loads(described.read_text())
    second = subprocess.run([*train, *common, "--out", str(tmp_path / "b.dga"), "--hierarchy-descriptions",
                             str(described)], capture_output=True, text=True, env=clean_env(), timeout=300)
    assert second.returncode == 0, second.stderr[-2000:]
    a = json.loads((tmp_path / "a.dga" / "manifest.json").read_text())
    b = json.loads((tmp_path / "b.dga" / "manifest.json").read_text())
    assert a["hierarchy"]["parents"] == b["hierarchy"]["parents"]  # PLH is deterministic: the same groups
    used = b["heads"]["sentences"]["hierarchy"]
    assert set(used) <= set(groups) and used and all(used[k] == groups[k] for k in used)
