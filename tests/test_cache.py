"""Numba's on-disk cache keyed on every compiled module of the package (rnnlab/_cache.py).

The hazard, shown on a two-file package in a temporary folder: ``a.f`` (cached) calls
``b.g``; after ``b.py`` changes, a new process running Numba's own cache still returns the old
``g``'s value; with :func:`rnnlab._cache.install` on that package, the new one.
"""

import os
import subprocess
import sys
import textwrap

import pytest

import rnnlab
from rnnlab import _cache
from rnnlab.kernels.cpu import blas, vanilla

A = """
from numba import njit
from .b import g

@njit(cache=True)
def f(x):
    return g(x) + 1
"""

B = """
from numba import njit

@njit
def g(x):
    return x * {factor}
"""

RUN = """
import sys
if sys.argv[2] == "keyed":
    from rnnlab import _cache
    assert _cache.install(sys.argv[1] + "/pkg")
sys.path.insert(0, sys.argv[1])
from pkg.a import f
print(f(10), f.stats.cache_hits[f.signatures[0]] if f.signatures else "")
"""


def _write(path, text):
    with open(path, "w") as fh:
        fh.write(textwrap.dedent(text))


def _run(root, mode):
    env = dict(os.environ)
    env.pop("NUMBA_CACHE_DIR", None)
    out = subprocess.run([sys.executable, "-c", RUN, str(root), mode], capture_output=True,
                         text=True, env=env, check=True)
    value, hits = out.stdout.split()
    return int(value), int(hits)


@pytest.mark.parametrize("mode, stale", [("numba", True), ("keyed", False)])
def test_a_change_in_a_called_module_recompiles_the_cached_caller(tmp_path, mode, stale):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    _write(pkg / "__init__.py", "")
    _write(pkg / "a.py", A)
    _write(pkg / "b.py", B.format(factor=2))
    assert _run(tmp_path, mode) == (21, 0)  # compiled and cached
    assert _run(tmp_path, mode) == (21, 1)  # loaded from the cache
    _write(pkg / "b.py", B.format(factor=3) + "\n# edited\n")
    if stale:  # Numba alone: a.py unchanged, so the stale f is loaded
        assert _run(tmp_path, mode) == (21, 1)
    else:
        assert _run(tmp_path, mode) == (31, 0)
        assert _run(tmp_path, mode) == (31, 1)  # and cached again


def test_rnnlab_kernels_use_the_package_keyed_locators():
    """Installed by ``import rnnlab``, before the kernels were decorated; idempotent."""
    assert rnnlab is not None
    for kernel in (blas.accumulate_product, vanilla.rnn_recurrence):
        locator = kernel._cache._impl.locator
        assert type(locator).__name__.startswith("Package"), type(locator)
        stamp = locator.get_source_stamp()
        assert stamp[1] == _cache.compiled_sources_digest()
    assert _cache.install()
    from numba.core import caching
    ours = [c for c in caching.CacheImpl._locator_classes if hasattr(c, "_rnnlab_package_dir")]
    assert len(ours) == 3


def test_digest_covers_compiled_modules_only(tmp_path):
    _write(tmp_path / "k.py", "from numba import njit\n")
    _write(tmp_path / "plain.py", "x = 1\n")
    d0 = _cache.compiled_sources_digest(str(tmp_path))
    _cache.compiled_sources_digest.cache_clear()
    _write(tmp_path / "plain.py", "x = 2\n")
    assert _cache.compiled_sources_digest(str(tmp_path)) == d0
    _cache.compiled_sources_digest.cache_clear()
    _write(tmp_path / "k.py", "from numba import njit  # edited\n")
    assert _cache.compiled_sources_digest(str(tmp_path)) != d0
    _cache.compiled_sources_digest.cache_clear()
