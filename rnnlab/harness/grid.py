"""Parameter grids of a study: named lists of values, their Cartesian product, and unions.

>>> g = Grid(cell=["rnn"], gain=[0.5, 1.0]) + Grid(cell=["lstm"], gain=[1.0])
>>> [p["gain"] for p in g.points()]
[0.5, 1.0, 1.0]
"""

import itertools
import math


class Grid:
    """The Cartesian product of named value lists, optionally filtered; ``+`` joins grids.

    Parameters
    ----------
    where : callable, optional
        ``where(point) -> bool`` keeps a point (e.g. to skip combinations that do not apply).
    **values : list
        Parameter name to its values (a scalar is a one-value list). Values are int, float,
        str or bool: they go into table columns and shard keys.
    """

    def __init__(self, where=None, **values):
        self.parts = [(
            {k: list(vals) if isinstance(vals, (list, tuple)) else [vals]
             for k, vals in values.items()}, where)]
        for key, vals in self.parts[0][0].items():
            if not vals:
                raise ValueError(f"grid parameter {key!r} has no values")
            for val in vals:
                if not isinstance(val, (bool, int, float, str)) or (
                        isinstance(val, float) and not math.isfinite(val)):
                    raise TypeError(f"grid parameter {key!r}: values must be finite int, float, "
                                    f"str or bool, got {val!r}")

    def __add__(self, other):
        out = Grid.__new__(Grid)
        out.parts = self.parts + other.parts
        return out

    @property
    def keys(self):
        """Every parameter name, in first-seen order."""
        seen = {}
        for values, _ in self.parts:
            seen.update(dict.fromkeys(values))
        return list(seen)

    def points(self):
        """The grid points (dicts), in a fixed order, duplicates removed."""
        out, seen = [], set()
        for values, where in self.parts:
            keys = list(values)
            for combo in itertools.product(*(values[k] for k in keys)):
                point = dict(zip(keys, combo))
                ident = tuple(sorted((k, repr(v)) for k, v in point.items()))
                if ident in seen or (where is not None and not where(point)):
                    continue
                seen.add(ident)
                out.append(point)
        return out

    def with_values(self, overrides):
        """A copy with some parameters' value lists replaced (``rnnlab run --set``).

        Parameters
        ----------
        overrides : dict of str to list
            Each key must be a parameter of the grid.
        """
        unknown = [k for k in overrides if k not in self.keys]
        if unknown:
            raise KeyError(f"unknown grid parameter(s) {unknown}; this grid has {self.keys}")
        out = Grid.__new__(Grid)
        out.parts = [({k: list(overrides.get(k, vals)) for k, vals in values.items()}, where)
                     for values, where in self.parts]
        return out

    def value_type(self, key):
        """The type of a parameter's values (for parsing ``--set``): bool, int, float or str."""
        types = {type(v) for values, _ in self.parts for v in values.get(key, [])}
        for t in (str, float, int, bool):
            if t in types:
                return t
        raise KeyError(key)

    def __len__(self):
        return len(self.points())

    def __repr__(self):
        return " + ".join(f"Grid({', '.join(f'{k}={v!r}' for k, v in values.items())})"
                          for values, _ in self.parts)
