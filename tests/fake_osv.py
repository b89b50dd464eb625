"""A stand-in for OSV's query API (``POST https://api.osv.dev/v1/query``), answering what
pip-audit asks it: ``{"package": {"name", "ecosystem"}, "version"}`` -> ``{"vulns": [...]}`` for
the advisories given, ``{}`` for every other package. Where OSV cannot be reached (this machine),
``make audit OSV_URL=...`` runs the real pip-audit against it."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def advisory(vuln_id: str, name: str, fixed: str) -> dict:
    """An OSV record (schema 1.x) for the PyPI package ``name``, fixed in ``fixed``."""
    return {
        "schema_version": "1.6.0",
        "id": vuln_id,
        "summary": f"a flaw in {name}, fixed in {fixed}",
        "affected": [
            {
                "package": {"name": name, "ecosystem": "PyPI"},
                "ranges": [
                    {"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": fixed}]}
                ],
            }
        ],
    }


class FakeOsv:
    def __init__(self, advisories: dict[tuple[str, str], list[dict]] | None = None) -> None:
        self.advisories = advisories or {}  # (canonical name, version) -> OSV records
        self.queries: list[tuple[str, str]] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/query"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                query = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                package = query["package"]
                key = (package["name"], query["version"])
                fake.queries.append(key)
                found = fake.advisories.get(key) if package["ecosystem"] == "PyPI" else None
                body = json.dumps({"vulns": found} if found else {}).encode()
                self.send_response(200 if self.path == "/v1/query" else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Handler
