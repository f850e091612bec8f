"""Collectives one training step of a 4096->4096 fp8mm layer adds on a device mesh.

Compiles (does not run) forward + backward of one layer on 4 simulated CPU devices for
each layer kind and layout, and lists the cross-device collectives in the optimized
HLO with the bytes each moves per device. Run from the repository root:

    XLA_FLAGS=--xla_force_host_platform_device_count=4 JAX_PLATFORMS=cpu \\
        python tools/collectives.py [--tokens 8192]
"""

import argparse
import collections
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from fp8mm.nn import linen as fl
from fp8mm.nn import sharding

_BYTES = {
    "f32": 4,
    "bf16": 2,
    "f16": 2,
    "s32": 4,
    "u32": 4,
    "pred": 1,
    "s8": 1,
    "u8": 1,
    "f8e4m3fn": 1,
    "f8e5m2": 1,
}
_OP = re.compile(
    r"=\s*(\(?[^=]*?\)?)\s+(all-reduce|all-gather|reduce-scatter|all-to-all|"
    r"collective-permute)(?:-start)?\("
)
_SHAPE = re.compile(r"(\w+)\[([\d,]*)\]")


_GROUPS = re.compile(r"replica_groups=\{(\{[\d,]*\}(?:,\{[\d,]*\})*)\}")


def _moves_data(line: str) -> bool:
    """False for a collective whose every replica group is one device (a no-op, e.g. a
    psum over a mesh axis of size 1)."""
    m = _GROUPS.search(line)
    if not m:
        return True
    return any(len(g.split(",")) > 1 for g in re.findall(r"\{([\d,]*)\}", m.group(1)))


def collectives(hlo: str) -> dict[str, int]:
    """{op: bytes} summed over the collectives of an HLO module that move data between
    devices (result shapes; single-device groups left out)."""
    out = collections.Counter()
    for line in hlo.splitlines():
        m = _OP.search(line)
        if not m or not _moves_data(line):
            continue
        for dtype, dims in _SHAPE.findall(m.group(1)):
            n = int(np.prod([int(d) for d in dims.split(",") if d])) if dims else 1
            out[m.group(2)] += n * _BYTES.get(dtype, 4)
    return dict(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=8192)
    args = ap.parse_args()
    devs = np.array(jax.devices()[:4])
    meshes = {
        "data 4": (Mesh(devs.reshape(4, 1), ("data", "model")), None, None),
        "model 4": (Mesh(devs.reshape(1, 4), ("data", "model")), "model", None),
        "fsdp 4 (GSPMD)": (Mesh(devs.reshape(4, 1), ("data", "model")), None, "data"),
    }
    x = jnp.zeros((args.tokens, 4096), jnp.bfloat16)
    kinds = {"plain": nn.Dense, **fl.LAYERS}
    print(f"| kind | layout | path | collectives per device per step ({args.tokens} tokens) |")
    print("|---|---|---|---|")
    for kind, cls in kinds.items():
        layer = (
            cls(4096, dtype=jnp.bfloat16, implementation="xla")
            if kind != "plain"
            else cls(4096, dtype=jnp.bfloat16)
        )
        params = jax.eval_shape(layer.init, jax.random.key(0), x)
        for name, (mesh, model, fsdp) in meshes.items():
            for path in ("GSPMD", "shard_map") if fsdp is None else ("GSPMD",):
                if path == "shard_map" and kind == "plain":
                    continue
                shard = sharding.dense_param_shardings(params, mesh, model, fsdp)
                xs = sharding.batch_sharding(mesh) if model is None else None

                def loss(p, x, mesh=mesh, model=model, path=path):
                    if path == "shard_map":
                        with sharding.partition(mesh, "data" if model is None else None, model):
                            return jnp.sum(layer.apply(p, x).astype(jnp.float32) ** 2)
                    return jnp.sum(layer.apply(p, x).astype(jnp.float32) ** 2)

                f = jax.jit(jax.grad(loss, argnums=(0, 1)), in_shardings=(shard, xs))
                try:
                    hlo = f.lower(params, x).compile().as_text()
                except NotImplementedError as e:
                    print(f"| {kind} | {name} | {path} | refused: {str(e)[:60]} |")
                    continue
                c = collectives(hlo)
                text = ", ".join(f"{op} {b / 2**20:.2f} MiB" for op, b in sorted(c.items()))
                print(f"| {kind} | {name} | {path} | {text or 'none'} |")


if __name__ == "__main__":
    main()
