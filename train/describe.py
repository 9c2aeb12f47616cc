"""Class descriptions from a language model: ``dga-describe`` (docs/describe.md).

One run writes one description file of one kind, in the shape dga-train reads
(``{class_name: [sentence, ...]}``, see ``dga.train.data.descriptions``):

- ``cupl``: CuPL class descriptions (Pratt et al., "What does a platypus look like?", ICCV 2023);
- ``desattr`` / ``distattr``: AttrVR's descriptive and distinctive attributes (Cai et al.,
  "Attribute-based Visual Reprogramming for Vision-Language Models", ICLR 2025);
- ``cause``: DVP-cse's descriptions of one cause (Cai et al., "Understanding Model Reprogramming for
  CLIP via Decoupling Visual Prompts", ICML 2025), one file per cause;
- ``hierarchy``: what the classes of each group of a DGA bundle's label hierarchy have in common,
  keyed by :func:`group_key`.

The questions are the published ones, one small template file per kind in ``describe_prompts/``
(each cites its source); ``_answer.txt`` turns a question into a chat request for ``n`` sentences.

Endpoint: any OpenAI-compatible ``POST {base_url}/chat/completions`` (a hosted API, vLLM, the
llama.cpp server, Ollama's ``/v1``), through httpx. The key comes from an environment variable only.

Cache: every answer is one JSON line, appended with flush + fsync, keyed by
``sha256(model, kind, template sha256, rendered prompt sha256, item, seed, temperature, request)``.
A class's requests are replayed in order (request r asks with seed ``seed + r``; CuPL's request r
asks question r mod 5) until ``n`` unique sentences are in hand or ``max_requests`` were made, so the
output is a pure function of the cached answers: a rerun after a crash sends only what is missing
and an ``--offline`` run rebuilds the same file.

This module imports neither torch nor httpx at import time (the training code imports
:func:`group_key` from here; the HTTP client is only loaded when a request is to be made).
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import os
import random
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from dga.errors import DataError, DgaError

KINDS = ("cupl", "desattr", "distattr", "cause", "hierarchy")
PROMPTS = Path(__file__).resolve().parent / "describe_prompts"
ANSWER_TEMPLATE = "_answer.txt"

DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_MODEL = "gpt-4o-mini"  # the model DVP generated its cause descriptions with
DEFAULT_KEY_ENV = "OPENAI_API_KEY"
DEFAULT_N = 20  # m of METHODS.md: descriptions per class
DEFAULT_TEMPERATURE = 0.99  # the papers' sampling temperature
DEFAULT_TASK = "object"  # AttrVR / DVP's task word for Caltech101, the generic one
SYSTEM_MESSAGE = "You are a helpful assistant."  # DVP's system message

# What a kept sentence looks like. The training side drops sentences shorter than 20 characters
# (--min-chars); open_clip's text encoder reads 77 tokens, so long sentences are cut off there:
# keep one short sentence, not a paragraph.
MIN_CHARS = 20
MAX_CHARS = 200
MAX_WORDS = 60
MAX_RETRY_WAIT = 120.0  # seconds: a longer Retry-After is capped (and the request retried then)


class DescribeError(DgaError):
    """The endpoint refused the requests, or a class got no usable description."""


# ----------------------------------------------------------------------------------------------
# items: classes, or the groups of a bundle's hierarchy
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Item:
    key: str  # the output file's key: the class name, or group_key(members)
    members: tuple[str, ...]  # the class itself, or the classes of a group

    @property
    def name(self) -> str:
        return display_name(self.members[0]) if len(self.members) == 1 else self.key


def display_name(name: str) -> str:
    """A class name as the prompt says it: underscores as spaces, whitespace collapsed."""
    return " ".join(name.replace("_", " ").split())


def group_key(member_names: list[str]) -> str:
    """The description file key of a super-class: its member class names joined by ``" + "``
    (in the bundle's class order; a group of one class is just that class's name)."""
    if not member_names:
        raise ValueError("a group has at least one member class")
    return " + ".join(member_names)


def hierarchy_groups(manifest: dict) -> list[tuple[int, int, list[str]]]:
    """``(level, group_index, member class names)`` for every group of every level of a bundle's
    hierarchy; levels count from 1 (the finest super-classes), members are in the bundle's class
    order. A bundle without a hierarchy (a method other than DGA) is an error."""
    hierarchy = manifest.get("hierarchy")
    classnames = list(manifest.get("classnames") or [])
    if not hierarchy or not hierarchy.get("parents"):
        method = (manifest.get("method") or {}).get("name", "?")
        raise DataError(f"the bundle (method {method}) has no label hierarchy; hierarchy descriptions are for "
                        "bundles trained with --method dga")
    out: list[tuple[int, int, list[str]]] = []
    sizes = list(hierarchy.get("level_sizes") or [])
    for level, parent in enumerate(hierarchy["parents"], start=1):
        if len(parent) != len(classnames):
            raise DataError(f"hierarchy level {level} has {len(parent)} parent indices for {len(classnames)} "
                            "classes; the bundle is damaged: retrain it")
        size = sizes[level - 1] if level - 1 < len(sizes) else (max(parent) + 1 if parent else 0)
        for g in range(size):
            members = [c for c, p in zip(classnames, parent, strict=True) if p == g]
            if members:
                out.append((level, g, members))
    return out


def read_class_names(path: str | os.PathLike[str]) -> list[str]:
    """Class names from a folder of class sub-folders (those of ``train/`` where there is one: the
    order dga-train uses, sorted) or from a text file with one name a line (blank lines and lines
    starting with ``#`` skipped)."""
    path = Path(path)
    if path.is_dir():
        base = path / "train" if (path / "train").is_dir() else path
        with os.scandir(base) as it:
            names = sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))
        if not names:
            raise DataError(f"no class folders in {base}; give a folder of class sub-folders or a text file "
                            "with one class name a line")
        return names
    if not path.is_file():
        raise DataError(f"{path} does not exist; give a folder of class sub-folders or a text file with one "
                        "class name a line")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text ({exc.reason}); save it as UTF-8") from exc
    names = [s.strip() for s in lines if s.strip() and not s.strip().startswith("#")]
    if not names:
        raise DataError(f"{path} names no classes; write one class name a line")
    seen: set[str] = set()
    dupes = [n for n in names if n in seen or seen.add(n)]
    if dupes:
        raise DataError(f"{path} names class(es) {', '.join(map(repr, dupes[:5]))} more than once; keep one")
    return names


def class_items(names: list[str]) -> list[Item]:
    return [Item(n, (n,)) for n in names]


def hierarchy_items(bundle: str | os.PathLike[str]) -> list[Item]:
    """The distinct groups of a bundle's hierarchy (a group that is the same at two levels once)."""
    from dga.train.bundle import read_manifest  # needs the [train] extra; only here

    items: dict[str, Item] = {}
    for _level, _g, members in hierarchy_groups(read_manifest(bundle)):
        key = group_key(members)
        items.setdefault(key, Item(key, tuple(members)))
    return list(items.values())


# ----------------------------------------------------------------------------------------------
# prompts
# ----------------------------------------------------------------------------------------------


def _template_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if not line.startswith("#")]


@dataclass(frozen=True)
class PromptSet:
    kind: str
    questions: tuple[str, ...]
    answer: str
    sha256: str  # of the question file and the answer file: part of every cache key
    mention: bool  # each sentence must name the class

    @classmethod
    def load(cls, kind: str) -> PromptSet:
        if kind not in KINDS:
            raise DataError(f"unknown kind {kind!r}; choose one of {', '.join(KINDS)}")
        qtext = (PROMPTS / f"{kind}.txt").read_text(encoding="utf-8")
        atext = (PROMPTS / ANSWER_TEMPLATE).read_text(encoding="utf-8")
        questions = tuple(q.strip() for q in _template_lines(qtext) if q.strip())
        answer = "\n".join(_template_lines(atext)).strip()
        sha = hashlib.sha256((qtext + "\n\0\n" + atext).encode("utf-8")).hexdigest()
        return cls(kind, questions, answer, sha, mention=kind != "hierarchy")

    def render(self, item: Item, request: int, count: int, task: str, cause: str | None) -> str:
        name = item.name
        fields = {"name": name, "a_class": f"{article(name)} {name}", "task": task, "cause": cause or "",
                  "members": ", ".join(f"'{display_name(m)}'" for m in item.members)}
        question = self.questions[request % len(self.questions)].format(**fields)
        rule = f', and names "{name}"' if self.mention else ""
        return self.answer.format(question=question, count=count, rule=rule)


def article(name: str) -> str:
    """AttrVR's article rule: "an" before a vowel, else "a"."""
    return "an" if name[:1].lower() in "aeiou" and name[:1] else "a"


# ----------------------------------------------------------------------------------------------
# parsing the model's answer
# ----------------------------------------------------------------------------------------------

_FENCE = re.compile(r"```[a-zA-Z0-9_-]*\s*\n?(.*?)```", re.S)
_BULLET = re.compile(r"^\s*(?:[-*+\u2022\u00b7\u2013\u2014>]+|\(?\d{1,3}[.):\]]|\(?[a-zA-Z][.)](?=\s)|#+)\s*")
_SPLIT_SENTENCES = re.compile(r"(?<=[.!?])\s+(?=[\"'(A-Z0-9])")
_PREAMBLE = re.compile(r"^(here (are|is)|sure\b|certainly\b|of course\b|below (are|is))", re.I)


def _strings(value: object) -> list[str]:
    """Every string in a parsed JSON value, in order (lists, objects' values, nested)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    return []


def _json_candidates(text: str) -> list[object]:
    found: list[object] = []
    try:
        found.append(json.loads(text))
        return found
    except (json.JSONDecodeError, ValueError):
        pass
    for open_, close in (("[", "]"), ("{", "}")):
        start, end = text.find(open_), text.rfind(close)
        if 0 <= start < end:
            try:
                found.append(json.loads(text[start : end + 1]))
            except (json.JSONDecodeError, ValueError):
                continue
    return found


def _lines(text: str) -> list[str]:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    listed = [line for line in lines if _BULLET.match(line)]
    if listed and len(listed) >= len(lines) // 2:  # a list: its items only, not its heading or closing words
        return [_BULLET.sub("", line, count=1) for line in listed]
    out: list[str] = []
    for line in lines:
        if line.endswith(":") or (_PREAMBLE.match(line) and len(lines) > 1):
            continue  # a heading or a preamble ("Here are 20 descriptions")
        out.extend(_SPLIT_SENTENCES.split(line))  # prose: one sentence each
    return out


_STRING_LITERAL = re.compile(r'"((?:[^"\\\n]|\\.)*)"')


def _string_literals(text: str) -> list[str]:
    """The complete JSON string literals of a JSON array cut short (an answer stopped at max_tokens)."""
    out = []
    for lit in _STRING_LITERAL.findall(text):
        try:
            out.append(json.loads(f'"{lit}"'))
        except json.JSONDecodeError:
            continue
    return out


def parse_answer(text: str) -> list[str]:
    """The candidate sentences of an answer: a JSON array or object (fenced or not, with text around
    it), a numbered or bulleted list, or plain prose split into sentences. Not yet cleaned."""
    text = text.strip()
    fenced = _FENCE.findall(text)
    bodies = fenced + [text] if fenced else [text]
    for body in bodies:
        for value in _json_candidates(body.strip()):
            strings = _strings(value)
            if strings:
                return strings
    body = "\n".join(f.strip() for f in fenced) if fenced else _FENCE.sub("", text)
    if body.lstrip().startswith(("[", "{")):
        literals = _string_literals(body)
        if literals:
            return literals
    return _lines(body)


def _folded(text: str) -> str:
    return " ".join(re.sub(r"[^0-9a-z]+", " ", text.casefold()).split())


def clean_sentence(text: str) -> str:
    """Whitespace collapsed; list markers, markdown emphasis, wrapping quotes and trailing commas
    removed; a final full stop added where the sentence has no end punctuation."""
    s = " ".join(str(text).split())
    s = _BULLET.sub("", s, count=1) if _BULLET.match(s) and not re.match(r"^\d+(\.\d+)?\s*[a-z%]", s) else s
    s = s.replace("**", "").replace("__", "").strip()
    s = s.strip(" \"'\u201c\u201d\u2018\u2019`").rstrip(",;").strip()
    if s and s[-1] not in ".!?":
        s += "."
    return s


def clean_sentences(candidates: Iterable[str], name: str | None = None, seen: set[str] | None = None) -> list[str]:
    """Cleaned, kept sentences: MIN_CHARS..MAX_CHARS characters, at most MAX_WORDS words, naming
    ``name`` where one is given (compared without case and punctuation), and not already in ``seen``
    (case-insensitive; ``seen`` is updated)."""
    seen = set() if seen is None else seen
    needle = _folded(name) if name else ""
    kept: list[str] = []
    for raw in candidates:
        s = clean_sentence(raw)
        if not (MIN_CHARS <= len(s) <= MAX_CHARS) or len(s.split()) > MAX_WORDS:
            continue
        folded = _folded(s)
        if needle and f" {needle} " not in f" {folded} ":
            continue
        if folded in seen:
            continue
        seen.add(folded)
        kept.append(s)
    return kept


# ----------------------------------------------------------------------------------------------
# the cache
# ----------------------------------------------------------------------------------------------


def request_key(model: str, kind: str, template_sha256: str, prompt: str, item: str, seed: int,
                temperature: float, request: int) -> str:
    fields = {"model": model, "kind": kind, "template_sha256": template_sha256,
              "prompt_sha256": hashlib.sha256(prompt.encode("utf-8")).hexdigest(), "item": item,
              "seed": seed, "temperature": temperature, "request": request}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode("utf-8")).hexdigest()


class Cache:
    """Append-only JSON lines ``{"key", ..., "answer", "usage"}``; a torn last line is ignored."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.entries: dict[str, dict] = {}
        self._lock = threading.Lock()
        if self.path.is_file():
            with open(self.path, "rb") as fh:
                for raw in fh:
                    try:
                        rec = json.loads(raw)
                    except (json.JSONDecodeError, UnicodeDecodeError):
                        continue  # the line being written when a run was killed
                    if isinstance(rec, dict) and isinstance(rec.get("key"), str) and isinstance(rec.get("answer"), str):
                        self.entries[rec["key"]] = rec

    def get(self, key: str) -> dict | None:
        return self.entries.get(key)

    def put(self, record: dict) -> None:
        line = (json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8")
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "ab+") as fh:
                fh.seek(0, os.SEEK_END)
                if fh.tell() > 0:
                    fh.seek(-1, os.SEEK_END)
                    if fh.read(1) != b"\n":
                        fh.write(b"\n")  # end a torn line so this record starts on its own
                fh.write(line)
                fh.flush()
                os.fsync(fh.fileno())
            self.entries[record["key"]] = record


def default_cache_path(out: Path) -> Path:
    return out.with_name((out.stem if out.suffix else out.name) + ".cache.jsonl")


# ----------------------------------------------------------------------------------------------
# the endpoint
# ----------------------------------------------------------------------------------------------


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Retry-After as seconds: a number of seconds, or an HTTP date (RFC 9110); None if absent or
    unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    now_dt = datetime.fromtimestamp(time.time() if now is None else now, UTC)
    return max(0.0, (when - now_dt).total_seconds())


def _server_message(resp) -> str:
    try:
        body = resp.json()
        err = body.get("error", body) if isinstance(body, dict) else body
        msg = err.get("message") if isinstance(err, dict) else err
        text = str(msg or "")
    except ValueError:
        text = resp.text or ""
    return " ".join(text.split())[:200]


_UNKNOWN_MODEL = re.compile(r"model\W.*\b(not found|does not exist|not exist|unknown|not available|not served)\b"
                            r"|\b(unknown|invalid|no such)\s+model\b", re.I)


class Endpoint:
    """POST /chat/completions with bounded retries; fatal answers raise DescribeError at once."""

    def __init__(self, opts: DescribeOptions, stop: threading.Event):
        try:
            import httpx  # the [train] extra; only loaded when a request is to be made
        except ModuleNotFoundError as exc:
            raise DescribeError("dga-describe needs httpx, which comes with the [train] extra: "
                                "pip install 'dga[train]' (or build from the cache with --offline)") from exc

        self.httpx = httpx
        self.opts = opts
        self.stop = stop
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(opts.api_key_env, "")
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self.has_key = bool(key)
        self.url = opts.base_url.rstrip("/") + "/chat/completions"
        limits = httpx.Limits(max_connections=opts.concurrency, max_keepalive_connections=opts.concurrency)
        self.client = httpx.Client(headers=headers, timeout=httpx.Timeout(opts.timeout), limits=limits)

    def close(self) -> None:
        self.client.close()

    def _fatal(self, resp) -> DescribeError | None:
        status, msg = resp.status_code, _server_message(resp)
        where = f"{self.url} (HTTP {status}{': ' + msg if msg else ''})"
        env = self.opts.api_key_env
        if status in (401, 403):
            fix = (f"set {env} to a valid key" if not self.has_key else
                   f"check the key in {env} (and that it may use model {self.opts.model!r})")
            return DescribeError(f"the server refused the request at {where}: {fix}, or pass --api-key-env NAME "
                                 "to read the key from another variable")
        if status == 404 or (status in (400, 422) and _UNKNOWN_MODEL.search(msg)):
            return DescribeError(f"model {self.opts.model!r} is not served at {where}: pass --model with a model "
                                 f"the server lists at GET {self.opts.base_url.rstrip('/')}/models, and check "
                                 "--base-url (it usually ends in /v1)")
        if 400 <= status < 500 and status not in (408, 409, 425, 429):
            return DescribeError(f"the server rejected the request at {where}: check --model, --base-url and "
                                 "the options sent (temperature, seed)")
        return None

    def chat(self, prompt: str, seed: int, count: int) -> dict:
        """The server's JSON answer ``{"answer": text, "usage": {...}}``."""
        opts, httpx = self.opts, self.httpx
        payload = {"model": opts.model, "temperature": opts.temperature, "seed": seed,
                   "max_tokens": 60 * count + 200,
                   "messages": [{"role": "system", "content": SYSTEM_MESSAGE}, {"role": "user", "content": prompt}]}
        last = ""
        for attempt in range(opts.retries + 1):
            if self.stop.is_set():
                raise _Stopped()
            wait = opts.backoff * (2**attempt) * (0.5 + 0.5 * random.random())
            try:
                resp = self.client.post(self.url, json=payload)
            except httpx.TimeoutException:
                last = f"no answer within --timeout {opts.timeout:g} s"
            except httpx.TransportError as exc:
                last = f"connection error ({type(exc).__name__}: {' '.join(str(exc).split())[:120]})"
            else:
                if resp.status_code == 200:
                    try:
                        body = resp.json()
                        content = body["choices"][0]["message"]["content"]
                        if not isinstance(content, str):
                            raise TypeError("content is not text")
                        usage = body.get("usage") if isinstance(body.get("usage"), dict) else None
                        return {"answer": content, "usage": usage}
                    except (ValueError, KeyError, IndexError, TypeError) as exc:
                        last = f"an answer that is not a chat completion ({type(exc).__name__})"
                else:
                    fatal = self._fatal(resp)
                    if fatal is not None:
                        raise fatal
                    last = f"HTTP {resp.status_code}"
                    after = retry_after_seconds(resp.headers.get("Retry-After"))
                    if after is not None:
                        wait = after
            if attempt < opts.retries:
                self.stop.wait(min(wait, MAX_RETRY_WAIT))
        raise DescribeError(f"{self.url} failed {opts.retries + 1} times (last: {last}); check that the server "
                            "is up and --base-url, or raise --retries / --timeout")


class _Stopped(Exception):
    """Another request failed fatally or the run was interrupted: stop this class quietly."""


# ----------------------------------------------------------------------------------------------
# the run
# ----------------------------------------------------------------------------------------------


@dataclass
class DescribeOptions:
    kind: str
    n: int = DEFAULT_N
    cause: str | None = None
    task: str = DEFAULT_TASK
    base_url: str = DEFAULT_BASE_URL
    model: str = DEFAULT_MODEL
    api_key_env: str = DEFAULT_KEY_ENV
    cache: Path | None = None
    offline: bool = False
    concurrency: int = 4
    timeout: float = 60.0
    retries: int = 5
    backoff: float = 1.0
    temperature: float = DEFAULT_TEMPERATURE
    seed: int = 0
    max_requests: int = 5
    dry_run: bool = False

    def check(self) -> None:
        if self.kind not in KINDS:
            raise DataError(f"unknown kind {self.kind!r}; choose one of {', '.join(KINDS)}")
        if self.kind == "cause" and not (self.cause or "").strip():
            raise DataError("--kind cause needs --cause-set NAME (e.g. shape, colour, texture, context); run once "
                            "per cause to get one file per cause")
        if self.kind != "cause" and self.cause:
            raise DataError(f"--cause-set is for --kind cause, not {self.kind}")
        for name, value, low in (("-n", self.n, 1), ("--concurrency", self.concurrency, 1),
                                 ("--max-requests", self.max_requests, 1), ("--retries", self.retries, 0)):
            if value < low:
                raise DataError(f"{name} is {value}; give at least {low}")
        if self.timeout <= 0 or self.backoff < 0:
            raise DataError("--timeout must be above 0 and --backoff at least 0")
        if not self.model.strip():
            raise DataError("--model is empty; name the model the server serves")


@dataclass
class ItemState:
    item: Item
    sentences: list[str] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)
    requests: int = 0  # requests replayed (cached or made)
    made: int = 0  # of them, made in this run
    done: bool = False  # n sentences, or max_requests reached

    def add(self, answer: str, n: int, mention: bool) -> None:
        name = self.item.name if mention else None
        kept = clean_sentences(parse_answer(answer), name, self.seen)
        self.sentences.extend(kept[: n - len(self.sentences)])


@dataclass
class DescribeResult:
    path: Path | None
    descriptions: dict[str, list[str]]
    requests_made: int
    cached_answers: int
    short: list[str]  # keys that got fewer than n sentences


class _Run:
    def __init__(self, items: list[Item], opts: DescribeOptions, cache: Cache, log: Callable[[str], None]):
        self.items, self.opts, self.cache, self.log = items, opts, cache, log
        self.prompts = PromptSet.load(opts.kind)
        self.states = [ItemState(it) for it in items]

    def prompt(self, item: Item, r: int) -> tuple[str, str]:
        text = self.prompts.render(item, r, self.opts.n, self.opts.task, self.opts.cause)
        key = request_key(self.opts.model, self.opts.kind, self.prompts.sha256, text, item.key, self.opts.seed,
                          self.opts.temperature, r)
        return text, key

    def replay(self, st: ItemState) -> None:
        """Feed the cached answers of ``st`` in request order; stops at the first one not cached."""
        while not st.done:
            if len(st.sentences) >= self.opts.n or st.requests >= self.opts.max_requests:
                st.done = True
                return
            _, key = self.prompt(st.item, st.requests)
            rec = self.cache.get(key)
            if rec is None:
                return
            st.add(rec["answer"], self.opts.n, self.prompts.mention)
            st.requests += 1

    def estimate(self) -> str:
        todo = [st for st in self.states if not st.done]
        low = len(todo)
        high = sum(self.opts.max_requests - st.requests for st in todo)
        usages = [rec["usage"] for rec in self.cache.entries.values()
                  if isinstance(rec.get("usage"), dict) and rec.get("model") == self.opts.model
                  and isinstance(rec["usage"].get("total_tokens"), int)]
        if usages:
            per = sum(u["total_tokens"] for u in usages) / len(usages)
            how = f"from the usage the server reported for {len(usages)} cached answer(s)"
        else:
            sample = self.prompt(todo[0].item, todo[0].requests)[0] if todo else ""
            per = (len(SYSTEM_MESSAGE) + len(sample)) / 4 + 30 * self.opts.n
            how = "an estimate from the prompt length: about 4 characters a token, 30 tokens an answer sentence"
        done = len(self.states) - len(todo)
        what = "groups" if self.opts.kind == "hierarchy" else "classes"
        return (f"{len(self.states)} {what}, {done} complete from the cache; requests still to make: {low}"
                + (f" to {high}" if high != low else "")
                + (f"; about {int(round(per * low)):,} to {int(round(per * high)):,} tokens ({how})" if todo else ""))

    def work(self, st: ItemState, endpoint: Endpoint) -> None:
        self.replay(st)
        while not st.done:
            if endpoint.stop.is_set():
                raise _Stopped()
            text, key = self.prompt(st.item, st.requests)
            seed = self.opts.seed + st.requests
            got = endpoint.chat(text, seed, self.opts.n)
            self.cache.put({"key": key, "model": self.opts.model, "kind": self.opts.kind,
                            "template_sha256": self.prompts.sha256, "item": st.item.key, "cause": self.opts.cause,
                            "task": self.opts.task, "seed": self.opts.seed, "temperature": self.opts.temperature,
                            "request": st.requests, "request_seed": seed, "prompt": text, "answer": got["answer"],
                            "usage": got["usage"]})
            st.made += 1
            self.replay(st)
        self.log(f"{st.item.key}: {len(st.sentences)} sentence(s) from {st.requests} answer(s)"
                 f"{f', {st.made} new' if st.made else ', all cached'}")

    def run_online(self) -> None:
        from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

        todo = [st for st in self.states if not st.done]
        if not todo:
            return
        stop = threading.Event()
        endpoint = Endpoint(self.opts, stop)
        pool = ThreadPoolExecutor(max_workers=min(self.opts.concurrency, len(todo)), thread_name_prefix="describe")
        try:
            futures = [pool.submit(self.work, st, endpoint) for st in todo]
            wait(futures, return_when=FIRST_EXCEPTION)
            errors = [f.exception() for f in futures if f.done() and f.exception() is not None]
            errors = [e for e in errors if not isinstance(e, _Stopped)]
            if errors:
                stop.set()
                wait(futures)
                raise errors[0]
        except BaseException:
            stop.set()
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        finally:
            pool.shutdown(wait=True)
            endpoint.close()


def describe(items: list[Item], out: str | os.PathLike[str], opts: DescribeOptions,
             log: Callable[[str], None] = print) -> DescribeResult:
    """Write ``out`` (``{key: [sentence, ...]}`` in item order) atomically from the cache and, unless
    ``opts.offline``, the endpoint. Nothing is written when any item fails."""
    from dga.fsutil import atomic_write

    opts.check()
    out = Path(out)
    if not items:
        raise DataError("no classes to describe")
    cache_path = Path(opts.cache) if opts.cache else default_cache_path(out)
    cache = Cache(cache_path)
    run = _Run(items, opts, cache, log)
    for st in run.states:
        run.replay(st)
    cached = sum(st.requests for st in run.states)
    log(f"dga-describe {opts.kind}{f' ({opts.cause})' if opts.cause else ''} with {opts.model} at {opts.base_url}: "
        + run.estimate() + f"; cache {cache_path}")
    if opts.dry_run:
        return DescribeResult(None, {}, 0, cached, [])
    if opts.offline:
        missing = [st.item.key for st in run.states if not st.done]
        if missing:
            shown = ", ".join(repr(k) for k in missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5
                                                              else "")
            raise DescribeError(f"--offline: the cache {cache_path} lacks answers for {len(missing)} of "
                                f"{len(run.states)} item(s): {shown}; run without --offline to fetch them")
    else:
        try:
            run.run_online()
        except KeyboardInterrupt:
            log(f"interrupted: {sum(st.made for st in run.states)} new answer(s) are in {cache_path}; "
                "run the same command again to continue")
            raise
    empty = [st.item.key for st in run.states if not st.sentences]
    if empty:
        shown = ", ".join(repr(k) for k in empty[:5]) + (f" and {len(empty) - 5} more" if len(empty) > 5 else "")
        raise DescribeError(
            f"no usable description for {shown} after {opts.max_requests} answer(s) each (none parsed into "
            f"sentences of {MIN_CHARS} to {MAX_CHARS} characters{' naming the class' if run.prompts.mention else ''}); "
            f"inspect the answers in {cache_path}, try another --model or raise --max-requests")
    short = [st.item.key for st in run.states if len(st.sentences) < opts.n]
    if short:
        log(f"warning: {len(short)} item(s) got fewer than {opts.n} distinct sentences after {opts.max_requests} "
            f"answer(s): {', '.join(map(repr, short[:5]))}; dga-train repeats sentences to fill m")
    descriptions = {st.item.key: list(st.sentences) for st in run.states}
    atomic_write(out, json.dumps(descriptions, indent=2, ensure_ascii=False) + "\n")
    made = sum(st.made for st in run.states)
    log(f"wrote {out}: {len(descriptions)} item(s), {made} request(s) made, {cached} answer(s) from the cache")
    return DescribeResult(out, descriptions, made, cached, short)


def describe_command(classes: str | os.PathLike[str] | None, hierarchy: str | os.PathLike[str] | None,
                     out: str | os.PathLike[str], opts: DescribeOptions,
                     log: Callable[[str], None] = print) -> DescribeResult:
    """What ``dga-describe`` runs: items from CLASSES or from --hierarchy, then :func:`describe`."""
    if opts.kind == "hierarchy":
        if hierarchy is None or classes is not None:
            raise DataError("--kind hierarchy takes --hierarchy BUNDLE.dga and no CLASSES argument")
        items = hierarchy_items(hierarchy)
    else:
        if hierarchy is not None:
            raise DataError(f"--hierarchy is for --kind hierarchy, not {opts.kind}")
        if classes is None:
            raise DataError("give CLASSES: a folder of class sub-folders or a text file with one class name a line")
        items = class_items(read_class_names(classes))
    return describe(items, out, opts, log=log)

