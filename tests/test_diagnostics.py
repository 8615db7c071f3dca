"""Diagnostics against exact identities (DESIGN.md), finite differences and papers' numbers."""

import numpy as np
import pytest
from scipy.stats import ortho_group

import rnnlab
from rnnlab.diagnostics import (JacobianSequence, diagnose, gradient_decay,
                                jacobian_product_spectra, lyapunov_spectrum,
                                model_from_state_dict, pascanu_conditions, step_jacobians,
                                trajectories)
from rnnlab.training import initialize

F64 = np.float64


def _linear_rnn(weights, hidden, layers=1, w_ih=None):
    net = rnnlab.RNN(1 if w_ih is None else w_ih.shape[1], hidden, num_layers=layers,
                     nonlinearity="linear", bias=False, dtype=F64, seed=0)
    for layer, w in enumerate(weights):
        net.parameters()[f"weight_hh_l{layer}"][...] = w
    return net


def _one(tr_list):
    assert len(tr_list) == 1
    return tr_list[0]


# ------------------------------------------------------------------------- Jacobians
@pytest.mark.parametrize("layers,depth,act", [(1, 0, "tanh"), (2, 1, "relu"), (3, 2, "sigmoid"),
                                              (1, 0, "linear")])
def test_step_jacobians_match_finite_differences(layers, depth, act):
    rng = np.random.default_rng(1)
    net = rnnlab.RNN(2, 4, num_layers=layers, nonlinearity=act, dtype=F64, seed=1,
                     transition_layers=depth)
    x = rng.standard_normal((5, 1, 2))
    h0 = 0.3 * rng.standard_normal((layers, 1, 4))
    (_, jac), = step_jacobians(net, x, h0)
    _, _, cache = net.forward_with_cache(x, h0)
    states = np.stack([cache["states"][l, 0][-1][:, 0] for l in range(layers)], axis=1)
    states = states.reshape(5, -1)

    def step(s_prev, t):
        return net(x[t:t + 1], s_prev.reshape(layers, 1, 4))[1].reshape(-1)

    for t in range(5):
        prev = states[t - 1] if t else h0.reshape(-1)
        fd = np.empty_like(jac[t])
        for j in range(fd.shape[1]):
            e = np.zeros(fd.shape[1])
            e[j] = 1e-6
            fd[:, j] = (step(prev + e, t) - step(prev - e, t)) / 2e-6
        assert np.abs(fd - jac[t]).max() <= 1e-7 * max(1.0, np.abs(fd).max())


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
@pytest.mark.parametrize("layers", [1, 2])
def test_gated_step_jacobians_match_finite_differences(cell, layers):
    """The joint state is (h, c) per layer for the LSTM, h for the GRU."""
    rng = np.random.default_rng(3)
    net = getattr(rnnlab, cell)(2, 3, num_layers=layers, dtype=F64, seed=1)
    x = rng.standard_normal((4, 1, 2))
    parts = 2 if cell == "LSTM" else 1
    state = 0.3 * rng.standard_normal((layers, parts, 3))

    def step(s, t):
        s = s.reshape(layers, parts, 1, 3)
        if parts == 2:
            _, (h, c) = net(x[t:t + 1], (s[:, 0].copy(), s[:, 1].copy()))
            return np.stack([h[:, 0], c[:, 0]], axis=1).reshape(-1)
        return net(x[t:t + 1], s[:, 0].copy())[1].reshape(-1)

    h0 = (state[:, 0, None].copy(), state[:, 1, None].copy()) if parts == 2 else \
        state[:, 0, None].copy()
    (_, jac), = step_jacobians(net, x, h0)
    s = state.reshape(-1)
    for t in range(4):
        fd = np.empty_like(jac[t])
        for j in range(s.size):
            e = np.zeros(s.size)
            e[j] = 1e-6
            fd[:, j] = (step(s + e, t) - step(s - e, t)) / 2e-6
        assert np.abs(fd - jac[t]).max() <= 1e-7 * max(1.0, np.abs(fd).max())
        s = step(s, t)


def test_matrix_free_application_equals_the_dense_jacobian():
    rng = np.random.default_rng(2)
    net = rnnlab.RNN(3, 5, num_layers=2, dtype=F64, seed=3, transition_layers=1)
    tr = _one(trajectories(net, rng.standard_normal((6, 1, 3))))
    jac = tr.jacobians(0, 6)
    q = rng.standard_normal((10, 4))
    for t in range(6):
        np.testing.assert_allclose(tr.apply(t, q), jac[t] @ q, rtol=1e-13, atol=1e-15)
        np.testing.assert_allclose(tr.apply_transpose(t, q), jac[t].T @ q, rtol=1e-13,
                                   atol=1e-15)


def test_bidirectional_layers_give_one_trajectory_per_layer_and_direction():
    net = rnnlab.RNN(2, 3, num_layers=2, bidirectional=True, dtype=F64, seed=1)
    x = np.random.default_rng(0).standard_normal((6, 2, 2))
    trs = trajectories(net, x)
    assert [(t.config["sequence"], t.config["layer"], t.config["direction"]) for t in trs] == [
        (b, layer, d) for b in range(2) for layer in range(2) for d in ("forward", "backward")]
    # the backward direction's first processed step is the last time step
    back = trs[1]
    a_last = net.forward_with_cache(x)[2]["states"][0, 1][0, -1, 0]
    w = net.parameters()["weight_hh_l0_reverse"]
    np.testing.assert_allclose(back.jacobians(0, 1)[0], (1 - a_last ** 2)[:, None] * w)


# ------------------------------------------------------------------------- Lyapunov
@pytest.mark.parametrize("rho", [0.8, 1.0, 1.3])
def test_linear_rnn_with_scaled_orthogonal_weights(rho):
    """W = ρQ: every exponent is log ρ; ‖dL/dh_t‖ = ρ^(T-t) ‖dL/dh_T‖."""
    H = 8
    net = _linear_rnn([rho * ortho_group.rvs(H, random_state=0)], H)
    tr = _one(trajectories(net, np.random.default_rng(0).standard_normal((300, 1, 1))))
    res = lyapunov_spectrum(tr)
    np.testing.assert_allclose(res.exponents, np.log(rho), atol=1e-12)
    gd = gradient_decay(tr)
    np.testing.assert_allclose(gd.log_norms - gd.log_norms[-1], gd.distance * np.log(rho),
                               atol=1e-10)


def test_linear_rnn_exponents_are_log_moduli_of_eigenvalues():
    rng = np.random.default_rng(5)
    w = rng.standard_normal((6, 6)) / np.sqrt(6)
    net = _linear_rnn([w], 6)
    tr = _one(trajectories(net, np.zeros((20000, 1, 1)), h0=np.ones((1, 1, 6))))
    res = lyapunov_spectrum(tr, warmup=500)
    expected = np.sort(np.log(np.abs(np.linalg.eigvals(w))))[::-1]
    # O(1/T) transient
    np.testing.assert_allclose(np.sort(res.exponents)[::-1], expected, atol=2e-3)


@pytest.mark.parametrize("cell", ["rnn_tanh", "rnn_sigmoid", "rnn_relu_deep", "lstm", "gru"])
def test_sum_of_exponents_is_the_mean_log_determinant(cell):
    rng = np.random.default_rng(7)
    if cell == "lstm":
        net = rnnlab.LSTM(2, 3, dtype=F64, seed=2)
    elif cell == "gru":
        net = rnnlab.GRU(2, 4, dtype=F64, seed=2)
    else:
        act = cell.split("_")[1]
        net = rnnlab.RNN(2, 5, num_layers=2 if "deep" in cell else 1, nonlinearity=act,
                         dtype=F64, seed=2, transition_layers=1 if "deep" in cell else 0)
        if act == "relu":
            initialize(net, "orthogonal", gain=1.0, seed=3)
    tr = _one(trajectories(net, rng.standard_normal((400, 1, 2))))
    res = lyapunov_spectrum(tr)
    jac = tr.jacobians(0, tr.n_steps)
    mean_logdet = np.linalg.slogdet(jac)[1].mean()
    np.testing.assert_allclose(res.exponents.sum(), mean_logdet, rtol=1e-10, atol=1e-10)


def test_irnn_exponents_are_zero_and_gradient_norm_is_preserved():
    net = initialize(rnnlab.RNN(1, 6, nonlinearity="relu", dtype=F64, seed=0), "identity")
    tr = _one(trajectories(net, np.zeros((500, 1, 1)), h0=np.full((1, 1, 6), 0.2)))
    np.testing.assert_allclose(lyapunov_spectrum(tr).exponents, 0.0, atol=1e-14)
    gd = gradient_decay(tr)
    np.testing.assert_allclose(gd.log_norms, 0.0, atol=1e-14)


def test_stacked_linear_layers_spectrum_is_the_union():
    H, rhos = 4, (0.6, 1.1, 0.9)
    rng = np.random.default_rng(3)
    weights = [r * ortho_group.rvs(H, random_state=i) for i, r in enumerate(rhos)]
    net = _linear_rnn(weights, H, layers=3)
    tr = _one(trajectories(net, rng.standard_normal((3000, 1, 1))))
    res = lyapunov_spectrum(tr, warmup=200)
    expected = np.sort(np.repeat(np.log(rhos), H))[::-1]
    np.testing.assert_allclose(np.sort(res.exponents)[::-1], expected, atol=2e-3)


def test_one_unit_latch_gradient_factor():
    """x <- tanh(2x): at the fixed point x* = tanh(2x*) the per-step factor is 2(1 - x*^2)
    = 0.166372 (Pascanu et al. 2013's latch)."""
    net = rnnlab.RNN(1, 1, bias=False, dtype=F64, seed=0)
    net.parameters()["weight_hh_l0"][...] = 2.0
    net.parameters()["weight_ih_l0"][...] = 0.0
    tr = _one(trajectories(net, np.zeros((400, 1, 1)), h0=np.full((1, 1, 1), 0.5)))
    res = lyapunov_spectrum(tr, warmup=100)
    assert abs(np.exp(res.exponents[0]) - 0.166372) < 5e-7
    fit = gradient_decay(tr).fit(start=0, stop=200)
    assert abs(np.exp(fit["rate"]) - 0.166372) < 5e-7


def _henon_jacobians(n_steps, a=1.4, b=0.3):
    x, y = 0.1, 0.1
    for _ in range(1000):
        x, y = 1 - a * x * x + y, b * x
    jac = np.empty((n_steps, 2, 2))
    for t in range(n_steps):
        jac[t] = [[-2 * a * x, 1.0], [b, 0.0]]
        x, y = 1 - a * x * x + y, b * x
    return jac


def test_henon_map_through_the_qr_routine():
    """Σλ = log 0.3 exactly (the map contracts area by b); λ_1 ≈ 0.419 (Sprott 2003)."""
    res = lyapunov_spectrum(JacobianSequence(_henon_jacobians(50000)), warmup=100)
    assert abs(res.exponents.sum() - np.log(0.3)) < 1e-12
    assert abs(res.exponents[0] - 0.4192) < 5e-3


def test_partial_spectrum_equals_the_leading_exponents():
    net = initialize(rnnlab.RNN(1, 32, dtype=F64, seed=0), "gaussian", gain=1.6, seed=1)
    tr = _one(trajectories(net, np.random.default_rng(2).standard_normal((600, 1, 1))))
    full = lyapunov_spectrum(tr, warmup=100, seed=4)
    part = lyapunov_spectrum(tr, k=5, warmup=100, seed=4)
    np.testing.assert_allclose(part.exponents, full.exponents[:5], rtol=1e-10, atol=1e-12)


def test_matrix_free_frame_in_parallel_blocks_equals_one_block(monkeypatch):
    """Once a parallel region's m steps (k n^2 m multiply-adds) pass PARALLEL_WORK
    (PARALLEL_WORK_M1 at m = 1), the frame runs in row blocks on parallel threads (rows evolve
    independently between QRs): the same exponents as one block on one thread, and the rule
    picks each by size."""
    import numba
    from rnnlab.diagnostics import lyapunov as lyap_module
    if numba.get_num_threads() < 2:
        pytest.skip("one thread: a single block either way")
    net = initialize(rnnlab.RNN(1, 16, dtype=F64, seed=0), "gaussian", gain=1.5, seed=1)
    tr = _one(trajectories(net, np.random.default_rng(2).standard_normal((400, 1, 1))))
    w, deriv = tr.diagonal_form()
    q = np.linalg.qr(np.random.default_rng(0).standard_normal((16, 16)))[0]
    monkeypatch.setattr(lyap_module, "PARALLEL_WORK", 16 * 16 * 16 * 4)  # k n^2 m at m = 4
    monkeypatch.setattr(lyap_module, "PARALLEL_WORK_M1", 16 * 16 * 16)
    assert lyap_module._DiagonalRunner(w, deriv, q, 10).serial is False
    assert lyap_module._DiagonalRunner(w, deriv, q, 4).serial is True
    assert lyap_module._DiagonalRunner(w, deriv, q[:, :8], 10).serial is False  # 8 rows
    assert lyap_module._DiagonalRunner(w, deriv, q[:, :8], 4).serial is True
    assert lyap_module._DiagonalRunner(w, deriv, q, 1).serial is True  # k n^2 at m = 1
    monkeypatch.setattr(lyap_module, "PARALLEL_WORK_M1", 16 * 16 * 16 - 1)
    assert lyap_module._DiagonalRunner(w, deriv, q, 1).serial is False
    assert lyap_module._DiagonalRunner(w, deriv, q, 1).blocks.shape[0] == 2
    # warmup = 53: both the warm-up and the measured part end between two QRs (an odd number
    # of steps after the last one leaves the frame in the spare blocks)
    for m in (10, 1):
        blocks = lyapunov_spectrum(tr, m=m, warmup=53)
        blocks8 = lyapunov_spectrum(tr, k=8, m=m, warmup=53)
        with monkeypatch.context() as mp:
            mp.setattr(lyap_module, "PARALLEL_WORK", 1 << 62)
            mp.setattr(lyap_module, "PARALLEL_WORK_M1", 1 << 62)
            assert lyap_module._DiagonalRunner(w, deriv, q, m).serial is True
            one = lyapunov_spectrum(tr, m=m, warmup=53)
            one8 = lyapunov_spectrum(tr, k=8, m=m, warmup=53)
        np.testing.assert_allclose(blocks.exponents, one.exponents, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(blocks8.exponents, one8.exponents, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("m", [1, 5, 10])
def test_reorthonormalisation_interval_keeps_the_exponents(m):
    net = initialize(rnnlab.RNN(1, 16, dtype=F64, seed=0), "gaussian", gain=1.3, seed=1)
    tr = _one(trajectories(net, np.random.default_rng(2).standard_normal((3000, 1, 1))))
    ref = lyapunov_spectrum(tr, warmup=500)
    res = lyapunov_spectrum(tr, warmup=500, m=m)
    np.testing.assert_allclose(res.exponents[:8], ref.exponents[:8], atol=1e-8)
    trace = res.trace()
    last = trace[trace.step == trace.step.max()].sort_values("index").estimate.to_numpy()
    np.testing.assert_allclose(last, res.exponents)
    ft = res.finite_time(10 * m)
    np.testing.assert_allclose(ft.groupby("index").exponent.mean().to_numpy(),
                               res.exponents, atol=1e-12)


# ------------------------------------------------------------------------- gradient decay
@pytest.mark.parametrize("act,gamma", [("tanh", 1.0), ("sigmoid", 0.25)])
def test_pascanu_bound_on_gradient_norms(act, gamma):
    """σ_max(W) γ < 1 bounds ‖∂h_T/∂h_t‖ by (σ_max γ)^(T-t) along any trajectory."""
    rng = np.random.default_rng(4)
    net = rnnlab.RNN(2, 12, nonlinearity=act, dtype=F64, seed=0)
    w = rng.standard_normal((12, 12))
    w *= (0.95 / gamma) / np.linalg.svd(w, compute_uv=False)[0]
    net.parameters()["weight_hh_l0"][...] = w
    tr = _one(trajectories(net, rng.standard_normal((800, 1, 2))))
    for seed in range(3):
        gd = gradient_decay(tr, seed=seed)
        bound = gd.distance * np.log(0.95)
        assert np.all(gd.log_norms - gd.log_norms[-1] <= bound + 1e-9)
    table = pascanu_conditions(net)
    assert table.verdict[0] == "vanishing guaranteed"
    assert abs(table.sigma_max_gamma[0] - 0.95) < 1e-12


def test_gradient_at_gain_0_8_underflows_nothing():
    """At gain 0.8 the gradient falls far below float64's range within 4,000 steps; the
    log-norm records it exactly (Pascanu 2013 / DESIGN: ~1e-762)."""
    net = initialize(rnnlab.RNN(1, 64, dtype=F64, seed=0), "gaussian", gain=0.8, seed=0)
    tr = _one(trajectories(net, np.random.default_rng(1).standard_normal((4001, 1, 1))))
    gd = gradient_decay(tr)
    assert np.isfinite(gd.log_norms).all()
    # 4,000 steps back the norm is ~1e-393 here: far below float64 (1e-308), yet recorded
    assert gd.log_norms[1] / np.log(10) < -330
    fit = gd.fit()
    assert fit["rate"] < 0 and fit["residual"] < 5


@pytest.mark.parametrize("gain", [0.8, 2.0])
def test_backward_slope_equals_the_leading_exponent(gain):
    """The log-norm of a backpropagated gradient grows/decays at λ_1 (ordered and chaotic)."""
    net = initialize(rnnlab.RNN(1, 128, dtype=F64, seed=0), "gaussian", gain=gain, seed=1)
    net.parameters()["weight_ih_l0"][...] = 1.0
    x = 0.1 * np.random.default_rng(2).standard_normal((4000, 1, 1))
    tr = _one(trajectories(net, x))
    lam1 = lyapunov_spectrum(tr, k=1, warmup=500).exponents[0]
    rate = gradient_decay(tr).fit(start=500, stop=3500)["rate"]
    assert abs(rate - lam1) < 0.01


def test_summed_loss_gradient_norms():
    """With a loss at every step the norm combines all of them (checked against plain BPTT)."""
    rng = np.random.default_rng(5)
    net = rnnlab.RNN(2, 6, dtype=F64, seed=3)
    x = rng.standard_normal((40, 1, 2))
    local = rng.standard_normal((40, 6))
    tr = _one(trajectories(net, x))
    gd = gradient_decay(tr, loss="sum", local=local)
    _, _, cache = net.forward_with_cache(x)
    grads = net.backward_from_cache(cache, local[:, None, :], return_hidden_grads=True)
    expected = np.log(np.linalg.norm(grads["hidden_l0"][:, 0], axis=1))
    np.testing.assert_allclose(gd.log_norms[1:], expected, rtol=1e-12)
    np.testing.assert_allclose(gd.log_norms[0], np.log(np.linalg.norm(grads["h0"])),
                               rtol=1e-12)


# ------------------------------------------------------------------------- product spectra
def test_product_spectra_match_the_svd_of_the_explicit_product():
    rng = np.random.default_rng(6)
    net = rnnlab.RNN(2, 6, dtype=F64, seed=1)
    tr = _one(trajectories(net, rng.standard_normal((40, 1, 2))))
    table = jacobian_product_spectra(tr, spans=[1, 3, 8, 40])
    jac = tr.jacobians(0, 40)
    for span in (1, 3, 8, 40):
        prod = np.eye(6)
        for t in range(40 - span, 40):
            prod = jac[t] @ prod
        expected = np.log(np.linalg.svd(prod, compute_uv=False))
        got = table[table.span == span].log_sigma.to_numpy()
        assert table[table.span == span].converged.all()
        # the explicit product's SVD resolves σ_i only to ~eps σ_max: compare those it resolves
        resolved = expected > expected[0] + np.log(1e-6)
        np.testing.assert_allclose(got[resolved], expected[resolved], rtol=1e-9, atol=1e-9)
        # and all of them through log|det P| = Σ log σ_i = Σ_t log|det J_t|
        logdet = np.linalg.slogdet(jac[40 - span:])[1].sum()
        np.testing.assert_allclose(got.sum(), logdet, rtol=1e-10, atol=1e-9)


def test_product_spectra_of_long_products_stay_finite():
    net = initialize(rnnlab.RNN(1, 16, dtype=F64, seed=0), "gaussian", gain=0.8, seed=0)
    tr = _one(trajectories(net, np.random.default_rng(1).standard_normal((2048, 1, 1))))
    table = jacobian_product_spectra(tr)
    assert sorted(table.span.unique()) == [2 ** i for i in range(12)]
    assert np.isfinite(table.log_sigma).all() and table.converged.all()
    long = table[table.span == 2048].log_sigma
    assert long.max() < -300  # far below float64's range: the product itself would be 0
    jac = tr.jacobians(0, 2048)
    np.testing.assert_allclose(long.sum(), np.linalg.slogdet(jac)[1].sum(), rtol=1e-10)


@pytest.mark.parametrize("span", [128, 512])
def test_product_spectra_match_arbitrary_precision(span):
    # 128 steps: one refinement window (range ~330 nats); 512: several (range ~1300 nats,
    # beyond float64), the regime of the backward sweeps and the windowed Jacobi SVD
    mp = pytest.importorskip("mpmath")
    net = initialize(rnnlab.RNN(1, 16, dtype=F64, seed=1), "gaussian", gain=0.8, seed=0)
    tr = _one(trajectories(net, np.random.default_rng(1).standard_normal((span, 1, 1))))
    table = jacobian_product_spectra(tr, spans=[span])
    assert table.converged.all()
    with mp.workprec(4000):  # ~1200 digits: the product's smallest σ is ~1e-600
        prod = mp.eye(16)
        for j_t in tr.jacobians(0, span):
            prod = mp.matrix(j_t.tolist()) * prod
        expected = sorted((float(mp.log(s)) for s in mp.svd_r(prod, compute_uv=False)),
                          reverse=True)
    np.testing.assert_allclose(table.log_sigma, expected, rtol=1e-12)


# ------------------------------------------------------------------------- gated cells
def test_gru_with_zero_recurrent_weights_has_exponents_log_z():
    net = rnnlab.GRU(2, 4, dtype=F64, seed=0)
    net.parameters()["weight_hh_l0"][...] = 0.0
    tr = _one(trajectories(net, np.zeros((2000, 1, 2))))
    jac = tr.jacobians(0, 50)
    p = net.parameters()
    z = 1 / (1 + np.exp(-(p["bias_ih_l0"][4:8] + p["bias_hh_l0"][4:8])))
    np.testing.assert_allclose(jac[7], np.diag(z), rtol=1e-15, atol=0)
    res = lyapunov_spectrum(tr, warmup=500)  # the random frame aligns with the axes
    np.testing.assert_allclose(np.sort(res.exponents), np.sort(np.log(z)), rtol=1e-12)


def test_lstm_with_zero_recurrent_weights_has_exponents_log_f_and_minus_infinity():
    net = rnnlab.LSTM(2, 3, dtype=F64, seed=0)
    net.parameters()["weight_hh_l0"][...] = 0.0
    tr = _one(trajectories(net, np.zeros((2000, 1, 2))))
    assert tr.n == 6
    res = lyapunov_spectrum(tr, warmup=500)
    p = net.parameters()
    log_f = np.log(1 / (1 + np.exp(-(p["bias_ih_l0"][3:6] + p["bias_hh_l0"][3:6]))))
    # the h-directions are annihilated every step (exponent -inf); after orthogonalisation
    # their residue is round-off, so they read below log(float64 epsilon) ~ -36
    order = np.sort(res.exponents)
    assert np.all(order[:3] < -30)
    np.testing.assert_allclose(order[3:], np.sort(log_f), rtol=1e-10)


# ------------------------------------------------------------------------- entry point, errors
def test_diagnose_returns_tidy_tables_with_the_configuration():
    net = rnnlab.RNN(1, 8, dtype=np.float32, seed=0)
    tables = diagnose(net, np.zeros((64, 2, 1), np.float32), k=3, spans=[1, 64], gain=1.0)
    assert set(tables) == {"lyapunov", "gradient_decay", "gradient_decay_fit", "spectra",
                           "pascanu"}
    for name in ("lyapunov", "gradient_decay", "spectra"):
        t = tables[name]
        for col in ("cell", "activation", "H", "layers", "direction", "T", "seed", "dtype",
                    "gain", "sequence"):
            assert col in t.columns, (name, col)
        assert set(t.sequence) == {0, 1}
    assert (tables["lyapunov"].dtype == "float64").all()
    assert tables["lyapunov"].m.unique().tolist() == [1]


def test_diagnose_a_pytorch_state_dict():
    ref = np.load(__file__.replace("test_diagnostics.py", "data/pytorch_reference.npz"))
    sd = {k.split("/")[-1]: ref[k] for k in ref.files if k.startswith("gru/param/")}
    model = model_from_state_dict(sd)
    assert isinstance(model, rnnlab.GRU) and model.bidirectional and model.num_layers == 2
    tables = diagnose(sd, ref["gru/x"], diagnostics=("lyapunov",))
    assert len(tables["lyapunov"]) == 3 * 2 * 2 * 5  # sequences x layers x directions x H


def test_diagnostics_errors():
    net = rnnlab.RNN(1, 4, dtype=F64, seed=0)
    tr = _one(trajectories(net, np.zeros((10, 1, 1))))
    with pytest.raises(ValueError, match="k = 5 exceeds"):
        lyapunov_spectrum(tr, k=5)
    with pytest.raises(ValueError, match="m must be >= 1"):
        lyapunov_spectrum(tr, m=0)
    with pytest.raises(ValueError, match="warmup"):
        lyapunov_spectrum(tr, warmup=10)
    with pytest.raises(ValueError, match="NaN or Inf"):
        JacobianSequence(np.full((3, 2, 2), np.nan))
    big = _linear_rnn([1e3 * np.eye(4)], 4)
    with pytest.raises(ValueError, match="not finite"):
        trajectories(big, np.ones((200, 1, 1)))
    with pytest.raises(ValueError, match="span 11 exceeds"):
        jacobian_product_spectra(tr, spans=[11])
    with pytest.raises(ValueError, match="diagnostics must be among"):
        diagnose(net, np.zeros((10, 1, 1)), diagnostics=("fourier",))
    with pytest.raises(ValueError, match="joint=True"):
        trajectories(rnnlab.RNN(1, 2, num_layers=2, bidirectional=True, dtype=F64),
                     np.zeros((3, 1, 1)), joint=True)


def test_an_overflowing_lower_layer_is_reported_even_if_the_top_is_finite():
    # relu maps the NaN of an overflowed lower layer to 0: the output alone looks fine
    net = rnnlab.RNN(1, 4, num_layers=2, nonlinearity="relu", dtype=F64, seed=0)
    p = net.parameters()
    p["weight_hh_l0"][...] = 3.0 * np.eye(4)
    p["bias_ih_l0"][...] = 1.0
    p["weight_ih_l1"][...] = -1.0  # layer 1 sees -inf/NaN -> relu -> 0
    p["weight_hh_l1"][...] = 0.0
    p["bias_ih_l1"][...] = 0.0
    p["bias_hh_l1"][...] = 0.0
    x = np.ones((1000, 1, 1))
    with np.errstate(all="ignore"):
        out, _ = net(x)
    assert np.isfinite(out).all()  # the premise: the top layer stays finite
    with pytest.raises(ValueError, match="not finite"):
        trajectories(net, x)
