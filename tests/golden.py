"""Loader for tests/data/bnb049_golden.npz (see tools/make_test_golden.py for its encoding)."""

from __future__ import annotations

import functools
import pathlib

import jax.numpy as jnp
import numpy as np

PATH = pathlib.Path(__file__).parent / "data" / "bnb049_golden.npz"
DTYPES = (jnp.float32, jnp.float16, jnp.bfloat16)  # index used by the `meta` arrays


@functools.cache
def load() -> dict[str, np.ndarray]:
    raw = np.load(PATH)
    out: dict[str, np.ndarray] = {}
    for key in raw.files:
        v = raw[key]
        base, *tags = key.split("@")
        if tags and tags[0] in ("q", "absmax"):
            continue  # handled with the B weight below
        for tag in reversed(tags):
            if tag == "f16":
                v = v.astype(np.float32)
            elif tag == "bf16":
                v = (v.astype(np.uint32) << 16).view(np.float32)
        if "every7" in tags:
            base = base + "@every7"
        out[base] = v
    # fp8 weights: rebuilt as their e4m3 quantization Q(B) (what bitsandbytes' outputs depend on).
    e4m3 = out["code/fp8_e4m3"]
    for key in raw.files:
        if key.endswith("/B@q"):
            case = key[: -len("/B@q")]
            dt = DTYPES[int(out[case + "/meta"][2])]
            b = e4m3[raw[key].astype(np.int64)] * raw[case + "/B@absmax"]
            out[case + "/B"] = np.asarray(jnp.asarray(b).astype(dt).astype(jnp.float32))
    return out


def cases(prefix: str) -> list[str]:
    """Case keys like 'blockwise/0' present in the file for a prefix like 'blockwise'."""
    d = load()
    return sorted({"/".join(k.split("/")[:2]) for k in d if k.startswith(prefix + "/")})


def get(case: str, name: str) -> np.ndarray:
    return load()[f"{case}/{name}"]


def has(case: str, name: str) -> bool:
    return f"{case}/{name}" in load()
