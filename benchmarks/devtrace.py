"""What a compiled call runs on the GPU: kernel names, counts and device time (GPU only).

    PYTHONPATH=. python -m benchmarks.devtrace

Traces a few calls with jax.profiler and reads the device planes of the trace
(jax.profiler.ProfileData), so launch gaps and host overhead are left out and
extra device work (copies, memsets, a second kernel) shows by name. The main
program times the library's blockwise quantize kernel beside its one-tile-a-program
form, the session-5 prefetch prototype (`_prefetch_call`) and a device copy.
"""

from __future__ import annotations

import collections
import dataclasses
import functools

import jax
import jax.numpy as jnp

from benchmarks.common import device_events


def events_by_name(call, n: int = 20) -> dict[str, tuple[float, float]]:
    """{event name: (count per call, mean µs)} of the GPU events of `n` traced calls."""
    stats = collections.defaultdict(list)
    for name, _, dur in device_events(call, n):
        stats[name].append(dur / 1e3)
    return {k: (len(v) / n, sum(v) / len(v)) for k, v in stats.items()}


def _prefetch_kernel(x_ref, code_ref, table_ref, out_ref, absmax_ref, *, cfg, steps, lookup):
    """The library quantize kernel over `steps` tiles a program, loading tile t+1
    before working on tile t (a register double buffer: software prefetch)."""
    from jax import lax

    from fp8mm.pallas import _backend
    from fp8mm.pallas import codebook as cb

    local, _ = cb._tile_offsets(cfg, cfg.size)
    rows = lax.broadcasted_iota(jnp.int32, (cfg.rows,), 0)

    def load(t, valid):
        mask = jnp.broadcast_to(valid, local.shape)
        return _backend.load(x_ref.at[local + t * cfg.size], mask=mask, other=0)

    def body(t, x_raw):
        nxt = load(t + 1, t + 1 < steps)
        x = x_raw.astype(jnp.float32)
        absmax = cb._block_absmax(x, False)
        q = cb._nearest_code(x * _backend.recip_rn(absmax, False)[:, None], code_ref, table_ref,
                             lookup, False)  # fmt: skip
        _backend.store(out_ref.at[local + t * cfg.size], q.astype(jnp.uint8))
        _backend.store(absmax_ref.at[rows + t * cfg.rows], absmax)
        return nxt

    lax.fori_loop(0, steps, body, load(0, True))


@functools.partial(jax.jit, static_argnames=("bs", "steps", "lookup"))
def _prefetch_call(A, code, table, bs, steps, lookup):
    from fp8mm.pallas import _backend
    from fp8mm.pallas import codebook as cb

    cfg = cb.choose_tiles(bs)
    n, big = A.size, cfg.size * steps
    return _backend.pallas_call(
        functools.partial(_prefetch_kernel, cfg=cfg, steps=steps, lookup=lookup),
        name=f"prefetch_{steps}",
        interpret=False,
        num_warps=cfg.num_warps,
        grid=(n // big,),
        in_specs=[cb._tiled(big), cb._whole(256), cb._whole(table.shape[0])],
        out_specs=[cb._tiled(big), cb._tiled(cfg.rows * steps)],
        out_shape=[
            jax.ShapeDtypeStruct((n,), jnp.uint8),
            jax.ShapeDtypeStruct((n // bs,), jnp.float32),
        ],
    )(A.reshape(-1), code, table)


def main() -> None:
    import fp8mm
    from fp8mm.pallas import codebook as cb

    print(jax.devices()[0].device_kind, jax.__version__, flush=True)
    code = jnp.asarray(fp8mm.e4m3_code())
    table, lookup = cb._table_for(fp8mm.e4m3_code())
    table = jnp.asarray(table)
    for shape in ((8192, 4096), (16384, 4096), (8192, 16384)):
        x = jax.random.normal(jax.random.key(1), shape, jnp.float32).astype(jnp.bfloat16)
        for bs in (4096, 256):
            cases = {
                "copy": lambda x, c, t: x * 1,
                "lib": lambda x, c, t, bs=bs: cb._blockwise_call(x, c, t, bs, False, lookup, False),
            }
            one = cb.TileConfig(*dataclasses.astuple(cb.choose_tiles(bs))[:3], steps=1)
            cases["one-tile"] = lambda x, c, t, bs=bs, one=one: cb._blockwise_call(
                x, c, t, bs, False, lookup, False, one
            )
            cases["prefetch4"] = functools.partial(_prefetch_call, bs=bs, steps=4, lookup=lookup)
            res = {}
            cases_lib = jax.jit(cases["lib"])
            for name, f in cases.items():
                c = jax.jit(f).lower(x, code, table).compile()
                ev = events_by_name(lambda c=c: c(x, code, table))
                res[name] = sum(cnt * us for cnt, us in ev.values())
                if name != "copy":
                    got = jax.tree.leaves(c(x, code, table))
                    want = jax.tree.leaves(cases_lib(x, code, table))
                    same = all(
                        bool(jnp.array_equal(g.reshape(-1), w.reshape(-1)))
                        for g, w in zip(got[:2], want[:2], strict=True)
                    )
                    print(f"{shape} bs={bs} {name}: equal to lib: {same}", flush=True)
                line = "; ".join(f"{k} x{cnt:g} {us:.1f}us" for k, (cnt, us) in sorted(ev.items()))
                print(f"{shape} bs={bs} {name}: {line}", flush=True)
            ratios = {k: round(3 / 4 * res["copy"] / v, 3) for k, v in res.items() if k != "copy"}
            print(f"{shape} bs={bs} vs copy (device time): {ratios}", flush=True)


if __name__ == "__main__":
    main()
