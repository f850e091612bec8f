"""Tile tuning: time every config in a kernel's public search space at one shape.

Each Pallas kernel module publishes its config dataclass, the heuristic that
picks one (`choose_*`) and a search space (`*_search_space`) beside it; the
wrappers take `config=`. This entry point sweeps that space through the public
wrappers only, checks that every config gives the heuristic's result bit for
bit (tiling never changes a value), and prints the times next to the
heuristic's, fastest first:

    python -m benchmarks.tune int8_linear_matmul_dequant_wgmma --shape 8192,4096,4096
    python -m benchmarks.tune quantize_blockwise --shape 8192,4096 --blocksize 256
    python -m benchmarks.tune --list

Times are device times from a profiler trace on a GPU (median over calls after
warm-up, `benchmarks.common.device_time`); off a GPU the kernels run
interpreted and only the exactness check means anything (`--smoke`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from benchmarks.common import SMOKE_TIMING, TimingConfig, device_time, host_normal, jax_sync
from benchmarks.common import time_calls as _time_calls


@dataclasses.dataclass(frozen=True)
class Tunable:
    """One kernel wrapper and its search space.

    Attributes:
      module: the kernel module (under fp8mm.pallas).
      wrapper: its public wrapper, called as wrapper(*args, config=cfg, interpret=...).
      space: name of the search-space function; called as space(*dims, **options).
      heuristic: name of the heuristic; same arguments as `space`.
      dims: what the --shape numbers are (e.g. "m,n,k").
      make_args: (dims, dtype, options) -> the wrapper's positional arguments.
      options: keyword options of the space/heuristic taken from the command line.
      compiled_only: the kernel has no interpret mode (Mosaic GPU).
    """

    module: str
    wrapper: str
    space: str
    heuristic: str
    dims: str
    make_args: Callable[[tuple[int, ...], str, dict[str, Any]], tuple]
    options: tuple[str, ...] = ()
    compiled_only: bool = False


def _float(shape: tuple[int, ...], dtype: str):
    import jax.numpy as jnp

    return jnp.asarray(host_normal(shape, 1)).astype(dtype)


def _codebook_args(dims, dtype, options):
    import jax.numpy as jnp

    import fp8mm

    return (_float(dims, dtype), jnp.asarray(fp8mm.e4m3_code()), options["blocksize"])


def _codebook_global_args(dims, dtype, options):
    return _codebook_args(dims, dtype, options)[:2]


def _int8_quant_args(dims, dtype, options):
    return (_float(dims, dtype), options["threshold"])


def _int8_operands(dims, dtype):
    import fp8mm

    m, n, k = dims
    ca, row, _ = fp8mm.int8_vectorwise_quant(_float((m, k), dtype), implementation="xla")
    cb, col, _ = fp8mm.int8_vectorwise_quant(_float((n, k), dtype), implementation="xla")
    return ca, cb, row, col


def _int8_matmul_args(dims, dtype, options):
    return _int8_operands(dims, dtype)[:2]


def _int8_matmul_dequant_args(dims, dtype, options):
    import jax.numpy as jnp

    ca, cb, row, col = _int8_operands(dims, dtype)
    return ca, cb, row, col, None, jnp.dtype(dtype)


def _int8_mm_dequant_args(dims, dtype, options):
    import fp8mm

    ca, cb, row, col = _int8_operands(dims, dtype)
    return fp8mm.int8_linear_matmul(ca, cb, implementation="xla"), row, col


def _space_options(t: Tunable, options: dict[str, Any]) -> dict[str, Any]:
    return {k: options[k] for k in t.options}


_CB = "fp8mm.pallas.codebook"
_Q = "fp8mm.pallas.int8_quant"
_MM = "fp8mm.pallas.int8_matmul_triton"
_WG = "fp8mm.pallas.int8_matmul_wgmma"

TUNABLES: dict[str, Tunable] = {
    "quantize_blockwise": Tunable(
        _CB, "quantize_blockwise", "tile_search_space", "choose_tiles", "m,k", _codebook_args,
        ("blocksize",),
    ),
    "fake_quant_blockwise": Tunable(
        _CB, "fake_quant_blockwise", "tile_search_space", "choose_tiles", "m,k", _codebook_args,
        ("blocksize", "fake"),
    ),
    "quantize": Tunable(
        _CB, "quantize", "tile_search_space", "choose_tiles", "m,k", _codebook_global_args,
        ("blocksize",),
    ),
    "int8_vectorwise_quant": Tunable(
        _Q, "int8_vectorwise_quant", "row_quant_search_space", "choose_row_quant_config", "m,k",
        _int8_quant_args,
    ),
    "int8_double_quant": Tunable(
        _Q, "int8_double_quant", "quant_search_space", "choose_quant_config", "m,k",
        _int8_quant_args,
    ),
    "int8_vectorwise_quant_t": Tunable(
        _Q, "int8_vectorwise_quant_t", "quant_t_search_space", "choose_quant_t_config", "k,n",
        lambda dims, dtype, options: (_float(dims, dtype),),
    ),
    "int8_linear_matmul_triton": Tunable(
        _MM, "int8_linear_matmul", "matmul_search_space", "choose_matmul_config", "m,n,k",
        _int8_matmul_args,
    ),
    "int8_linear_matmul_dequant_triton": Tunable(
        _MM, "int8_linear_matmul_dequant", "matmul_search_space", "choose_matmul_config",
        "m,n,k", _int8_matmul_dequant_args,
    ),
    "int8_mm_dequant": Tunable(
        _MM, "int8_mm_dequant", "dequant_search_space", "choose_dequant_config", "m,n,k",
        _int8_mm_dequant_args,
    ),
    "int8_linear_matmul_wgmma": Tunable(
        _WG, "int8_linear_matmul", "wgmma_search_space", "choose_wgmma_config", "m,n,k",
        _int8_matmul_args, compiled_only=True,
    ),
    "int8_linear_matmul_dequant_wgmma": Tunable(
        _WG, "int8_linear_matmul_dequant", "wgmma_search_space", "choose_wgmma_config",
        "m,n,k", _int8_matmul_dequant_args, compiled_only=True,
    ),
}  # fmt: skip


def _space_args(t: Tunable, dims, options):
    """Positional arguments of the space/heuristic: the codebook ones take the blocksize."""
    if t.module == _CB:
        kw = {"fake": t.wrapper.startswith("fake")}
        return ((options["blocksize"] if t.wrapper != "quantize" else None),), kw
    if t.wrapper == "int8_mm_dequant":  # the epilogue tiles the [m, n] product
        return (dims[0], dims[1]), {}
    return tuple(dims), _space_options(t, options)


def _time(call: Callable[[], Any], timing: TimingConfig, on_gpu: bool) -> float:
    if on_gpu:
        dev = device_time(call, n=20)
        if dev is not None:
            return dev.median_s
    return _time_calls(call, jax_sync, timing).median_s


def _leaves_equal(a, b) -> bool:
    import jax

    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    if len(la) != len(lb):
        return False
    pairs = zip(la, lb, strict=True)
    return all(np.array_equal(np.asarray(x), np.asarray(y), equal_nan=True) for x, y in pairs)


def tune(
    name: str,
    dims: Sequence[int],
    dtype: str = "bfloat16",
    options: dict[str, Any] | None = None,
    timing: TimingConfig | None = None,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """Times every config of `name`'s search space at `dims`; rows fastest first.

    Each row: config (its repr), seconds, ratio (its time / the heuristic's),
    heuristic (whether it is the heuristic's choice), exact (bit-equal to it).
    """
    import importlib

    import jax

    t = TUNABLES[name]
    timing = timing or TimingConfig()
    options = {"blocksize": 256, "threshold": 0.0, **(options or {})}
    on_gpu = jax.default_backend() == "gpu"
    if t.compiled_only and not on_gpu:
        raise SystemExit(f"{name} ({t.module}) runs only compiled on a GPU")
    module = importlib.import_module(t.module)
    wrapper = getattr(module, t.wrapper)
    pos, kw = _space_args(t, dims, options)
    chosen = getattr(module, t.heuristic)(*pos, **kw)
    space = list(getattr(module, t.space)(*pos, **kw))[:limit]
    if chosen not in space:
        space.insert(0, chosen)
    args = t.make_args(tuple(dims), dtype, options)

    # Arrays are the jitted arguments; sizes, codes' dtypes and flags stay static.
    arrays = [i for i, a in enumerate(args) if isinstance(a, jax.Array)]

    def runner(cfg):
        def run(*xs):
            full = list(args)
            for i, x in zip(arrays, xs, strict=True):
                full[i] = x
            return wrapper(*full, config=cfg, interpret=not on_gpu)

        fn = jax.jit(run)
        return lambda: fn(*(args[i] for i in arrays))

    want = jax_sync(runner(chosen)())
    rows = []
    for cfg in space:
        fn = runner(cfg)
        try:
            out = jax_sync(fn())
        except Exception as e:  # a config the shape cannot take is reported, not fatal
            rows.append({"config": repr(cfg), "error": f"{type(e).__name__}: {e}"[:200]})
            continue
        seconds = _time(fn, timing, on_gpu)
        rows.append(
            {
                "config": repr(cfg),
                "seconds": seconds,
                "heuristic": cfg == chosen,
                "exact": _leaves_equal(out, want),
            }
        )
    base = next(r["seconds"] for r in rows if r.get("heuristic"))
    for r in rows:
        if "seconds" in r:
            r["ratio"] = r["seconds"] / base
    return sorted(rows, key=lambda r: r.get("seconds", float("inf")))


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("kernel", nargs="?", choices=sorted(TUNABLES))
    p.add_argument("--list", action="store_true", help="list the tunable kernels and exit")
    p.add_argument("--shape", help="comma-separated dims (see --list)")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--blocksize", type=int, default=256, help="codebook kernels")
    p.add_argument("--threshold", type=float, default=0.0, help="int8 quantization kernels")
    p.add_argument("--limit", type=int, help="time at most this many configs")
    p.add_argument("--smoke", action="store_true", help="one call a config (CPU check)")
    p.add_argument("--json", help="write the rows here")
    a = p.parse_args(argv)
    if a.list or a.kernel is None:
        for name, t in sorted(TUNABLES.items()):
            print(f"{name:28s} --shape {t.dims:6s} {t.module}.{t.space}")
        return []
    if not a.shape:
        p.error(f"--shape {TUNABLES[a.kernel].dims} is required")
    dims = tuple(int(x) for x in a.shape.split(","))
    opts = {"blocksize": a.blocksize, "threshold": a.threshold}
    timing = SMOKE_TIMING if a.smoke else TimingConfig()
    rows = tune(a.kernel, dims, a.dtype, opts, timing, a.limit)
    print(f"{a.kernel} at {a.shape} {a.dtype}: {len(rows)} configs, fastest first")
    for r in rows:
        if "error" in r:
            print(f"  {'-':>9s}  {'':6s}  {r['config']}  ({r['error']})")
            continue
        mark = " <- heuristic" if r["heuristic"] else ""
        exact = "" if r["exact"] else "  NOT BIT-EQUAL"
        print(f"  {r['seconds'] * 1e6:7.1f}us  {r['ratio']:5.3f}x  {r['config']}{mark}{exact}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)
    if not all(r.get("exact", True) for r in rows):
        sys.exit("a config changed the result")
    return rows


if __name__ == "__main__":
    main()
