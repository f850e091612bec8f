"""What a compiled call runs on the GPU: kernel names, counts and device time (GPU only).

    PYTHONPATH=. python -m benchmarks.devtrace

Traces a few calls with jax.profiler and reads the device planes of the trace
(jax.profiler.ProfileData), so launch gaps and host overhead are left out and
extra device work (copies, memsets, a second kernel) shows by name. The main
program sweeps tile configurations of the blockwise quantize and fake-quant kernels
(session 6; session 5's prefetch prototype, now the library's loop, is in git history).
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


# Tile configurations to sweep: (rows, cols, warps, steps) by (fake, blocksize); the
# first of each list is the library's choice (checked in main). Session 6 swept
# warps/steps/rows (results/nvidia-h200-devtrace-session6.log); this list is the next
# one, not yet run: one-warp programs, which keep each block's max inside one warp
# (NOTES session 6: every fast case had one warp per row, every slow one a row over
# several warps). The 256-block entry is the fast reference.
SWEEP = {
    (True, 256): [(8, 256, 4, 4)],
    (True, 512): [(4, 512, 4, 4), (1, 512, 1, 4), (4, 512, 1, 1), (2, 512, 1, 2)],
    (True, 2048): [(1, 2048, 4, 4), (1, 2048, 1, 1), (1, 2048, 1, 2)],
    (True, 4096): [(1, 4096, 4, 1), (1, 4096, 1, 1), (1, 4096, 2, 1)],
    (False, 512): [(4, 512, 4, 4), (1, 512, 1, 4)],
    (False, 4096): [(1, 4096, 4, 1), (1, 4096, 1, 1)],
}
# The suite's 4096-wide shapes, and the train step's (gpu preset: 64x256 tokens, d512, MLP 2048).
SHAPES = ((8192, 4096), (16384, 4096), (8192, 16384), (16384, 512), (16384, 2048))


def _e4m3_lookup():
    """(code, bucket table, lookup) of the e4m3 grid, as the kernels take them."""
    import fp8mm
    from fp8mm.pallas import codebook as cb

    table, lookup = cb._table_for(fp8mm.e4m3_code())
    return jnp.asarray(fp8mm.e4m3_code()), jnp.asarray(table), lookup


def _compile_blockwise(x, code, table, lookup, bs: int, fake: bool, cfg, interpret: bool = False):
    """The blockwise kernel for one tile config, compiled for x."""
    from fp8mm.pallas import codebook as cb

    f = functools.partial(
        cb._blockwise_call, blocksize=bs, fake=fake, lookup=lookup, interpret=interpret, cfg=cfg
    )
    return jax.jit(f).lower(x, code, table).compile()


def _busy_us(call, n: int = 20) -> float:
    """Device busy µs per call (all events), NaN without a GPU."""
    ev = events_by_name(call, n)
    return sum(cnt * us for cnt, us in ev.values()) if ev else float("nan")


def main(rounds: int = 2) -> None:
    """Sweeps blockwise tile configs by device time; prints ratios to the copy.

    Each config runs once a round, rounds interleaved, and reports its best round,
    so clock drift over the call cannot favour one config. Ratios are
    min-bytes / device time over the same-shape copy's rate ("same") and over the
    fastest copy of the call ("fastest"). Every config is checked bit for bit
    against the library's choice.
    """
    from fp8mm.pallas import codebook as cb

    print(jax.devices()[0].device_kind, jax.__version__, flush=True)
    interpret = jax.default_backend() == "cpu"  # a CPU run only checks the script
    code, table, lookup = _e4m3_lookup()
    compiled, xs, best = {}, {}, collections.defaultdict(lambda: float("inf"))
    problems = 0
    for (fake, bs), cfgs in SWEEP.items():
        lib = dataclasses.astuple(cb.choose_tiles(bs, fake))
        assert tuple(cfgs[0]) == lib, (fake, bs, lib, cfgs[0])
    for shape in SHAPES:
        x = xs[shape] = jax.random.normal(jax.random.key(1), shape).astype(jnp.bfloat16)
        compiled[shape, "copy"] = jax.jit(lambda x: x * 1).lower(x).compile()
        for (fake, bs), cfgs in SWEEP.items():
            want = None
            for t in cfgs:
                cfg = cb.TileConfig(*t)
                try:
                    c = _compile_blockwise(x, code, table, lookup, bs, fake, cfg, interpret)
                except Exception as e:  # a config that cannot compile is a result too
                    print(f"FAILED {shape} fake={fake} bs={bs} {t}: {e!r}"[:300], flush=True)
                    problems += 1
                    continue
                got = [a for a in c(x, code, table) if a is not None]
                if want is None:
                    want = got
                same = all(bool(jnp.array_equal(g, w)) for g, w in zip(got, want, strict=True))
                if not same:
                    print(f"MISMATCH {shape} fake={fake} bs={bs} {t}", flush=True)
                    problems += 1
                compiled[shape, (fake, bs, t)] = c
    if interpret:
        print(f"CPU (interpret mode): {problems} configs failed or mismatched; no device times")
        return
    nbytes = {s: s[0] * s[1] * 2 for s in SHAPES}
    for r in range(rounds):
        for (shape, case), c in compiled.items():
            args = (xs[shape],) if case == "copy" else (xs[shape], code, table)
            best[shape, case] = min(best[shape, case], _busy_us(lambda c=c, a=args: c(*a)))
        # Copies that fit in L2 (16384x512: 16 MiB) would inflate the "fastest" copy.
        fastest = max(2 * nbytes[s] / best[s, "copy"] for s in SHAPES if nbytes[s] >= 2**26)
        print(f"after round {r + 1}: fastest copy {fastest / 1e3:.0f} GB/s", flush=True)
        for (shape, case), us in best.items():
            if case == "copy":
                continue
            fake, bs, t = case
            n = shape[0] * shape[1]
            moved = 4 * n if fake else 3 * n + 4 * (n // bs)
            same = moved / us / (2 * nbytes[shape] / best[shape, "copy"])
            print(
                f"{'fake' if fake else 'quant'} bs={bs:<4} {shape[0]}x{shape[1]:<6} tiles={t}: "
                f"{us:7.1f} us  same {same:.3f}  fastest {moved / us / fastest:.3f}",
                flush=True,
            )


def data_probe(rounds: int = 2) -> None:
    """Is fake quant of 512+ blocks slower than of 256-blocks because of the data or
    the tile shape? Times both (and 4096-blocks) on normal data and on data whose every
    256-element chunk starts with the same peak, so all blocksizes see one absmax and
    the same scaled values (the same lookups)."""
    from fp8mm.pallas import codebook as cb

    code, table, lookup = _e4m3_lookup()
    shape = (8192, 4096)
    normal = jax.random.normal(jax.random.key(1), shape).astype(jnp.bfloat16)
    flat = normal.reshape(-1, 256).at[:, 0].set(8.0).reshape(shape)
    cases = {}
    for name, x in (("normal", normal), ("peaked", flat)):
        for bs in (256, 512, 4096):
            cfg = cb.choose_tiles(bs, True)
            cases[name, bs] = (_compile_blockwise(x, code, table, lookup, bs, True, cfg), x)
    best = collections.defaultdict(lambda: float("inf"))
    for _ in range(rounds):
        for k, (c, x) in cases.items():
            best[k] = min(best[k], _busy_us(lambda c=c, x=x: c(x, code, table)))
    for (name, bs), us in best.items():
        print(f"data probe {name} bs={bs}: {us:.1f} us", flush=True)


if __name__ == "__main__":
    import sys

    data_probe() if sys.argv[1:] == ["data"] else main()
