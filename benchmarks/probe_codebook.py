"""Probe: where the blockwise codebook kernels spend their time (GPU only, timing only).

    PYTHONPATH=. python -m benchmarks.probe_codebook

Variants of the blockwise kernel (e4m3, bf16, 4096-blocks and 256-blocks) beside a
device copy of the same tensor, timed interleaved (one batch of each in turn, so
clock and thermal drift hit every variant alike). All but `nolookup` are exact:
  lib        the library kernel (quantize writes codes and absmax)
  noabs      the same kernel without the absmax output (what the store costs)
  abs-block  noabs plus absmax stored through the program's block of the absmax
             output (`ref[...] = v`) instead of the library's indexed store
  abs-2d     the same into a [blocks, 1] output, stored as absmax[:, None]
  abs-masked the same through a [rows, cols] index in x's layout, masked to column 0
  lib-alt    the library kernel on other tiles: 4096-blocks on 4 warps (1 x 4096),
             256-blocks on 2 warps (8 x 256)
  nolookup   no key, no table: codes from the top bits of x (load/absmax/store floor)
Fake quantization has no absmax output: lib and nolookup only.
Session 4 (benchmarks/NOTES.md) also timed an unfolded table with the per-element
NaN test, the table gather replaced by arithmetic, and a sign-folded lookup.
"""

import functools
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl

import fp8mm
from benchmarks.common import jax_sync
from fp8mm.pallas import _backend
from fp8mm.pallas import codebook as cb


def _kernel(x_ref, code_ref, table_ref, out_ref, *absmax_ref, cfg, fake, variant, lookup):
    offs, _ = cb._tile_offsets(cfg, cfg.size)
    x = _backend.load(x_ref.at[offs]).astype(jnp.float32)
    absmax = cb._block_absmax(x, False)
    scaled = x * _backend.recip_rn(absmax, False)[:, None]
    if variant == "nolookup":
        q = (lax.bitcast_convert_type(scaled, jnp.int32) >> 19) & 255
    else:
        q = cb._nearest_code(scaled, code_ref, table_ref, lookup, False)
    if fake:
        out = (code_ref[q & 255] * absmax[:, None]).astype(out_ref.dtype)
    else:
        out = q.astype(jnp.uint8)
    _backend.store(out_ref.at[offs], out)
    if variant == "abs-block":
        absmax_ref[0][...] = absmax
    elif variant == "abs-2d":
        absmax_ref[0][...] = absmax[:, None]
    elif variant == "abs-masked":
        # In x's own layout: the thread holding column 0 of a row stores its absmax.
        rows = lax.broadcasted_iota(jnp.int32, (cfg.rows, cfg.cols), 0)
        first = lax.broadcasted_iota(jnp.int32, (cfg.rows, cfg.cols), 1) == 0
        wide = jnp.broadcast_to(absmax[:, None], (cfg.rows, cfg.cols))
        _backend.store(absmax_ref[0].at[rows], wide, mask=first)


@functools.partial(jax.jit, static_argnames=("bs", "fake", "variant", "lookup"))
def _call(A, code, table, bs, fake, variant, lookup):
    cfg = cb.choose_tiles(bs, fake)
    n = A.size
    out_specs = [cb._tiled(cfg.size)]
    out_shape = [jax.ShapeDtypeStruct((n,), A.dtype if fake else jnp.uint8)]
    if variant in ("abs-block", "abs-masked"):
        out_specs.append(cb._tiled(cfg.rows))
        out_shape.append(jax.ShapeDtypeStruct((n // bs,), jnp.float32))
    elif variant == "abs-2d":
        out_specs.append(pl.BlockSpec((cfg.rows, 1), lambda i: (i, 0)))
        out_shape.append(jax.ShapeDtypeStruct((n // bs, 1), jnp.float32))
    return _backend.pallas_call(
        functools.partial(_kernel, cfg=cfg, fake=fake, variant=variant, lookup=lookup),
        name=f"probe_{variant}",
        interpret=False,
        num_warps=cfg.num_warps,
        grid=(n // cfg.size,),
        in_specs=[cb._tiled(cfg.size), cb._whole(256), cb._whole(table.shape[0])],
        out_specs=out_specs,
        out_shape=out_shape,
    )(A.reshape(-1), code, table)


def _interleaved(calls: dict, batches: int, batch_s: float) -> dict:
    """Median seconds per call of each entry, batches taken in turn."""
    reps = {}
    for name, c in calls.items():
        for _ in range(3):
            jax_sync(c())
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < 0.05:
            jax_sync(c())
        t0 = time.perf_counter()
        jax_sync((c(), c()))
        reps[name] = max(1, min(400, int(batch_s / max((time.perf_counter() - t0) / 2, 1e-7))))
    times = {name: [] for name in calls}
    for _ in range(batches):
        for name, c in calls.items():
            t0 = time.perf_counter()
            for _ in range(reps[name]):
                out = c()
            jax_sync(out)
            times[name].append((time.perf_counter() - t0) / reps[name])
    return {name: statistics.median(v) for name, v in times.items()}


def main():
    print(jax.devices()[0].device_kind, jax.__version__, flush=True)
    e4m3 = fp8mm.e4m3_code()
    code = jnp.asarray(e4m3)
    table, lookup = cb._table_for(e4m3)
    table = jnp.asarray(table)
    rows = []
    for shape in ((8192, 16384), (16384, 4096), (8192, 4096)):
        x = jax.random.normal(jax.random.key(1), shape, jnp.float32).astype(jnp.bfloat16)
        for bs in (4096, 256):
            for fake in (False, True):
                calls, outs = {}, {}
                copy = jax.jit(lambda x: x * 1).lower(x).compile()
                calls["copy"] = lambda copy=copy: copy(x)
                variants = ("lib", "nolookup")
                if not fake:
                    variants = ("lib", "noabs", "abs-block", "abs-2d", "abs-masked", "nolookup")
                for variant in variants:
                    if variant.startswith("lib"):
                        alt = cb.TileConfig(1, 4096, 4) if bs == 4096 else cb.TileConfig(8, 256, 2)
                        cfg = alt if variant == "lib-alt" else None
                        f = jax.jit(
                            lambda x, c, t, bs=bs, fake=fake, cfg=cfg: cb._blockwise_call(
                                x, c, t, bs, fake, lookup, False, cfg
                            )
                        )
                    else:
                        f = jax.jit(
                            functools.partial(
                                _call, bs=bs, fake=fake, variant=variant, lookup=lookup
                            )
                        )
                    c = f.lower(x, code, table).compile()
                    calls[variant] = lambda c=c: c(x, code, table)
                    outs[variant] = np.asarray(c(x, code, table)[0]).view(np.uint8).reshape(-1)
                med = _interleaved(calls, 15, 0.02)
                for variant in variants:
                    by = (4 if fake else 3) * x.size
                    r = dict(
                        shape="x".join(map(str, shape)),
                        bs=bs,
                        kind="fake" if fake else "quant",
                        variant=variant,
                        us=round(med[variant] * 1e6, 1),
                        copy_us=round(med["copy"] * 1e6, 1),
                        vs_copy=round(by / med[variant] / (4 * x.size / med["copy"]), 3),
                        mismatch=int((outs[variant] != outs["lib"]).sum()),
                    )
                    print(r, flush=True)
                    rows.append(r)
    head = ("shape", "bs", "kind", "variant", "us", "copy", "vs_copy")
    print(" ".join(f"{h:>{w}}" for h, w in zip(head, (11, 5, 5, 9, 7, 7, 7), strict=True)), "mism")
    for r in rows:
        print(
            f"{r['shape']:>11} {r['bs']:>5} {r['kind']:>5} {r['variant']:>9} "
            f"{r['us']:>7} {r['copy_us']:>7} {r['vs_copy']:>7} {r['mismatch']}"
        )


if __name__ == "__main__":
    main()
