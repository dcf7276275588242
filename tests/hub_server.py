"""A loopback stand-in for the part of the Hugging Face Hub HTTP API that `huggingface_hub` 2.4 and `datasets` use.

Covered (model and dataset repos, one ``main`` branch plus commit-hash revisions):

- ``GET  /api/whoami-v2``                                   token check
- ``POST /api/repos/create``                                create a repo (409 when it exists)
- ``GET  /api/{type}s/{repo}[/revision/{rev}]``             repo info (``sha``, ``siblings``, ``private``, ``gated``)
- ``POST /api/validate-yaml``                               README front matter check (really parsed with PyYAML)
- ``POST /api/{type}s/{repo}/preupload/{rev}``              upload mode (regular / lfs) and remote oid per file
- ``POST /{prefix}{repo}.git/info/lfs/objects/batch``       legacy LFS batch API (client run with HF_HUB_DISABLE_XET=1)
- ``PUT  /lfs-upload/{oid}``                                the ``basic`` transfer upload action (sha256 and size checked)
- ``POST /api/{type}s/{repo}/commit/{rev}``                 NDJSON commit with ``file`` and ``lfsFile`` entries
- ``GET  /api/{type}s/{repo}/tree/{rev}[/{path}]``          tree listing (``recursive``), paths-info (``POST``)
- ``GET  /api/{type}s/{repo}/refs``                         branches
- ``HEAD/GET /{prefix}{repo}/resolve/{rev}/{path}``         file download with ``X-Repo-Commit``/ETag/Range headers

Errors carry the ``X-Error-Code`` headers the client turns into `RepositoryNotFoundError`, `RevisionNotFoundError`,
`EntryNotFoundError` and `GatedRepoError`. Tests can inject failures (`HubState.inject_failure`) and read the request
log (`HubState.requests`) to assert what travelled.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

REPO_TYPES = ("model", "dataset")
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".ckpt", ".parquet", ".arrow", ".png", ".jpg", ".jpeg", ".webp", ".zip")
LFS_SIZE_THRESHOLD = 10 * 1024 * 1024


def git_blob_oid(content: bytes) -> str:
    """The git object id of a blob (what the Hub reports as a regular file's oid)."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


@dataclass
class StoredFile:
    """One file of a commit's tree: inline content or a reference to an LFS object."""

    size: int
    blob_oid: str
    content: bytes | None = None  # regular file
    lfs_sha256: str | None = None  # LFS file


@dataclass
class Commit:
    oid: str
    message: str
    files: dict[str, StoredFile]
    parent: str | None


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool = False
    gated: bool = False
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    granted_users: set[str] = field(default_factory=set)

    def head(self, revision: str) -> Commit | None:
        revision = unquote(revision)
        if revision in self.branches:
            return self.commits[self.branches[revision]]
        if revision in self.commits:
            return self.commits[revision]
        matches = [oid for oid in self.commits if len(revision) >= 7 and oid.startswith(revision)]
        return self.commits[matches[0]] if len(matches) == 1 else None


@dataclass
class InjectedFailure:
    """Fail the next `count` requests whose route name is `route` (``"commit"``, ``"lfs-upload"``, ...)."""

    route: str
    count: int
    mode: str  # "500", "503" or "drop" (close the connection without answering)


class HubState:
    """Everything the fake Hub knows: repos, LFS objects, tokens, the request log and injected failures."""

    def __init__(self, tokens: dict[str, str] | None = None) -> None:
        self.tokens: dict[str, str] = dict(tokens or {"hf_test_write_token": "tester"})
        self.repos: dict[tuple[str, str], Repo] = {}
        self.lfs_objects: dict[str, bytes] = {}
        self.requests: list[tuple[str, str, str]] = []  # (method, route name, path)
        self.failures: list[InjectedFailure] = []
        self.lock = threading.RLock()
        self.endpoint = ""

    # ---- helpers for tests -------------------------------------------------------------------------------------
    def inject_failure(self, route: str, count: int = 1, mode: str = "503") -> None:
        if mode not in ("500", "503", "drop"):
            raise ValueError(f"`mode` must be one of '500', '503', 'drop', got {mode!r}")
        self.failures.append(InjectedFailure(route=route, count=count, mode=mode))

    def count(self, route: str, method: str | None = None) -> int:
        return sum(1 for m, r, _ in self.requests if r == route and (method is None or m == method))

    def commits(self, repo_id: str, repo_type: str = "model") -> list[Commit]:
        """Commits reachable from ``main``, newest first."""
        repo = self.repos[(repo_type, repo_id)]
        chain, oid = [], repo.branches.get("main")
        while oid is not None:
            chain.append(repo.commits[oid])
            oid = repo.commits[oid].parent
        return chain

    def file_bytes(self, repo_id: str, path: str, repo_type: str = "model", revision: str = "main") -> bytes:
        repo = self.repos[(repo_type, repo_id)]
        return self._content(repo.head(revision).files[path])

    def create_repo(self, repo_id: str, repo_type: str = "model", private: bool = False, gated: bool = False) -> Repo:
        with self.lock:
            repo = Repo(repo_type=repo_type, repo_id=repo_id, private=private, gated=gated)
            root = self._make_commit(
                repo, "initial commit", {".gitattributes": self._regular(b"*.safetensors filter=lfs\n")}, None
            )
            repo.branches["main"] = root.oid
            self.repos[(repo_type, repo_id)] = repo
            return repo

    def seed_folder(self, repo_id: str, folder, repo_type: str = "model", **repo_kwargs) -> str:
        """Create a repo holding every file under `folder` (LFS for binary suffixes); returns the commit oid."""
        from pathlib import Path

        folder = Path(folder)
        repo = self.repos.get((repo_type, repo_id)) or self.create_repo(repo_id, repo_type, **repo_kwargs)
        with self.lock:
            files = dict(repo.head("main").files)
            for path in sorted(p for p in folder.rglob("*") if p.is_file()):
                content = path.read_bytes()
                rel = path.relative_to(folder).as_posix()
                if self._is_lfs(rel, content):
                    sha = hashlib.sha256(content).hexdigest()
                    self.lfs_objects[sha] = content
                    files[rel] = StoredFile(len(content), git_blob_oid(lfs_pointer(sha, len(content))), lfs_sha256=sha)
                else:
                    files[rel] = self._regular(content)
            commit = self._make_commit(repo, f"seed {folder.name}", files, repo.branches["main"])
            repo.branches["main"] = commit.oid
            return commit.oid

    # ---- internals ---------------------------------------------------------------------------------------------
    @staticmethod
    def _regular(content: bytes) -> StoredFile:
        return StoredFile(size=len(content), blob_oid=git_blob_oid(content), content=content)

    @staticmethod
    def _is_lfs(path: str, sample: bytes, size: int | None = None) -> bool:
        size = len(sample) if size is None else size
        return path.lower().endswith(LFS_SUFFIXES) or size >= LFS_SIZE_THRESHOLD or b"\0" in sample[:512]

    def _content(self, stored: StoredFile) -> bytes:
        return stored.content if stored.content is not None else self.lfs_objects[stored.lfs_sha256]

    @staticmethod
    def _make_commit(repo: Repo, message: str, files: dict[str, StoredFile], parent: str | None) -> Commit:
        digest = hashlib.sha1()
        digest.update((parent or "").encode() + message.encode() + str(time.time_ns()).encode())
        for path in sorted(files):
            digest.update(path.encode() + b"\0" + files[path].blob_oid.encode())
        commit = Commit(oid=digest.hexdigest(), message=message, files=files, parent=parent)
        repo.commits[commit.oid] = commit
        return commit


class _HubError(Exception):
    def __init__(self, status: int, message: str, error_code: str | None = None, **extra) -> None:
        super().__init__(message)
        self.status, self.message, self.error_code, self.extra = status, message, error_code, extra


_REPO = r"(?P<repo>[^/]+/[^/]+)"
_ROUTES: list[tuple[str, str, re.Pattern]] = [
    ("GET", "whoami", re.compile(r"^/api/whoami-v2$")),
    ("POST", "create-repo", re.compile(r"^/api/repos/create$")),
    ("POST", "validate-yaml", re.compile(r"^/api/validate-yaml$")),
    ("POST", "preupload", re.compile(rf"^/api/(?P<type>models|datasets)/{_REPO}/preupload/(?P<rev>[^/]+)$")),
    ("POST", "commit", re.compile(rf"^/api/(?P<type>models|datasets)/{_REPO}/commit/(?P<rev>[^/]+)$")),
    ("GET", "tree", re.compile(rf"^/api/(?P<type>models|datasets)/{_REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?$")),
    ("POST", "paths-info", re.compile(rf"^/api/(?P<type>models|datasets)/{_REPO}/paths-info/(?P<rev>[^/]+)$")),
    ("POST", "branch", re.compile(rf"^/api/(?P<type>models|datasets)/{_REPO}/branch/(?P<branch>[^/]+)$")),
    ("GET", "refs", re.compile(rf"^/api/(?P<type>models|datasets)/{_REPO}/refs$")),
    ("GET", "repo-info", re.compile(rf"^/api/(?P<type>models|datasets)/{_REPO}(?:/revision/(?P<rev>[^/]+))?$")),
    ("POST", "lfs-batch", re.compile(r"^/(?P<prefix>datasets/)?(?P<repo>[^/]+/[^/]+)\.git/info/lfs/objects/batch$")),
    ("PUT", "lfs-upload", re.compile(r"^/lfs-upload/(?P<oid>[0-9a-f]{64})$")),
    (
        "GET",
        "resolve",
        re.compile(r"^/(?P<prefix>datasets/)?(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$"),
    ),
    (
        "HEAD",
        "resolve",
        re.compile(r"^/(?P<prefix>datasets/)?(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$"),
    ),
]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HubHTTPServer

    def log_message(self, format, *args):  # noqa: A002 - keep the test output quiet
        pass

    # every verb goes through one dispatcher
    def do_GET(self):
        self._dispatch("GET")

    def do_HEAD(self):
        self._dispatch("HEAD")

    def do_POST(self):
        self._dispatch("POST")

    def do_PUT(self):
        self._dispatch("PUT")

    def _dispatch(self, method: str) -> None:
        state = self.server.state
        url = urlsplit(self.path)
        path = unquote(url.path)
        self.query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        length = int(self.headers.get("Content-Length") or 0)
        self.body = self.rfile.read(length) if length else b""
        name, match = "unknown", None
        for route_method, route_name, pattern in _ROUTES:
            found = pattern.match(path) if route_method == method else None
            if found:
                name, match = route_name, found
                break
        with state.lock:
            state.requests.append((method, name, path))
            failure = next((f for f in state.failures if f.route == name and f.count > 0), None)
            if failure is not None:
                failure.count -= 1
        if failure is not None:
            if failure.mode == "drop":
                self.close_connection = True
                self.connection.shutdown(2)
                return
            return self._send_json({"error": "injected failure"}, status=int(failure.mode))
        if match is None:
            return self._send_json({"error": f"no route for {method} {path}"}, status=404)
        try:
            getattr(self, "_route_" + name.replace("-", "_"))(**match.groupdict())
        except _HubError as err:
            headers = {"X-Error-Message": err.message}
            if err.error_code:
                headers["X-Error-Code"] = err.error_code
            self._send_json({"error": err.message, **err.extra}, status=err.status, headers=headers)

    # ---- response helpers --------------------------------------------------------------------------------------
    def _send_json(self, payload, status: int = 200, headers: dict[str, str] | None = None) -> None:
        self._send_bytes(json.dumps(payload).encode(), status, {"Content-Type": "application/json", **(headers or {})})

    def _send_bytes(self, body: bytes, status: int = 200, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    # ---- auth and lookup ---------------------------------------------------------------------------------------
    def _user(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            return None
        token = auth[len("Bearer ") :]
        user = self.server.state.tokens.get(token)
        if user is None:
            raise _HubError(401, "Invalid credentials in Authorization header")
        return user

    def _require_user(self) -> str:
        user = self._user()
        if user is None:
            raise _HubError(401, "You must be authenticated to access this resource.")
        return user

    def _repo(self, repo_type: str, repo_id: str, write: bool = False) -> Repo:
        repo = self.server.state.repos.get((repo_type, repo_id))
        user = self._require_user() if write else self._user()
        if repo is None or (repo.private and user != repo_id.split("/")[0]):
            raise _HubError(404, "Repository not found", "RepoNotFound")
        if write and user != repo_id.split("/")[0]:
            raise _HubError(403, f"You don't have the rights to write to {repo_id}")
        if repo.gated and not write and user not in repo.granted_users and user != repo_id.split("/")[0]:
            raise _HubError(
                403, f"Access to {repo_type} {repo_id} is restricted. You must have access to it.", "GatedRepo"
            )
        return repo

    @staticmethod
    def _commit(repo: Repo, rev: str) -> Commit:
        commit = repo.head(rev)
        if commit is None:
            raise _HubError(404, f"Invalid rev id: {unquote(rev)}", "RevisionNotFound")
        return commit

    def _entry(self, path: str, stored: StoredFile) -> dict:
        entry = {"type": "file", "path": path, "oid": stored.blob_oid, "size": stored.size}
        if stored.lfs_sha256 is not None:
            pointer_size = len(lfs_pointer(stored.lfs_sha256, stored.size))
            entry["lfs"] = {"oid": stored.lfs_sha256, "size": stored.size, "pointerSize": pointer_size}
        return entry

    @staticmethod
    def _folder_entry(path: str, files: dict[str, StoredFile]) -> dict:
        digest = hashlib.sha1(
            "".join(f"{p}{s.blob_oid}" for p, s in sorted(files.items()) if p.startswith(path + "/")).encode()
        )
        return {"type": "directory", "path": path, "oid": digest.hexdigest()}

    # ---- routes ------------------------------------------------------------------------------------------------
    def _route_whoami(self) -> None:
        user = self._require_user()
        self._send_json(
            {"type": "user", "name": user, "auth": {"type": "access_token", "accessToken": {"role": "write"}}}
        )

    def _route_create_repo(self) -> None:
        user = self._require_user()
        payload = json.loads(self.body or b"{}")
        repo_type = payload.get("type") or "model"
        namespace = payload.get("organization") or user
        if namespace != user:
            raise _HubError(403, f"You don't have the rights to create a repo under {namespace}")
        repo_id = f"{namespace}/{payload['name']}"
        state = self.server.state
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        with state.lock:
            if (repo_type, repo_id) in state.repos:  # the Hub answers 409 with the existing repo's url
                raise _HubError(409, "You already created this repo", url=f"{state.endpoint}/{prefix}{repo_id}")
            state.create_repo(repo_id, repo_type, private=payload.get("visibility") == "private")
        self._send_json({"url": f"{state.endpoint}/{prefix}{repo_id}", "name": repo_id})

    def _route_validate_yaml(self) -> None:
        content = json.loads(self.body)["content"]
        if content.startswith("---"):
            front_matter = content.split("---", 2)[1]
            try:
                if not isinstance(yaml.safe_load(front_matter) or {}, dict):
                    raise _HubError(400, "README metadata must be a YAML mapping")
            except yaml.YAMLError as err:
                raise _HubError(400, f"Invalid YAML in README metadata: {err}") from err
        self._send_json({"errors": [], "warnings": []})

    def _route_repo_info(self, type: str, repo: str, rev: str | None = None) -> None:
        stored_repo = self._repo(type[:-1], repo)
        commit = self._commit(stored_repo, rev or "main")
        self._send_json(
            {
                "id": repo,
                "_id": hashlib.sha1(repo.encode()).hexdigest()[:24],
                "author": repo.split("/")[0],
                "sha": commit.oid,
                "private": stored_repo.private,
                "gated": "manual" if stored_repo.gated else False,
                "disabled": False,
                "lastModified": "2026-01-01T00:00:00.000Z",
                "tags": [],
                "siblings": [{"rfilename": p} for p in sorted(commit.files)],
            }
        )

    def _route_refs(self, type: str, repo: str) -> None:
        stored_repo = self._repo(type[:-1], repo)
        branches = [{"name": n, "ref": f"refs/heads/{n}", "targetCommit": o} for n, o in stored_repo.branches.items()]
        self._send_json({"branches": branches, "converts": [], "tags": []})

    def _route_branch(self, type: str, repo: str, branch: str) -> None:
        stored_repo = self._repo(type[:-1], repo, write=True)
        payload = json.loads(self.body or b"{}")
        start = self._commit(stored_repo, payload.get("startingPoint") or "main")
        with self.server.state.lock:
            if branch in stored_repo.branches:
                raise _HubError(409, f"Reference refs/heads/{branch} already exists")
            stored_repo.branches[branch] = start.oid
        self._send_json({"success": True})

    def _route_preupload(self, type: str, repo: str, rev: str) -> None:
        stored_repo = self._repo(type[:-1], repo, write=True)
        commit = self._commit(stored_repo, rev)
        answers = []
        for item in json.loads(self.body)["files"]:
            sample = base64.b64decode(item["sample"])
            mode = "lfs" if HubState._is_lfs(item["path"], sample, item["size"]) else "regular"
            remote = commit.files.get(item["path"])
            oid = None
            if remote is not None:
                oid = remote.lfs_sha256 if mode == "lfs" else (remote.blob_oid if remote.lfs_sha256 is None else None)
            answers.append({"path": item["path"], "uploadMode": mode, "shouldIgnore": False, "oid": oid})
        self._send_json({"files": answers, "commitOid": commit.oid})

    def _route_lfs_batch(self, repo: str, prefix: str | None = None) -> None:
        self._repo("dataset" if prefix else "model", repo, write=True)
        payload = json.loads(self.body)
        state, objects = self.server.state, []
        for obj in payload["objects"]:
            answer = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if obj["oid"] not in state.lfs_objects:
                answer["actions"] = {"upload": {"href": f"{state.endpoint}/lfs-upload/{obj['oid']}", "header": {}}}
            objects.append(answer)
        self._send_json({"transfer": "basic", "objects": objects, "hash_algo": "sha256"})

    def _route_lfs_upload(self, oid: str) -> None:
        if hashlib.sha256(self.body).hexdigest() != oid:
            raise _HubError(400, f"uploaded content does not match the announced sha256 {oid}")
        with self.server.state.lock:
            self.server.state.lfs_objects[oid] = self.body
        self._send_bytes(b"", 200)

    def _route_commit(self, type: str, repo: str, rev: str) -> None:
        state = self.server.state
        stored_repo = self._repo(type[:-1], repo, write=True)
        lines = [json.loads(line) for line in self.body.splitlines() if line.strip()]
        header = next(line["value"] for line in lines if line["key"] == "header")
        with state.lock:
            branch = unquote(rev)
            if branch not in stored_repo.branches:
                raise _HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
            parent = stored_repo.branches[branch]
            if header.get("parentCommit") and header["parentCommit"] != parent:
                raise _HubError(412, "A commit has happened since the parent commit you gave.")
            files = dict(stored_repo.commits[parent].files)
            for line in lines:
                value = line["value"]
                if line["key"] == "file":
                    files[value["path"]] = HubState._regular(base64.b64decode(value["content"]))
                elif line["key"] == "lfsFile":
                    content = state.lfs_objects.get(value["oid"])
                    if content is None:
                        raise _HubError(422, f"LFS object {value['oid']} for {value['path']} was never uploaded")
                    pointer = lfs_pointer(value["oid"], len(content))
                    files[value["path"]] = StoredFile(len(content), git_blob_oid(pointer), lfs_sha256=value["oid"])
                elif line["key"] == "deletedFile":
                    if files.pop(value["path"], None) is None:
                        raise _HubError(404, "A file with this name doesn't exist", "EntryNotFound")
                elif line["key"] == "deletedFolder":
                    for path in [p for p in files if p.startswith(value["path"].rstrip("/") + "/")]:
                        del files[path]
            commit = HubState._make_commit(stored_repo, header["summary"], files, parent)
            stored_repo.branches[branch] = commit.oid
        prefix = "" if type == "models" else f"{type}/"
        self._send_json(
            {
                "success": True,
                "commitOid": commit.oid,
                "commitUrl": f"{state.endpoint}/{prefix}{repo}/commit/{commit.oid}",
            }
        )

    def _listing(self, files: dict[str, StoredFile], base: str, recursive: bool) -> list[dict]:
        base = base.strip("/")
        prefix = base + "/" if base else ""
        entries, folders = [], set()
        for path in sorted(files):
            if not path.startswith(prefix):
                continue
            parts = path[len(prefix) :].split("/")
            for depth in range(1, len(parts)):
                if depth > 1 and not recursive:
                    break
                folders.add(prefix + "/".join(parts[:depth]))
            if recursive or len(parts) == 1:
                entries.append(self._entry(path, files[path]))
        return [self._folder_entry(f, files) for f in sorted(folders)] + entries

    def _route_tree(self, type: str, repo: str, rev: str, path: str | None = None) -> None:
        commit = self._commit(self._repo(type[:-1], repo), rev)
        path = (path or "").strip("/")
        if path and path not in commit.files and not any(p.startswith(path + "/") for p in commit.files):
            raise _HubError(404, f"Path {path} does not exist", "EntryNotFound")
        self._send_json(self._listing(commit.files, path, self.query.get("recursive", "false").lower() == "true"))

    def _route_paths_info(self, type: str, repo: str, rev: str) -> None:
        commit = self._commit(self._repo(type[:-1], repo), rev)
        form = parse_qs(self.body.decode())
        answers = []
        for path in form.get("paths", []):
            path = path.strip("/")
            if path in commit.files:
                answers.append(self._entry(path, commit.files[path]))
            elif any(p.startswith(path + "/") for p in commit.files):
                answers.append(self._folder_entry(path, commit.files))
        self._send_json(answers)

    def _route_resolve(self, repo: str, rev: str, path: str, prefix: str | None = None) -> None:
        commit = self._commit(self._repo("dataset" if prefix else "model", repo), rev)
        stored = commit.files.get(path)
        if stored is None:
            raise _HubError(404, f"{path} does not exist on {rev}", "EntryNotFound")
        content = self.server.state._content(stored)
        headers = {"X-Repo-Commit": commit.oid, "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
        if stored.lfs_sha256 is not None:
            headers.update({"X-Linked-Etag": f'"{stored.lfs_sha256}"', "X-Linked-Size": str(stored.size)})
            headers["ETag"] = f'"{stored.lfs_sha256}"'
        else:
            headers["ETag"] = f'"{stored.blob_oid}"'
        byte_range = re.match(r"bytes=(\d*)-(\d*)$", self.headers.get("Range", "") or "")
        if byte_range and self.command == "GET":
            start_text, end_text = byte_range.groups()
            if start_text:
                start = int(start_text)
                end = min(int(end_text), len(content) - 1) if end_text else len(content) - 1
            else:  # suffix range: the last N bytes
                start, end = max(len(content) - int(end_text), 0), len(content) - 1
            headers["Content-Range"] = f"bytes {start}-{end}/{len(content)}"
            return self._send_bytes(content[start : end + 1], 206, headers)
        self._send_bytes(content, 200, headers)


class _HubHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    state: HubState


@contextmanager
def running_hub(state: HubState | None = None) -> Iterator[HubState]:
    """Serve a `HubState` on a free 127.0.0.1 port for the duration of the block (``state.endpoint`` is its URL)."""
    state = state or HubState()
    server = _HubHTTPServer(("127.0.0.1", 0), _Handler)
    server.state = state
    state.endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, name="loopback-hub", daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def point_clients_at(endpoint: str, monkeypatch, cache_dir) -> None:
    """Point `huggingface_hub`, `datasets` and `diffusers` (already imported or not) at `endpoint`.

    `huggingface_hub.constants` and `datasets.config` read ``HF_ENDPOINT`` once, at import; setting the variable is
    enough for a fresh process, and this function also patches the module-level copies for the current one. The cache
    goes to `cache_dir` so nothing from the real Hub cache is read. LFS uploads use the legacy LFS API
    (``HF_HUB_DISABLE_XET``), which this server implements; production code never sets it.
    """
    import datasets.config
    import huggingface_hub.constants as hub_constants
    from huggingface_hub import hf_api

    cache_dir = str(cache_dir)
    env = {
        "HF_ENDPOINT": endpoint,
        "HF_HUB_DISABLE_XET": "1",
        "HF_HOME": cache_dir,
        "HF_HUB_CACHE": f"{cache_dir}/hub",
        "HF_DATASETS_CACHE": f"{cache_dir}/datasets",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_OFFLINE": "0",
        "HF_DATASETS_OFFLINE": "0",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(hub_constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(
        hub_constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}"
    )
    monkeypatch.setattr(hub_constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", f"{cache_dir}/hub")
    monkeypatch.setattr(hub_constants, "HUGGINGFACE_HUB_CACHE", f"{cache_dir}/hub")
    monkeypatch.setattr(hub_constants, "HF_HOME", cache_dir)
    monkeypatch.setattr(hub_constants, "HF_TOKEN_PATH", f"{cache_dir}/token")  # never read a real login
    monkeypatch.setattr(hub_constants, "HF_STORED_TOKENS_PATH", f"{cache_dir}/stored_tokens")
    monkeypatch.setattr(hf_api.api, "endpoint", endpoint)
    monkeypatch.setattr(datasets.config, "HF_ENDPOINT", endpoint)
    monkeypatch.setattr(datasets.config, "HUB_DATASETS_URL", endpoint + "/datasets/{repo_id}/resolve/{revision}/{path}")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", __import__("pathlib").Path(f"{cache_dir}/datasets"))
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    # fsspec caches HfFileSystem instances (and their listings) across calls; start each test with fresh ones
    from huggingface_hub import HfFileSystem

    HfFileSystem.clear_instance_cache()
