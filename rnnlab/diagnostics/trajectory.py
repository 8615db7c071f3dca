"""Trajectories: a recurrence driven by given inputs, seen through its step Jacobians.

A :class:`Trajectory` holds everything needed to produce ``J_t = ds<t>/ds<t-1>`` for one sequence
and one recurrence (a whole unidirectional stack as a joint state, or a single layer and
direction), in processing order and in float64. The analyses (:mod:`.lyapunov`,
:mod:`.spectra`, :mod:`.gradient_decay`) only use its interface: :meth:`Trajectory.jacobians`
(dense chunks) and :meth:`Trajectory.apply` / :meth:`Trajectory.apply_transpose`
(matrix-free, on blocks of vectors).
"""

import numpy as np

from .. import _validation as v
from .._backend import resolve_backend
from ..kernels.cpu import jacobian as vanilla_jac
from ..layers import RNN, RecurrentLayer

#: Dense Jacobian chunks are sized to about this many bytes.
CHUNK_BYTES = 1 << 25


class Trajectory:
    """Step Jacobians of one recurrence along one trajectory (base class).

    Attributes
    ----------
    n : int
        State dimension.
    n_steps : int
        Steps T; ``J_t`` exists for ``t = 0 .. T-1`` (``J_0`` maps the initial state).
    config : dict
        Description of the recurrence, used as DataFrame columns.
    """

    n = 0
    n_steps = 0

    def __init__(self, config):
        self.config = dict(config)

    def jacobians(self, t0, t1):
        """Dense ``J_t`` for ``t0 <= t < t1``, shape ``(t1 - t0, n, n)``, float64."""
        raise NotImplementedError

    def diagonal_form(self):
        """``(W, g')`` when ``J_t = diag(g'[t]) W`` (enables the matrix-free kernels)."""
        return None

    def apply(self, t, q):
        """``J_t q`` for a block ``q`` of shape ``(n, k)``."""
        return self.jacobians(t, t + 1)[0] @ q

    def apply_transpose(self, t, v):
        """``J_t^T v`` for a block ``v`` of shape ``(n, k)``."""
        return self.jacobians(t, t + 1)[0].T @ v

    def chunk_size(self):
        """Steps per dense chunk (about :data:`CHUNK_BYTES`)."""
        return int(max(1, min(self.n_steps, CHUNK_BYTES // (8 * self.n * self.n))))

    def chunks(self, t0=0, t1=None, reverse=False):
        """Yield ``(start, dense Jacobians)`` covering ``[t0, t1)`` in chunks."""
        t1 = self.n_steps if t1 is None else t1
        size = self.chunk_size()
        starts = list(range(t0, t1, size))
        for s in (reversed(starts) if reverse else starts):
            yield s, self.jacobians(s, min(s + size, t1))


class JacobianSequence(Trajectory):
    """A trajectory given directly by its Jacobians, e.g. of a map that is not an RNN.

    Parameters
    ----------
    jacobians : array_like, shape (T, n, n)
        ``J_t`` in processing order.
    config : dict, optional
        Columns for the result tables.
    """

    def __init__(self, jacobians, config=None):
        jac = v.to_numpy(jacobians, "jacobians")
        if jac.ndim != 3 or jac.shape[1] != jac.shape[2] or jac.shape[0] < 1:
            raise ValueError(f"jacobians must have shape (T, n, n) with T >= 1, got {jac.shape}")
        if jac.dtype.kind not in "fiu":
            raise TypeError(f"jacobians must be numeric, got dtype {jac.dtype}")
        jac = np.ascontiguousarray(jac, dtype=np.float64)
        if not np.isfinite(jac).all():
            raise ValueError("jacobians contains NaN or Inf values (a non-finite trajectory)")
        super().__init__({"cell": "map", **(config or {})})
        self._jac = jac
        self.n_steps, self.n = jac.shape[0], jac.shape[1]

    def jacobians(self, t0, t1):
        return self._jac[t0:t1]


class VanillaTrajectory(Trajectory):
    """Step Jacobians of a vanilla RNN recurrence (joint stack or one layer/direction).

    Built by :func:`trajectories`; see :mod:`rnnlab.kernels.cpu.jacobian` for the arrays.
    """

    def __init__(self, w_hh, w_up, w_tr, states, act, config):
        super().__init__(config)
        self.w_hh, self.w_up, self.w_tr = w_hh, w_up, w_tr
        self.states, self.act = states, act
        self.n_layers, self.hidden = w_hh.shape[0], w_hh.shape[1]
        self.n = self.n_layers * self.hidden
        self.n_steps = states.shape[2]

    def diagonal_form(self):
        """``(W, g')`` with ``J_t = diag(g'[t]) W`` for a single layer without deep transition
        (the matrix-free fast path of the analyses), else ``None``."""
        if self.n_layers != 1 or self.w_tr.shape[1] != 0:
            return None
        deriv = np.empty((self.n_steps, self.hidden))
        vanilla_jac.rnn_derivatives(self.states[0, 0], self.act, deriv)
        return self.w_hh[0], deriv

    def jacobians(self, t0, t1):
        out = np.empty((t1 - t0, self.n, self.n))
        vanilla_jac.rnn_step_jacobians(self.w_hh, self.w_up, self.w_tr, self.states, self.act,
                                       t0, out)
        return out

    def _blocks(self, q):
        q = np.ascontiguousarray(np.asarray(q, dtype=np.float64))
        if q.ndim == 1:
            q = q[:, None]
        if q.shape[0] != self.n:
            raise ValueError(f"the block must have {self.n} rows (the state size), got {q.shape}")
        return q.reshape(self.n_layers, self.hidden, -1)

    def apply(self, t, q):
        q3 = self._blocks(q)
        out = np.empty_like(q3)
        vanilla_jac.rnn_jacobian_apply(self.w_hh, self.w_up, self.w_tr, self.states, self.act,
                                       t, q3, out)
        return out.reshape(self.n, -1)

    def apply_transpose(self, t, v):
        v3 = self._blocks(v)
        out = np.empty_like(v3)
        vanilla_jac.rnn_jacobian_apply_transpose(self.w_hh, self.w_up, self.w_tr, self.states,
                                                 self.act, t, v3, out)
        return out.reshape(self.n, -1)


def _float64_model(model, backend=None):
    """The model itself if float64 (on ``backend``, default its own), else a float64 copy
    (diagnostics run in float64)."""
    backend = model.backend if backend is None else resolve_backend(backend)
    if model.dtype == np.float64 and backend == model.backend:
        return model
    clone = object.__new__(type(model))
    clone.__dict__.update(model.__dict__)
    clone.dtype = np.dtype(np.float64)
    clone.backend = backend
    clone._params = {k: a.astype(np.float64) for k, a in model.parameters().items()}
    return clone


def trajectories(model, x, h0=None, joint=None, backend=None):
    """Run ``model`` over ``x`` in float64 and return its trajectories.

    Parameters
    ----------
    model : RecurrentLayer
        RNN, LSTM or GRU (any depth; bidirectional networks give one trajectory per layer and
        direction, since their joint state is not a causal recurrence).
    x : array_like
        Inputs in the model's layout; cast to float64.
    h0 : array_like, optional
        Initial state (a tuple ``(h0, c0)`` for an LSTM).
    joint : bool, optional
        One trajectory per sequence for the whole stack (joint state of all layers; the
        default for unidirectional networks), or one per layer (the default, and the only
        choice, for bidirectional ones).
    backend : {None, "cpu", "cuda"}, optional
        Where the float64 forward pass runs (default: the model's own backend). The
        trajectories themselves are host arrays.

    Returns
    -------
    list of Trajectory
        Ordered by sequence, then layer, then direction; each ``config`` says which.
    """
    if not isinstance(model, RecurrentLayer):
        raise TypeError(f"model must be an rnnlab RNN, LSTM or GRU, got {type(model).__name__}")
    if joint is None:
        joint = not model.bidirectional
    if joint and model.bidirectional and model.num_layers > 1:
        raise ValueError("joint=True needs a unidirectional network: the layers of a "
                         "bidirectional stack do not form a causal recurrence")
    m64 = _float64_model(model, backend)
    x64 = np.asarray(v.to_numpy(x, "x"), dtype=np.float64)
    if h0 is not None:
        h0 = (tuple(np.asarray(v.to_numpy(s, "h0"), dtype=np.float64) for s in h0)
              if isinstance(h0, tuple) else np.asarray(v.to_numpy(h0, "h0"), dtype=np.float64))
    with np.errstate(over="ignore", invalid="ignore"):
        out, _, cache = m64.forward_with_cache(x64, h0)
    # every layer's states, not only the output: in a relu stack a lower layer can overflow
    # (inf, then NaN) while relu maps the NaN to 0 and the layers above stay finite
    if not np.isfinite(out).all() or not _all_finite(cache["states"]):
        raise ValueError("the trajectory is not finite (the states overflowed): its Jacobians "
                         "and spectra are undefined; lower the gain or shorten the sequence")
    if isinstance(model, RNN):
        return _vanilla_trajectories(m64, cache, joint)
    from ._gated import gated_trajectories  # LSTM and GRU

    return gated_trajectories(m64, cache, joint)


def _all_finite(obj):
    """Whether every array in a (nested dict/tuple/list of) arrays is finite."""
    if isinstance(obj, dict):
        return all(_all_finite(o) for o in obj.values())
    if isinstance(obj, (tuple, list)):
        return all(_all_finite(o) for o in obj)
    return not isinstance(obj, np.ndarray) or obj.dtype.kind != "f" or np.isfinite(obj).all()


def base_config(model):
    """Columns describing a model."""
    return {"cell": type(model).__name__.lower(),
            "activation": getattr(model, "nonlinearity", "gated"),
            "H": model.hidden_size, "layers": model.num_layers,
            "transition_layers": getattr(model, "transition_layers", 0)}


def _vanilla_trajectories(model, cache, joint):
    p, H, D = model.parameters(), model.hidden_size, model.transition_layers
    batch = cache["batch"]

    def weights(layer, sfx):
        w_tr = np.stack([p[f"weight_tr{k}_l{layer}{sfx}"] for k in range(1, D + 1)]) if D else \
            np.zeros((0, H, H))
        return p[f"weight_hh_l{layer}{sfx}"], p[f"weight_ih_l{layer}{sfx}"], w_tr

    out = []
    for b in range(batch):
        if joint:
            ws = [weights(l, "") for l in range(model.num_layers)]
            w_hh = np.stack([w[0] for w in ws])
            w_up = np.stack([np.zeros((H, H))] + [w[1] for w in ws[1:]])
            w_tr = np.stack([w[2] for w in ws])
            states = np.stack([cache["states"][l, 0][:, :, b, :]
                               for l in range(model.num_layers)])
            config = {**base_config(model), "sequence": b, "layer": "all", "direction": "forward"}
            out.append(VanillaTrajectory(w_hh, w_up, w_tr, np.ascontiguousarray(states),
                                         model._act, config))
            continue
        for layer in range(model.num_layers):
            for d in range(model.num_directions):
                sfx = "_reverse" if d else ""
                w_hh, _, w_tr = weights(layer, sfx)
                states = cache["states"][layer, d][:, :, b, :]
                if d:
                    states = states[:, ::-1]  # processing order
                config = {**base_config(model), "sequence": b, "layer": layer,
                          "direction": "backward" if d else "forward"}
                out.append(VanillaTrajectory(
                    w_hh[None].copy(), np.zeros((1, H, H)), w_tr[None].copy(),
                    np.ascontiguousarray(states[None]), model._act, config))
    return out
