"""gunicorn's settings file (read from the working directory): the Procfile's command line sets
the rest. It gives the workers one fresh folder for their Prometheus metrics (diagnosis.metrics)
and forgets a worker's live gauges when it exits."""

import os
import shutil
import tempfile


def on_starting(server):
    """Before any worker is forked: a fresh metrics folder the workers inherit (none when the
    metrics are off: PROMETHEUS_METRICS=0)."""
    if os.environ.get("PROMETHEUS_METRICS", "1").strip().lower() in ("0", "false", "no", "off"):
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
        return
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or tempfile.mkdtemp(prefix="xray-metrics-")
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
