"""One figure style for the whole package, and saving (PNG, optionally PDF).

Figures are drawn from a study's table only: ``rnnlab figures`` redraws them without
recomputing anything.
"""

import contextlib
from pathlib import Path

#: Matplotlib settings shared by every figure.
STYLE = {
    "figure.figsize": (6.4, 4.2), "figure.dpi": 110, "savefig.dpi": 150,
    "savefig.bbox": "tight", "font.size": 10, "axes.titlesize": 10, "axes.labelsize": 10,
    "legend.fontsize": 8, "legend.frameon": False, "axes.grid": True, "grid.alpha": 0.3,
    "axes.spines.top": False, "axes.spines.right": False, "lines.linewidth": 1.4,
    "image.cmap": "viridis",
}


def pyplot():
    """``matplotlib.pyplot`` on the non-interactive Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


@contextlib.contextmanager
def style():
    """Context in which figures get the package style."""
    plt = pyplot()
    with plt.rc_context(STYLE):
        yield plt


def save(fig, path, pdf=False):
    """Save ``fig`` as ``path`` + ``.png`` (and ``.pdf``), atomically, and close it.

    Parameters
    ----------
    fig : matplotlib.figure.Figure
    path : str or Path
        Without suffix.
    pdf : bool
        Also write a PDF.

    Returns
    -------
    list of Path
        The files written.
    """
    plt = pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for suffix in (".png", ".pdf") if pdf else (".png",):
        final = path.with_suffix(suffix)
        tmp = final.with_name(f".{final.name}.tmp{suffix}")
        fig.savefig(tmp)
        tmp.replace(final)
        written.append(final)
    plt.close(fig)
    return written
