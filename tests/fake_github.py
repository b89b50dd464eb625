"""A local HTTPS server speaking the slice of GitHub's REST API (v3, under ``/api/v3`` as on
GitHub Enterprise) that the workflows use, with its documented request and response shapes:

- ``pneumonia.github``: list, create and close pull requests (``GET``/``POST /pulls``,
  ``PATCH /pulls/{n}``), comment (``POST /issues/{n}/comments``), labels
  (``POST /issues/{n}/labels``, ``DELETE /issues/{n}/labels/{name}``);
- ``pneumonia.monitor``: issues (``GET``/``POST /issues``, ``PATCH /issues/{n}``, listed with
  the pull requests as GitHub does) and their comments;
- CML 0.20 ``comment update --target=pr``: ``GET /commits/{sha}/pulls``,
  ``GET /issues/{n}/comments``, ``POST /issues/{n}/comments``, ``PATCH /issues/comments/{id}``,
  ``GET /users/{login}``, and its image uploads (``POST /_asset``, CML_COMMENT_PUBLISH_URL).

Every call is logged; the state (pull requests, comments, labels) is there for the tests to
assert. TLS with a throwaway CA made by ``openssl`` (clients get it through REQUESTS_CA_BUNDLE /
NODE_EXTRA_CA_CERTS)."""

from __future__ import annotations

import json
import re
import ssl
import subprocess
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit


def make_certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1/localhost: (ca, cert, key)."""
    folder.mkdir(parents=True, exist_ok=True)
    ca, ca_key = folder / "ca.pem", folder / "ca.key"
    cert, key, csr = folder / "server.pem", folder / "server.key", folder / "server.csr"
    ext = folder / "ext.cnf"
    ext.write_text(
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
        "extendedKeyUsage=serverAuth\n"
    )

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=fake-github test CA",
        "-keyout",
        str(ca_key),
        "-out",
        str(ca),
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    )
    openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        str(key),
        "-out",
        str(csr),
    )
    openssl(
        "x509",
        "-req",
        "-in",
        str(csr),
        "-CA",
        str(ca),
        "-CAkey",
        str(ca_key),
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        str(ext),
        "-out",
        str(cert),
    )
    return ca, cert, key


@dataclass
class PullRequest:
    number: int
    title: str
    body: str
    head: str
    base: str
    head_sha: str
    state: str = "open"
    labels: list[str] = field(default_factory=list)


@dataclass
class Issue:
    number: int
    title: str
    body: str
    state: str = "open"


@dataclass
class Comment:
    id: int
    issue: int
    body: str


class FakeGitHub:
    def __init__(
        self,
        folder: Path,
        owner: str = "local",
        repo: str = "pneumonia",
        token: str = "rehearsal-github-token",
        git_dir: Path | None = None,
    ):
        self.owner, self.repo, self.token, self.git_dir = owner, repo, token, git_dir
        self.ca, cert, key = make_certificates(folder / "certs")
        self.pulls: list[PullRequest] = []
        self.issues: list[Issue] = []
        self.comments: list[Comment] = []
        self.assets: list[bytes] = []
        self.log: list[str] = []
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        self.url = f"https://{self.host}"
        self.api_url = f"{self.url}/api/v3"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # --- what the tests look at -------------------------------------------------------------

    def pull(self, number: int) -> PullRequest:
        return next(p for p in self.pulls if p.number == number)

    def comments_on(self, number: int) -> list[Comment]:
        return [c for c in self.comments if c.issue == number]

    def _next_number(self) -> int:
        """Issues and pull requests share one sequence of numbers, as on GitHub."""
        return 1 + max([p.number for p in self.pulls] + [i.number for i in self.issues], default=0)

    def add_pull(self, head: str, head_sha: str, title: str = "", base: str = "main") -> int:
        """A pull request as if someone had opened it on GitHub."""
        with self.lock:
            number = self._next_number()
            self.pulls.append(PullRequest(number, title or head, "", head, base, head_sha))
            return number

    # --- the API ------------------------------------------------------------------------------

    def _pull_json(self, p: PullRequest) -> dict:
        html = f"{self.url}/{self.owner}/{self.repo}/pull/{p.number}"
        return {
            "id": p.number,
            "number": p.number,
            "state": p.state,
            "title": p.title,
            "body": p.body,
            "html_url": html,
            "url": f"{self.api_url}/repos/{self.owner}/{self.repo}/pulls/{p.number}",
            "head": {"ref": p.head, "sha": p.head_sha},
            "base": {"ref": p.base},
            "labels": [{"name": n} for n in p.labels],
        }

    def _issue_json(self, i: Issue) -> dict:
        return {
            "id": i.number,
            "number": i.number,
            "state": i.state,
            "title": i.title,
            "body": i.body,
            "html_url": f"{self.url}/{self.owner}/{self.repo}/issues/{i.number}",
            "labels": [],
        }

    def _comment_json(self, c: Comment) -> dict:
        html = f"{self.url}/{self.owner}/{self.repo}/pull/{c.issue}#issuecomment-{c.id}"
        return {"id": c.id, "body": c.body, "html_url": html, "user": {"login": "rehearsal-bot"}}

    def _contains(self, p: PullRequest, sha: str) -> bool:
        """GitHub's 'pull requests associated with a commit': its head, or a commit on the
        head branch that the base does not have."""
        if p.head_sha == sha or self.git_dir is None:
            return p.head_sha == sha

        def ancestor(rev: str) -> bool:
            return (
                subprocess.run(
                    [
                        "git",
                        "--git-dir",
                        str(self.git_dir),
                        "merge-base",
                        "--is-ancestor",
                        sha,
                        rev,
                    ],
                    capture_output=True,
                ).returncode
                == 0
            )

        return ancestor(p.head) and not ancestor(p.base)

    def answer(self, method: str, path: str, body: dict) -> tuple[int, object]:
        route = urlsplit(path)
        if method == "POST" and route.path == "/_asset":  # CML's upload: the URL as plain text
            self.assets.append(body.get("_raw", b""))
            return 200, f"{self.url}/_asset/{len(self.assets)}"
        if route.path.startswith("/api/v3/users/"):
            return 200, {"login": route.path.rsplit("/", 1)[1], "id": 1}
        prefix = f"/api/v3/repos/{self.owner}/{self.repo}/"
        if not route.path.startswith(prefix):
            return 404, {"message": "Not Found"}
        sub, query = route.path[len(prefix) :].rstrip("/"), parse_qs(route.query)
        if sub == "pulls" and method == "GET":
            state = query.get("state", ["open"])[0]
            chosen = [p for p in self.pulls if state == "all" or p.state == state]
            return 200, [self._pull_json(p) for p in chosen]
        if sub == "pulls" and method == "POST":
            if any(p.head == body["head"] and p.state == "open" for p in self.pulls):
                return 422, {
                    "message": "Validation Failed",
                    "errors": [{"message": "A pull request already exists"}],
                }
            sha = self._rev(body["head"])
            number = self.add_pull(body["head"], sha, body["title"], body["base"])
            self.pull(number).body = body.get("body", "")
            return 201, self._pull_json(self.pull(number))
        if m := re.fullmatch(r"commits/([0-9a-f]{40})/pulls", sub):
            hits = [p for p in self.pulls if p.state == "open" and self._contains(p, m[1])]
            return 200, [self._pull_json(p) for p in hits]
        if sub == "issues" and method == "GET":
            state = query.get("state", ["open"])[0]
            issues = [self._issue_json(i) for i in self.issues if state in ("all", i.state)]
            pulls = [
                {**self._pull_json(p), "pull_request": {"url": self._pull_json(p)["url"]}}
                for p in self.pulls
                if state in ("all", p.state)
            ]
            return 200, sorted(issues + pulls, key=lambda i: -i["number"])
        if sub == "issues" and method == "POST":
            with self.lock:
                issue = Issue(self._next_number(), body["title"], body.get("body", ""))
                self.issues.append(issue)
            return 201, self._issue_json(issue)
        if (m := re.fullmatch(r"issues/(\d+)", sub)) and any(
            i.number == int(m[1]) for i in self.issues
        ):
            issue = next(i for i in self.issues if i.number == int(m[1]))
            if method == "PATCH":
                issue.title = body.get("title", issue.title)
                issue.body = body.get("body", issue.body)
                issue.state = body.get("state", issue.state)
            return 200, self._issue_json(issue)
        if m := re.fullmatch(r"(?:pulls|issues)/(\d+)", sub):
            p = next((p for p in self.pulls if p.number == int(m[1])), None)
            if p is None:
                return 404, {"message": "Not Found"}
            if method == "PATCH":
                p.state = body.get("state", p.state)
            return 200, self._pull_json(p)
        if m := re.fullmatch(r"issues/(\d+)/comments", sub):
            number = int(m[1])
            if method == "GET":
                return 200, [self._comment_json(c) for c in self.comments_on(number)]
            with self.lock:
                comment = Comment(1000 + len(self.comments), number, body["body"])
                self.comments.append(comment)
            return 201, self._comment_json(comment)
        if m := re.fullmatch(r"issues/comments/(\d+)", sub):
            comment = next((c for c in self.comments if c.id == int(m[1])), None)
            if comment is None:
                return 404, {"message": "Not Found"}
            comment.body = body["body"]
            return 200, self._comment_json(comment)
        if m := re.fullmatch(r"issues/(\d+)/labels(?:/(.+))?", sub):
            p = self.pull(int(m[1]))
            if method == "POST":
                p.labels += [n for n in body["labels"] if n not in p.labels]
            elif method == "DELETE":
                name = unquote(m[2])
                if name not in p.labels:
                    return 404, {"message": "Label does not exist"}
                p.labels.remove(name)
            return 200, [{"name": n} for n in p.labels]
        return 404, {"message": "Not Found", "documentation_url": "fake_github: unhandled"}

    def _rev(self, ref: str) -> str:
        if self.git_dir is None:
            return "0" * 40
        result = subprocess.run(
            ["git", "--git-dir", str(self.git_dir), "rev-parse", ref],
            capture_output=True,
            text=True,
        )
        return result.stdout.strip() or "0" * 40

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _serve(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                fake.log.append(f"{self.command} {self.path}")
                if not self.path.startswith("/_asset") and (
                    self.headers.get("Authorization", "").split(" ")[-1] != fake.token
                ):
                    status, payload = 401, {"message": "Bad credentials"}
                else:
                    try:
                        body = json.loads(raw) if raw else {}
                    except ValueError:
                        body = {"_raw": raw}
                    status, payload = fake.answer(self.command, self.path, body)
                text = isinstance(payload, str)
                data = payload.encode() if text else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain" if text else "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = _serve

        return Handler
