"""Config sweeps behind the heuristics (GPU only; prints one dict per case, JSON to $OUT).

    PYTHONPATH=. python -m benchmarks.sweep [section ...]

Sections: codebook, rowquant, ops, mm (default: all; mm includes the wgmma kernel).

Codebook tile configs (blockwise 4096/256, global), the single-pass int8 row
quantization, the ops beside a bf16 linear (time and compiled peak memory) and
int8 matmul tiles beside XLA's int8 dot. Every codebook case is bit-compared
with the first config of its group. Numbers from this script on an H200 are in
benchmarks/NOTES.md (session 2).
"""

import json
import os
import sys
import traceback

import jax
import jax.numpy as jnp
import numpy as np

import fp8mm
from benchmarks.common import TimingConfig, jax_sync, time_calls
from fp8mm.pallas import codebook as cb
from fp8mm.pallas import int8 as k8
from fp8mm.pallas import int8_wgmma as wg

OUT = os.environ.get("OUT", "/tmp")
SECTIONS = set(sys.argv[1:]) or {"codebook", "rowquant", "ops", "mm"}
TC = TimingConfig(batches=12, batch_s=0.02, max_reps=200, warmup=2)
rows = []


def tm(fn, *args):
    c = jax.jit(fn).lower(*args).compile()
    return time_calls(lambda: c(*args), jax_sync, TC).median_s, c


def rec(**r):
    print(r, flush=True)
    rows.append(r)


print(jax.devices()[0].device_kind, jax.__version__, flush=True)
e4m3 = fp8mm.e4m3_code()
code = jnp.asarray(e4m3)
table, lookup = cb._table_for(e4m3)
x = jax.random.normal(jax.random.key(1), (8192, 4096), jnp.float32).astype(jnp.bfloat16)
tc, _ = tm(lambda x: x * 1, x)
bw = 2 * x.size * 2 / 1e9 / tc
sweeps = [
    (4096, True, [(1, 4096, 8), (1, 4096, 4), (2, 4096, 8)]),
    (4096, False, [(1, 4096, 8), (2, 4096, 8), (2, 4096, 4), (4, 4096, 16)]),
    (256, True, [(8, 256, 4), (16, 256, 8), (16, 256, 4), (32, 256, 8)]),
    (256, False, [(8, 256, 4), (16, 256, 8), (16, 256, 4), (32, 256, 8)]),
    (None, True, [(2, 1024, 4), (1, 1024, 4), (4, 1024, 8)]),
]
dyn = fp8mm.create_dynamic_map()
dyn_code = jnp.asarray(dyn)
dyn_table, dyn_lookup = cb._table_for(dyn)
# Every shape is timed beside its own copy (vs_copy).
big = jax.random.normal(jax.random.key(2), (8192, 16384), jnp.float32).astype(jnp.bfloat16)
tall = jax.random.normal(jax.random.key(3), (16384, 4096), jnp.float32).astype(jnp.bfloat16)
ref = {}
shapes = ((big, "8192x16384"), (tall, "16384x4096"), (x, "8192x4096"))
for xx, label in shapes if "codebook" in SECTIONS else ():
    tcx, _ = tm(lambda x: x * 1, xx)
    bwx = 2 * xx.size * 2 / 1e9 / tcx
    rec(case=f"copy {label}", us=tcx * 1e6, gbs=bwx)
    for bs, fake, cfgs in sweeps:
        for c in cfgs:
            cfg = cb.TileConfig(*c)
            if bs is None:
                f = lambda x, cfg=cfg, fake=fake: cb._global_call(
                    x, code, table, fake, lookup, False, cfg=cfg
                )[0]
            else:
                f = lambda x, cfg=cfg, bs=bs, fake=fake: cb._blockwise_call(
                    x, code, table, bs, fake, lookup, False, cfg=cfg
                )[0]
            try:
                t, comp = tm(f, xx)
                out = np.asarray(comp(xx)).view(np.uint8)
                key = (bs, fake, label)
                ref.setdefault(key, out)
                by = (4 if fake else 3) * xx.size
                rec(
                    case=f"{label} {'fake' if fake else 'quant'} bs={bs} cfg={c}",
                    us=t * 1e6,
                    vs_copy=by / 1e9 / t / bwx,
                    mismatch=int((out != ref[key]).sum()),
                )
            except Exception as e:
                rec(case=f"bs={bs} cfg={c}", error=repr(e)[:200])
    for bs in (4096, 256):
        f = lambda x, bs=bs: cb._blockwise_call(
            x, dyn_code, dyn_table, bs, False, dyn_lookup, False
        )[0]
        t, _ = tm(f, xx)
        rec(
            case=f"{label} dynamic-map quant bs={bs} {dyn_lookup}",
            us=t * 1e6,
            vs_copy=3 * xx.size / 1e9 / t / bwx,
        )
if "codebook" in SECTIONS:
    t, _ = tm(lambda c: cb._bucket_table(c), code)
    rec(case="table build in-graph", us=t * 1e6)
rq = [(2, 4096, 4), (1, 4096, 4), (4, 4096, 8), (2, 4096, 8), (1, 4096, 8), (8, 4096, 8)]
for c in rq if "rowquant" in SECTIONS else ():
    cfg = k8.RowQuantConfig(*c)
    try:
        t, _ = tm(lambda x, cfg=cfg: k8._row_quant_2d(x, cfg=cfg, interpret=False), x)
        rec(case=f"rowquant cfg={c}", us=t * 1e6, vs_copy=3 * x.size / 1e9 / t / bw)
    except Exception as e:
        rec(case=f"rowquant cfg={c}", error=repr(e)[:200])
# ops vs linear
op_shapes = [(8192, 4096, 4096), (8192, 4096, 16384), (16384, 4096, 4096)]
for t_, k_, n_ in op_shapes if "ops" in SECTIONS else ():
    A = jax.random.normal(jax.random.key(2), (t_, k_), jnp.float32).astype(jnp.bfloat16)
    W = (jax.random.normal(jax.random.key(3), (k_, n_), jnp.float32) * 0.02).astype(jnp.bfloat16)
    Wt = W.T
    G = jax.random.normal(jax.random.key(4), (t_, n_), jnp.float32).astype(jnp.bfloat16)
    cases = {
        "linear": (lambda a, w: a @ w, W),
        "fp8_mixed": (
            lambda a, w: fp8mm.matmul_fp8_mixed(a, w, fp8mm.e4m3_code(), fp8mm.e5m2_code()),
            W,
        ),
        "fp8_global": (
            lambda a, w: fp8mm.matmul_fp8_global(a, w, fp8mm.e4m3_code(), fp8mm.e5m2_code()),
            W,
        ),
        "switchback": (lambda a, w: fp8mm.switchback_bnb(a, w), Wt),
    }
    base = {}
    for name, (fn, w) in cases.items():
        for mode in ("fwd", "fwd+bwd"):
            if mode == "fwd":
                f = fn
            else:
                f = lambda a, w, g, fn=fn: (*jax.vjp(fn, a, w)[1](g), fn(a, w))
            args = (A, w) if mode == "fwd" else (A, w, G)
            try:
                t, comp = tm(f, *args)
                ma = comp.memory_analysis()
                mem = (
                    ma.temp_size_in_bytes + ma.argument_size_in_bytes + ma.output_size_in_bytes
                ) / 2**20
                if name == "linear":
                    base[mode] = (t, mem)
                rec(
                    case=f"{name} {mode} {t_}x{k_}->{n_}",
                    ms=t * 1e3,
                    vs_linear=t / base[mode][0],
                    mem_mib=mem,
                    mem_vs=mem / base[mode][1],
                )
            except Exception as e:
                traceback.print_exc()
                rec(case=f"{name} {mode} {t_}x{k_}->{n_}", error=repr(e)[:300])
for m, n, kk in [(4096, 16384, 4096), (8192, 4096, 4096)] if "mm" in SECTIONS else ():
    A8 = jax.random.randint(jax.random.key(3), (m, kk), -127, 128, jnp.int32).astype(jnp.int8)
    B8 = jax.random.randint(jax.random.key(4), (n, kk), -127, 128, jnp.int32).astype(jnp.int8)
    rs = jnp.ones((m,), jnp.float32)
    cs = jnp.ones((n,), jnp.float32)
    ops = 2 * m * n * kk
    tx, _ = tm(
        lambda a, b: jax.lax.dot_general(
            a, b, (((1,), (1,)), ((), ())), preferred_element_type=jnp.int32
        ),
        A8,
        B8,
    )
    for c in [
        (128, 128, 128, 4, 3, 8),
        (128, 128, 128, 4, 3, 4),
        (128, 128, 128, 4, 3, 16),
        (128, 128, 128, 4, 4, 8),
        (128, 128, 256, 4, 3, 8),
        (64, 128, 128, 4, 4, 8),
        (128, 64, 128, 4, 4, 8),
        (128, 128, 128, 4, 5, 8),
    ]:
        cfg = k8.MatmulConfig(c[0], c[1], c[2], group_m=c[5], num_warps=c[3], num_stages=c[4])
        try:
            t, _ = tm(
                lambda a, b, r_, c_, cfg=cfg: k8._matmul_2d(
                    a,
                    b,
                    r_,
                    c_,
                    None,
                    dequant=True,
                    bias_mode=None,
                    out_dtype=jnp.bfloat16,
                    cfg=cfg,
                    interpret=False,
                ),
                A8,
                B8,
                rs,
                cs,
            )
            rec(case=f"mm {m}x{n}x{kk} cfg={c}", tops=ops / t / 1e12, vs_xla_int8=tx / t)
        except Exception as e:
            rec(case=f"mm {m}x{n}x{kk} cfg={c}", error=repr(e)[:200])
    # The Mosaic GPU s8 wgmma kernel (Hopper only), fused dequant and int32 output.
    for c in [(3, 8, True), (4, 8, True), (2, 8, True), (3, 16, True), (3, 8, False)]:
        cfg = wg.WgmmaConfig(stages=c[0], snake_width=c[1])
        name = f"mm-wgmma {m}x{n}x{kk} stages={c[0]} snake={c[1]} dequant={c[2]}"
        try:
            t, _ = tm(
                lambda a, b, r_, c_, cfg=cfg, dq=c[2]: wg._matmul_2d(
                    a,
                    b,
                    r_ if dq else None,
                    c_ if dq else None,
                    None,
                    dequant=dq,
                    bias_mode=None,
                    out_dtype=jnp.bfloat16 if dq else None,
                    cfg=cfg,
                    num_sms=jax.devices()[0].core_count,
                ),
                A8,
                B8,
                rs,
                cs,
            )
            rec(case=name, tops=ops / t / 1e12, vs_xla_int8=tx / t)
        except Exception as e:
            rec(case=name, error=repr(e)[:200])
json.dump(rows, open(f"{OUT}/sweep.json", "w"), indent=1)
