"""Numba's on-disk cache, keyed on every compiled module of the package, not on one file.

Numba stamps a cached kernel with the source of the file that defines it, and nothing else: a
kernel compiled into the cache keeps the code of the functions it calls from *other* files
(inlined or linked in), and goes on running it after those files change. In rnnlab every
recurrence calls the per-step product of ``kernels/cpu/blas.py``; after an edit or a ``git
pull`` that changed only ``blas.py``, the recurrences of ``vanilla.py``, ``lstm.py`` and
``gru.py`` would load their stale cached copies, and the results would differ in the last bits
from a fresh process's (seen: the Lyapunov ensemble, recompiled, no longer matched ``RNN``'s
trajectories, still cached). A fresh install rewrites every file, so this bites editable
installs above all.

:func:`install` puts locators in front of Numba's own that stamp each kernel of the package
with its file's digest *and* the digest of every module of the package that holds compiled
code, so that any change to any of them recompiles them all once. Functions outside the package
keep Numba's locators. Uses Numba's cache-locator classes (``numba.core.caching``); if they
change shape, :func:`install` leaves Numba's behaviour as it is and says so.
"""

import functools
import hashlib
import os
import warnings

#: Text that marks a module as holding compiled code (or what compiled code reads at compile
#: time, as constants).
_COMPILED_MARKERS = (b"njit", b"cuda.jit", b"@intrinsic", b"@overload", b"register_jitable",
                     b"@vectorize", b"@guvectorize")

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


@functools.lru_cache(maxsize=None)
def compiled_sources_digest(package_dir=_PACKAGE_DIR):
    """SHA-256 over the path and contents of every ``.py`` file under ``package_dir`` that
    holds compiled code (read once per process).

    Parameters
    ----------
    package_dir : str
        Root of the package.

    Returns
    -------
    bytes
        The digest.
    """
    h = hashlib.sha256()
    for root, dirs, files in os.walk(package_dir):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(files):
            if not name.endswith(".py"):
                continue
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                data = f.read()
            if any(m in data for m in _COMPILED_MARKERS):
                h.update(os.path.relpath(path, package_dir).encode() + b"\0")
                h.update(hashlib.sha256(data).digest())
    return h.digest()


def _package_locator(base, package_dir):
    """A subclass of Numba's locator ``base`` for the functions defined under ``package_dir``
    only, whose stamp also covers every compiled module there."""

    class PackageLocator(base):
        @classmethod
        def from_function(cls, py_func, py_file):
            path = os.path.abspath(py_file)
            if os.path.commonpath([path, package_dir]) != package_dir:
                return None
            return super().from_function(py_func, py_file)

        def get_source_stamp(self):
            return (super().get_source_stamp(), compiled_sources_digest(package_dir))

    PackageLocator.__name__ = PackageLocator.__qualname__ = "Package" + base.__name__
    return PackageLocator


def install(package_dir=_PACKAGE_DIR):
    """Key Numba's cache for the functions under ``package_dir`` on all its compiled modules.

    Must run before those functions are decorated (``rnnlab/__init__.py`` runs it first).
    Idempotent.

    Parameters
    ----------
    package_dir : str
        Root of the package whose kernels are keyed together.

    Returns
    -------
    bool
        Whether the locators are in place.
    """
    package_dir = os.path.abspath(package_dir)
    try:
        from numba.core import caching

        classes = caching.CacheImpl._locator_classes
        bases = [caching.UserProvidedCacheLocator, caching.InTreeCacheLocator,
                 caching.UserWideCacheLocator]
    except (ImportError, AttributeError) as exc:  # another Numba: leave its cache alone
        warnings.warn(f"rnnlab: Numba's cache locators not found ({exc}); a kernel cached "
                      "before an edit of a module it calls may stay stale", RuntimeWarning,
                      stacklevel=2)
        return False
    if any(getattr(c, "_rnnlab_package_dir", None) == package_dir for c in classes):
        return True
    ours = []
    for base in bases:
        locator = _package_locator(base, package_dir)
        locator._rnnlab_package_dir = package_dir
        ours.append(locator)
    classes[:0] = ours  # tried first, in Numba's own order
    return True
