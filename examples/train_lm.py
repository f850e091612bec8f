"""Train a small character-level transformer with each fp8mm layer kind (the `make demo` job).

A decoder-only transformer (flax.linen) learns to predict the next byte of
real text: the source of the installed Python standard library, read at run
time (no downloads). It is trained with optax in a jit-compiled step once with
plain `nn.Dense` layers and once with each fp8mm layer (`Fp8MixedDense`,
`Fp8GlobalDense`, `SwitchBackDense`) from the same initial parameters and on
the same batches. Then it prints a table of final loss, eval loss and step
time per kind, writes the loss curves as CSV and PNG, saves the SwitchBack
model with orbax, restores it, and converts it to int8 inference weights.

    python examples/train_lm.py                       # CPU default, < 3 minutes on 2 cores
    python examples/train_lm.py --preset gpu          # a larger model on a GPU
    python examples/train_lm.py --preset gpu-large    # d_model 2048: matmuls dominate

On several devices, `--mesh data=2,model=2` shards the batch over 'data' and each
projection's output features over 'model' (`fp8mm.nn.sharding`), `--fsdp` also shards
the parameters over 'data', and `--partition` runs every fp8mm product per shard in
`shard_map` (the Pallas path's way; GSPMD otherwise); with `--fsdp --partition`,
`--gather-8bit` all-gathers each weight's 8-bit codes instead of the 16-bit weight.
Simulated on a CPU:

    XLA_FLAGS=--xla_force_host_platform_device_count=4 \
        python examples/train_lm.py --mesh data=2,model=2 --fsdp

The gpu-large preset trains in bf16 (float32 parameters and optimizer state) with
`jax.nn.dot_product_attention` (cuDNN's flash attention on a GPU; JAX would pick
XLA's unfused softmax on an H200, see docs/performance.md), 16k tokens a step, and
adds the native-FP8 kinds (`fp8_mixed_native`, `fp8_global_native`).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import functools
import json
import math
import pathlib
import sysconfig
import tempfile
import time
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from fp8mm.nn import linen as fl
from fp8mm.nn import sharding

# Every fp8mm layer kind (fp8mm.nn.KINDS), and the fp8 kinds on FP8 tensor cores.
DENSE = {
    "plain": nn.Dense,
    **fl.LAYERS,
    "fp8_mixed_native": functools.partial(fl.Fp8MixedDense, gemm="native"),
    "fp8_global_native": functools.partial(fl.Fp8GlobalDense, gemm="native"),
}
KINDS = tuple(DENSE)
# The CPU demo's default: the library's layer kinds (the native ones pay only on a GPU).
DEFAULT_KINDS = tuple(k for k in KINDS if not k.endswith("_native"))


@dataclasses.dataclass(frozen=True)
class Preset:
    """Model, data and optimizer sizes of one run.

    dtype: the compute dtype (None: float32); parameters and optimizer stay float32.
    fused_attention: `jax.nn.dot_product_attention` instead of the explicit einsums.
    attention: its `implementation` on a GPU ("cudnn": cuDNN's flash attention; None:
      as JAX picks, which is XLA's unfused softmax on an H200). Other backends always
      run JAX's choice (cuDNN exists only on NVIDIA GPUs).
    """

    d_model: int
    n_layers: int
    n_heads: int
    seq_len: int
    batch: int
    steps: int
    lr: float
    corpus_bytes: int
    eval_batches: int
    dtype: str | None = None
    fused_attention: bool = False
    warmup: int = 20
    attention: str | None = None


PRESETS = {
    "cpu": Preset(64, 2, 4, 64, 16, 300, 3e-3, 1_000_000, 4),
    "gpu": Preset(512, 6, 8, 256, 64, 2000, 1e-3, 20_000_000, 16),
    "gpu-large": Preset(
        2048, 8, 16, 1024, 16, 1000, 3e-4, 40_000_000, 8, "bfloat16", True, 100, "cudnn"
    ),
}


# ----------------------------------------------------------------------------- data


def load_corpus(max_bytes: int) -> np.ndarray:
    """Bytes of the Python standard library's source, in a fixed (sorted) file order."""
    root = pathlib.Path(sysconfig.get_paths()["stdlib"])
    chunks, total = [], 0
    for path in sorted(root.glob("*.py")):
        data = path.read_bytes()
        chunks.append(data)
        total += len(data)
        if total >= max_bytes:
            break
    text = np.frombuffer(b"".join(chunks)[:max_bytes], dtype=np.uint8)
    if text.size < 10_000:
        raise RuntimeError(f"found only {text.size} bytes of Python source under {root}")
    return text


def batches(data: np.ndarray, batch: int, seq_len: int, seed: int):
    """Endless random windows [batch, seq_len + 1] (inputs and next-byte targets)."""
    rng = np.random.default_rng(seed)
    while True:
        starts = rng.integers(0, data.size - seq_len - 1, batch)
        yield np.stack([data[s : s + seq_len + 1] for s in starts]).astype(np.int32)


# ---------------------------------------------------------------------------- model


class Block(nn.Module):
    """Pre-norm transformer block; every projection is a `dense` layer."""

    n_heads: int
    dense: Callable = nn.Dense
    dtype: Any = None
    fused_attention: bool = False
    attention: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, t, d = x.shape
        dense = functools.partial(self.dense, dtype=self.dtype)
        h = nn.LayerNorm(dtype=self.dtype)(x)
        qkv = dense(3 * d)(h).reshape(b, t, 3, self.n_heads, d // self.n_heads)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        if self.fused_attention:
            impl = self.attention if jax.default_backend() == "gpu" else None
            y = jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation=impl)
            y = y.reshape(b, t, d)
        else:
            att = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(d // self.n_heads)
            causal = jnp.tril(jnp.ones((t, t), bool))
            att = jax.nn.softmax(jnp.where(causal, att, -1e9), axis=-1)
            y = jnp.einsum("bhqk,bkhd->bqhd", att, v).reshape(b, t, d)
        x = x + dense(d)(y)
        h = nn.LayerNorm(dtype=self.dtype)(x)
        return x + dense(d)(nn.gelu(dense(4 * d)(h)))


class CharLM(nn.Module):
    """Byte-level decoder-only transformer; the embedding and output head stay float."""

    preset: Preset
    dense: Callable = nn.Dense

    @nn.compact
    def __call__(self, tokens: jax.Array) -> jax.Array:
        p = self.preset
        dt = None if p.dtype is None else jnp.dtype(p.dtype)
        table = nn.Embed(256, p.d_model, dtype=dt)
        # The lookup as a one-hot product: its gradient is then a [256, tokens] x [tokens,
        # d] matmul instead of a scatter-add of every token's row into 256 rows (10-14 ms
        # of a gpu-large step on an H200, serialised on the colliding rows; see
        # docs/performance.md). HIGHEST: the forward values are the rows themselves, exactly
        # (a float32 product may otherwise run in TF32 on a GPU).
        x = jax.nn.one_hot(tokens, 256, dtype=table.embedding.dtype if dt is None else dt)
        x = jnp.matmul(x, table.embedding.astype(x.dtype), precision=jax.lax.Precision.HIGHEST)
        pos = self.param("pos", nn.initializers.normal(0.02), (p.seq_len, p.d_model))
        x = x + pos.astype(x.dtype)
        for _ in range(p.n_layers):
            x = Block(p.n_heads, self.dense, dt, p.fused_attention, p.attention)(x)
        return nn.Dense(256, dtype=dt, name="head")(nn.LayerNorm(dtype=dt)(x))


def loss_fn(model: CharLM, params, batch: jax.Array) -> jax.Array:
    logits = model.apply(params, batch[:, :-1]).astype(jnp.float32)
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch[:, 1:]).mean()


# ------------------------------------------------------------------------- training


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where a run's arrays live: one device, or a mesh (see `parse_mesh`)."""

    mesh: Any = None
    fsdp: bool = False
    partition: bool = False
    gather_8bit: bool = False

    def model_axis(self) -> str | None:
        return "model" if self.mesh is not None and self.mesh.shape["model"] > 1 else None

    def put_params(self, params):
        if self.mesh is None:
            return params
        fsdp = "data" if self.fsdp else None
        shard = sharding.dense_param_shardings(params, self.mesh, self.model_axis(), fsdp)
        return jax.device_put(params, shard)

    def put_opt(self, opt):
        """Optimizer state on the mesh: moments as their parameters, scalars replicated."""
        if self.mesh is None:
            return opt
        everywhere = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())

        def put(a):
            return a if len(a.sharding.device_set) > 1 else jax.device_put(a, everywhere)

        return jax.tree.map(put, opt)

    def put_batch(self, batch: np.ndarray) -> jax.Array:
        if self.mesh is None:
            return jnp.asarray(batch)
        return jax.device_put(batch, sharding.batch_sharding(self.mesh))

    def context(self):
        if self.mesh is None or not self.partition:
            return contextlib.nullcontext()
        return sharding.partition(
            self.mesh,
            "data",
            self.model_axis(),
            fsdp_axis="data" if self.fsdp else None,
            gather_8bit=self.gather_8bit,
        )


def parse_mesh(spec: str):
    """'data=2,model=2' -> a Mesh of the first 4 devices with axes ('data', 'model')."""
    sizes = {"data": 1, "model": 1}
    for part in spec.split(","):
        name, _, size = part.partition("=")
        if name not in sizes or not size.isdigit() or int(size) < 1:
            raise ValueError(f"--mesh takes data=N,model=M, got {spec!r}")
        sizes[name] = int(size)
    n = sizes["data"] * sizes["model"]
    if n > jax.device_count():
        raise ValueError(f"--mesh {spec} needs {n} devices, {jax.device_count()} are visible")
    devs = np.array(jax.devices()[:n]).reshape(sizes["data"], sizes["model"])
    return jax.sharding.Mesh(devs, ("data", "model"))


def build_step(kind: str, preset: Preset, params0, layout: Layout = Layout()):
    """The adamw step of one kind and its start state.

    Returns (model, tx, step, params, opt): `step(params, opt, batch)` (not yet
    jitted) gives (params, opt, loss); params and opt are on the layout.
    """
    model = CharLM(preset, DENSE[kind])
    warmup = min(preset.warmup, preset.steps // 2)
    tx = optax.adamw(optax.warmup_cosine_decay_schedule(0.0, preset.lr, warmup, preset.steps))

    def step(params, opt, batch):
        with layout.context():  # read while tracing
            loss, grads = jax.value_and_grad(functools.partial(loss_fn, model))(params, batch)
        updates, opt = tx.update(grads, opt, params)
        return optax.apply_updates(params, updates), opt, loss

    params = layout.put_params(params0)
    opt = layout.put_opt(tx.init(params))
    return model, tx, step, params, opt


def train(
    kind: str, preset: Preset, train_data, eval_data, params0, seed: int, layout: Layout = Layout()
):
    """Trains one kind from params0; returns (losses, eval loss, seconds per step, params)."""
    model, _, step, params, opt = build_step(kind, preset, params0, layout)
    data = batches(train_data, preset.batch, preset.seq_len, seed)
    first = layout.put_batch(next(data))
    # On a mesh the state keeps its layout from step to step (the compiled step's
    # input shardings), instead of whatever layout XLA would pick for the outputs.
    keep = None
    if layout.mesh is not None:
        keep = jax.tree.map(lambda a: a.sharding, (params, opt))
        keep = (*keep, None)
    step = jax.jit(step, out_shardings=keep).lower(params, opt, first).compile()
    peak_mib = _peak_mib(step)
    # One step stays queued on the device: the next batch is made, and the previous
    # step's loss read, while a step runs, so the host's share of a step (batch, dispatch,
    # progress bar) does not idle the device. A step's time is the interval between the
    # completions of consecutive steps.
    losses, done, pending, batch = [], [], None, first
    bar = tqdm(range(preset.steps), desc=f"{kind:>31}", ncols=110, mininterval=0.5)
    for i in bar:
        params, opt, loss = step(params, opt, batch)
        if i + 1 < preset.steps:
            batch = layout.put_batch(next(data))
        if pending is not None:
            losses.append(float(pending))  # waits for the previous step
            done.append(time.perf_counter())
            bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
        pending = loss
    losses.append(float(pending))
    done.append(time.perf_counter())
    gaps = np.diff(done)
    gaps = gaps[1:] if gaps.size > 1 else gaps  # the first interval holds the queue filling
    ev = evaluate(model, params, eval_data, preset, layout)
    sec = float(np.median(gaps)) if gaps.size else float("nan")
    return losses, ev, sec, peak_mib, params


def _peak_mib(compiled) -> float | None:
    """The step's peak memory (arguments + outputs + temporaries) from XLA's analysis."""
    try:
        m = compiled.memory_analysis()
        total = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
        return (total - m.alias_size_in_bytes) / 2**20
    except (AttributeError, NotImplementedError, TypeError):
        return None


def evaluate(model: CharLM, params, eval_data, preset: Preset, layout: Layout = Layout()) -> float:
    data = batches(eval_data, preset.batch, preset.seq_len, seed=1234)

    @jax.jit
    def f(params, batch):
        with layout.context():
            return loss_fn(model, params, batch)

    batches_ = (layout.put_batch(next(data)) for _ in range(preset.eval_batches))
    return float(np.mean([f(params, b) for b in batches_]))


# -------------------------------------------------------------------------- outputs


def write_outputs(out: pathlib.Path, curves: dict[str, list[float]]) -> tuple[str, str]:
    """CSV of every loss, and a PNG: the smoothed losses, and each kind minus plain."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    csv_path, png_path = out / "train_lm_losses.csv", out / "train_lm_loss.png"
    with csv_path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", *curves])
        for i, row in enumerate(zip(*curves.values(), strict=True)):
            w.writerow([i + 1, *(f"{v:.5f}" for v in row)])
    steps = len(next(iter(curves.values())))
    win = max(1, min(25, steps // 20))

    def smooth(v):
        return np.convolve(v, np.ones(win) / win, mode="valid")

    x = np.arange(steps - win + 1) + win
    base = smooth(curves["plain"]) if "plain" in curves else None
    fig, axes = plt.subplots(1, 2 if base is not None else 1, figsize=(12, 4.5), squeeze=False)
    ax = axes[0, 0]
    styles = ["-", "--", "-.", ":"]
    for i, (kind, losses) in enumerate(curves.items()):
        ax.plot(x, smooth(losses), styles[i % 4], color=f"C{i}", label=kind, lw=1.3)
    ax.set(xlabel="step", ylabel=f"train loss (nats/byte, {win}-step mean)")
    ax.set_title("loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if base is not None:
        ax = axes[0, 1]
        for i, (kind, losses) in enumerate(curves.items()):
            if kind != "plain":
                ax.plot(x, smooth(losses) - base, styles[i % 4], color=f"C{i}", label=kind, lw=1.3)
        ax.axhline(0.0, color="black", lw=0.8)
        ax.set(xlabel="step", ylabel="loss - plain nn.Dense loss (nats/byte)")
        ax.set_title("difference from plain nn.Dense")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("byte-level LM on the Python stdlib source: fp8mm layer kinds vs nn.Dense")
    fig.tight_layout()
    fig.savefig(png_path, dpi=120)
    plt.close(fig)
    return str(csv_path), str(png_path)


def save_run(out: pathlib.Path, kind: str, args, preset: Preset, result: dict, losses) -> None:
    """One kind's result and losses as `<out>/runs/<kind>.json`, written as soon as it ends.

    A long run can be split over several processes (or machines): `--combine` reads
    every saved kind back into one table, CSV and PNG.
    """
    runs = out / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    record = {
        "kind": kind,
        "preset": args.preset,
        "steps": preset.steps,
        "seed": args.seed,
        "device": jax.devices()[0].device_kind,
        "jax": jax.__version__,
        **result,
        "losses": [float(v) for v in losses],
    }
    (runs / f"{kind}.json").write_text(json.dumps(record) + "\n")


def load_runs(out: pathlib.Path) -> tuple[dict[str, dict], dict[str, list[float]]]:
    """The runs `save_run` left in `<out>/runs`, plain first then in KINDS order."""
    records = [json.loads(f.read_text()) for f in sorted((out / "runs").glob("*.json"))]
    if not records:
        raise SystemExit(f"--combine: no runs in {out / 'runs'}")
    setups = {(r["preset"], r["steps"], r["seed"]) for r in records}
    if len(setups) > 1:
        raise SystemExit(f"--combine: runs of different (preset, steps, seed): {sorted(setups)}")
    order = {k: i for i, k in enumerate(KINDS)}
    records.sort(key=lambda r: order.get(r["kind"], len(order)))
    results = {r["kind"]: {k: r[k] for k in RESULT_KEYS} for r in records}
    return results, {r["kind"]: r["losses"] for r in records}


RESULT_KEYS = ("final_loss", "eval_loss", "step_ms", "tokens_per_s", "peak_mib")


def print_table(results: dict[str, dict]) -> str:
    """Prints (and returns) the per-kind markdown table; adds the ratios to plain to `results`."""
    base = results.get("plain")
    head = "| kind | final loss | eval loss | step ms | tokens/s | peak MiB |"
    rule = "|---|---|---|---|---|---|"
    if base:
        head += " eval loss vs plain | step vs plain | memory vs plain |"
        rule += "---|---|---|"
    lines = [head, rule]
    for kind, r in results.items():
        mem = "n/a" if r["peak_mib"] is None else f"{r['peak_mib']:.0f}"
        row = (
            f"| {kind} | {r['final_loss']:.4f} | {r['eval_loss']:.4f} | {r['step_ms']:.1f} | "
            f"{r['tokens_per_s']:,.0f} | {mem} |"
        )
        if base:
            r["ratio"] = r["final_loss"] / base["final_loss"]
            r["eval_ratio"] = r["eval_loss"] / base["eval_loss"]
            r["step_ratio"] = r["step_ms"] / base["step_ms"]
            if r["peak_mib"] and base["peak_mib"]:
                r["mem_ratio"] = r["peak_mib"] / base["peak_mib"]
            mem_ratio = f"{r['mem_ratio']:.3f}" if "mem_ratio" in r else "n/a"
            row += f" {r['eval_ratio']:.4f} | {r['step_ratio']:.3f} | {mem_ratio} |"
        lines.append(row)
    text = "\n".join(lines)
    print("\n" + text)
    return text


def checkpoint_round_trip(preset: Preset, params, eval_data) -> None:
    """Saves and restores the SwitchBack model with orbax, then makes it int8 for inference."""
    import orbax.checkpoint as ocp

    model = CharLM(preset, fl.SwitchBackDense)
    want = evaluate(model, params, eval_data, preset)
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / "switchback"
        with ocp.StandardCheckpointer() as ckpt:
            ckpt.save(path, params)
        with ocp.StandardCheckpointer() as ckpt:
            restored = ckpt.restore(path, params)
    got = evaluate(model, restored, eval_data, preset)
    print(f"orbax: saved and restored the switchback model, eval loss {want:.4f} -> {got:.4f}")
    # Only the SwitchBackDense layers take int8 weights; the float head stays float.
    int8, report = fl.int8_inference_params(restored, filter=lambda path: "head" not in path)
    print(f"{report}; eval loss with int8 weights {evaluate(model, int8, eval_data, preset):.4f}")


def main(argv=None) -> dict[str, dict[str, float]]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    ap.add_argument("--steps", type=int, default=None, help="override the preset's steps")
    ap.add_argument(
        "--kinds",
        default=None,
        help=f"comma-separated subset of {','.join(KINDS)} (default: all but the *_native "
        "kinds, which the gpu-large preset adds)",
    )
    ap.add_argument("--out", default="examples/out", help="folder for the CSV and PNG")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-checkpoint", action="store_true", help="skip the orbax round trip")
    ap.add_argument("--mesh", default=None, help="device mesh, e.g. data=2,model=2")
    ap.add_argument("--fsdp", action="store_true", help="with --mesh: shard parameters on data")
    ap.add_argument(
        "--partition", action="store_true", help="with --mesh: fp8mm products per shard (shard_map)"
    )
    ap.add_argument(
        "--gather-8bit",
        action="store_true",
        help="with --fsdp --partition: all-gather the weights' 8-bit codes, not 16-bit weights",
    )
    ap.add_argument(
        "--combine",
        action="store_true",
        help="train nothing: one table, CSV and PNG from the runs saved in --out/runs",
    )
    args = ap.parse_args(argv)
    if args.combine:
        results, curves = load_runs(pathlib.Path(args.out))
        (pathlib.Path(args.out) / "train_lm_table.md").write_text(print_table(results) + "\n")
        csv_path, png_path = write_outputs(pathlib.Path(args.out), curves)
        print(f"\nloss curves: {csv_path}, {png_path}")
        return results
    preset = PRESETS[args.preset]
    if args.steps:
        preset = dataclasses.replace(preset, steps=args.steps)
    if args.kinds is None:
        kinds = list(KINDS if args.preset == "gpu-large" else DEFAULT_KINDS)
    else:
        kinds = [k for k in args.kinds.split(",") if k]
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        ap.error(f"unknown kinds {unknown}; choose from {', '.join(KINDS)}")

    if args.gather_8bit and not (args.mesh and args.fsdp and args.partition):
        ap.error("--gather-8bit needs --mesh, --fsdp and --partition")
    layout = Layout()
    if args.mesh:
        layout = Layout(parse_mesh(args.mesh), args.fsdp, args.partition, args.gather_8bit)
    elif args.fsdp or args.partition:
        ap.error("--fsdp and --partition need --mesh")
    text = load_corpus(preset.corpus_bytes)
    split = int(0.9 * text.size)
    train_data, eval_data = text[:split], text[split:]
    print(
        f"backend {jax.default_backend()}; corpus: {text.size:,} bytes of Python stdlib source; "
        f"model d={preset.d_model} layers={preset.n_layers} heads={preset.n_heads} "
        f"seq={preset.seq_len} batch={preset.batch} steps={preset.steps} "
        f"dtype={preset.dtype or 'float32'}"
        + (f"; mesh {dict(layout.mesh.shape)}" if layout.mesh is not None else "")
        + (" fsdp" if layout.fsdp else "")
        + (" shard_map" if layout.partition else "")
    )
    sample = jnp.zeros((1, preset.seq_len), jnp.int32)
    # One initialisation for every kind: quantized layers take nn.Dense's parameters.
    params0 = CharLM(preset).init(jax.random.key(args.seed), sample)

    out = pathlib.Path(args.out)
    results, curves, trained = {}, {}, {}
    for kind in kinds:
        losses, ev, step_s, peak, params = train(
            kind, preset, train_data, eval_data, params0, args.seed, layout
        )
        results[kind] = {
            "final_loss": float(np.mean(losses[-10:])),
            "eval_loss": ev,
            "step_ms": 1e3 * step_s,
            "tokens_per_s": preset.batch * preset.seq_len / step_s,
            "peak_mib": peak,
        }
        curves[kind], trained[kind] = losses, params
        save_run(out, kind, args, preset, results[kind], losses)
    print_table(results)
    csv_path, png_path = write_outputs(pathlib.Path(args.out), curves)
    print(f"\nloss curves: {csv_path}, {png_path}")
    if "switchback" in trained and not args.no_checkpoint:
        checkpoint_round_trip(preset, trained["switchback"], eval_data)
    return results


if __name__ == "__main__":
    main()
