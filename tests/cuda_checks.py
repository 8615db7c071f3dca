"""Helpers shared by the CPU-vs-CUDA check scripts (tests/cuda_sim_*.py): the tolerances, the
relative error, and the one-line-per-case report that ends in an exit status."""

import sys

import numpy as np

#: Agreement required between the CPU and CUDA kernels, relative to an array's largest entry.
TOL = {np.dtype(np.float64): 1e-10, np.dtype(np.float32): 1e-5}


def rel_err(ref, got, same_dtype=False):
    """``max|ref - got| / max|ref|`` over the finite entries; ``inf`` when the shapes differ,
    when the non-finite entries differ (position or value), or with ``same_dtype`` when the
    dtypes differ."""
    if same_dtype and np.asarray(got).dtype != np.asarray(ref).dtype:
        return np.inf
    ref = np.asarray(ref, dtype=np.float64)
    got = np.asarray(got, dtype=np.float64)
    if ref.shape != got.shape:
        return np.inf
    fin = np.isfinite(ref)
    if not np.array_equal(fin, np.isfinite(got)) or not np.array_equal(ref[~fin], got[~fin]):
        return np.inf
    if not fin.any():
        return 0.0
    return float(np.abs(ref[fin] - got[fin]).max() / max(np.abs(ref[fin]).max(), 1e-30))


class Report:
    """Prints ``ok``/``FAIL`` per case with its worst array; :meth:`finish` gives the exit
    status (1 on any disagreement, listing them on stderr)."""

    def __init__(self, label_width=58, name_width=12):
        self.label_width, self.name_width = label_width, name_width
        self.failures = []

    def __call__(self, label, errs, seconds, tol=TOL[np.dtype(np.float64)]):
        worst = max(errs, key=errs.get)
        ok = errs[worst] <= tol
        print(f"{'ok  ' if ok else 'FAIL'} {label:<{self.label_width}} worst "
              f"{worst:<{self.name_width}} {errs[worst]:.1e}  ({seconds:.1f} s)", flush=True)
        if not ok:
            self.failures.append((label, errs))

    def for_dtype(self, label, dtype, errs, seconds):
        """A case held to the tolerance of ``dtype``."""
        self(label, errs, seconds, TOL[np.dtype(dtype)])

    def finish(self):
        if not self.failures:
            return 0
        print(f"{len(self.failures)} case(s) disagree:", file=sys.stderr)
        for label, errs in self.failures:
            print(f"  {label}: {errs}", file=sys.stderr)
        return 1
