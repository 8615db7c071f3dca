"""Activation functions shared by every kernel.

Each activation is identified by a small integer code so that kernels take it as a plain
argument (one compiled signature for all activations). Values and derivatives are written once
with :func:`numba.extending.register_jitable`, so CPU (``@njit``) and CUDA (``@cuda.jit``)
kernels call the same code.

Derivatives are expressed in terms of the activation's *output* ``a = g(z)``; the kernels
therefore never store pre-activations. For ReLU the derivative at ``z = 0`` is 0, as in PyTorch.
"""

import math

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic, overload, register_jitable

TANH = 0
RELU = 1
SIGMOID = 2
LINEAR = 3

#: Name -> code, for the public ``nonlinearity`` argument.
ACTIVATIONS = {"tanh": TANH, "relu": RELU, "sigmoid": SIGMOID, "linear": LINEAR}

#: Upper bound of |g'(z)| (Pascanu et al. 2013's gamma).
DERIVATIVE_BOUND = {"tanh": 1.0, "relu": 1.0, "sigmoid": 0.25, "linear": 1.0}


def activation_code(name, argument="nonlinearity"):
    """Return the kernel code of an activation name.

    Parameters
    ----------
    name : str
        One of ``"tanh"``, ``"relu"``, ``"sigmoid"``, ``"linear"``.
    argument : str
        The argument name used in the error message.

    Returns
    -------
    int
        The code passed to the kernels.

    Raises
    ------
    ValueError
        If ``name`` is not a known activation.
    """
    if not isinstance(name, str) or name not in ACTIVATIONS:
        raise ValueError(
            f"{argument} must be one of {sorted(ACTIVATIONS)}, got {name!r}"
        )
    return ACTIVATIONS[name]


def one_like(x):
    """Return 1 in the floating type of ``x``.

    Inside compiled code a bare ``1`` promotes float32 arithmetic to float64 (halving SIMD width);
    this helper keeps kernels in their own precision.
    """
    return np.asarray(x).dtype.type(1)


@overload(one_like)
def _one_like_overload(x):
    if isinstance(x, types.Float):
        const = np.float32 if x.bitwidth == 32 else np.float64

        def impl(x):
            return const(1)

        return impl
    return None


# float32 tanh as Eigen's [13/6] rational approximation on [-7.9053, 7.9053]: max 3 ulp error
# against float64 tanh, branch-free so loops vectorise, ~3x faster than libm's tanhf (no SVML in
# pip numba).
_TANH32_CLAMP = np.float32(7.90531110763549805)
_TANH32_NUM = tuple(np.float32(v) for v in (
    4.89352455891786e-03, 6.37261928875436e-04, 1.48572235717979e-05, 5.12229709037114e-08,
    -8.60467152213735e-11, 2.00018790482477e-13, -2.76076847742355e-16))
_TANH32_DEN = tuple(np.float32(v) for v in (
    4.89352518554385e-03, 2.26843463243900e-03, 1.18534705686654e-04, 1.19825839466702e-06))

# float64 tanh and sigmoid from a branch-free exp/expm1 (Cody-Waite reduction y = k ln2 + r,
# |r| <= ln2/2, Taylor polynomial of degree 13 for expm1(r), 2^k built from its bits) so that
# loops vectorise: libm's tanh and exp are scalar calls, and took half of the float64 tanh RNN's
# forward pass (measured: T = 1000, B = 8, H = 64, 7.2 ms with tanh, 3.5 ms with ReLU).
# Error at most a few ulp (checked against mpmath in tests/test_activations.py).
_LOG2E = 1.4426950408889634
_LN2_HI = 6.93147180369123816490e-01  # trailing zeros: k * _LN2_HI is exact for |k| < 2^11
_LN2_LO = 1.90821492927058770002e-10
_ROUND = 6755399441055744.0  # 1.5 * 2^52: (x + _ROUND) - _ROUND rounds x to an integer
_EXPM1_TAYLOR = tuple(1.0 / math.factorial(n) for n in range(13, 1, -1))  # 1/13!, ..., 1/2!
_TANH64_SATURATION = 20.0  # tanh(20) rounds to 1.0 in float64
_EXP64_UNDERFLOW = 708.0  # exp(-708) is still a normal number: 2^k needs k >= -1022


@intrinsic
def _int64_as_float64(typingctx, bits):
    """Reinterpret the bits of an int64 as a float64 (vectorises, unlike ``math.ldexp``)."""
    if bits != types.int64:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())

    return types.float64(types.int64), codegen


@register_jitable
def _exp_parts(y):
    """``(s, q)`` with ``exp(y) = s (1 + q)`` and ``expm1(y) = s q + (s - 1)``, float64,
    for -708 <= y <= 0 (``s = 2^k`` exactly, ``q = expm1(r)`` to about half an ulp)."""
    kf = (y * _LOG2E + _ROUND) - _ROUND
    r = (y - kf * _LN2_HI) - kf * _LN2_LO
    c13, c12, c11, c10, c9, c8, c7, c6, c5, c4, c3, c2 = _EXPM1_TAYLOR
    p = c13 * r + c12
    p = p * r + c11
    p = p * r + c10
    p = p * r + c9
    p = p * r + c8
    p = p * r + c7
    p = p * r + c6
    p = p * r + c5
    p = p * r + c4
    p = p * r + c3
    p = p * r + c2
    q = r + (r * r) * p
    s = _int64_as_float64((np.int64(kf) + 1023) << 52)
    return s, q


def fast_tanh(z):
    """tanh in the precision of ``z``, branch-free so that loops vectorise.

    float32: Eigen's rational approximation (at most 3 ulp). float64:
    ``-expm1(-2|z|) / (expm1(-2|z|) + 2)`` with the sign of ``z``, from a polynomial expm1 (a few
    ulp, no libm call).
    """
    return np.tanh(z)


@overload(fast_tanh)
def _fast_tanh_overload(z):
    if isinstance(z, types.Float) and z.bitwidth == 32:
        clamp = _TANH32_CLAMP
        a1, a3, a5, a7, a9, a11, a13 = _TANH32_NUM
        b0, b2, b4, b6 = _TANH32_DEN

        def impl(z):
            x = min(max(z, -clamp), clamp)
            x2 = x * x
            p = x2 * a13 + a11
            p = x2 * p + a9
            p = x2 * p + a7
            p = x2 * p + a5
            p = x2 * p + a3
            p = x2 * p + a1
            q = x2 * b6 + b4
            q = x2 * q + b2
            q = x2 * q + b0
            return x * p / q

        return impl
    if isinstance(z, types.Float):

        def impl(z):
            x = abs(z)
            x = _TANH64_SATURATION if x > _TANH64_SATURATION else x  # NaN stays NaN
            s, q = _exp_parts(-2.0 * x)
            t = s * q + (s - 1.0)  # expm1(-2x), in (-1, 0]: no cancellation
            return math.copysign(-t / (t + 2.0), z)

        return impl
    return None


_HALF32 = np.float32(0.5)


def fast_sigmoid(z):
    """Logistic function in the precision of ``z``, branch-free so that gate loops vectorise.

    float32: ``0.5 + 0.5 * fast_tanh(0.5 z)`` (absolute error below 1e-7, no division by
    ``1 + exp``, no libm call). float64: the overflow-free ``exp(-|z|)`` form, whatever the sign
    of ``z``, with the polynomial exp of :func:`fast_tanh` (a few ulp). Used by the LSTM and GRU
    gates on CPU and CUDA.
    """
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


@overload(fast_sigmoid)
def _fast_sigmoid_overload(z):
    if isinstance(z, types.Float) and z.bitwidth == 32:
        half = _HALF32

        def impl(z):
            return half + half * fast_tanh(half * z)

        return impl
    if isinstance(z, types.Float):

        def impl(z):
            x = abs(z)
            s, q = _exp_parts(-(_EXP64_UNDERFLOW if x > _EXP64_UNDERFLOW else x))
            e = s + s * q
            e = 0.0 if x > _EXP64_UNDERFLOW else e  # exp(-x) underflows (NaN stays NaN)
            sig = 1.0 / (1.0 + e)
            return sig if z >= 0 else e * sig

        return impl
    return None


@register_jitable
def sigmoid(z):
    """Logistic function, overflow-free for either sign of ``z``."""
    one = one_like(z)
    if z >= 0:
        return one / (one + math.exp(-z))
    e = math.exp(z)
    return e / (one + e)


@register_jitable
def activate(code, z):
    """Return ``g(z)`` for the activation ``code``."""
    if code == TANH:
        return fast_tanh(z)
    if code == RELU:
        one = one_like(z)
        return z if z > 0 else one - one
    if code == SIGMOID:
        return sigmoid(z)
    return z


@register_jitable
def activate_rows(code, z, b0, b1):
    """``z[b] = g(z[b])`` in place for the rows ``b0 <= b < b1`` of a 2-D array.

    The activation is chosen once, outside the element loop, so that each loop is branch-free
    and vectorises (``activate`` inside the loop tests the code for every element)."""
    n = z.shape[1]
    if code == TANH:
        for b in range(b0, b1):
            zb = z[b]
            for i in range(n):
                zb[i] = fast_tanh(zb[i])
    elif code == RELU:
        zero = one_like(z[0, 0]) - one_like(z[0, 0])
        for b in range(b0, b1):
            zb = z[b]
            for i in range(n):
                zb[i] = zb[i] if zb[i] > zero else zero  # as activate: NaN -> 0
    elif code == SIGMOID:
        for b in range(b0, b1):
            zb = z[b]
            for i in range(n):
                zb[i] = sigmoid(zb[i])


@register_jitable
def derivative_from_output(code, a):
    """Return ``g'(z)`` given the output ``a = g(z)``."""
    one = one_like(a)
    if code == TANH:
        return one - a * a
    if code == RELU:
        return one if a > 0 else one - one
    if code == SIGMOID:
        return a * (one - a)
    return one
