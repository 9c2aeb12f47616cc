"""A small fake OpenAI-compatible chat-completions server for the dga-describe tests.

    python tests/fake_openai.py --log requests.jsonl --script script.json [--lifetime 120]

Binds 127.0.0.1 on a free port and prints ``PORT <n>`` on stdout. Every request is logged (one
JSON line, flushed: time, path, item, seed, the item's request count, what was done; a second line
with ``answered`` and ``t_done`` once an answer was sent). The answer is
scripted per item (the name the prompt asks to be mentioned, or ``"?"``) and per request count:
``script = {"default": B, "items": {name: [B, B, ...]}, "delay": seconds}`` where request k of an
item gets the k-th behaviour (the last one repeats) and B is one of

- ``"json"``, ``"numbered"``, ``"bullets"``, ``"fenced"``, ``"object"``, ``"prose"``: a well-formed
  answer in that shape, with sentences that depend only on (item, seed), so reruns agree;
- ``"malformed"``: text with no usable sentence; ``"short"``: two sentences only;
- ``{"status": 429, "retry_after": "1"}``, ``{"status": 500}``, ``{"status": 401}``,
  ``{"status": 404}``: that HTTP error (404 with OpenAI's "model not found" body; ``"message"``
  sets the error message);
- ``{"sleep": s}``: a well-formed answer after ``s`` seconds; ``"drop"``: close the connection.

Bounded: after ``--max-requests`` requests it answers 503, after ``--lifetime`` seconds it exits.
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

NAME = re.compile(r'names "([^"]+)"')


def sentences(item: str, seed: int, count: int) -> list[str]:
    return [f"A photo of {item} in variant {seed}-{i}, with its typical look." for i in range(count)]


def render(shape: str, item: str, seed: int, count: int) -> str:
    s = sentences(item, seed, count)
    if shape == "numbered":
        return "Here are the descriptions:\n" + "\n".join(f"{i + 1}. {x}" for i, x in enumerate(s))
    if shape == "bullets":
        return "\n".join(f"- {x}" for x in s) + "\n\nI hope these help."
    if shape == "fenced":
        return "Sure!\n```json\n" + json.dumps(s, indent=1) + "\n```"
    if shape == "object":
        return json.dumps({"descriptions": s})
    if shape == "prose":
        return " ".join(s)
    if shape == "short":
        return json.dumps(s[:2])
    if shape == "malformed":
        return "I am sorry, I cannot help with that. {\"oops\": ["
    return json.dumps(s)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet
        pass

    def _send(self, status: int, body: dict, headers: dict | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._send(200, {"object": "list", "data": [{"id": "fake-model", "object": "model"}]})

    def do_POST(self) -> None:
        srv = self.server
        length = int(self.headers.get("Content-Length") or 0)
        try:
            req = json.loads(self.rfile.read(length) or b"{}")
        except json.JSONDecodeError:
            req = {}
        prompt = " ".join(m.get("content", "") for m in req.get("messages", []) if m.get("role") == "user")
        match = NAME.search(prompt)
        item = match.group(1) if match else "?"
        seed = int(req.get("seed") or 0)
        count_asked = int((re.search(r"Give (\d+) different", prompt) or [0, 20])[1])
        with srv.lock:
            srv.total += 1
            k = srv.counts.get(item, 0)
            srv.counts[item] = k + 1
            total = srv.total
        script = srv.script
        plan = script.get("items", {}).get(item)
        behaviour = plan[min(k, len(plan) - 1)] if plan else script.get("default", "json")
        entry = {"t": time.time(), "path": self.path, "item": item, "seed": seed, "k": k, "model": req.get("model"),
                 "auth": self.headers.get("Authorization", ""), "behaviour": behaviour, "prompt": prompt}
        srv.log(entry)
        if total > srv.max_requests:
            self._send(503, {"error": {"message": "fake server request limit reached"}})
            return
        delay = float(script.get("delay", 0))
        if isinstance(behaviour, dict) and "status" in behaviour:
            status = int(behaviour["status"])
            headers = {"Retry-After": str(behaviour["retry_after"])} if "retry_after" in behaviour else {}
            message = {401: "Incorrect API key provided", 404: f"The model `{req.get('model')}` does not exist"}
            text = behaviour.get("message") or message.get(status, f"fake error {status}")
            self._send(status, {"error": {"message": text}}, headers)
            return
        if behaviour == "drop":
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        if isinstance(behaviour, dict) and "sleep" in behaviour:
            time.sleep(float(behaviour["sleep"]))
            shape = behaviour.get("shape", "json")
        else:
            shape = behaviour
        if delay:
            time.sleep(delay)
        content = render(shape, item, seed, count_asked)
        self._send(200, {"id": f"fake-{total}", "object": "chat.completion", "model": req.get("model"),
                         "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                      "finish_reason": "stop"}],
                         "usage": {"prompt_tokens": 80, "completion_tokens": 400, "total_tokens": 480}})
        srv.log({**entry, "answered": True, "t_done": time.time()})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--log", required=True)
    ap.add_argument("--script", required=True)
    ap.add_argument("--max-requests", type=int, default=400)
    ap.add_argument("--lifetime", type=float, default=300.0)
    args = ap.parse_args(argv)
    with open(args.script, encoding="utf-8") as fh:
        script = json.load(fh)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.script = script
    server.lock = threading.Lock()
    server.counts = {}
    server.total = 0
    server.max_requests = args.max_requests
    log_fh = open(args.log, "a", encoding="utf-8")
    log_lock = threading.Lock()

    def log(entry: dict) -> None:
        with log_lock:
            log_fh.write(json.dumps(entry) + "\n")
            log_fh.flush()

    server.log = log
    timer = threading.Timer(args.lifetime, server.shutdown)
    timer.daemon = True
    timer.start()
    print(f"PORT {server.server_address[1]}", flush=True)
    try:
        server.serve_forever(poll_interval=0.1)
    finally:
        server.server_close()
        log_fh.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
