"""A loopback HTTP server speaking the OpenAI chat-completions protocol, for tests and benchmarks.

Real HTTP on 127.0.0.1 (a free port), with programmable replies and fault injection; plus ``/v1/files`` and
``/v1/batches`` for Batch API mode. Use it in-process::

    from openai_server import OpenAIServer, Reply, HTTPError

    with OpenAIServer(latency=0.0) as server:          # default replies: deterministic valid judgments
        judge = OpenAIJudge(base_url=server.base_url)   # OPENAI_API_KEY must be set (any value)
        ...
        server.chat_count, server.peak_concurrency, server.chat_requests

or standalone: ``python tests/openai_server.py --port 8765 --latency 0.2`` (prints the base URL; ``GET
/v1/_stats`` returns ``chat_count`` and ``peak_concurrency``, ``POST /v1/_reset`` zeroes them).

**Responders.** ``responder(request: ChatRequest) -> Reply | HTTPError | Delay | Reset | RawBody``. The default,
`default_responder`, answers a valid judgment whose score is a hash of (instruction, perspective, images), so equal
requests get equal answers, and obeys *directives* written in the instruction as ``[[spec, spec, ...]]``; a spec is
``[perspective:]kind[xN]`` (``xN``: only the first N attempts of that request, otherwise every attempt):

====================  =================================================================================
kind                  effect
====================  =================================================================================
``429``               HTTP 429 with ``Retry-After: server.retry_after``
``500``/``503``       HTTP 500/503
``400``               HTTP 400 (not retryable)
``slow``              sleep ``server.slow_seconds`` before answering (past a short client timeout)
``reset``             close the connection with a TCP reset, no response
``malformed``         HTTP 200 with a body that is not JSON
``out_of_range``      a judgment with score 7.5
``refusal``           ``message.refusal`` set, no content
``refusal_text``      content "I'm sorry, but I can't help with that."
``empty``             empty content
``garbage``           prose without any judgment
``fence``             the JSON judgment inside a Markdown code fence
``pydict``            ``{'<perspective>': 'yes', 'score': 4.5}`` (single-quoted Python-dict style)
``int``               an integer score (``5``)
``prose``             the JSON judgment surrounded by prose
``length``            ``finish_reason="length"`` with a cut-off reply
====================  =================================================================================

The perspective of a request is recognized from the packaged prompts' wording (`PERSPECTIVE_MARKERS`); the
instruction is the first double-quoted string of the user text.
"""

from __future__ import annotations

import argparse
import email.parser
import email.policy
import hashlib
import itertools
import json
import re
import socket
import struct
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

PERSPECTIVE_MARKERS: dict[str, str] = {
    "following": "INSTRUCTION FOLLOWING",
    "preserving": "DETAIL PRESERVING",
    "quality": "GENERATION QUALITY",
    "combined": "from three perspectives",
}
DEFAULT_MODEL_SNAPSHOT = "gpt-4o-2024-08-06"


# ------------------------------------------------------------------------------------------------------ outcomes
@dataclass
class Reply:
    """A 200 chat completion."""

    content: str | None = None
    refusal: str | None = None
    finish_reason: str = "stop"
    model: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


@dataclass
class HTTPError:
    status: int
    message: str = "injected error"
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Delay:
    """Sleep, then answer with ``then``."""

    seconds: float
    then: Any


class Reset:
    """Close the connection abruptly (TCP RST), sending nothing."""


@dataclass
class RawBody:
    body: bytes
    status: int = 200
    content_type: str = "application/json"


# ------------------------------------------------------------------------------------------------------ requests
@dataclass
class ChatRequest:
    """A received chat-completions request, with what the default responder reads from it."""

    body: dict[str, Any]
    text: str
    images: list[str]
    perspective: str | None
    instruction: str | None
    signature: str
    attempt: int = 1
    received_at: float = 0.0
    path: str = ""

    @property
    def directives(self) -> list[tuple[str | None, str, int | None]]:
        return parse_directives(self.instruction or "")


def _message_parts(body: dict[str, Any]) -> tuple[str, list[str]]:
    texts: list[str] = []
    images: list[str] = []
    for message in body.get("messages") or []:
        content = message.get("content")
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            for part in content:
                if part.get("type") == "text":
                    texts.append(part.get("text", ""))
                elif part.get("type") == "image_url":
                    url = part.get("image_url")
                    images.append(url.get("url", "") if isinstance(url, dict) else str(url))
    return "\n".join(texts), images


def make_chat_request(body: dict[str, Any]) -> ChatRequest:
    text, images = _message_parts(body)
    perspective = next((name for name, marker in PERSPECTIVE_MARKERS.items() if marker in text), None)
    user_text = text
    match = re.search(r'"([^"]*)"', user_text)
    instruction = match.group(1) if match else None
    digest = hashlib.sha256()
    digest.update((perspective or "").encode())
    digest.update((instruction or "").encode())
    for image in images:
        digest.update(hashlib.sha256(image.encode()).digest())
    return ChatRequest(body, text, images, perspective, instruction, digest.hexdigest(), received_at=time.monotonic())


_DIRECTIVE_BLOCK = re.compile(r"\[\[(.*?)\]\]")


def parse_directives(instruction: str) -> list[tuple[str | None, str, int | None]]:
    """``[[following:429x2, garbage]]`` -> ``[("following", "429", 2), (None, "garbage", None)]``."""
    directives = []
    for block in _DIRECTIVE_BLOCK.findall(instruction):
        for spec in block.split(","):
            spec = spec.strip()
            if not spec:
                continue
            perspective, _, kind = spec.rpartition(":")
            count = None
            match = re.fullmatch(r"(.+?)x(\d+)", kind)
            if match:
                kind, count = match.group(1), int(match.group(2))
            directives.append((perspective or None, kind, count))
    return directives


def deterministic_judgment(request: ChatRequest, perspective: str) -> dict[str, Any]:
    """A valid judgment derived from the request content (equal requests -> equal judgments)."""
    value = int(hashlib.sha256(f"{request.signature}:{perspective}".encode()).hexdigest()[:8], 16)
    score = (value % 11) / 2.0
    failure_text = "" if score == 5.0 else f"{perspective} problem #{value % 97}"
    return {"score": score, "verdict": "yes" if score >= 3.0 else "no", "failure_text": failure_text}


def default_responder(request: ChatRequest, server: OpenAIServer | None = None) -> Any:
    """Deterministic valid judgments, with the directives of the module docstring applied."""
    perspective = request.perspective or "following"
    retry_after = server.retry_after if server is not None else "1"
    slow_seconds = server.slow_seconds if server is not None else 2.0
    active = None
    for target, kind, count in request.directives:
        if target not in (None, perspective):
            continue
        if count is None or request.attempt <= count:
            active = kind
            break
    if perspective == "combined":
        judgment: dict[str, Any] = {
            p: deterministic_judgment(request, p) for p in ("following", "preserving", "quality")
        }
    else:
        judgment = deterministic_judgment(request, perspective)
    content = json.dumps(judgment)
    if active is None:
        return Reply(content)
    if active == "429":
        return HTTPError(429, "Rate limit reached (injected)", {"retry-after": retry_after})
    if active in ("500", "502", "503", "504", "400", "401", "404"):
        return HTTPError(int(active), f"injected HTTP {active}")
    if active == "slow":
        return Delay(slow_seconds, Reply(content))
    if active == "reset":
        return Reset()
    if active == "malformed":
        return RawBody(b'{"id": "chatcmpl-broken", "choices": [ {"message": ')
    if active == "out_of_range":
        return Reply(json.dumps({**judgment, "score": 7.5}))
    if active == "refusal":
        return Reply(None, refusal="I can't assist with grading this image.")
    if active == "refusal_text":
        return Reply("I'm sorry, but I can't help with that.")
    if active == "empty":
        return Reply("")
    if active == "garbage":
        return Reply("The edit looks fine overall, nice colours.")
    if active == "fence":
        return Reply(f"```json\n{json.dumps(judgment, indent=2)}\n```")
    if active == "pydict":
        return Reply(f"{{'{perspective}': '{judgment['verdict']}', 'score': {judgment['score']}}}")
    if active == "int":
        return Reply(json.dumps({**judgment, "score": int(judgment["score"])}))
    if active == "prose":
        return Reply(f"Here is my assessment:\n{content}\nLet me know if you need more.")
    if active == "length":
        return Reply(content[: len(content) // 2], finish_reason="length")
    raise ValueError(f"unknown directive {active!r}")


Responder = Callable[[ChatRequest], Any]


# -------------------------------------------------------------------------------------------------------- server
class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024
    allow_reuse_address = True


class OpenAIServer:
    """The server. Args:

    responder: ``fn(ChatRequest) -> outcome`` (see module docstring); `default_responder` when ``None``.
    latency: seconds to wait before each chat reply (a float, or ``fn(ChatRequest) -> float``).
    model: the snapshot reported in replies (``Reply.model`` overrides).
    retry_after: the ``Retry-After`` header value of injected 429s; slow_seconds: the ``slow`` directive's delay.
    max_requests_per_batch_file / max_bytes_per_batch_file: Batch API limits (a bigger input file fails the batch).
    batch_processing_seconds: how long a batch stays ``in_progress`` before completing.
    require_api_key: reject requests without ``Authorization: Bearer <non-empty>`` with 401.
    """

    def __init__(
        self,
        responder: Responder | None = None,
        latency: float | Callable[[ChatRequest], float] = 0.0,
        model: str = DEFAULT_MODEL_SNAPSHOT,
        host: str = "127.0.0.1",
        port: int = 0,
        retry_after: str = "1",
        slow_seconds: float = 2.0,
        max_requests_per_batch_file: int = 50_000,
        max_bytes_per_batch_file: int = 200 * 1024 * 1024,
        batch_processing_seconds: float = 0.0,
        require_api_key: bool = True,
    ) -> None:
        self.responder = responder
        self.latency = latency
        self.model = model
        self.retry_after = retry_after
        self.slow_seconds = slow_seconds
        self.max_requests_per_batch_file = max_requests_per_batch_file
        self.max_bytes_per_batch_file = max_bytes_per_batch_file
        self.batch_processing_seconds = batch_processing_seconds
        self.require_api_key = require_api_key
        self.lock = threading.Lock()
        self.chat_requests: list[ChatRequest] = []
        self.chat_count = 0
        self.in_flight = 0
        self.peak_concurrency = 0
        self.attempts: dict[str, int] = {}
        self.files: dict[str, dict[str, Any]] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self.keep_requests = True
        self._ids = itertools.count(1)
        self._httpd = _HTTPServer((host, port), self._handler_class())
        self._thread: threading.Thread | None = None

    # lifecycle
    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> OpenAIServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> OpenAIServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def reset_counters(self) -> None:
        with self.lock:
            self.chat_requests.clear()
            self.chat_count = 0
            self.peak_concurrency = 0
            self.attempts.clear()

    # logic shared by chat and batch
    def _new_id(self, prefix: str) -> str:
        return f"{prefix}-{next(self._ids)}-{uuid.uuid4().hex[:8]}"

    def _register(self, body: dict[str, Any]) -> ChatRequest:
        request = make_chat_request(body)
        with self.lock:
            request.attempt = self.attempts.get(request.signature, 0) + 1
            self.attempts[request.signature] = request.attempt
            self.chat_count += 1
            if self.keep_requests:
                self.chat_requests.append(request)
        return request

    def _respond(self, request: ChatRequest) -> Any:
        if self.responder is None:
            return default_responder(request, self)
        return self.responder(request)

    def completion_body(self, request: ChatRequest, reply: Reply) -> dict[str, Any]:
        content = reply.content
        prompt_tokens = (
            reply.prompt_tokens
            if reply.prompt_tokens is not None
            else len(request.text) // 4 + 255 * len(request.images)
        )
        completion_tokens = (
            reply.completion_tokens if reply.completion_tokens is not None else len(content or "") // 4 + 1
        )
        return {
            "id": self._new_id("chatcmpl"),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": reply.model or self.model,
            "system_fingerprint": "fp_loopback",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content, "refusal": reply.refusal},
                    "logprobs": None,
                    "finish_reason": reply.finish_reason,
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }

    # batch processing
    def _run_batch(self, batch: dict[str, Any]) -> None:
        data = self.files[batch["input_file_id"]]["content"]
        lines = [line for line in data.decode("utf-8").splitlines() if line.strip()]
        if len(lines) > self.max_requests_per_batch_file or len(data) > self.max_bytes_per_batch_file:
            batch.update(
                status="failed",
                errors={
                    "object": "list",
                    "data": [
                        {"code": "too_large", "message": f"{len(lines)} requests / {len(data)} bytes over the limit"}
                    ],
                },
                failed_at=int(time.time()),
            )
            return
        batch["status"] = "in_progress"
        batch["in_progress_at"] = int(time.time())
        if self.batch_processing_seconds:
            time.sleep(self.batch_processing_seconds)
        output_lines, error_lines = [], []
        for line in lines:
            entry = json.loads(line)
            request = self._register(entry["body"])
            outcome = self._respond(request)
            while isinstance(outcome, Delay):
                outcome = outcome.then
            record: dict[str, Any] = {"id": self._new_id("batch_req"), "custom_id": entry["custom_id"], "error": None}
            if isinstance(outcome, Reply):
                record["response"] = {
                    "status_code": 200,
                    "request_id": self._new_id("req"),
                    "body": self.completion_body(request, outcome),
                }
                output_lines.append(record)
            elif isinstance(outcome, HTTPError):
                record["response"] = {
                    "status_code": outcome.status,
                    "request_id": self._new_id("req"),
                    "body": {"error": {"message": outcome.message, "type": "injected", "code": str(outcome.status)}},
                }
                error_lines.append(record)
            else:
                record["response"] = None
                record["error"] = {"code": "server_error", "message": f"injected {type(outcome).__name__}"}
                error_lines.append(record)
        counts = {"total": len(lines), "completed": len(output_lines), "failed": len(error_lines)}
        batch["request_counts"] = counts
        if output_lines:
            batch["output_file_id"] = self._store_file(_jsonl(output_lines), "batch_output.jsonl", "batch_output")
        if error_lines:
            batch["error_file_id"] = self._store_file(_jsonl(error_lines), "batch_errors.jsonl", "batch_output")
        batch["status"] = "completed"
        batch["completed_at"] = int(time.time())

    def _store_file(self, content: bytes, filename: str, purpose: str) -> str:
        file_id = self._new_id("file")
        self.files[file_id] = {
            "object": "file",
            "id": file_id,
            "bytes": len(content),
            "created_at": int(time.time()),
            "filename": filename,
            "purpose": purpose,
            "status": "processed",
            "content": content,
        }
        return file_id

    # HTTP
    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # one reply = headers + body; no 40 ms delayed-ACK stalls

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def handle(self) -> None:
                try:
                    super().handle()
                except (ConnectionError, OSError):
                    pass

            def send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
                self.send_raw(status, json.dumps(payload).encode(), "application/json", headers)

            def send_raw(
                self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None
            ) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)
                self.wfile.flush()

            def reset(self) -> None:
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.close_connection = True
                self.connection.close()

            def authorized(self) -> bool:
                if not server.require_api_key:
                    return True
                header = self.headers.get("Authorization", "")
                if (header.startswith("Bearer ") and header[7:].strip()) or self.headers.get("api-key", "").strip():
                    return True  # OpenAI sends a bearer token, Azure OpenAI an api-key header
                self.send_json(401, {"error": {"message": "missing API key", "type": "invalid_request_error"}})
                return False

            def read_body(self) -> bytes:
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            def do_POST(self) -> None:  # noqa: N802
                body = self.read_body()
                if not self.authorized():
                    return
                path = self.path.split("?")[0]
                if path.endswith("/_reset"):  # test-only endpoint
                    server.reset_counters()
                    self.send_json(200, {"reset": True})
                elif path.endswith("/chat/completions"):
                    self.chat(body)
                elif path.endswith("/files"):
                    self.upload(body)
                elif path.endswith("/batches"):
                    self.create_batch(body)
                else:
                    self.send_json(404, {"error": {"message": f"unknown path {self.path}"}})

            def do_GET(self) -> None:  # noqa: N802
                if not self.authorized():
                    return
                path = self.path.split("?")[0]
                if path.endswith("/_stats"):  # test-only endpoint: counters of a server in another process
                    with server.lock:
                        stats = {"chat_count": server.chat_count, "peak_concurrency": server.peak_concurrency}
                    self.send_json(200, stats)
                    return
                match = re.search(r"/files/([^/]+)(/content)?$", path)
                if match and match.group(1) in server.files:
                    entry = server.files[match.group(1)]
                    if match.group(2):
                        self.send_raw(200, entry["content"], "application/octet-stream")
                    else:
                        self.send_json(200, {k: v for k, v in entry.items() if k != "content"})
                    return
                match = re.search(r"/batches/([^/]+)$", path)
                if match and match.group(1) in server.batches:
                    self.send_json(200, server.batches[match.group(1)])
                    return
                self.send_json(404, {"error": {"message": f"not found: {self.path}"}})

            def chat(self, raw: bytes) -> None:
                try:
                    body = json.loads(raw)
                except json.JSONDecodeError:
                    self.send_json(400, {"error": {"message": "request body is not JSON"}})
                    return
                request = server._register(body)
                request.path = self.path
                with server.lock:
                    server.in_flight += 1
                    server.peak_concurrency = max(server.peak_concurrency, server.in_flight)
                try:
                    latency = server.latency(request) if callable(server.latency) else server.latency
                    if latency:
                        time.sleep(latency)
                    try:
                        outcome = server._respond(request)
                    except Exception as error:  # a broken responder or directive: say so to the client (not retried)
                        outcome = HTTPError(400, f"loopback server responder failed: {type(error).__name__}: {error}")
                    while isinstance(outcome, Delay):
                        time.sleep(outcome.seconds)
                        outcome = outcome.then
                    if isinstance(outcome, Reply):
                        self.send_json(200, server.completion_body(request, outcome))
                    elif isinstance(outcome, HTTPError):
                        error = {"error": {"message": outcome.message, "type": "injected", "code": str(outcome.status)}}
                        self.send_json(outcome.status, error, outcome.headers)
                    elif isinstance(outcome, RawBody):
                        self.send_raw(outcome.status, outcome.body, outcome.content_type)
                    elif isinstance(outcome, Reset):
                        self.reset()
                    else:
                        raise TypeError(f"responder returned {outcome!r}")
                finally:
                    with server.lock:
                        server.in_flight -= 1

            def upload(self, raw: bytes) -> None:
                content_type = self.headers.get("Content-Type", "")
                message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
                    b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + raw
                )
                fields: dict[str, Any] = {}
                filename = "upload.jsonl"
                for part in message.iter_parts():
                    name = part.get_param("name", header="content-disposition")
                    if part.get_filename():
                        filename = part.get_filename()
                    fields[name] = part.get_payload(decode=True)
                if "file" not in fields or "purpose" not in fields:
                    self.send_json(400, {"error": {"message": "multipart needs 'file' and 'purpose'"}})
                    return
                file_id = server._store_file(fields["file"], filename, fields["purpose"].decode())
                self.send_json(200, {k: v for k, v in server.files[file_id].items() if k != "content"})

            def create_batch(self, raw: bytes) -> None:
                body = json.loads(raw)
                if body.get("input_file_id") not in server.files:
                    self.send_json(400, {"error": {"message": "unknown input_file_id"}})
                    return
                batch_id = server._new_id("batch")
                batch = {
                    "id": batch_id,
                    "object": "batch",
                    "endpoint": body.get("endpoint"),
                    "input_file_id": body["input_file_id"],
                    "completion_window": body.get("completion_window", "24h"),
                    "status": "validating",
                    "created_at": int(time.time()),
                    "output_file_id": None,
                    "error_file_id": None,
                    "errors": None,
                    "request_counts": {"total": 0, "completed": 0, "failed": 0},
                    "metadata": body.get("metadata"),
                }
                server.batches[batch_id] = batch
                self.send_json(200, dict(batch))
                threading.Thread(target=server._run_batch, args=(batch,), daemon=True).start()

        return Handler


def _jsonl(records: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(record).encode() + b"\n" for record in records)


def main() -> None:
    parser = argparse.ArgumentParser(description="Loopback OpenAI-compatible server with fault injection.")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before each chat reply")
    parser.add_argument("--model", default=DEFAULT_MODEL_SNAPSHOT)
    parser.add_argument("--no-request-log", action="store_true", help="keep only counters (long benchmark runs)")
    args = parser.parse_args()
    server = OpenAIServer(latency=args.latency, model=args.model, port=args.port).start()
    server.keep_requests = not args.no_request_log
    print(server.base_url, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
