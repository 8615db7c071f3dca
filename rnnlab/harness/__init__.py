"""The experiment harness: study registry, grids, sweeps (local pool or Dask), result store,
figures.

A study is a file ``experiments/<name>.py`` defining

``TITLE``
    One line saying what it shows.
``GRIDS``
    ``{"quick": Grid(...), "full": Grid(...)}`` (:class:`Grid`).
``run(point) -> DataFrame``
    The rows of one grid point, in long format: a ``quantity`` column (str), a ``value``
    column (float) and any index columns (``distance``, ``index``, ``span`` ...). The harness
    adds the point's parameters, its status and the provenance columns. Raise
    :class:`Diverged` for a point whose network blew up (recorded as ``status="diverged"``).
``figure(table, out_dir) -> list of paths``
    Draw from the table only (use :func:`figures.style` and :func:`figures.save`).
``warmup()`` (optional)
    Compile the kernels the study uses, on tiny inputs (run once per worker).
"""

from .grid import Grid


class Diverged(Exception):
    """Raised by a study's ``run`` when its network diverged: the point is recorded with
    ``status="diverged"`` and the message, and the sweep goes on."""


__all__ = ["Diverged", "Grid"]
