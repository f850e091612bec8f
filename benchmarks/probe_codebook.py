"""Probe: where the blockwise codebook kernels spend their time (GPU only, timing only).

    PYTHONPATH=. python -m benchmarks.probe_codebook

Variants of the blockwise kernel (e4m3, bf16, 4096-blocks and 256-blocks) beside a
device copy of the same tensor. Only the first two are exact; the last removes the
lookup to see what the time is bound by:
  folded     the library kernel (key, bucket gather, compare, code gather when fake;
             NaN folded into the table; absmax by Triton's NaN-dropping max)
  nan-filter the library kernel with session 4's absmax: NaN zeroed per element
             before the max (a compare and a select per element)
  nolookup   no key, no table: codes from the top bits of x (load/absmax/store floor)
Session 4 also timed `nan-test` (an unfolded table with the per-element NaN test)
and `nogather` (the table gather replaced by arithmetic): see benchmarks/NOTES.md.
Tried in session 4 and dropped (slower by 10-20%): a sign-folded lookup in which
|x| indexes the positive half of the table (half the table lines per warp, five
more integer operations per element).
"""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

import fp8mm
from benchmarks.common import TimingConfig, jax_sync, time_calls
from fp8mm.pallas import _backend
from fp8mm.pallas import codebook as cb

TC = TimingConfig(batches=12, batch_s=0.02, max_reps=200, warmup=2)
OUT = os.environ.get("OUT", "/tmp")


def _kernel(x_ref, code_ref, table_ref, out_ref, *, cfg, fake, variant, lookup):
    offs, _ = cb._tile_offsets(cfg, cfg.size)
    x = _backend.load(x_ref.at[offs]).astype(jnp.float32)
    absmax = jnp.max(jnp.where(x != x, 0.0, jnp.abs(x)), axis=1)
    scaled = x * _backend.recip_rn(absmax, False)[:, None]
    if variant == "nan-filter":
        q = cb._nearest_code(scaled, code_ref, table_ref, lookup, False)
    else:  # nolookup
        q = (lax.bitcast_convert_type(scaled, jnp.int32) >> 19) & 255
    if fake:
        out = (code_ref[q & 255] * absmax[:, None]).astype(out_ref.dtype)
    else:
        out = q.astype(jnp.uint8)
    _backend.store(out_ref.at[offs], out)


@functools.partial(jax.jit, static_argnames=("bs", "fake", "variant", "lookup"))
def _call(A, code, table, bs, fake, variant, lookup):
    cfg = cb.choose_tiles(bs, fake)
    n = A.size
    return _backend.pallas_call(
        functools.partial(_kernel, cfg=cfg, fake=fake, variant=variant, lookup=lookup),
        name=f"probe_{variant}",
        interpret=False,
        num_warps=cfg.num_warps,
        grid=(n // cfg.size,),
        in_specs=[cb._tiled(cfg.size), cb._whole(256), cb._whole(table.shape[0])],
        out_specs=[cb._tiled(cfg.size)],
        out_shape=[jax.ShapeDtypeStruct((n,), A.dtype if fake else jnp.uint8)],
    )(A.reshape(-1), code, table)[0].reshape(A.shape)


def main():
    print(jax.devices()[0].device_kind, jax.__version__, flush=True)
    e4m3 = fp8mm.e4m3_code()
    code = jnp.asarray(e4m3)
    table, lookup = cb._table_for(e4m3)
    assert lookup.nan_folded
    table = jnp.asarray(table)
    rows = []
    for shape in ((8192, 16384), (16384, 4096), (8192, 4096)):
        x = jax.random.normal(jax.random.key(1), shape, jnp.float32).astype(jnp.bfloat16)
        copy = jax.jit(lambda x: x * 1).lower(x).compile()
        tcopy = time_calls(lambda: copy(x), jax_sync, TC).median_s
        for bs in (4096, 256):
            for fake in (False, True):
                ref = None
                for variant in ("folded", "nan-filter", "nolookup"):
                    tab = table
                    if variant == "folded":
                        f = jax.jit(
                            lambda x, c, t, bs=bs, fake=fake: cb._blockwise_call(
                                x, c, t, bs, fake, lookup, False
                            )[0]
                        )
                    else:
                        f = jax.jit(
                            functools.partial(
                                _call, bs=bs, fake=fake, variant=variant, lookup=lookup
                            )
                        )
                    c = f.lower(x, code, tab).compile()
                    t = time_calls(lambda c=c: c(x, code, tab), jax_sync, TC).median_s
                    out = np.asarray(c(x, code, tab)).view(np.uint8)
                    ref = out if ref is None else ref
                    by = (4 if fake else 3) * x.size
                    r = dict(
                        shape="x".join(map(str, shape)),
                        bs=bs,
                        kind="fake" if fake else "quant",
                        variant=variant,
                        us=round(t * 1e6, 1),
                        vs_copy=round(by / t / (4 * x.size / tcopy), 3),
                        mismatch=int((out != ref).sum()),
                    )
                    print(r, flush=True)
                    rows.append(r)
    print(f"{'shape':>11} {'bs':>5} {'kind':>5} {'variant':>9} {'us':>7} {'vs_copy':>7} mism")
    for r in rows:
        print(
            f"{r['shape']:>11} {r['bs']:>5} {r['kind']:>5} {r['variant']:>9} "
            f"{r['us']:>7} {r['vs_copy']:>7} {r['mismatch']}"
        )


if __name__ == "__main__":
    main()
