"""The web app under load, as it runs on Heroku: packaged with the bundle, its own venv (no
torch), the Procfile's web command (gunicorn, 2 workers) on PostgreSQL, on 127.0.0.1 only.

    python bench/web.py [--clients 4] [--seconds 60] [--metrics on|off] [--quick]

Measures: cold start (process start to the first prediction answered), requests/s and
p50/p95/p99 latency of POST /api/v1/predictions with the full-size sample JPEGs at N concurrent
clients over a bounded run (with the service metrics on, /metrics scraped every 5 s as
Prometheus would; ``--metrics off``: PROMETHEUS_METRICS=0), errors, RSS of each worker at start
and after 1,000 predictions, what 32 clients not signed in stalling 10.4 MiB bodies get and
cost the workers, and the installed size (venv + app + model). Prints a Markdown report. Load
stays on loopback and stops by itself.
"""

from __future__ import annotations

import argparse
import json
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import requests

from pneumonia.config import SAMPLES_DIR as SAMPLES

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python bench/web.py`: bench.packaged_app beside it
    sys.path.insert(0, str(ROOT))
from bench.packaged_app import drop_database, packaged_app  # noqa: E402

TOKEN = {"value": ""}  # the benchmark account's API token, set once the app is released


def multipart_image(image: bytes) -> tuple[bytes, str]:
    """The upload's multipart body and content type, encoded once before the clock starts."""
    files = {"image": ("upload.jpeg", image, "image/jpeg")}
    prepared = requests.Request("POST", "http://127.0.0.1/", files=files).prepare()
    return prepared.body, prepared.headers["Content-Type"]


def post(url: str, body: bytes, content_type: str) -> tuple[int, float]:
    started = time.perf_counter()
    headers = {"Content-Type": content_type, "Authorization": f"Bearer {TOKEN['value']}"}
    request = urllib.request.Request(url, data=body, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except OSError:
        status = 0
    return status, (time.perf_counter() - started) * 1000


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def workers(master: int) -> list[int]:
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    return sorted(int(c) for c in children)


def du_mib(*paths: Path) -> float:
    out = subprocess.run(["du", "-sbc", *map(str, paths)], capture_output=True, text=True).stdout
    return int(out.strip().splitlines()[-1].split()[0]) / 2**20


def gzip_mib(*paths: Path) -> float:
    """Size of a gzipped tar of ``paths``: how Heroku measures a slug against its 500 MB."""
    tar = subprocess.run(["tar", "-cz", *map(str, paths)], capture_output=True, check=True)
    return len(tar.stdout) / 2**20


def stalled_anonymous_bodies(port: int, master: int, clients: int = 32) -> dict:
    """``clients`` connections not signed in, each declaring a 10.4 MiB upload, sending its
    first 64 KiB and then nothing (issue 34's slow-body attack): how many got 401, how fast,
    and the workers' peak RSS meanwhile (sampled every 50 ms)."""
    declared = int(10.4 * 2**20)
    head = (
        f"POST /api/v1/predictions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: multipart/form-data; boundary=x\r\nContent-Length: {declared}\r\n\r\n"
    ).encode()
    pids = workers(master)
    before = {pid: rss_mib(pid) for pid in pids}
    peak = dict(before)
    answers: list[bytes] = []
    connections = []
    started = time.perf_counter()
    try:
        for _ in range(clients):
            conn = socket.create_connection(("127.0.0.1", port), timeout=30)
            conn.sendall(head + b"-" * 65536)
            connections.append(conn)
        for conn in connections:
            answer = b""
            while chunk := conn.recv(4096):
                answer += chunk
                for pid in pids:
                    peak[pid] = max(peak[pid], rss_mib(pid))
            answers.append(answer)
        answered = time.perf_counter() - started
        for _ in range(20):  # a second more: the workers' memory after the answers
            for pid in pids:
                peak[pid] = max(peak[pid], rss_mib(pid))
            time.sleep(0.05)
    finally:
        for conn in connections:
            conn.close()
    refused = sum(a.startswith(b"HTTP/1.1 401") for a in answers)
    return {
        "clients": clients,
        "refused": refused,
        "seconds": answered,
        "before": before,
        "peak": peak,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--predictions", type=int, default=1000, help="RSS is read after these")
    parser.add_argument("--quick", action="store_true", help="a few seconds: checks that it works")
    parser.add_argument("--bundle", type=Path, default=ROOT / "models" / "bundle")
    parser.add_argument(
        "--metrics", choices=["on", "off"], default="on", help="off: PROMETHEUS_METRICS=0"
    )
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.predictions = 3, 20
    images = [multipart_image(p.read_bytes()) for p in sorted(SAMPLES.rglob("*.jpeg"))]
    work = Path(tempfile.mkdtemp(prefix="web-bench-"))
    booted = packaged_app(
        args.bundle, work, PROMETHEUS_METRICS="1" if args.metrics == "on" else "0"
    )
    app, venv, env, port, procfile = (
        booted.dir,
        booted.venv,
        booted.env,
        booted.port,
        booted.procfile,
    )

    def account(name: str, *extra: str) -> str:
        """An account made as the README tells staff to; its API token."""
        made = subprocess.run(
            ["python", "manage.py", "add_clinician", name, "--password-stdin", *extra]
            + ["--api-token", "bench"],
            cwd=app,
            env=env,
            input=secrets.token_urlsafe(16) + "\n",
            check=True,
            capture_output=True,
            text=True,
        )
        return made.stdout.split("store it now): ")[1].strip()

    TOKEN["value"] = account("bench")
    # with the metrics on, a staff token, as Prometheus's scrape job would hold
    scraper = account("prometheus", "--staff") if args.metrics == "on" else None
    url = f"http://127.0.0.1:{port}/api/v1/predictions"
    log = open(work / "web.log", "w")  # noqa: SIM115 (closed in finally)
    started = time.perf_counter()
    server = subprocess.Popen(
        ["bash", "-c", "exec " + procfile["web"]],
        cwd=app,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        while post(url, *images[0])[0] != 200:
            if server.poll() is not None or time.perf_counter() - started > 60:
                raise RuntimeError((work / "web.log").read_text()[-2000:])
            time.sleep(0.05)
        cold_start = time.perf_counter() - started
        for i in range(4):  # each worker answers once before "start" RSS is read
            post(url, *images[i])
        rss_start = {pid: rss_mib(pid) for pid in workers(server.pid)}

        latencies: list[float] = []
        statuses: list[int] = []
        lock = threading.Lock()
        deadline = time.perf_counter() + args.seconds

        def client(offset: int) -> None:
            i = offset
            while time.perf_counter() < deadline:
                status, ms = post(url, *images[i % len(images)])
                with lock:
                    latencies.append(ms)
                    statuses.append(status)
                i += args.clients

        scrapes: list[float] = []

        def scrape() -> None:
            """/metrics every 5 s (drift signals included), as a Prometheus scrape job."""
            headers = {"Authorization": f"Bearer {scraper}"}
            while time.perf_counter() < deadline:
                begun = time.perf_counter()
                metrics = urllib.request.Request(url.replace("/api/v1/predictions", "/metrics"))
                for name, value in headers.items():
                    metrics.add_header(name, value)
                with urllib.request.urlopen(metrics, timeout=30) as answer:
                    answer.read()
                scrapes.append((time.perf_counter() - begun) * 1000)
                time.sleep(max(0.0, 5 - (time.perf_counter() - begun)))

        threads = [threading.Thread(target=client, args=(k,)) for k in range(args.clients)]
        if scraper:
            threads.append(threading.Thread(target=scrape))
        load_started = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - load_started
        done = len(statuses) + 5
        i = 0
        while done < args.predictions:  # top up to the prediction count for the RSS reading
            post(url, *images[i % len(images)])
            done, i = done + 1, i + 1
        rss_end = {pid: rss_mib(pid) for pid in workers(server.pid)}
        stalled = stalled_anonymous_bodies(port, server.pid)
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
        drop_database(booted.database)

    refused = sum(s == 422 for s in statuses)  # the guard's answer to an image: not an error
    errors = sum(s not in (200, 422) for s in statuses)
    p50, p95, p99 = (float(np.percentile(latencies, q)) for q in (50, 95, 99))
    print(
        f"gunicorn, 2 workers (Procfile), PostgreSQL; {args.clients} concurrent clients posting "
        f"{len(images)} full-size sample JPEGs in turn for {args.seconds:.0f} s on loopback; "
        f"service metrics {args.metrics}"
        + (f", /metrics scraped every 5 s ({len(scrapes)} scrapes)" if scraper else "")
        + ".\n"
    )
    print("| measure | value |\n|---|---:|")
    print(f"| requests | {len(statuses)} ({errors} errors, {refused} refused by the guard) |")
    print(f"| throughput | {len(statuses) / elapsed:.1f} req/s |")
    print(f"| latency p50 / p95 / p99 | {p50:.0f} / {p95:.0f} / {p99:.0f} ms |")
    print(f"| mean latency | {statistics.mean(latencies):.0f} ms |")
    print(f"| cold start (spawn to first prediction) | {cold_start:.2f} s |")
    if scrapes:
        print(
            f"| /metrics scrape, median / max | {np.median(scrapes):.0f} / {max(scrapes):.0f} ms |"
        )
    for n, pid in enumerate(sorted(rss_start)):
        end = rss_end.get(pid, float("nan"))
        growth = (end / rss_start[pid] - 1) * 100
        print(
            f"| worker {n + 1} RSS at start / after {done} predictions | "
            f"{rss_start[pid]:.0f} / {end:.0f} MiB ({growth:+.1f}%) |"
        )
    before = " / ".join(f"{stalled['before'][p]:.0f}" for p in sorted(stalled["before"]))
    peak = " / ".join(f"{stalled['peak'][p]:.0f}" for p in sorted(stalled["peak"]))
    print(
        f"| {stalled['clients']} anonymous clients stalling 10.4 MiB bodies | "
        f"{stalled['refused']} answered 401 within {stalled['seconds']:.2f} s; workers' RSS "
        f"{before} MiB before, {peak} MiB at peak |"
    )
    print(
        f"| installed app (venv + app + model) | {du_mib(venv, app):.0f} MiB "
        f"({gzip_mib(venv, app):.0f} MiB as a gzipped tar, like a slug) |"
    )
    print(json.dumps({"errors": errors, "requests": len(statuses)}), file=sys.stderr)
    return 1 if errors or stalled["refused"] != stalled["clients"] else 0


if __name__ == "__main__":
    sys.exit(main())
