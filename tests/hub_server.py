"""A test-only, Hub-compatible HTTP server (standard library only).

``FakeHub`` listens on 127.0.0.1 (ephemeral port) in a background thread and implements the endpoints that
``huggingface_hub`` 2.x and ``transformers`` 5.x call for ``create_repo`` / ``upload_folder`` / ``push_to_hub`` /
``model_info`` / ``list_repo_files`` / ``hf_hub_download`` / ``snapshot_download`` / ``from_pretrained``:

* ``POST /api/repos/create``: 409 when the repo exists, with ``url`` still in the body because
  ``create_repo(exist_ok=True)`` reads it; ``DELETE /api/repos/delete``;
* ``POST /api/<type>s/<ns>/<name>/preupload/<rev>``: every file is ``uploadMode: "regular"`` (no LFS / Xet);
* ``POST /api/<type>s/<ns>/<name>/commit/<rev>``: ndjson with a header line, then ``file`` (base64), ``deletedFile``,
  ``deletedFolder``; ``lfsFile`` is refused with 400;
* ``GET /api/<type>s/<ns>/<name>[/revision/<rev>]`` (repo info: ``sha``, ``siblings``),
  ``GET .../tree/<rev>[/<path>]`` (``recursive`` honoured), ``POST .../paths-info/<rev>``;
* ``HEAD|GET /[<type>s/]<ns>/<name>/resolve/<rev>/<path>``: the bytes, with ``X-Repo-Commit`` and ``ETag`` (git blob
  sha1); a missing file is 404 + ``X-Error-Code: EntryNotFound`` (transformers probes optional files and needs exactly
  that), a missing repo ``RepoNotFound``, a missing revision ``RevisionNotFound``;
* ``POST /api/validate-yaml``: always valid;
* ``GET /api/agent-harnesses``: ``{"standardEnvVars": [], "harnesses": {}}``. huggingface_hub caches this answer in
  ``$HF_HOME``; any other shape poisons that cache.

Every request is recorded in ``FakeHub.requests`` (method, path, status) so tests can prove that traffic really went
through the server; unknown routes answer 404 and are listed in ``FakeHub.unhandled``. Revisions are branch names or
full commit shas; commits are content-addressed and kept in memory, file contents on disk under ``root``. Nothing here
talks to the network beyond the loopback socket.

    with FakeHub() as hub:
        os.environ["HF_ENDPOINT"] = hub.endpoint  # before importing huggingface_hub, or patch its constants
"""

import base64
import hashlib
import json
import socket
import tempfile
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit


# a fresh Hub repo starts with one commit holding this file, as on huggingface.co
_INITIAL_GITATTRIBUTES = (
    b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
    b"*.bin filter=lfs diff=lfs merge=lfs -text\n"
)
_URL_PREFIX_TO_TYPE = {"models": "model", "datasets": "dataset", "spaces": "space"}
_TYPE_TO_RESOLVE_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}


def git_blob_sha1(data: bytes) -> str:
    """Git object id of a blob: what the Hub reports as ``oid`` / ``ETag`` for non-LFS files."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class _Commit:
    sha: str
    parent: str | None
    files: dict[str, str]  # path in repo -> blob oid
    message: str
    date: str


@dataclass
class _Repo:
    repo_type: str
    repo_id: str
    private: bool
    created: str
    commits: dict[str, _Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)

    def resolve(self, revision: str) -> _Commit | None:
        sha = self.branches.get(revision, revision)
        return self.commits.get(sha)


class _HubError(Exception):
    def __init__(self, status: int, message: str, error_code: str | None = None, body: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.error_code, self.body = status, message, error_code, body


class _ThreadingServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = False

    def __init__(self, hub: "FakeHub"):
        self.hub = hub
        self.open_sockets: set[socket.socket] = set()
        self.sockets_lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)

    def process_request_thread(self, request, client_address):
        with self.sockets_lock:
            self.open_sockets.add(request)
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self.sockets_lock:
                self.open_sockets.discard(request)

    def close_open_connections(self) -> None:
        # keep-alive connections would otherwise keep their handler threads waiting for another request
        with self.sockets_lock:
            sockets = list(self.open_sockets)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class FakeHub:
    """In-process fake of the Hugging Face Hub for push/pull tests (see the module docstring for the endpoints).

    Args:
        root: directory for file contents; a temporary directory (removed on ``stop``) when ``None``.
        token: when set, write endpoints (create, preupload, commit, delete) require ``Authorization: Bearer <token>``
            and answer 401 otherwise.
        user: namespace given to repos created without one (``create_repo("name")``).
        max_body_bytes: larger request bodies are refused with 413.
        request_timeout: seconds a connection may stay idle before its handler thread gives up.
    """

    def __init__(
        self,
        root: str | Path | None = None,
        token: str | None = None,
        user: str = "vistok-tester",
        max_body_bytes: int = 256 * 1024**2,
        request_timeout: float = 30.0,
    ):
        self._tmp = tempfile.TemporaryDirectory(prefix="fake_hub_") if root is None else None
        self.root = Path(self._tmp.name if self._tmp is not None else root)
        self.token = token
        self.user = user
        self.max_body_bytes = max_body_bytes
        self.request_timeout = request_timeout
        self.repos: dict[tuple[str, str], _Repo] = {}
        self.requests: list[tuple[str, str, int]] = []
        self.unhandled: list[tuple[str, str]] = []
        self._lock = threading.RLock()
        self._server: _ThreadingServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "FakeHub":
        if self._server is not None:
            raise RuntimeError("FakeHub is already running.")
        (self.root / "blobs").mkdir(parents=True, exist_ok=True)
        self._server = _ThreadingServer(self)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-hub", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.close_open_connections()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._server = self._thread = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> "FakeHub":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        if self._server is None:
            raise RuntimeError("FakeHub is not running; call start() or use it as a context manager.")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # ------------------------------------------------------------------ inspection helpers for tests
    def count(self, method: str | None = None, contains: str = "") -> int:
        """Number of recorded requests with this method (any when ``None``) whose path contains ``contains``."""
        with self._lock:
            return sum(1 for m, p, _ in self.requests if (method is None or m == method) and contains in p)

    def repo_files(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> dict[str, bytes]:
        """Contents of every file of ``repo_id`` at ``revision`` (raises KeyError for an unknown repo/revision)."""
        with self._lock:
            commit = self.repos[(repo_type, repo_id)].resolve(revision)
            if commit is None:
                raise KeyError(f"{repo_id}@{revision}")
            return {path: self._read_blob(oid) for path, oid in commit.files.items()}

    def head_commit(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> str:
        with self._lock:
            return self.repos[(repo_type, repo_id)].resolve(revision).sha

    # ------------------------------------------------------------------ storage
    def _blob_path(self, oid: str) -> Path:
        return self.root / "blobs" / oid

    def _write_blob(self, data: bytes) -> str:
        oid = git_blob_sha1(data)
        path = self._blob_path(oid)
        if not path.exists():
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(data)
            tmp.replace(path)
        return oid

    def _read_blob(self, oid: str) -> bytes:
        return self._blob_path(oid).read_bytes()

    def _commit(self, repo: _Repo, branch: str, files: dict[str, str], message: str) -> _Commit:
        parent = repo.branches.get(branch)
        date = _now()
        payload = json.dumps([repo.repo_id, parent, sorted(files.items()), message, date, len(repo.commits)])
        commit = _Commit(hashlib.sha1(payload.encode()).hexdigest(), parent, files, message, date)
        repo.commits[commit.sha] = commit
        repo.branches[branch] = commit.sha
        return commit

    def _get_repo(self, repo_type: str, repo_id: str) -> _Repo:
        repo = self.repos.get((repo_type, repo_id))
        if repo is None:
            raise _HubError(404, f"Repository {repo_id} not found.", "RepoNotFound")
        return repo

    def _get_commit(self, repo: _Repo, revision: str) -> _Commit:
        commit = repo.resolve(revision)
        if commit is None:
            raise _HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return commit

    def _repo_url(self, repo: _Repo) -> str:
        return f"{self.endpoint}/{_TYPE_TO_RESOLVE_PREFIX[repo.repo_type]}{repo.repo_id}"

    # ------------------------------------------------------------------ endpoints
    def create_repo(self, body: dict) -> tuple[int, dict]:
        name, namespace = body.get("name"), body.get("organization") or self.user
        repo_type = body.get("type") or "model"
        if not name or "/" in name or repo_type not in _TYPE_TO_RESOLVE_PREFIX:
            raise _HubError(400, f"invalid repo name/type: name={name!r}, type={repo_type!r}")
        repo_id = f"{namespace}/{name}"
        with self._lock:
            existing = self.repos.get((repo_type, repo_id))
            if existing is not None:
                return 409, {"error": "You already created this model repo", "url": self._repo_url(existing)}
            repo = _Repo(repo_type, repo_id, private=body.get("visibility") == "private", created=_now())
            self._commit(repo, "main", {".gitattributes": self._write_blob(_INITIAL_GITATTRIBUTES)}, "initial commit")
            self.repos[(repo_type, repo_id)] = repo
            return 200, {"url": self._repo_url(repo), "name": repo_id, "id": repo_id}

    def delete_repo(self, body: dict) -> dict:
        namespace = body.get("organization") or self.user
        key = (body.get("type") or "model", f"{namespace}/{body.get('name')}")
        with self._lock:
            if key not in self.repos:
                raise _HubError(404, f"Repository {key[1]} not found.", "RepoNotFound")
            del self.repos[key]
        return {}

    def preupload(self, repo_type: str, repo_id: str, revision: str, body: dict) -> dict:
        with self._lock:
            commit = self._get_commit(self._get_repo(repo_type, repo_id), revision)
            files = [
                {
                    "path": entry["path"],
                    "uploadMode": "regular",
                    "shouldIgnore": False,
                    "oid": commit.files.get(entry["path"]),
                }
                for entry in body.get("files", [])
            ]
        return {"files": files, "commitOid": commit.sha}

    def commit(self, repo_type: str, repo_id: str, revision: str, raw: bytes, query: dict) -> dict:
        if query.get("create_pr"):
            raise _HubError(400, "the fake hub does not support pull requests (create_pr)")
        lines = [json.loads(line) for line in raw.splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise _HubError(400, "commit payload must start with a 'header' line")
        header = lines[0]["value"]
        with self._lock:
            repo = self._get_repo(repo_type, repo_id)
            current = self._get_commit(repo, revision)
            if revision not in repo.branches:
                raise _HubError(400, f"can only commit to a branch, got {revision!r}")
            parent = header.get("parentCommit")
            if parent is not None and parent != current.sha:
                raise _HubError(412, f"parent commit {parent} is not the head of {revision} ({current.sha})")
            files = dict(current.files)
            for line in lines[1:]:
                key, value = line.get("key"), line.get("value", {})
                if key == "file":
                    if value.get("encoding") != "base64":
                        raise _HubError(400, f"unsupported file encoding {value.get('encoding')!r}")
                    files[value["path"]] = self._write_blob(base64.b64decode(value["content"]))
                elif key == "deletedFile":
                    if value["path"] not in files:
                        raise _HubError(404, f"A file with this name doesn't exist: {value['path']}", "EntryNotFound")
                    del files[value["path"]]
                elif key == "deletedFolder":
                    prefix = value["path"].rstrip("/") + "/"
                    files = {p: oid for p, oid in files.items() if not p.startswith(prefix)}
                elif key == "lfsFile":
                    raise _HubError(400, "the fake hub only accepts regular (base64) uploads, not lfsFile")
                else:
                    raise _HubError(400, f"unsupported commit operation {key!r}")
            new = self._commit(repo, revision, files, header.get("summary", ""))
        return {
            "success": True,
            "commitOid": new.sha,
            "commitUrl": f"{self._repo_url(repo)}/commit/{new.sha}",
            "pullRequestUrl": None,
        }

    def repo_info(self, repo_type: str, repo_id: str, revision: str) -> dict:
        with self._lock:
            repo = self._get_repo(repo_type, repo_id)
            commit = self._get_commit(repo, revision)
            return {
                "_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24],
                "id": repo_id,
                "modelId": repo_id,
                "author": repo_id.split("/")[0],
                "sha": commit.sha,
                "private": repo.private,
                "gated": False,
                "disabled": False,
                "downloads": 0,
                "likes": 0,
                "tags": [],
                "createdAt": repo.created,
                "lastModified": commit.date,
                "siblings": [{"rfilename": path} for path in sorted(commit.files)],
            }

    def _file_entry(self, path: str, oid: str) -> dict:
        return {"type": "file", "oid": oid, "size": self._blob_path(oid).stat().st_size, "path": path}

    @staticmethod
    def _folder_entry(path: str) -> dict:
        return {"type": "directory", "oid": hashlib.sha1(path.encode()).hexdigest(), "path": path}

    def tree(self, repo_type: str, repo_id: str, revision: str, path: str, recursive: bool) -> list[dict]:
        with self._lock:
            files = self._get_commit(self._get_repo(repo_type, repo_id), revision).files
            prefix = path.strip("/") + "/" if path.strip("/") else ""
            if prefix and not any(p.startswith(prefix) for p in files):
                raise _HubError(404, f"{path} does not exist on {revision}", "EntryNotFound")
            entries, folders = [], set()
            for file_path in sorted(files):
                if not file_path.startswith(prefix):
                    continue
                parts = file_path[len(prefix):].split("/")
                for depth in range(1, len(parts)):
                    if recursive or depth == 1:
                        folders.add(prefix + "/".join(parts[:depth]))
                if recursive or len(parts) == 1:
                    entries.append(self._file_entry(file_path, files[file_path]))
            return [self._folder_entry(f) for f in sorted(folders)] + entries

    def paths_info(self, repo_type: str, repo_id: str, revision: str, paths: list[str]) -> list[dict]:
        with self._lock:
            files = self._get_commit(self._get_repo(repo_type, repo_id), revision).files
            result = []
            for path in paths:
                path = path.strip("/")
                if path in files:
                    result.append(self._file_entry(path, files[path]))
                elif any(p.startswith(path + "/") for p in files):
                    result.append(self._folder_entry(path))
            return result

    def resolve(self, repo_type: str, repo_id: str, revision: str, path: str) -> tuple[_Commit, str]:
        with self._lock:
            commit = self._get_commit(self._get_repo(repo_type, repo_id), revision)
            oid = commit.files.get(path)
            if oid is None:
                raise _HubError(404, f"Entry not found: {path}", "EntryNotFound")
            return commit, oid


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _ThreadingServer

    def setup(self) -> None:
        self.timeout = self.server.hub.request_timeout
        super().setup()

    def log_message(self, format, *args) -> None:  # noqa: A002 - silence the default stderr access log
        pass

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    # ------------------------------------------------------------------ plumbing
    def _read_body(self) -> bytes:
        limit = self.server.hub.max_body_bytes
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks, total = [], 0
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline().strip():  # trailers
                        pass
                    return b"".join(chunks)
                total += size
                if total > limit:
                    raise _HubError(413, f"request body larger than {limit} bytes")
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        if length > limit:
            raise _HubError(413, f"request body of {length} bytes is larger than {limit} bytes")
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, content_type="application/json"):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)
        self._status = status

    def _send_json(self, status: int, payload) -> None:
        self._send(status, json.dumps(payload).encode())

    def _send_error(self, error: _HubError) -> None:
        headers = {"X-Error-Message": error.message}
        if error.error_code:
            headers["X-Error-Code"] = error.error_code
        self._send(error.status, json.dumps(error.body or {"error": error.message}).encode(), headers)

    def _check_token(self) -> None:
        token = self.server.hub.token
        if token is not None and self.headers.get("Authorization") != f"Bearer {token}":
            raise _HubError(401, "Invalid credentials in Authorization header")

    def _dispatch(self, method: str) -> None:
        hub = self.server.hub
        split = urlsplit(self.path)
        segments = [unquote(s) for s in split.path.strip("/").split("/")] if split.path.strip("/") else []
        query = {k: v[-1] for k, v in parse_qs(split.query).items()}
        self._status = 500
        try:
            body = self._read_body() if method in ("POST", "PUT", "DELETE") else b""
            if not self._route(method, segments, query, body):
                with hub._lock:
                    hub.unhandled.append((method, split.path))
                raise _HubError(404, f"the fake hub has no route for {method} {split.path}")
        except _HubError as error:
            if error.status == 413:
                self.close_connection = True  # the body was not read
            self._send_error(error)
        except (ValueError, KeyError) as error:
            self._send_error(_HubError(400, f"bad request: {error!r}"))
        except Exception as error:  # answer instead of dropping the connection, so the client shows the cause
            self._send_error(_HubError(500, f"fake hub failure: {error!r}"))
        finally:
            with hub._lock:
                hub.requests.append((method, split.path, self._status))

    def _route(self, method: str, seg: list[str], query: dict, body: bytes) -> bool:
        hub = self.server.hub
        if seg == ["api", "agent-harnesses"] and method == "GET":
            self._send_json(200, {"standardEnvVars": [], "harnesses": {}})
        elif seg == ["api", "validate-yaml"] and method == "POST":
            self._send_json(200, {"errors": [], "warnings": []})
        elif seg == ["api", "repos", "create"] and method == "POST":
            self._check_token()
            self._send_json(*hub.create_repo(json.loads(body or b"{}")))
        elif seg == ["api", "repos", "delete"] and method == "DELETE":
            self._check_token()
            self._send_json(200, hub.delete_repo(json.loads(body or b"{}")))
        elif len(seg) >= 4 and seg[0] == "api" and seg[1] in _URL_PREFIX_TO_TYPE:
            repo_type, repo_id = _URL_PREFIX_TO_TYPE[seg[1]], f"{seg[2]}/{seg[3]}"
            return self._route_repo_api(method, repo_type, repo_id, seg[4:], query, body)
        elif "resolve" in seg:
            return self._route_resolve(method, seg)
        else:
            return False
        return True

    def _route_repo_api(self, method, repo_type, repo_id, rest, query, body) -> bool:
        hub = self.server.hub
        if not rest and method == "GET":
            self._send_json(200, hub.repo_info(repo_type, repo_id, "main"))
        elif len(rest) == 2 and rest[0] == "revision" and method == "GET":
            self._send_json(200, hub.repo_info(repo_type, repo_id, rest[1]))
        elif len(rest) >= 2 and rest[0] == "tree" and method == "GET":
            recursive = query.get("recursive", "false").lower() in ("1", "true")
            self._send_json(200, hub.tree(repo_type, repo_id, rest[1], "/".join(rest[2:]), recursive))
        elif len(rest) == 2 and rest[0] == "paths-info" and method == "POST":
            if self.headers.get("Content-Type", "").startswith("application/json"):
                paths = json.loads(body).get("paths", [])
            else:
                paths = parse_qs(body.decode()).get("paths", [])
            self._send_json(200, hub.paths_info(repo_type, repo_id, rest[1], paths))
        elif len(rest) == 2 and rest[0] == "preupload" and method == "POST":
            self._check_token()
            self._send_json(200, hub.preupload(repo_type, repo_id, rest[1], json.loads(body)))
        elif len(rest) == 2 and rest[0] == "commit" and method == "POST":
            self._check_token()
            self._send_json(200, hub.commit(repo_type, repo_id, rest[1], body, query))
        else:
            return False
        return True

    def _route_resolve(self, method: str, seg: list[str]) -> bool:
        repo_type = "model"
        if seg[0] in _URL_PREFIX_TO_TYPE and seg[0] != "models":
            repo_type, seg = _URL_PREFIX_TO_TYPE[seg[0]], seg[1:]
        if method not in ("GET", "HEAD") or len(seg) < 5 or seg[2] != "resolve":
            return False
        commit, oid = self.server.hub.resolve(repo_type, f"{seg[0]}/{seg[1]}", seg[3], "/".join(seg[4:]))
        data = self.server.hub._read_blob(oid)
        headers = {"X-Repo-Commit": commit.sha, "ETag": f'"{oid}"', "Accept-Ranges": "bytes"}
        status, byte_range = 200, self.headers.get("Range", "")
        if byte_range.startswith("bytes=") and "," not in byte_range and data:
            start_text, _, end_text = byte_range[len("bytes="):].partition("-")
            start = int(start_text) if start_text else max(len(data) - int(end_text), 0)
            end = min(int(end_text), len(data) - 1) if start_text and end_text else len(data) - 1
            if start >= len(data):
                raise _HubError(416, f"range {byte_range} outside a file of {len(data)} bytes")
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            status, data = 206, data[start : end + 1]
        self._send(status, data, headers, content_type="application/octet-stream")
        return True


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
