"""Finding and loading the studies: one file ``experiments/<name>.py`` per study.

The experiments folder is, in order: the ``experiments`` argument, the ``RNNLAB_EXPERIMENTS``
environment variable, ``./experiments`` in the working directory, and the ``experiments``
folder beside the package source (an editable install from a clone).
"""

import hashlib
import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from .grid import Grid

GRID_NAMES = ("quick", "full")


@dataclass(frozen=True)
class StudySpec:
    """What a worker needs to load a study: its name and source (workers may run on machines
    without the experiments folder)."""

    name: str
    path: str
    source: str

    @property
    def digest(self):
        return hashlib.sha1(self.source.encode()).hexdigest()[:12]


class Study:
    """A loaded study: ``name``, ``title``, ``grids``, ``run``, ``figure``, ``warmup``."""

    def __init__(self, spec, module):
        self.spec, self.module, self.name = spec, module, spec.name
        for attr in ("GRIDS", "run", "figure"):
            if not hasattr(module, attr):
                raise AttributeError(f"study {spec.name!r} ({spec.path}) does not define {attr}")
        grids = module.GRIDS
        if not isinstance(grids, dict) or set(grids) != set(GRID_NAMES) or not all(
                isinstance(g, Grid) for g in grids.values()):
            raise TypeError(f"study {spec.name!r}: GRIDS must map 'quick' and 'full' to Grid")
        self.grids = grids
        self.title = getattr(module, "TITLE", (module.__doc__ or "").strip().split("\n")[0])
        self.run, self.figure = module.run, module.figure
        self.warmup = getattr(module, "warmup", None)


def experiments_dir(path=None):
    """The experiments folder (see the module docstring); a clear error if there is none."""
    candidates = [path] if path is not None else [
        os.environ.get("RNNLAB_EXPERIMENTS"), Path.cwd() / "experiments",
        Path(__file__).resolve().parents[2] / "experiments"]
    for cand in candidates:
        if cand is not None and Path(cand).is_dir():
            return Path(cand).resolve()
    if path is not None:
        raise FileNotFoundError(f"--experiments {str(path)!r} is not a folder")
    raise FileNotFoundError("no experiments folder: run from a clone of rnnlab, pass "
                            "--experiments DIR or set RNNLAB_EXPERIMENTS")


def study_names(path=None):
    """Names of the studies in the experiments folder, sorted."""
    return sorted(p.stem for p in experiments_dir(path).glob("*.py")
                  if not p.stem.startswith("_"))


def study_spec(name, path=None):
    """The :class:`StudySpec` of study ``name``; a clear error naming the known studies."""
    folder = experiments_dir(path)
    file = folder / f"{name}.py"
    if not isinstance(name, str) or name.startswith("_") or not file.is_file():
        raise KeyError(f"unknown study {name!r}; known: {', '.join(study_names(folder))}")
    return StudySpec(name, str(file), file.read_text())


_LOADED = {}


def load(spec):
    """Load (once per process and source version) the study described by ``spec``."""
    key = (spec.name, spec.digest)
    if key not in _LOADED:
        mod_name = f"rnnlab_experiments.{spec.name}_{spec.digest}"
        module = importlib.util.module_from_spec(
            importlib.util.spec_from_loader(mod_name, loader=None, origin=spec.path))
        module.__file__ = spec.path
        sys.modules[mod_name] = module  # dataclasses and pickling look the module up
        exec(compile(spec.source, spec.path, "exec"), module.__dict__)
        _LOADED[key] = Study(spec, module)
    return _LOADED[key]


def load_study(name, path=None):
    """Load study ``name`` from the experiments folder.

    Parameters
    ----------
    name : str
        File name without ``.py``.
    path : str or Path, optional
        The experiments folder (default: see the module docstring).

    Returns
    -------
    Study
    """
    return load(study_spec(name, path))
