"""Collectives one training step of a 4096->4096 fp8mm layer adds on a device mesh.

Compiles (does not run) forward + backward of one layer on 4 simulated CPU devices for
each layer kind and layout (data, model, FSDP and FSDP x model; GSPMD and `partition`'s
shard_map, with the 16-bit or the 8-bit weight gather under FSDP), and lists the
cross-device collectives in the optimized HLO with the bytes of the tensors they span
(the element types of all-gathers too). Run from the repository root:

    XLA_FLAGS=--xla_force_host_platform_device_count=4 JAX_PLATFORMS=cpu \\
        python tools/collectives.py [--tokens 8192] [--fsdp]
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


def _groups(line: str) -> list[int]:
    """The sizes of a collective's replica groups ([] when the line lists none)."""
    m = _GROUPS.search(line)
    if not m:
        return []
    return [len(g.split(",")) for g in re.findall(r"\{([\d,]*)\}", m.group(1))]


def _moves_data(line: str) -> bool:
    """False for a collective whose every replica group is one device (a no-op, e.g. a
    psum over a mesh axis of size 1)."""
    sizes = _groups(line)
    return not sizes or any(n > 1 for n in sizes)


def collectives_by_type(hlo: str) -> dict[tuple[str, str], int]:
    """{(op, element type): bytes} of the collectives of an HLO module that move data
    between devices (single-device groups left out). Each counts the full tensor it
    spans: an all-gather's result, a reduce-scatter's operand (its result times the
    group size), an all-reduce's operand; a ring moves (n-1)/n of that per device (an
    all-reduce twice that)."""
    out = collections.Counter()
    for line in hlo.splitlines():
        m = _OP.search(line)
        if not m or not _moves_data(line):
            continue
        op = m.group(2)
        scale = max(_groups(line) or [1]) if op == "reduce-scatter" else 1
        for dtype, dims in _SHAPE.findall(m.group(1)):
            n = int(np.prod([int(d) for d in dims.split(",") if d])) if dims else 1
            out[op, dtype] += n * _BYTES.get(dtype, 4) * scale
    return dict(out)


def collectives(hlo: str) -> dict[str, int]:
    """{op: bytes} summed over the collectives of an HLO module that move data between
    devices (`collectives_by_type` without the element types)."""
    out = collections.Counter()
    for (op, _), b in collectives_by_type(hlo).items():
        out[op] += b
    return dict(out)


def _describe(hlo: str) -> str:
    by_type = collectives_by_type(hlo)
    parts = []
    for op in sorted({op for op, _ in by_type}):
        total = sum(b for (o, _), b in by_type.items() if o == op)
        # The element types of what is gathered: the point of the 8-bit gather.
        types = sorted(t for (o, t) in by_type if o == op) if op == "all-gather" else []
        parts.append(f"{op} {total / 2**20:.2f} MiB" + (f" ({', '.join(types)})" if types else ""))
    return ", ".join(parts) or "none"


# (path name, partition(...) keyword arguments or None for GSPMD)
_PATHS = {
    "GSPMD": None,
    "shard_map": {},
    "shard_map, 16-bit gather": {"fsdp_axis": "data"},
    "shard_map, 8-bit gather": {"fsdp_axis": "data", "gather_8bit": True},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--fsdp", action="store_true", help="only the FSDP layouts")
    args = ap.parse_args()
    devs = np.array(jax.devices()[:4])
    data4 = Mesh(devs.reshape(4, 1), ("data", "model"))
    model4 = Mesh(devs.reshape(1, 4), ("data", "model"))
    both = Mesh(devs.reshape(2, 2), ("data", "model"))
    fsdp_paths = ("GSPMD", "shard_map, 16-bit gather", "shard_map, 8-bit gather")
    # name: (mesh, model axis, fsdp axis, paths)
    layouts = {
        "data 4": (data4, None, None, ("GSPMD", "shard_map")),
        "model 4": (model4, "model", None, ("GSPMD", "shard_map")),
        "fsdp 4": (data4, None, "data", fsdp_paths),
        "fsdp 2 x model 2": (both, "model", "data", fsdp_paths),
    }
    if args.fsdp:
        layouts = {k: v for k, v in layouts.items() if v[2] is not None}
    x = jnp.zeros((args.tokens, 4096), jnp.bfloat16)
    kinds = {"plain": nn.Dense, **fl.LAYERS}
    print(f"| kind | layout | path | collectives per step ({args.tokens} tokens) |")
    print("|---|---|---|---|")
    for kind, cls in kinds.items():
        layer = (
            cls(4096, dtype=jnp.bfloat16, implementation="xla")
            if kind != "plain"
            else cls(4096, dtype=jnp.bfloat16)
        )
        params = jax.eval_shape(layer.init, jax.random.key(0), x)
        for name, (mesh, model, fsdp, paths) in layouts.items():
            for path in paths:
                if path != "GSPMD" and kind == "plain":
                    continue
                shard = sharding.dense_param_shardings(params, mesh, model, fsdp)
                batch = "data" if mesh.shape["data"] > 1 else None
                xs = sharding.batch_sharding(mesh) if batch else None
                kw = _PATHS[path]

                def loss(p, x, mesh=mesh, model=model, batch=batch, kw=kw):
                    if kw is None:
                        return jnp.sum(layer.apply(p, x).astype(jnp.float32) ** 2)
                    with sharding.partition(mesh, batch, model, **kw):
                        return jnp.sum(layer.apply(p, x).astype(jnp.float32) ** 2)

                f = jax.jit(jax.grad(loss, argnums=(0, 1)), in_shardings=(shard, xs))
                try:
                    hlo = f.lower(params, x).compile().as_text()
                except NotImplementedError as e:
                    print(f"| {kind} | {name} | {path} | refused: {str(e)[:60]} |")
                    continue
                print(f"| {kind} | {name} | {path} | {_describe(hlo)} |")


if __name__ == "__main__":
    main()
