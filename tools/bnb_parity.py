"""Side-by-side parity of fp8mm with the real bitsandbytes 0.49.2 on a CUDA GPU.

Random inputs (shapes with partial blocks, float32/float16/bfloat16, heavy tails
over six decades, thresholds on and off, 3-D activations) go through both
libraries in one process; every case prints one line, and a table of outcomes
ends the run. Finite inputs must give bitsandbytes' bits (codes at exact
midpoints may differ by one, at most 0.1%); the deliberate deviations (docs/
exactness) are counted separately: CAt where torch's float16 product 127*x
overflows, and NaN inputs, which bitsandbytes turns into finite outputs.

    python3 tools/bnb_parity.py [--json out.json]

Needs torch with CUDA and bitsandbytes 0.49.2 (carried as a wheel, see
../shared/tools/get_bnb_wheel.sh); exits 2 when they are missing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import numpy as np

try:
    import bitsandbytes as bnb
    import bitsandbytes.functional as BF
    import torch
    from bitsandbytes import research
except Exception as e:  # pragma: no cover - GPU only
    print(f"bitsandbytes/torch unavailable: {e!r}")
    sys.exit(2)

import jax
import jax.numpy as jnp

import fp8mm
from fp8mm import functional as F

TORCH = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
JAX = {"float32": jnp.float32, "float16": jnp.float16, "bfloat16": jnp.bfloat16}
RESULTS: list[dict] = []


def data(shape, dtype, seed, top=3.0):
    rng = np.random.default_rng(seed)
    x = rng.standard_t(2, size=shape).astype(np.float32)
    rows = shape[0] if len(shape) > 1 else 1
    x = x * (10.0 ** rng.uniform(-3, top, (rows,) + (1,) * (len(shape) - 1))).astype(np.float32)
    x[rng.random(shape) < 0.05] = 0
    if dtype == "float16":
        x = np.clip(x, -6e4, 6e4)
    # Both libraries get the same dtype-rounded numbers.
    return np.asarray(jnp.asarray(x).astype(JAX[dtype]).astype(jnp.float32))


def t(x, dtype):
    return torch.tensor(x, device="cuda").to(TORCH[dtype])


def j(x, dtype):
    return jnp.asarray(x).astype(JAX[dtype])


def tn(x) -> np.ndarray:
    return x.detach().float().cpu().numpy() if x.dtype != torch.int8 else x.cpu().numpy()


def jn(x) -> np.ndarray:
    x = jnp.asarray(x)
    return np.asarray(x.astype(jnp.float32) if jnp.issubdtype(x.dtype, jnp.floating) else x)


def record(name, **kw):
    kw["case"] = name
    RESULTS.append(kw)
    print(json.dumps(kw, default=str), flush=True)


def frac_diff(a, b, mask=None):
    bad = ~((a == b) | (np.isnan(a) & np.isnan(b))) if a.dtype.kind == "f" else a != b
    if mask is not None:
        bad = bad & mask
    return float(bad.mean()) if bad.size else 0.0, int(bad.sum())


def rel(a, b):
    d = np.linalg.norm((a - b).ravel())
    return float(d / max(np.linalg.norm(b.ravel()), 1e-30))


CODES = {
    "e4m3": (BF.create_fp8_map(True, 4, 3, 8), np.asarray(fp8mm.e4m3_code())),
    "dynamic": (BF.create_dynamic_map(), fp8mm.create_dynamic_map()),
}


def case_blockwise(seed, shape, dtype, bs, code):
    x = data(shape, dtype, seed)
    tc, jc = CODES[code]
    q_t, st_t = BF.quantize_blockwise(t(x, dtype), code=tc.cuda(), blocksize=bs)
    d_t = BF.dequantize_blockwise(q_t, st_t)
    q_j, st_j = F.quantize_blockwise(j(x, dtype), jc, blocksize=bs)
    d_j = F.dequantize_blockwise(q_j, st_j)
    codes = frac_diff(tn(q_t.to(torch.int32)), jn(q_j).astype(np.int32))
    record(
        "quantize_blockwise",
        shape=shape,
        dtype=dtype,
        bs=bs,
        code=code,
        codes_off=codes,
        absmax_equal=bool(np.array_equal(tn(st_t.absmax), jn(st_j.absmax))),
        deq_off=frac_diff(tn(d_t), jn(d_j)),
        ok=codes[0] <= 1e-3 and np.array_equal(tn(st_t.absmax), jn(st_j.absmax)),
    )


def case_global(seed, shape, dtype):
    x = data(shape, dtype, seed)
    tc, jc = CODES["e4m3"]
    q_t, (absmax_t, _) = BF.quantize(t(x, dtype).float(), code=tc.cuda())
    q_j, st_j = F.quantize(j(x, dtype), jc)
    codes = frac_diff(tn(q_t.to(torch.int32)), jn(q_j).astype(np.int32))
    record(
        "quantize",
        shape=shape,
        dtype=dtype,
        codes_off=codes,
        absmax_equal=float(absmax_t) == float(st_j.absmax),
        ok=codes[0] <= 1e-3 and float(absmax_t) == float(st_j.absmax),
    )


def case_int8(seed, shape, threshold, top):
    x = data(shape, "float16", seed, top=top)
    # bitsandbytes' int8 kernels take 2-D input (its autograd flattens the leading axes).
    ca_t, cat_t, rs_t, cs_t, oc_t = BF.int8_double_quant(
        t(x.reshape(-1, shape[-1]), "float16"), threshold=threshold
    )
    ca_t, cat_t = ca_t.reshape(shape), cat_t.reshape(shape)
    ca_j, cat_j, rs_j, cs_j, oc_j = F.int8_double_quant(j(x, "float16"), threshold)
    x2 = x.reshape(-1, shape[-1])
    overflow = (np.abs(x2) * 127 > 65504).reshape(shape)
    ca = frac_diff(tn(ca_t), jn(ca_j))
    cat_in = frac_diff(tn(cat_t), jn(cat_j), ~overflow)
    cat_over = frac_diff(tn(cat_t), jn(cat_j), overflow)
    cols_t = np.zeros(shape[-1], bool)
    if oc_t is not None and len(oc_t):
        cols_t[oc_t.cpu().numpy()] = True
    same = (
        ca[1] == 0
        and cat_in[1] == 0
        and np.array_equal(tn(rs_t).ravel(), jn(rs_j).ravel())
        and np.array_equal(tn(cs_t), jn(cs_j))
        and np.array_equal(cols_t, jn(oc_j))
    )
    record(
        "int8_double_quant",
        shape=shape,
        threshold=threshold,
        ca_off=ca,
        cat_off_in_range=cat_in,
        cat_deviation_past_f16=cat_over,
        fp8mm_min_code=int(min(jn(ca_j).min(), jn(cat_j).min())),
        bnb_min_code=int(min(tn(ca_t).min(), tn(cat_t).min())),
        ok=bool(same) and int(min(jn(ca_j).min(), jn(cat_j).min())) >= -127,
    )


def _grads_torch(fn, A, B, g):
    A = A.clone().requires_grad_(True)
    B = B.clone().requires_grad_(True)
    out = fn(A, B)
    gA, gB = torch.autograd.grad(out, (A, B), g)
    return tn(out), tn(gA), tn(gB)


def _grads_jax(fn, A, B, g):
    out, vjp = jax.vjp(fn, A, B)
    gA, gB = vjp(g)
    return jn(out), jn(gA), jn(gB)


def case_fp8(seed, op, shape, n, dtype):
    A = data(shape, dtype, seed, top=1)
    B = data((shape[-1], n), dtype, seed + 1, top=0) * 0.1
    B = np.asarray(jnp.asarray(B).astype(JAX[dtype]).astype(jnp.float32))
    g = data((*shape[:-1], n), dtype, seed + 2, top=0)
    fw_t, fw_j = CODES["e4m3"][0].cuda(), CODES["e4m3"][1]
    bw_t, bw_j = BF.create_fp8_map(True, 5, 2, 8).cuda(), np.asarray(fp8mm.e5m2_code())
    tfn = getattr(research, op)
    jfn = getattr(fp8mm, op)
    rt = _grads_torch(lambda a, b: tfn(a, b, fw_t, bw_t), t(A, dtype), t(B, dtype), t(g, dtype))
    rj = _grads_jax(lambda a, b: jfn(a, b, fw_j, bw_j), j(A, dtype), j(B, dtype), j(g, dtype))
    rels = [rel(b, a) for a, b in zip(rt, rj, strict=True)]
    offs = [frac_diff(a, b)[0] for a, b in zip(rt, rj, strict=True)]
    tol = 1e-5 if dtype == "float32" else 1e-2
    record(
        op, shape=shape, n=n, dtype=dtype, rel_out_gA_gB=rels, bits_off=offs, ok=max(rels) <= tol
    )


def case_switchback(seed, shape, n, dtype, threshold, bias):
    A = data(shape, dtype, seed, top=1)
    W = data((n, shape[-1]), dtype, seed + 1, top=0) * 0.1
    W = np.asarray(jnp.asarray(W).astype(JAX[dtype]).astype(jnp.float32))
    g = data((*shape[:-1], n), dtype, seed + 2, top=0)
    b = data((n,), dtype, seed + 3, top=0) if bias else None

    def tfn(a, w):
        bt = None if b is None else t(b, dtype)
        return research.switchback_bnb(a, w, None, None, threshold, bt)

    def jfn(a, w):
        bj = None if b is None else j(b, dtype)
        return fp8mm.switchback_bnb(a, w, state=None, threshold=threshold, bias=bj)

    rt = _grads_torch(tfn, t(A, dtype), t(W, dtype), t(g, dtype))
    rj = _grads_jax(jfn, j(A, dtype), j(W, dtype), j(g, dtype))
    rels = [rel(bb, a) for a, bb in zip(rt, rj, strict=True)]
    offs = [frac_diff(a, bb)[0] for a, bb in zip(rt, rj, strict=True)]
    record(
        "switchback_bnb",
        shape=shape,
        n=n,
        dtype=dtype,
        threshold=threshold,
        bias=bias,
        rel_out_gA_gB=rels,
        bits_off=offs,
        ok=max(rels) <= 1e-2,
    )


def case_nan():
    x = data((4, 64), "float16", 99, top=0).copy()
    x[1, 3] = np.nan
    _, st_t = BF.quantize_blockwise(t(x, "float16"), blocksize=64)
    _, st_j = F.quantize_blockwise(j(x, "float16"), None, blocksize=64)
    W = data((8, 64), "float16", 98, top=0)
    o_t = tn(research.switchback_bnb(t(x, "float16"), t(W, "float16")))
    o_j = jn(fp8mm.switchback_bnb(j(x, "float16"), j(W, "float16")))
    record(
        "nan (deliberate deviation)",
        bnb_absmax_nan=bool(np.isnan(tn(st_t.absmax)).any()),
        fp8mm_absmax_nan=bool(np.isnan(jn(st_j.absmax)).any()),
        bnb_switchback_nan_rows=int(np.isnan(o_t).any(1).sum()),
        fp8mm_switchback_nan_rows=int(np.isnan(o_j).any(1).sum()),
        ok=bool(np.isnan(o_j[1]).all() and not np.isnan(np.delete(o_j, 1, 0)).any()),
    )


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--json")
    args = parser.parse_args()
    print("bitsandbytes", bnb.__version__, "jax", jax.__version__, jax.devices()[0].device_kind)
    cases = []
    seed = 0
    for shape in [(1000,), (64, 257), (3, 50, 130)]:
        for dtype in ("float32", "float16", "bfloat16"):
            for bs, code in [(64, "e4m3"), (256, "dynamic"), (4096, "e4m3")]:
                seed += 1
                cases.append((case_blockwise, (seed, shape, dtype, bs, code)))
            seed += 1
            cases.append((case_global, (seed, shape, dtype)))
    for shape in [(64, 257), (3, 33, 128), (512, 1024)]:
        for threshold in (0.0, 3.0, 6.0):
            for top in (1, 4):
                seed += 1
                cases.append((case_int8, (seed, shape, threshold, top)))
    for op in ("matmul_fp8_mixed", "matmul_fp8_global"):
        for shape, n in [((64, 256), 128), ((2, 8, 130), 72)]:
            for dtype in ("float32", "float16", "bfloat16"):
                seed += 1
                cases.append((case_fp8, (seed, op, shape, n, dtype)))
    for shape, n in [((64, 256), 128), ((2, 8, 130), 72)]:
        for dtype in ("float16", "bfloat16"):
            for threshold, bias in [(0.0, False), (6.0, True), (0.0, True)]:
                seed += 1
                cases.append((case_switchback, (seed, shape, n, dtype, threshold, bias)))
    cases.append((case_nan, ()))
    for fn, a in cases:
        try:
            fn(*a)
        except Exception as e:
            record(fn.__name__, args=a, error=repr(e)[:300], ok=False)
            traceback.print_exc()
    by: dict[str, list[int]] = {}
    for r in RESULTS:
        ok, total = by.setdefault(r["case"], [0, 0])
        by[r["case"]] = [ok + bool(r.get("ok")), total + 1]
    if args.json:
        with open(args.json, "w") as f:
            json.dump(RESULTS, f, default=str, indent=1)
    print("\n| case | ok / cases |\n|---|---|")
    for k, (ok, total) in by.items():
        print(f"| {k} | {ok} / {total} |")


if __name__ == "__main__":
    main()
