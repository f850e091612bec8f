"""Builds tests/data/bnb049_golden.npz, the part of the bitsandbytes golden file the tests use.

Usage: python tools/make_test_golden.py [../shared/golden/bnb049_cuda.npz]

The source file (outputs of the real bitsandbytes 0.49.2 on an H200) is 12.7 MB;
a fresh clone must not need it, so this keeps every case but stores it smaller:

* float32 arrays whose values are exactly float16 or bfloat16 are stored in that
  width (key suffix `@f16` / `@bf16`, the bfloat16 as its uint16 bit pattern);
* the weight B of the fp8 matmul cases enters bitsandbytes' results only
  through its global e4m3 quantization Q(B); it is stored as its codes and
  absmax (`B@q`, `B@absmax`) and rebuilt as Q(B) in B's dtype, which quantizes
  to the same codes, so every output of the case is unchanged;
* gradB of the three largest fp8 cases keeps every 7th element of its
  row-major flattening (`gradB@every7`; 7 is prime to every width, so all rows
  and columns are sampled), which drops 3.3 MB and still checks each case;
* float32 outputs (`out`, `gradA`, `gradB`) of the float32 fp8 cases keep 16 of
  their 23 mantissa bits (relative change <= 2**-17, far below the 1e-4
  tolerance they are checked with), key suffix `@r16`.

`tests/golden.py` decodes all of this back into float32 arrays.
"""

import sys
import zipfile

import jax.numpy as jnp
import numpy as np

from fp8mm.reference import nearest_code

src = sys.argv[1] if len(sys.argv) > 1 else "../shared/golden/bnb049_cuda.npz"
d = np.load(src)
out: dict[str, np.ndarray] = {}


def narrow(key: str, v: np.ndarray) -> None:
    if v.dtype == np.float64:
        v = v.astype(np.float32)
    if v.dtype == np.int64:
        v = v.astype(np.int32)
    if v.dtype == np.float32 and v.size:
        with np.errstate(over="ignore"):
            h = v.astype(np.float16)
        if np.array_equal(h.astype(np.float32), v, equal_nan=True):
            out[key + "@f16"] = h
            return
        u = v.view(np.uint32)
        if not np.any(u & 0xFFFF):
            out[key + "@bf16"] = (u >> 16).astype(np.uint16)
            return
    out[key] = v


def round16(v: np.ndarray) -> np.ndarray:
    """Round float32 to 16 explicit mantissa bits (to nearest, ties away)."""
    u = v.astype(np.float32).view(np.uint32).astype(np.uint64)
    u = ((u + (1 << 6)) >> 7) << 7
    return u.astype(np.uint32).view(np.float32)


e4m3 = d["code/fp8_e4m3"]
for key in d.files:
    v = d[key]
    parts = key.split("/")
    if parts[0] in ("fp8_mixed", "fp8_global") and parts[2] == "B":
        b = v.astype(np.float32)
        absmax = np.float32(np.abs(b).max())
        x = b / absmax
        q = np.asarray(nearest_code(jnp.asarray(x), jnp.asarray(e4m3)))
        out[key + "@q"] = q
        out[key + "@absmax"] = np.array(absmax)
        continue
    if parts[0] in ("fp8_mixed", "fp8_global") and parts[2] == "gradB" and v.size > 65536:
        v = v.reshape(-1)[::7]
        key = key + "@every7"
    if parts[0] in ("fp8_mixed", "fp8_global") and parts[2] in ("out", "gradA", "gradB"):
        dt = int(d["/".join(parts[:2]) + "/meta"][2])
        if dt == 0:
            out[key + "@r16"] = round16(v)
            continue
    if v.dtype.kind == "U":
        out[key] = v
        continue
    narrow(key, v)

dest = "tests/data/bnb049_golden.npz"
# LZMA packs these arrays about a third tighter than np.savez_compressed's
# deflate; np.load reads either.
with zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_LZMA) as zf:
    for k, v in out.items():
        with zf.open(k + ".npy", "w") as f:
            np.lib.format.write_array(f, np.asanyarray(v), allow_pickle=False)
import os  # noqa: E402

print(f"wrote {len(out)} arrays to {dest}: {os.path.getsize(dest) / 1e6:.2f} MB")
