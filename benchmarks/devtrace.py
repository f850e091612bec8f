"""What a compiled call runs on the GPU: kernel names, counts and device time (GPU only).

    PYTHONPATH=. python -m benchmarks.devtrace

Traces a few calls with jax.profiler and reads the device planes of the trace
(jax.profiler.ProfileData), so launch gaps and host overhead are left out and
extra device work (copies, memsets, a second kernel) shows by name. The main
program times the blockwise quantize kernel on several tiles, and without its absmax
output (benchmarks.probe_codebook's `noabs`), beside a device copy.
"""

from __future__ import annotations

import collections
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


def main() -> None:
    import fp8mm
    from benchmarks import probe_codebook as probe
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
                "noabs": functools.partial(
                    probe._call, bs=bs, fake=False, variant="noabs", lookup=lookup
                ),
            }
            tiles = [(1, 4096, 8), (1, 4096, 4), (1, 4096, 2), (2, 4096, 4), (2, 4096, 8)]
            if bs == 256:
                tiles = [(8, 256, 4), (16, 256, 4), (32, 256, 4), (8, 256, 2), (16, 256, 2)]
            for tile in tiles:
                cfg = cb.TileConfig(*tile)
                cases[f"q{tile}"] = lambda x, c, t, bs=bs, cfg=cfg: cb._blockwise_call(
                    x, c, t, bs, False, lookup, False, cfg
                )
            res = {}
            for name, f in cases.items():
                c = jax.jit(f).lower(x, code, table).compile()
                ev = device_events(lambda c=c: c(x, code, table))
                res[name] = sum(cnt * us for cnt, us in ev.values())
                line = "; ".join(f"{k} x{cnt:g} {us:.1f}us" for k, (cnt, us) in sorted(ev.items()))
                print(f"{shape} bs={bs} {name}: {line}", flush=True)
            ratios = {k: round(3 / 4 * res["copy"] / v, 3) for k, v in res.items() if k != "copy"}
            print(f"{shape} bs={bs} vs copy (device time): {ratios}", flush=True)


if __name__ == "__main__":
    main()
