"""Dask distributed backend of the sweeps: a ``LocalCluster`` (``--workers N``) or a running
scheduler (``--scheduler tcp://...``). Dask schedules, retries the tasks of a worker that died
and restarts it; this module only sets up the workers and hands results to the store."""

import collections
import logging

from distributed import Client, LocalCluster, WorkerPlugin
from distributed import as_completed

from . import store
from .runner import _threads_per_worker, _worker_setup, compute_error_frame, compute_point


class WorkerSetup(WorkerPlugin):
    """Thread caps and kernel warm-up on every (re)started worker."""

    name = "rnnlab-setup"

    def __init__(self, spec, threads):
        self.spec, self.threads = spec, threads

    def setup(self, worker):
        _worker_setup(self.spec, self.threads)


def run_dask(p, driver, record, workers=None, scheduler=None):
    """Compute ``p.todo`` on Dask; ``record(point, frame)`` is called as each finishes."""
    if scheduler is not None:
        client, cluster = Client(scheduler), None
    else:
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                               dashboard_address=None, silence_logs=logging.ERROR)
        client = Client(cluster)
    try:
        info = client.scheduler_info()["workers"]
        per_host = collections.Counter(w["host"] for w in info.values())
        client.register_plugin(WorkerSetup(p.study.spec, _threads_per_worker(
            max(per_host.values()) if per_host else 1)))
        futures = {client.submit(compute_point, p.study.spec, pt, driver, pure=False,
                                 key=f"{p.name}-{store.point_key(p.name, pt)}"): pt
                   for pt in p.todo}
        for fut in as_completed(futures):
            point = futures[fut]
            try:
                frame = fut.result()
            except Exception as exc:  # e.g. KilledWorker after repeated worker deaths
                frame = compute_error_frame(point, driver, f"{type(exc).__name__}: {exc}")
            record(point, frame)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
