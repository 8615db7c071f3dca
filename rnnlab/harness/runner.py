"""Sweeps: every grid point of a study computed once, in a local process pool or on Dask, each
written as its own shard the moment it finishes, then merged.

A point is computed by :func:`compute_point` wherever it runs; the process that launched the
sweep writes the shards, so workers need no shared file system. A point that raises is
recorded with ``status="error"`` (and recomputed by the next run), one that raises
:class:`~rnnlab.harness.Diverged` with ``status="diverged"``; neither stops the sweep.
"""

import collections
import math
import os
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from . import Diverged, provenance, registry, store

#: Tries of a point whose worker process dies before it is recorded as an error.
MAX_WORKER_DEATHS = 3


# ------------------------------------------------------------------------------ one point
def _worker_setup(spec, threads):
    """Cap this worker's Numba and BLAS threads and compile the study's kernels once."""
    global _BLAS_LIMIT
    import numba
    from threadpoolctl import threadpool_limits

    numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
    _BLAS_LIMIT = threadpool_limits(max(1, threads))  # kept for the worker's lifetime
    study = registry.load(spec)
    if study.warmup is not None:
        study.warmup()


_BLAS_LIMIT = None


def _status_frame(point, status, error):
    return pd.DataFrame({"quantity": [None], "value": [np.nan], "status": [status],
                         "error": [error]})


def compute_point(spec, point, driver_columns):
    """Run one grid point of a study and return its rows with status and provenance.

    Parameters
    ----------
    spec : StudySpec
        The study.
    point : dict
        Its parameters.
    driver_columns : dict
        Provenance fixed by the launching process (version, commit).

    Returns
    -------
    DataFrame
        The point's parameters, the study's rows (``quantity``, ``value``, index columns),
        ``status``, ``error`` and the provenance columns.
    """
    from numba.core import event

    listener = event.TimingListener()
    start = time.perf_counter()
    try:
        study = registry.load(spec)
        with event.install_listener("numba:compile", listener):
            rows = study.run(dict(point))
        if not isinstance(rows, pd.DataFrame) or not {"quantity", "value"} <= set(rows.columns):
            raise TypeError(f"{spec.name}.run must return a DataFrame with 'quantity' and "
                            f"'value' columns, got {type(rows).__name__}")
        clash = set(rows.columns) & set(point)
        if clash:
            raise ValueError(f"{spec.name}.run returned columns named like grid parameters: "
                             f"{sorted(clash)}")
        frame = rows.reset_index(drop=True).assign(status="ok", error="")
    except Diverged as exc:
        frame = _status_frame(point, "diverged", str(exc) or "diverged")
    except Exception as exc:  # recorded, never fatal to the sweep
        last = traceback.extract_tb(exc.__traceback__)[-1]
        frame = _status_frame(point, "error", f"{type(exc).__name__}: {exc} "
                                              f"({Path(last.filename).name}:{last.lineno})")
    wall = time.perf_counter() - start
    for i, (k, val) in enumerate(point.items()):
        frame.insert(i, k, val)
    extra = {**driver_columns, **provenance.worker_provenance(),
             "wall_s": wall, "compile_s": listener.duration if listener.done else 0.0}
    if "dtype" not in frame.columns:
        extra["dtype"] = "float64"
    for k, val in extra.items():
        frame[k] = val
    return frame


# --------------------------------------------------------------------------------- a sweep
@dataclass
class Plan:
    """A validated sweep: the study, its points and where they go."""

    study: registry.Study
    grid: str
    points: list
    out: Path
    retry_errors: bool = True
    todo: list = field(default_factory=list)

    @property
    def name(self):
        return self.study.name


@dataclass
class Report:
    """What a sweep did."""

    name: str
    out: Path
    points: int
    computed: int
    skipped: int
    statuses: dict
    table: pd.DataFrame
    seconds: float

    def summary(self):
        counts = ", ".join(f"{n} {s}" for s, n in sorted(self.statuses.items()))
        return (f"{self.name}: {self.points} points ({self.computed} computed, {self.skipped} "
                f"already done; {counts or 'none'}) in {self.seconds:.1f} s -> "
                f"{store.table_path(self.out, self.name)}")


def parse_overrides(grid, pairs):
    """``["key=v1,v2", ...]`` to ``{key: [values]}`` typed like the grid's values.

    Raises
    ------
    ValueError
        Naming the bad pair, the grid's keys or the expected type.
    """
    out = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ValueError(f"--set takes key=value[,value...], got {pair!r}")
        key, text = pair.split("=", 1)
        key = key.strip()
        if key not in grid.keys:
            raise ValueError(f"--set {key}: not a parameter of this grid; its parameters are "
                             f"{', '.join(grid.keys)}")
        kind = grid.value_type(key)
        values = []
        for item in text.split(","):
            item = item.strip()
            try:
                if kind is bool:
                    if item.lower() not in ("true", "false", "1", "0"):
                        raise ValueError
                    val = item.lower() in ("true", "1")
                elif kind is int:
                    val = int(item)
                elif kind is float:
                    val = float(item)
                    if not math.isfinite(val):
                        raise ValueError
                else:
                    if not item:
                        raise ValueError
                    val = item
            except ValueError:
                raise ValueError(f"--set {key}: {item!r} is not a valid {kind.__name__} "
                                 f"(the grid's values are {kind.__name__}s)") from None
            values.append(val)
        out[key] = values
    return out


def default_out(grid, overrides):
    """``results`` for the full grid, ``results/quick`` for the quick one, ``results/custom``
    when ``--set`` changed the grid: the committed tables are only ever rewritten by the full
    grid."""
    if overrides:
        return Path("results") / "custom"
    return Path("results") if grid == "full" else Path("results") / "quick"


def plan(name, grid="quick", overrides=None, out=None, experiments=None, retry_errors=True):
    """Validate a sweep before any work: the study, the grid, ``--set`` and the output folder.

    Parameters
    ----------
    name : str
        Study name.
    grid : {"quick", "full"}
    overrides : list of str, optional
        ``key=value[,value...]`` pairs replacing grid values.
    out : str or Path, optional
        Output folder (default :func:`default_out`).
    experiments : str or Path, optional
        The experiments folder.
    retry_errors : bool
        Recompute points recorded with ``status="error"``.

    Returns
    -------
    Plan
    """
    study = registry.load_study(name, experiments)
    if grid not in registry.GRID_NAMES:
        raise ValueError(f"--grid must be one of {registry.GRID_NAMES}, got {grid!r}")
    g = study.grids[grid]
    over = parse_overrides(g, overrides)
    if over:
        g = g.with_values(over)
    points = g.points()
    if not points:
        raise ValueError(f"the {grid} grid of {name!r} has no points after --set")
    out = Path(out) if out is not None else default_out(grid, over)
    store.check_writable(out, name)
    p = Plan(study, grid, points, out, retry_errors)
    p.todo = [pt for pt in points if not _done(p, pt)]
    return p


def _done(p, point):
    status = store.shard_status(store.shard_path(p.out, p.name, point))
    return status is not None and not (p.retry_errors and status == "error")


def _progress(total, initial, name, enabled):
    from tqdm.auto import tqdm

    if enabled is None:
        enabled = sys.stderr.isatty()
    return tqdm(total=total, initial=initial, desc=name, unit="point", disable=not enabled,
                dynamic_ncols=True)


def run_plan(p, workers=None, scheduler=None, jobs=None, progress=None):
    """Compute the plan's missing points and merge the study's table.

    Parameters
    ----------
    p : Plan
        From :func:`plan`.
    workers : int, optional
        Run on a Dask ``LocalCluster`` of this many worker processes.
    scheduler : str, optional
        Run on the Dask scheduler at this address (``tcp://host:port``).
    jobs : int, optional
        Local process-pool size (default: the CPU count, at most the points to do; 1 runs in
        this process).
    progress : bool, optional
        tqdm progress bar (default: when stderr is a terminal).

    Returns
    -------
    Report
    """
    start = time.perf_counter()
    driver = provenance.driver_provenance()
    bar = _progress(len(p.points), len(p.points) - len(p.todo), p.name, progress)

    def record(point, frame):
        store.atomic_write(frame, store.shard_path(p.out, p.name, point))
        bar.update(1)

    try:
        if p.todo:
            if workers is not None or scheduler is not None:
                try:
                    from .dask_backend import run_dask
                except ImportError:
                    raise ImportError("--workers/--scheduler need Dask: pip install "
                                      "'rnnlab[dask]'") from None
                run_dask(p, driver, record, workers, scheduler)
            else:
                _run_local(p, driver, record, jobs)
    finally:
        bar.close()
    table = store.merge(p.out, p.name, p.points)
    # per point, from its shard (the points of a union grid need not share parameters)
    statuses = dict(collections.Counter(
        s for s in (store.shard_status(store.shard_path(p.out, p.name, pt)) for pt in p.points)
        if s is not None))
    return Report(p.name, p.out, len(p.points), len(p.todo), len(p.points) - len(p.todo),
                  statuses, table, time.perf_counter() - start)


def _threads_per_worker(n_workers):
    return max(1, (os.cpu_count() or 1) // max(1, n_workers))


def _run_local(p, driver, record, jobs):
    jobs = min(jobs or os.cpu_count() or 1, len(p.todo))
    if jobs <= 1:
        for point in p.todo:
            record(point, compute_point(p.study.spec, point, driver))
        return
    import multiprocessing

    # spawn: a fork of a process running Numba/OpenBLAS threads can deadlock
    ctx = multiprocessing.get_context("spawn")
    deaths = collections.Counter()
    todo = list(p.todo)
    while todo:
        with ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_worker_setup,
                                 initargs=(p.study.spec, _threads_per_worker(jobs))) as pool:
            futures = {pool.submit(compute_point, p.study.spec, pt, driver): i
                       for i, pt in enumerate(todo)}
            finished = set()
            try:
                for fut in as_completed(futures):
                    i = futures[fut]
                    record(todo[i], fut.result())
                    finished.add(i)
            except BrokenProcessPool:
                pass  # a worker died (killed, out of memory): retry what did not finish
        left = [i for i in range(len(todo)) if i not in finished]
        for i in left:
            key = store.point_key(p.name, todo[i])
            deaths[key] += 1
            if deaths[key] >= MAX_WORKER_DEATHS:
                frame = compute_error_frame(todo[i], driver, "worker process died "
                                            f"{MAX_WORKER_DEATHS} times")
                record(todo[i], frame)
        todo = [todo[i] for i in left if deaths[store.point_key(p.name, todo[i])]
                < MAX_WORKER_DEATHS]


def compute_error_frame(point, driver, message):
    """The shard of a point that could not be computed at all."""
    frame = _status_frame(point, "error", message)
    for i, (k, val) in enumerate(point.items()):
        frame.insert(i, k, val)
    for k, val in {**driver, **provenance.worker_provenance(), "wall_s": np.nan,
                   "compile_s": np.nan, "dtype": "float64"}.items():
        frame[k] = val
    return frame


# ------------------------------------------------------------------------------- figures
def draw(name, out, experiments=None, table=None):
    """Draw study ``name``'s figure from its table in ``out`` (only from the table).

    Returns
    -------
    list of Path
    """
    study = registry.load_study(name, experiments)
    table = store.read_table(out, name) if table is None else table
    ok = table[table["status"] == "ok"] if "status" in table.columns else table
    if ok.empty:
        raise ValueError(f"study {name!r} has no finished points in {out} to draw")
    return [Path(f) for f in study.figure(ok.reset_index(drop=True), store.study_dir(out, name))
            or []]
