"""The result store: one parquet shard per grid point, written atomically, merged into one tidy
table per study (plus a CSV twin when small).

Layout under the output folder::

    <out>/<study>/shards/<key>.parquet   one per grid point (key: hash of study + point)
    <out>/<study>/<study>.parquet        the merged table, in grid order
    <out>/<study>/<study>.csv            its CSV twin (tables up to CSV_MAX_ROWS rows)
"""

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

#: Tables up to this many rows also get a CSV twin.
CSV_MAX_ROWS = 20_000

#: Columns that differ between reruns by nature (excluded when comparing runs).
TIMING_COLUMNS = ("wall_s", "compile_s")

#: Statuses of a point; only "error" is recomputed by a rerun.
STATUSES = ("ok", "diverged", "error")


def point_key(study, point):
    """Stable key of a grid point: a hash of the study name and the point's values."""
    text = json.dumps({"study": study, "point": point}, sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:20]


def study_dir(out, study):
    return Path(out) / study


def shard_path(out, study, point):
    return study_dir(out, study) / "shards" / f"{point_key(study, point)}.parquet"


def table_path(out, study):
    return study_dir(out, study) / f"{study}.parquet"


def atomic_write(frame, path, fmt="parquet"):
    """Write ``frame`` to ``path`` through a temporary file and a rename, so that a reader (or
    a rerun after a crash) sees either the whole file or none."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        if fmt == "parquet":
            frame.to_parquet(tmp, index=False)
        else:
            frame.to_csv(tmp, index=False)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def check_writable(out, study):
    """Create the study's folders and prove they are writable; a clear error otherwise."""
    folder = study_dir(out, study) / "shards"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".probe.{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise PermissionError(f"cannot write to the output folder {str(out)!r}: {exc}") from None
    for stale in folder.glob(".*.tmp"):  # left by a killed run
        stale.unlink(missing_ok=True)


def shard_status(path):
    """The status of a finished shard, or None if there is none."""
    if not Path(path).exists():
        return None
    return str(pd.read_parquet(path, columns=["status"])["status"].iloc[0])


def merge(out, study, points):
    """Merge the shards of ``points`` (in order) into the study's table and its CSV twin.

    Returns
    -------
    DataFrame
        The table (points without a shard are missing from it).
    """
    frames = [pd.read_parquet(p) for p in (shard_path(out, study, pt) for pt in points)
              if p.exists()]
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    atomic_write(table, table_path(out, study))
    csv = table_path(out, study).with_suffix(".csv")
    if len(table) <= CSV_MAX_ROWS:
        atomic_write(table, csv, fmt="csv")
    elif csv.exists():
        csv.unlink()
    return table


def read_table(out, study):
    """The merged table of a study (FileNotFoundError naming the command that makes it)."""
    path = table_path(out, study)
    if not path.exists():
        raise FileNotFoundError(f"no table for study {study!r} at {path}: run "
                                f"`rnnlab run {study}` first")
    return pd.read_parquet(path)


def numeric_equal(a, b):
    """Whether two tables have the same rows and bitwise-equal values, timing columns aside."""
    cols = [c for c in a.columns if c not in TIMING_COLUMNS]
    if list(cols) != [c for c in b.columns if c not in TIMING_COLUMNS] or len(a) != len(b):
        return False
    for c in cols:
        x, y = a[c].to_numpy(), b[c].to_numpy()
        if x.dtype.kind == "f" and y.dtype.kind == "f":
            if not np.array_equal(x.view(np.int64), y.view(np.int64)):
                return False
        elif not pd.Series(x).equals(pd.Series(y)):
            return False
    return True
