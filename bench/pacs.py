"""From "instance stored in the PACS" to "result stored back", with the real components: Debian's
Orthanc (tests/orthanc.py) and the app as Heroku runs it (packaged with the bundle, its own venv,
the Procfile's web command: gunicorn, 2 uvicorn workers, PostgreSQL), on 127.0.0.1 only.

    python -m bench.pacs [--bundle DIR] [--studies 16] [--quick]

Push, two ways: the STOW-RS request a PACS makes, sent by this script to the app (the app's own
part: it answers once Orthanc has acknowledged the result object), and Orthanc's own STOW-RS
client sending a study it stores (`/dicom-web/servers/.../stow` as a job, polled every 10 ms: the
whole path a site runs, Orthanc's job scheduling included). Each study is one CR instance made
from a full-size sample (12-bit, at most BENCH_SIDE = 2,048 px). With 1 and 4 in flight:
studies/s, p50/p95 latency, the web workers' peak RSS, and each result found in Orthanc. Pull:
as many new studies dealt with by one `manage.py pacs_worker --once` (sequential by design),
its wall time per study (the process's start included) and its peak RSS; and a running
`pacs_worker --poll 0.5` (as a site runs it), timed from each instance stored in Orthanc to its
result found in the study, 1 stored at a time and 4 at once. Without --bundle, a
ResNet18 at 224 px (random init, BatchNorm statistics from real X-rays, float, with the guard)
stands in for the champion: the served graph at its size, not its weights. Prints a Markdown report.
"""

from __future__ import annotations

import argparse
import io
import itertools
import os
import re
import secrets
import statistics
import subprocess
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pydicom

from bench.packaged_app import drop_database, packaged_app
from pneumonia.config import SAMPLES_DIR as SAMPLES
from tests.orthanc import radiograph, running_orthanc

ROOT = Path(__file__).resolve().parents[1]
SIDE = int(os.environ.get("BENCH_SIDE", "2048"))


def rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


class PeakRss:
    """The peak RSS of each process under ``root`` (sampled every 50 ms) while in the block."""

    def __init__(self, root: int):
        self.root, self.peak, self.running = root, {}, True

    def __enter__(self):
        def sample():
            while self.running:
                for pid in [self.root, *children(self.root)]:
                    self.peak[pid] = max(self.peak.get(pid, 0.0), rss_mib(pid))
                time.sleep(0.05)

        self.thread = threading.Thread(target=sample, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()


def stand_in_bundle(out: Path) -> Path:
    from tests.bundles import calibrated_model, make_bundle

    metrics = {"threshold": 0.5, "accuracy": 0.9, "sensitivity": 0.95, "specificity": 0.8}
    return make_bundle(calibrated_model(224), 224, out, metrics, guard=True)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


POLL = 0.5  # seconds between the polling worker's reads of the change feed


def polling_worker(app, env, work, picked, new_studies, answered_in_orthanc) -> list[tuple]:
    """A running `pacs_worker --poll 0.5` (how a site runs it): from each instance stored in
    Orthanc to its result found in the study, with 1 stored at a time and 4 stored at once
    (the worker takes them one after another: the 4th waits for the 3 before it)."""
    from tests.conftest import stop

    log = open(work / "worker.log", "w")  # noqa: SIM115 - closed below
    worker = subprocess.Popen(
        ["python", "manage.py", "pacs_worker", "bench", "--poll", str(POLL)],
        cwd=app,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    rows = []
    try:

        def answered(stored: dict[str, float]) -> list[float]:
            latencies, deadline = [], time.monotonic() + 300
            while stored:
                if worker.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError((work / "worker.log").read_text()[-3000:])
                for study, at in list(stored.items()):
                    if answered_in_orthanc(study):
                        latencies.append(time.perf_counter() - at)
                        del stored[study]
                time.sleep(0.02)
            return latencies

        sizes: list[float] = []
        made = itertools.cycle(picked)

        def store(count: int) -> dict[str, float]:
            stored = {}
            for _ in range(count):
                (study,), mib = new_studies([next(made)])
                stored[study] = time.perf_counter()
                sizes.append(mib)
            return stored

        answered(store(1))  # not timed: the worker loads the model on its first instance
        for at_once in (1, 4):
            latencies, sizes[:], made = [], [], itertools.cycle(picked)
            with PeakRss(worker.pid) as rss:
                started = time.perf_counter()
                for _ in range(max(1, len(picked) // at_once)):
                    latencies += answered(store(at_once))
                wall = time.perf_counter() - started
            rows.append(
                (
                    f"pull, a running `pacs_worker --poll {POLL:g}`, {at_once} stored at once",
                    len(latencies),
                    len(latencies),
                    statistics.mean(sizes),
                    len(latencies) / wall,
                    percentile(latencies, 0.5),
                    percentile(latencies, 0.95),
                    max(rss.peak.values(), default=0.0),
                )
            )
    finally:
        stop(worker)
        log.close()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bundle", type=Path)
    parser.add_argument("--studies", type=int, default=16, help="per measurement")
    parser.add_argument("--quick", action="store_true", help="4 studies: checks that it works")
    args = parser.parse_args()
    if args.quick:
        args.studies = 4
    work = Path(tempfile.mkdtemp(prefix="pacs-bench-"))
    bundle = args.bundle or stand_in_bundle(work / "bundle")
    samples = sorted(SAMPLES.rglob("*.jpeg"))
    booted = packaged_app(bundle, work, PROMETHEUS_MULTIPROC_DIR=str(work / "metrics"))
    app, env, port, procfile = booted.dir, booted.env, booted.port, booted.procfile
    from tests.conftest import stop

    def manage(*argv: str) -> str:
        done = subprocess.run(
            ["python", "manage.py", *argv],
            cwd=app,
            env=env,
            check=True,
            capture_output=True,
            text=True,
        )
        return done.stdout

    with running_orthanc(work) as orthanc:
        said = manage(
            "add_pacs_site",
            "bench",
            "--dicomweb-url",
            orthanc.dicomweb,
            "--orthanc-url",
            orthanc.url,
        )
        token = re.search(r"shown once\): (\S+)", said)[1]
        orthanc.request(
            "PUT",
            "dicom-web/servers/app",
            {
                "Url": f"http://127.0.0.1:{port}/dicomweb/",
                "HttpHeaders": {"Authorization": f"Bearer {token}"},
                "ChunkedTransfers": False,
            },
        )
        log = open(work / "web.log", "w")  # noqa: SIM115 - closed below
        server = subprocess.Popen(
            ["bash", "-c", "exec " + procfile["web"].replace("0.0.0.0", "127.0.0.1")],
            cwd=app,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5).close()
                    break
                except OSError:
                    if server.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError((work / "web.log").read_text()[-3000:]) from None
                    time.sleep(0.2)
            # The same images in every row, from both classes, so that the rows compare.
            picked = (samples * args.studies)[:: max(1, len(samples) // args.studies)]
            picked = picked[: args.studies]

            def new_studies(paths: list[Path]) -> tuple[list[str], float]:
                ids, sizes = [], []
                for path in paths:
                    data = radiograph(path, side=SIDE)
                    sizes.append(len(data) / 2**20)
                    ids.append(orthanc.store(data)["ParentStudy"])
                return ids, statistics.mean(sizes)

            def push(study: str) -> float:
                # As a job, polled: Orthanc 1.10 drops synchronous STOW-RS calls made in
                # parallel (the connection closes with no answer).
                started = time.perf_counter()
                job = orthanc.request(
                    "POST",
                    "dicom-web/servers/app/stow",
                    {"Resources": [study], "Asynchronous": True},
                )["ID"]
                while (state := orthanc.request("GET", f"jobs/{job}")["State"]) not in (
                    "Success",
                    "Failure",
                ):
                    time.sleep(0.01)
                if state != "Success":
                    raise RuntimeError(f"Orthanc's STOW-RS job {job} failed")
                return time.perf_counter() - started

            def answered_in_orthanc(study: str) -> bool:
                """Whether the study (Orthanc's id) holds the app's result series."""
                series = orthanc.request("GET", f"studies/{study}")["Series"]
                modalities = [
                    orthanc.request("GET", f"series/{s}")["MainDicomTags"]["Modality"]
                    for s in series
                ]
                return "OT" in modalities

            def orthanc_study(data: bytes) -> str:
                uid = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).StudyInstanceUID
                query = {"Level": "Study", "Query": {"StudyInstanceUID": uid}}
                (found,) = orthanc.request("POST", "tools/find", query)
                return found

            def stow_direct(data: bytes) -> float:
                """The STOW-RS request a PACS makes, sent by this script: the app's own part."""
                boundary = secrets.token_hex(16)
                body = (
                    f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
                    + data
                    + f"\r\n--{boundary}--\r\n".encode()
                )
                request = urllib.request.Request(
                    f"http://127.0.0.1:{port}/dicomweb/studies",
                    data=body,
                    headers={
                        "Authorization": f"Bearer {token}",
                        "Content-Type": 'multipart/related; type="application/dicom"; '
                        f"boundary={boundary}",
                    },
                )
                started = time.perf_counter()
                with urllib.request.urlopen(request, timeout=120) as response:
                    response.read()
                return time.perf_counter() - started

            push(new_studies(picked[:1])[0][0])  # not timed: the workers' first request
            rows = []
            for in_flight in (1, 4):
                instances = [radiograph(path, side=SIDE) for path in picked]
                with PeakRss(server.pid) as rss, ThreadPoolExecutor(in_flight) as pool:
                    started = time.perf_counter()
                    latencies = list(pool.map(stow_direct, instances))
                    wall = time.perf_counter() - started
                workers = [v for pid, v in rss.peak.items() if pid != server.pid]
                mib = statistics.mean(len(d) for d in instances) / 2**20
                answered = sum(answered_in_orthanc(orthanc_study(d)) for d in instances)
                rows.append(
                    (
                        f"STOW-RS straight to the app, {in_flight} in flight",
                        len(instances),
                        answered,
                        mib,
                        len(instances) / wall,
                        percentile(latencies, 0.5),
                        percentile(latencies, 0.95),
                        max(workers, default=0.0),
                    )
                )
            for in_flight in (1, 4):
                studies, mib = new_studies(picked)
                with PeakRss(server.pid) as rss, ThreadPoolExecutor(in_flight) as pool:
                    started = time.perf_counter()
                    latencies = list(pool.map(push, studies))
                    wall = time.perf_counter() - started
                answered = sum(map(answered_in_orthanc, studies))
                workers = [v for pid, v in rss.peak.items() if pid != server.pid]
                rows.append(
                    (
                        f"Orthanc's STOW-RS job, {in_flight} in flight",
                        len(studies),
                        answered,
                        mib,
                        len(studies) / wall,
                        percentile(latencies, 0.5),
                        percentile(latencies, 0.95),
                        max(workers, default=0.0),
                    )
                )
            studies, mib = new_studies(picked)
            started = time.perf_counter()
            timed = subprocess.run(
                [
                    "/usr/bin/time",
                    "-f",
                    "%M",
                    "python",
                    "manage.py",
                    "pacs_worker",
                    "bench",
                    "--once",
                ],
                cwd=app,
                env=env,
                check=True,
                capture_output=True,
                text=True,
            )
            seconds = time.perf_counter() - started  # with the process's start (~2 s)
            peak_kib = int(timed.stderr.strip().splitlines()[-1])
            answered = sum(map(answered_in_orthanc, studies))
            per_study = seconds / len(studies)
            rows.append(
                (
                    "pull, `pacs_worker --once`",
                    len(studies),
                    answered,
                    mib,
                    1 / per_study,
                    per_study,
                    float("nan"),
                    peak_kib / 1024,
                )
            )
            rows.extend(polling_worker(app, env, work, picked, new_studies, answered_in_orthanc))
        finally:
            stop(server)
            log.close()
    drop_database(booted.database)

    print(f"bundle: {'stand-in ResNet18 224 px, float, guard' if not args.bundle else bundle}")
    print(
        "| path | studies | answered in Orthanc | MiB per instance | studies/s | p50 s | "
        "p95 s | peak RSS MiB (web worker / the worker) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, n, ok, mib, rate, p50, p95, peak in rows:
        p95_shown = "-" if p95 != p95 else f"{p95:.2f}"
        print(
            f"| {name} | {n} | {ok} | {mib:.1f} | {rate:.2f} | {p50:.2f} | {p95_shown} "
            f"| {peak:.0f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
