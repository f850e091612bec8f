"""What the test files share: the CPU oracle, array makers, comparisons, implementation names.

* `ref(name, *args)`: `fp8mm.reference.<name>` evaluated by XLA on the CPU
  backend (the oracle: on a GPU, XLA drops float16 round trips and computes
  float32 reciprocals approximately); `on_cpu(fn, *args)` for any function.
* `rand`, `heavy`, `rand_int8`: seeded normal, heavy-tailed (Student-t) and
  int8 arrays; `f32`: an array as float32 NumPy.
* `assert_bits_equal`: bit for bit (dtype and shape too; NaN matches NaN,
  -0.0 differs from 0.0); `assert_trees_equal`: leaf by leaf, by value
  (`np.testing.assert_array_equal`); `assert_within_ulp`: within one ulp of a
  dtype; `rel`: relative error over the finite entries.
* `IMPLEMENTATIONS` (the `implementation` fixture's values, see conftest.py),
  `interpreted(implementation)` and `cpu_subset(implementation, keep)`: Pallas
  runs interpreted on the CPU, which is slow, so CPU CI runs the kernels on a
  representative subset of a suite's cases (everything runs on a GPU).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fp8mm import _checks, reference

__all__ = [
    "CPU",
    "IMPLEMENTATIONS",
    "INTERPRET",
    "KERNEL_IMPLEMENTATIONS",
    "KERNEL_NAMES",
    "ON_GPU",
    "assert_bits_equal",
    "assert_trees_equal",
    "assert_within_ulp",
    "cpu_subset",
    "f32",
    "heavy",
    "interpreted",
    "on_cpu",
    "rand",
    "rand_int8",
    "ref",
    "rel",
    "ulp",
]

ON_GPU = jax.default_backend() == "gpu"
INTERPRET = not ON_GPU  # how the kernel wrappers are called directly (`interpret=`)
CPU = jax.devices("cpu")[0]
KERNEL_NAMES = _checks.KERNEL_NAMES  # ("pallas_triton", "pallas_mosaic_gpu")

# The `implementation` fixture's values. On the CPU "pallas" is the Triton kernels
# interpreted (Mosaic GPU kernels run only compiled), which is all there is to run; on a
# GPU also each kernel on its own (a primitive or case it does not serve is skipped:
# see conftest.py).
IMPLEMENTATIONS: tuple[str, ...] = ("xla", "pallas", *KERNEL_NAMES) if ON_GPU else ("xla", "pallas")
KERNEL_IMPLEMENTATIONS = tuple(i for i in IMPLEMENTATIONS if i != "xla")  # vs the XLA oracle


# ----------------------------------------------------------------------------- the oracle


def _to_cpu(tree):
    return jax.tree.map(lambda a: jax.device_put(a, CPU) if isinstance(a, jax.Array) else a, tree)


def on_cpu(fn: Callable, *args, **kwargs):
    """`fn(*args, **kwargs)` evaluated by XLA on the CPU, returned on the default device.

    Array arguments (also inside pytrees such as a QuantState) move to the CPU;
    Python scalars (block sizes, thresholds) stay static, NumPy arrays land on
    the CPU where `fn` uses them.
    """
    with jax.default_device(CPU):
        out = fn(*_to_cpu(args), **_to_cpu(kwargs))
    return jax.device_put(out, jax.devices()[0])


def ref(name: str, *args, on_cpu: bool = True, **kwargs):
    """`fp8mm.reference.<name>(*args, **kwargs)` evaluated on the CPU backend: the oracle.

    `on_cpu=False` runs it on the default backend instead: for subnormal values,
    which XLA on CPU flushes to zero in comparisons and a GPU does not.
    """
    fn = getattr(reference, name)
    return _on_cpu(fn, *args, **kwargs) if on_cpu else fn(*args, **kwargs)


_on_cpu = on_cpu  # `ref`'s keyword argument shadows the function's name inside it


# ----------------------------------------------------------------------------- arrays


def rand(shape, dtype=jnp.float32, seed: int = 0, scale: float = 1.0) -> jax.Array:
    """Standard normal values (drawn in float32, times `scale`) cast to `dtype`."""
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32) * scale
    return jnp.asarray(x).astype(dtype)


def heavy(
    shape, dtype=jnp.float32, seed: int = 0, scale: float = 1.0, *, df: float = 2.0, decades=None
) -> jax.Array:
    """Heavy-tailed values: Student-t with `df` degrees of freedom, times `scale`.

    `decades=(lo, hi)` also multiplies each element by 10**k, k uniform in
    [lo, hi): many scales in one array, a few huge values per block.
    """
    rng = np.random.default_rng(seed)
    x = rng.standard_t(df, size=shape)
    if decades is not None:
        x = x * 10.0 ** rng.integers(*decades, size=shape)
    x = x.astype(np.float32) * scale
    return jnp.asarray(x).astype(dtype)


def rand_int8(shape, seed: int = 0, low: int = -128) -> jax.Array:
    """Uniform int8 codes in [low, 127]."""
    return jnp.asarray(np.random.default_rng(seed).integers(low, 128, size=shape), jnp.int8)


def f32(x) -> np.ndarray:
    """x as a float32 NumPy array (bfloat16 and float16 values are exact in float32)."""
    return np.asarray(jnp.asarray(x).astype(jnp.float32))


# ----------------------------------------------------------------------------- comparisons


def assert_bits_equal(actual, expected, what: str = "") -> None:
    """Same shape, dtype and bits: NaN matches NaN (any payload), -0.0 differs from 0.0."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    assert actual.dtype == expected.dtype, (what, actual.dtype, expected.dtype)
    if actual.dtype.kind == "f" or actual.dtype == jnp.bfloat16:
        uint = np.dtype(f"u{actual.dtype.itemsize}")
        a32, e32 = actual.astype(np.float32), expected.astype(np.float32)
        ok = (actual.view(uint) == expected.view(uint)) | (np.isnan(a32) & np.isnan(e32))
    else:
        ok = actual == expected
    bad = np.flatnonzero(~ok)
    assert bad.size == 0, (
        f"{what}: {bad.size} of {ok.size} differ, first at flat index {bad[:5]}: "
        f"got {actual.reshape(-1)[bad[:5]]}, want {expected.reshape(-1)[bad[:5]]}"
    )


def assert_trees_equal(got, want, what: str = "") -> None:
    """Same pytree structure and leaves equal by value (`np.testing.assert_array_equal`)."""
    got_leaves, got_tree = jax.tree.flatten(got)
    want_leaves, want_tree = jax.tree.flatten(want)
    assert got_tree == want_tree, (what, got_tree, want_tree)
    for g, w in zip(got_leaves, want_leaves, strict=True):
        np.testing.assert_array_equal(np.asarray(g), np.asarray(w), err_msg=what)


def ulp(x: np.ndarray, dtype) -> np.ndarray:
    """The spacing of `dtype` at |x| (subnormals: at the smallest normal's exponent)."""
    fi = jnp.finfo(dtype)
    mag = np.maximum(np.abs(x), float(fi.smallest_normal))
    return np.exp2(np.floor(np.log2(mag)) - fi.nmant)


def assert_within_ulp(got, want, ulp_dtype=jnp.float16, bias=None) -> None:
    """Within one ulp of `ulp_dtype` (the float16 result, or its bfloat16 cast).

    Non-finite values must agree exactly (NaN matches NaN). With a bias, one
    float32 ulp of it more: a kernel that rounds the product before adding the
    bias (where an FMA does not) shows that where the two nearly cancel.
    """
    assert got.shape == want.shape and got.dtype == want.dtype
    g = np.asarray(got.astype(jnp.float32))
    w = np.asarray(want.astype(jnp.float32))
    finite = np.isfinite(w)
    assert np.array_equal(g[~finite], w[~finite], equal_nan=True)
    tol = ulp(w, ulp_dtype)
    if bias is not None:
        tol = tol + np.abs(np.asarray(bias, np.float32)) * 2.0**-22
    err = np.abs(g - w)
    assert np.all(err[finite] <= tol[finite]), f"max error {err[finite].max()}"


def rel(got, want) -> float:
    """Relative Frobenius error ‖got - want‖ / ‖want‖ over the finite entries, in float64.

    Both must be non-finite at the same places (inf where bitsandbytes overflows).
    """
    got, want = np.asarray(got).astype(np.float64), np.asarray(want).astype(np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    np.testing.assert_array_equal(np.isfinite(got), np.isfinite(want))
    fin = np.isfinite(want)
    return float(np.linalg.norm(got[fin] - want[fin]) / max(np.linalg.norm(want[fin]), 1e-30))


# ----------------------------------------------------------------------------- implementations


def interpreted(implementation) -> bool:
    """Whether `implementation` runs Pallas kernels in interpret mode (no GPU): slow."""
    return implementation != "xla" and not ON_GPU


def skip_xla_on_gpu(implementation) -> None:
    """Skips an exactness case for "xla" on a GPU, whose XLA is not exact by design.

    XLA on a GPU computes float32 reciprocals approximately and turns a division
    by a broadcast into a reciprocal multiply, so the XLA path there moves codes
    on rounding ties (docs/exactness.md); a GPU runs the kernels by default.
    """
    if implementation == "xla" and ON_GPU:
        pytest.skip("XLA on a GPU rounds reciprocals approximately (docs/exactness.md)")


def cpu_subset(implementation, keep: bool = False) -> None:
    """Skips the case unless `keep`, where Pallas runs interpreted (the CPU).

    `cpu_subset(implementation)` alone: the test runs on XLA only there.

    A suite keeps its full cross product for XLA (and on a GPU); interpreted
    kernels run a representative subset (small shapes, each dtype and option
    once), which is what keeps CPU CI inside its time budget.
    """
    if interpreted(implementation) and not keep:
        pytest.skip("interpreted Pallas: CPU CI runs a representative subset")
