"""A loopback stand-in for the Hub's file endpoints, so `fit3d-hub download` runs for real.

It answers what ``hf_hub_download`` asks (``HEAD``/``GET /<repo>/resolve/<rev>/<file>``, with
the commit, etag and size headers and the hub's ``X-Error-Code`` values) on 127.0.0.1 only.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote


class FakeHub:
    def __init__(self) -> None:
        self.repos: dict[str, dict[str, tuple[str, dict[str, bytes]]]] = {}
        self.requests: list[str] = []

    def add(self, repo_id: str, files: dict[str, bytes], revision: str = "main") -> str:
        digest = hashlib.sha1(repo_id.encode() + revision.encode())
        for name in sorted(files):
            digest.update(name.encode() + files[name])
        commit = digest.hexdigest()
        self.repos.setdefault(repo_id, {})[revision] = (commit, dict(files))
        self.repos[repo_id][commit] = (commit, dict(files))
        return commit

    @contextmanager
    def serve(self) -> Iterator[str]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def _answer(self, body: bool) -> None:
                hub.requests.append(f"{self.command} {self.path}")
                parts = unquote(self.path.split("?")[0]).strip("/").split("/")
                if len(parts) < 5 or parts[2] != "resolve":
                    return self._error(404, "RepoNotFound")
                repo, revision, name = f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:])
                if repo not in hub.repos:
                    return self._error(404, "RepoNotFound")
                if revision not in hub.repos[repo]:
                    return self._error(404, "RevisionNotFound")
                commit, files = hub.repos[repo][revision]
                if name not in files:
                    return self._error(404, "EntryNotFound", commit)
                data = files[name]
                self.send_response(200)
                self.send_header("X-Repo-Commit", commit)
                self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if body:
                    self.wfile.write(data)

            def _error(self, status: int, code: str, commit: str | None = None) -> None:
                self.send_response(status)
                self.send_header("X-Error-Code", code)
                self.send_header("X-Error-Message", code)
                if commit:
                    self.send_header("X-Repo-Commit", commit)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_HEAD(self):  # http.server's naming
                self._answer(body=False)

            def do_GET(self):
                self._answer(body=True)

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}"
        finally:
            server.shutdown()
            server.server_close()
