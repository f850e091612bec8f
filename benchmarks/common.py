"""Shared helpers of the benchmark suite: timing, compiled memory, host data, result rows, tables.

Timing (docs/performance.md): after warm-up, each *batch* is many back-to-back
calls closed by ONE device synchronisation, and a case reports the median
batch time divided by the calls per batch. A sync per call would add the
launch/sync latency to every call and flatter every ratio against a fast
baseline. The number of calls per batch is chosen per case so that a batch
lasts at least `TimingConfig.batch_s` (short kernels are otherwise measured
against Python dispatch), and is at least `TimingConfig.min_reps`.

Targets: `load_targets` reads the pass/miss targets from benchmarks/targets.toml
and `evaluate_targets` attaches the checks to the rows; the numbers live in
that file only.

This module imports numpy only at import time; JAX is imported inside the
functions that need it, so the torch side (`benchmarks.bnb`) can use the
timing and row helpers in a process that never initialises JAX.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import math
import operator
import pathlib
import re
import statistics
import time
import tomllib
import traceback
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

# ----------------------------------------------------------------------------- timing


@dataclasses.dataclass(frozen=True)
class TimingConfig:
    """How hard to time one case.

    Attributes:
      batches: device-synchronised batches; the median over them is reported.
      batch_s: lower bound on the wall time of one batch (sets calls per batch).
      max_reps: upper bound on calls per batch.
      min_reps: lower bound on calls per batch (within max_reps): a case longer than
        batch_s still runs a few calls back to back, so the host's dispatch of one call
        overlaps the previous call's execution as in a training loop (a 70 ms training
        step timed one call per sync exposes several ms of dispatch per call).
      warmup: calls (each synchronised) before the calibration.
      warmup_s: then calls (each synchronised) for at least this long, so the SM clock
        has ramped up again after the compilation's idle time (an H200 idles at
        345 MHz and runs at 1980 MHz under load).
      device: whether cases that ask for it also get a profiler-traced device time.
    """

    batches: int = 20
    batch_s: float = 0.004
    max_reps: int = 200
    min_reps: int = 3
    warmup: int = 2
    warmup_s: float = 0.05
    device: bool = True


# --smoke: one call per batch and two batches; CPU numbers mean nothing anyway.
# Device tracing stays on: on a CPU it finds no GPU events in ~0.05 s a case.
SMOKE_TIMING = TimingConfig(batches=2, batch_s=0.0, max_reps=1, warmup=1, warmup_s=0.0)


@dataclasses.dataclass(frozen=True)
class Timing:
    """Result of `time_calls`: seconds per call (median and best batch) and the plan used."""

    median_s: float
    min_s: float
    reps: int
    batches: int


def time_calls(call: Callable[[], Any], sync: Callable[[Any], Any], cfg: TimingConfig) -> Timing:
    """Median seconds per call of `call()` over `cfg.batches` synchronised batches.

    Args:
      call: runs the case once and returns something `sync` can wait on.
      sync: blocks until the work behind its argument is done on the device.
      cfg: timing plan.

    Returns:
      A `Timing`; median_s is the median over batches of (batch time / calls).
    """
    for _ in range(max(cfg.warmup, 1)):
        sync(call())
    t_end = time.perf_counter() + cfg.warmup_s
    while time.perf_counter() < t_end:
        sync(call())
    reps = 1
    if cfg.max_reps > 1 and cfg.batch_s > 0:
        # Calibrate on two back-to-back calls: one call alone would include the sync latency.
        t0 = time.perf_counter()
        out = call()
        out = call()
        sync(out)
        est = max((time.perf_counter() - t0) / 2, 1e-7)
        reps = int(min(cfg.max_reps, max(cfg.min_reps, math.ceil(cfg.batch_s / est))))
    per_call = []
    for _ in range(max(cfg.batches, 1)):
        t0 = time.perf_counter()
        for _ in range(reps):
            out = call()
        sync(out)
        per_call.append((time.perf_counter() - t0) / reps)
    return Timing(statistics.median(per_call), min(per_call), reps, len(per_call))


def device_events(call: Callable[[], Any], n: int = 20) -> list[tuple[str, int, int]]:
    """(name, start ns, duration ns) of the GPU stream events of `n` traced calls, by start.

    Read from a jax.profiler trace (CUPTI), so launch gaps and host overhead are
    left out and every copy, memset or kernel of the program shows. Empty
    without a GPU (the trace then has no device plane).
    """
    import glob
    import os
    import tempfile

    import jax

    jax_sync(call())
    with tempfile.TemporaryDirectory() as d:
        with jax.profiler.trace(d):
            for _ in range(n):
                out = call()
            jax_sync(out)
        paths = glob.glob(os.path.join(d, "**", "*.xplane.pb"), recursive=True)
        data = jax.profiler.ProfileData.from_file(paths[0]) if paths else None
    events = []
    for plane in data.planes if data is not None else ():
        if not plane.name.startswith("/device:GPU"):
            continue
        for line in plane.lines:
            # Stream lines hold the kernels and copies; other lines summarise them.
            if "stream" in line.name.lower():
                events += [(e.name, e.start_ns, e.duration_ns) for e in line.events]
    return sorted(events, key=lambda e: e[1])


@dataclasses.dataclass(frozen=True)
class DeviceTime:
    """Result of `device_time`.

    Attributes:
      median_s: median device busy seconds per call (the sum of its events'
        durations; overlapping streams would count twice).
      events_per_call: GPU events per call.
      split: whether the events split evenly into calls; if not (a one-off
        event), median_s is the mean over calls instead.
    """

    median_s: float
    events_per_call: float
    split: bool


def device_time(call: Callable[[], Any], n: int = 20) -> DeviceTime | None:
    """Device busy time per call over `n` traced calls (None when no GPU event was seen)."""
    events = device_events(call, n)
    if not events:
        return None
    durations = [e[2] for e in events]
    if len(durations) % n:
        return DeviceTime(sum(durations) / n / 1e9, len(durations) / n, split=False)
    k = len(durations) // n
    per_call = [sum(durations[i : i + k]) for i in range(0, len(durations), k)]
    return DeviceTime(statistics.median(per_call) / 1e9, k, split=True)


def jax_sync(x: Any) -> Any:
    """jax.block_until_ready, imported lazily."""
    import jax

    return jax.block_until_ready(x)


def compile_jax(fn: Callable, args: Sequence[Any]) -> tuple[Any, dict[str, int] | None]:
    """jit + lower + compile `fn` for `args`; returns (compiled, memory dict or None).

    The compiled executable is what gets timed, so one compilation serves both the
    memory analysis and the timing. Call this inside `fp8mm.use_implementation(...)`
    when the implementation comes from the context: tracing happens here.
    """
    import jax

    compiled = jax.jit(fn).lower(*args).compile()
    return compiled, compiled_memory(compiled)


def compiled_memory(compiled: Any) -> dict[str, int] | None:
    """Bytes from `compiled.memory_analysis()`; peak = temp + argument + output.

    Returns None where the backend gives no analysis (it may return None or raise).
    """
    try:
        ma = compiled.memory_analysis()
    except Exception:
        return None
    if isinstance(ma, (list, tuple)):  # some versions return one entry per device
        ma = ma[0] if ma else None
    if ma is None:
        return None
    fields = {
        "temp": "temp_size_in_bytes",
        "argument": "argument_size_in_bytes",
        "output": "output_size_in_bytes",
        "alias": "alias_size_in_bytes",
    }
    out = {k: int(getattr(ma, attr, 0) or 0) for k, attr in fields.items()}
    out["peak"] = out["temp"] + out["argument"] + out["output"]
    return out


def nbytes(*xs: Any) -> int:
    """Bytes of arrays (anything with .shape and .dtype; torch tensors too)."""
    total = 0
    for x in xs:
        itemsize = getattr(x, "itemsize", None) or getattr(x.dtype, "itemsize", None)
        if itemsize is None:  # torch dtypes have .itemsize from 2.1; element_size() before
            itemsize = x.element_size()
        total += int(np.prod(tuple(x.shape))) * int(itemsize)
    return total


# ------------------------------------------------------------------------------- data


_PERIOD = (1 << 22) + 17  # odd period: consecutive rows and blocks never line up


@functools.lru_cache(maxsize=1)
def _normal_base(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(_PERIOD, dtype=np.float32)


@functools.lru_cache(maxsize=8)
def host_normal(shape: tuple[int, ...], seed: int, scale: float = 1.0) -> np.ndarray:
    """float32 N(0, scale²)-distributed data from a fixed recipe, identical in every process.

    A draw of ~4 Mi normals repeated with an odd period (and rotated by the seed):
    drawing up to 256 Mi fresh normals per shape would cost seconds of host time in
    both the JAX and the torch process, and timing needs realistic values, not
    independent ones. Cached: the same arrays serve every case of a shape.
    """
    size = int(np.prod(shape))
    base = np.roll(_normal_base(0), seed * 7919)
    x = np.resize(base, size).reshape(shape)
    if scale != 1.0:
        x *= np.float32(scale)
    return x


def linear_data(tokens: int, k: int, n: int) -> dict[str, np.ndarray]:
    """Host data of one linear-layer case: A [t, k], W [n, k] (Linear layout), g [t, n].

    Weights are scaled by 1/sqrt(k) as an initialised layer's; every benchmark
    (fp8mm and bitsandbytes) draws from here so both see the same numbers.
    """
    return {
        "A": host_normal((tokens, k), 1),
        "W": host_normal((n, k), 2, 1.0 / math.sqrt(k)),
        "g": host_normal((tokens, n), 3, 1.0 / math.sqrt(n)),
    }


# ------------------------------------------------------------------------------- rows


@dataclasses.dataclass
class Row:
    """One measured case. Ratios and checks are filled in by the runner's final pass.

    Attributes:
      section: "kernels", "ops", "layers", "train" or "bnb".
      group: what runs (primitive, op, layer or model kind; "baseline" rows name theirs).
      impl: "xla", "pallas", or the baseline's provider ("jnp", "flax", "torch", "bnb").
      mode: "fwd", "fwd+bwd", "step" or "-".
      shape: human-readable shape, also the key that pairs a case with its baseline.
      dtype: activation dtype name.
      base: `key` of the baseline row in the same run (None for baselines themselves).
    """

    section: str
    group: str
    impl: str
    mode: str
    shape: str
    dtype: str
    base: str | None = None
    is_baseline: bool = False
    ms: float | None = None
    min_ms: float | None = None
    reps: int | None = None
    batches: int | None = None
    rate: float | None = None
    unit: str = ""
    device_ms: float | None = None
    device_rate: float | None = None
    mem: dict[str, int] | None = None
    time_ratio: float | None = None
    rate_ratio: float | None = None
    mem_ratio: float | None = None
    bnb_ms: float | None = None
    vs_bnb: float | None = None
    checks: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    error: str | None = None
    skipped: str | None = None
    note: str = ""

    @property
    def key(self) -> str:
        return "|".join((self.section, self.group, self.impl, self.mode, self.shape, self.dtype))

    @property
    def mem_bytes(self) -> int | None:
        return None if self.mem is None else self.mem.get("peak")

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["key"] = self.key
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Row:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


_UNIT_SCALE = {"GB/s": 1e9, "Mtok/s": 1e6}


def record_timing(row: Row, timing: Timing, work: float | None, unit: str) -> None:
    """Stores a timing in `row`; `work` is FLOPs/ops (unit T...) or bytes (unit GB/s)."""
    row.ms = timing.median_s * 1e3
    row.min_ms = timing.min_s * 1e3
    row.reps, row.batches = timing.reps, timing.batches
    if work is not None and timing.median_s > 0:
        scale = _UNIT_SCALE.get(unit, 1e12)  # TOPS, TFLOP/s
        row.rate, row.unit = work / timing.median_s / scale, unit


def error_text(exc: BaseException) -> str:
    """One line naming the exception and where it came from (full traces go to stdout)."""
    msg = str(exc).strip().splitlines()
    first = msg[0] if msg else ""
    return f"{type(exc).__name__}: {first}"[:300]


def print_traceback(exc: BaseException) -> None:
    """The last frames of an exception's traceback, flushed (the run goes on)."""
    lines = traceback.format_exception(type(exc), exc, exc.__traceback__)
    print("".join(lines[-6:]).rstrip(), flush=True)


def fill_ratios(rows: Iterable[Row]) -> None:
    """time_ratio = ms / base ms; rate_ratio = rate / base rate (same unit); mem_ratio likewise."""
    rows = list(rows)
    by_key = {r.key: r for r in rows}
    for r in rows:
        b = by_key.get(r.base) if r.base else None
        if b is None or r.ms is None or b.ms is None or b.ms <= 0:
            continue
        r.time_ratio = r.ms / b.ms
        if r.rate is not None and b.rate and r.unit == b.unit:
            r.rate_ratio = r.rate / b.rate
        if r.mem_bytes is not None and b.mem_bytes:
            r.mem_ratio = r.mem_bytes / b.mem_bytes


def add_check(row: Row, target: str, value: float | None, ok: bool | None) -> None:
    """Attaches one target check; `ok` None (no value) reads as n/a."""
    row.checks.append({"target": target, "value": value, "ok": ok})


def status(row: Row) -> str:
    """PASS / MISS over the row's checks; '' without checks, 'n/a' when a value is missing."""
    if row.error or row.skipped:
        return "ERROR" if row.error else "SKIP"
    if not row.checks:
        return ""
    oks = [c["ok"] for c in row.checks]
    if any(ok is False for ok in oks):
        return "MISS"
    if any(ok is None for ok in oks):
        return "n/a"
    return "PASS"


# ---------------------------------------------------------------------------- targets


TARGETS_PATH = pathlib.Path(__file__).with_name("targets.toml")
METRICS = ("time_ratio", "mem_ratio", "rate_ratio", "rate_vs", "copy_bandwidth")
# op in the file -> (symbol in the label, comparison)
_OPS: dict[str, tuple[str, Callable[[float, float], bool]]] = {
    ">=": ("≥", operator.ge),
    "<=": ("≤", operator.le),
    "<": ("<", operator.lt),
}


@dataclasses.dataclass(frozen=True)
class Target:
    """One pass/miss target of benchmarks/targets.toml (its header documents the fields)."""

    section: str
    metric: str
    op: str
    limit: float
    what: str
    versus: str
    impl: tuple[str, ...] = ()
    group: tuple[str, ...] = ()
    group_prefix: tuple[str, ...] = ()
    mode: str | None = None
    other_group: str | None = None
    other_impl: str | None = None

    def matches(self, row: Row) -> bool:
        if row.section != self.section or row.is_baseline:
            return False
        if self.impl and row.impl not in self.impl:
            return False
        if self.mode is not None and row.mode != self.mode:
            return False
        if self.group and row.group not in self.group:
            return False
        return not self.group_prefix or row.group.startswith(self.group_prefix)

    def label(self, suffix: str = "") -> str:
        return f"{self.what} {_OPS[self.op][0]} {self.limit:.2f}x {self.versus}{suffix}"

    def passes(self, value: float | None) -> bool | None:
        return None if value is None else bool(_OPS[self.op][1](value, self.limit))


_REQUIRED = ("section", "metric", "op", "limit", "what", "versus")
_TUPLES = ("impl", "group", "group_prefix")


def _target(entry: Any, where: str) -> Target:
    """A `Target` from one [[target]] table, or a ValueError saying what is wrong with it."""
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: expected a table, got {entry!r}")
    fields = {f.name for f in dataclasses.fields(Target)}
    unknown = sorted(set(entry) - fields)
    missing = [k for k in _REQUIRED if k not in entry]
    if unknown or missing:
        raise ValueError(f"{where}: unknown keys {unknown}, missing keys {missing}")
    kw = dict(entry)
    for k in _TUPLES:
        v = kw.get(k, ())
        v = (v,) if isinstance(v, str) else v
        if not isinstance(v, (list, tuple)) or not all(isinstance(x, str) for x in v):
            raise ValueError(f"{where}: {k} must be a string or a list of strings, got {v!r}")
        kw[k] = tuple(v)
    if kw["metric"] not in METRICS:
        raise ValueError(f"{where}: metric {kw['metric']!r} is not one of {METRICS}")
    if kw["op"] not in _OPS:
        raise ValueError(f"{where}: op {kw['op']!r} is not one of {tuple(_OPS)}")
    if isinstance(kw["limit"], bool) or not isinstance(kw["limit"], (int, float)):
        raise ValueError(f"{where}: limit must be a number, got {kw['limit']!r}")
    kw["limit"] = float(kw["limit"])
    if kw["group"] and kw["group_prefix"]:
        raise ValueError(f"{where}: give group or group_prefix, not both")
    if (kw["metric"] == "rate_vs") != ("other_group" in kw):
        raise ValueError(f"{where}: other_group is required by metric 'rate_vs' and only by it")
    return Target(**kw)


def load_targets(path: str | pathlib.Path | None = None) -> tuple[Target, ...]:
    """The targets of a TOML file (default benchmarks/targets.toml), in file order."""
    path = pathlib.Path(path) if path is not None else TARGETS_PATH
    with path.open("rb") as f:
        data = tomllib.load(f)
    extra = sorted(set(data) - {"target"})
    if extra:
        raise ValueError(f"{path}: unknown top-level keys {extra}; targets are [[target]] tables")
    entries = data.get("target", [])
    if not isinstance(entries, list):
        raise ValueError(f"{path}: 'target' must be an array of tables ([[target]])")
    return tuple(_target(e, f"{path}: target {i + 1}") for i, e in enumerate(entries))


def find_row(rows: Iterable[Row], **want: Any) -> Row | None:
    """The first measured row (ms set) whose attributes equal `want`."""
    for r in rows:
        if r.ms is not None and all(getattr(r, k) == v for k, v in want.items()):
            return r
    return None


def evaluate_targets(rows: Sequence[Row], targets: Iterable[Target]) -> None:
    """Appends one check per (measured row, matching target); needs `fill_ratios` first."""
    targets = tuple(targets)
    copies = [r for r in rows if r.section == "kernels" and r.group == "copy"]
    copy_bw = max((r.rate for r in copies if r.rate), default=None)
    # Device time where traced: a short kernel's wall time per call can be the host's
    # dispatch time rather than the kernel's (docs/performance.md).
    copy_dev_bw = max((r.device_rate for r in copies if r.device_rate), default=None)
    for r in rows:
        if r.ms is None:
            continue
        for t in targets:
            if not t.matches(r):
                continue
            suffix = ""
            if t.metric == "copy_bandwidth":
                if r.device_rate and copy_dev_bw:
                    value, suffix = r.device_rate / copy_dev_bw, " (device time)"
                else:
                    value = r.rate / copy_bw if (r.rate and copy_bw) else None
            elif t.metric == "rate_vs":
                o = find_row(
                    rows, section=r.section, group=t.other_group, shape=r.shape, dtype=r.dtype,
                    **({} if t.other_impl is None else {"impl": t.other_impl}),
                )  # fmt: skip
                value = r.rate / o.rate if (o is not None and o.rate and r.rate) else None
            else:
                value = getattr(r, t.metric)
            add_check(r, t.label(suffix), value, t.passes(value))


# ------------------------------------------------------------------------- formatting


def card_slug(name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3' (file name of the results)."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return slug or "unknown"


def fmt(x: float | None, digits: int = 3) -> str:
    """A number for a table cell; '' for None."""
    if x is None:
        return ""
    if isinstance(x, float) and (math.isnan(x) or math.isinf(x)):
        return str(x)
    if abs(x) >= 100:
        return f"{x:.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.{digits}f}"


def mib(n: int | None) -> str:
    """Bytes as MiB for a table cell."""
    return "" if n is None else fmt(n / 2**20, 2)


Column = tuple[str, Callable[[Row], str]]


def markdown_table(rows: Sequence[Row], columns: Sequence[Column]) -> str:
    """A Markdown table with one line per row."""
    head = "| " + " | ".join(h for h, _ in columns) + " |"
    sep = "|" + "---|" * len(columns)
    body = ["| " + " | ".join(f(r).replace("|", "/") for _, f in columns) + " |" for r in rows]
    return "\n".join([head, sep, *body])


def checks_text(row: Row) -> str:
    """'target value' for each check, e.g. 'time ≤ 0.80x bf16: 0.74'."""
    return "; ".join(f"{c['target']}: {fmt(c['value'])}" for c in row.checks)


def today() -> str:
    return datetime.date.today().isoformat()


def write_json(path: pathlib.Path, meta: dict[str, Any], rows: Sequence[Row]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"meta": meta, "rows": [r.as_dict() for r in rows]}, indent=1))
    tmp.replace(path)  # a run killed mid-write leaves the previous complete file


# ----------------------------------------------------------------------------- runner


class Runner:
    """Collects rows, runs cases under a time budget, prints one flushed line per case.

    Every case is wrapped in try/except: a failure becomes an error row and the
    run goes on. Past the deadline, cases become 'skipped' rows (so the table
    says what was not measured) instead of running.
    """

    def __init__(
        self,
        timing: TimingConfig,
        deadline: float,
        include: Callable[[Row], bool] | None = None,
    ) -> None:
        self.timing = timing
        self.deadline = deadline
        self.include = include or (lambda row: True)
        self.rows: list[Row] = []
        self.t0 = time.perf_counter()

    def log(self, msg: str) -> None:
        print(f"[{time.perf_counter() - self.t0:7.1f}s] {msg}", flush=True)

    def out_of_time(self) -> bool:
        return time.perf_counter() > self.deadline

    def case(
        self,
        row: Row,
        build: Callable[[], tuple[Callable[[], Any], dict[str, int] | None]],
        work: float | None,
        unit: str,
        sync: Callable[[Any], Any] = jax_sync,
        device: bool = False,
    ) -> Row | None:
        """Times one case; `build()` compiles and returns (call, memory dict or None).

        With `device`, the row also gets the device busy time per call from a
        profiler trace (`device_time`; not in smoke runs): for short kernels,
        whose wall time per call can be bound by the host's dispatch.

        Returns the row (also appended to self.rows), or None when `include` drops it.
        """
        if not self.include(row):
            return None
        self.rows.append(row)
        label = f"{row.section}: {row.group}[{row.impl}] {row.mode} {row.shape} {row.dtype}"
        if self.out_of_time():
            row.skipped = "time budget"
            self.log(f"{label}: skipped (time budget)")
            return row
        t0 = time.perf_counter()
        try:
            call, row.mem = build()
            record_timing(row, time_calls(call, sync, self.timing), work, unit)
            if device and self.timing.device:
                self._device_time(row, call, work, unit)
        except Exception as exc:
            row.error = error_text(exc)
            self.log(f"{label}: ERROR {row.error}")
            print_traceback(exc)
            return row
        rate = f" {fmt(row.rate)} {row.unit}" if row.rate is not None else ""
        mem = f" mem {mib(row.mem_bytes)} MiB" if row.mem_bytes is not None else ""
        if row.device_ms is not None:
            mem += f" device {row.device_ms:.4f} ms"
        if row.note:
            mem += f" [{row.note}]"
        self.log(
            f"{label}: {row.ms:.4f} ms{rate}{mem} (x{row.reps}, {time.perf_counter() - t0:.1f}s)"
        )
        return row

    def _device_time(self, row: Row, call: Callable[[], Any], work: float | None, unit: str):
        """Fills row.device_ms / device_rate; says in row.note why not, or how it split."""
        try:
            dev = device_time(call, self.timing.batches)
        except Exception as exc:  # the wall-clock timing stands without it
            row.note = f"no device time: {error_text(exc)}"
            return
        if dev is None:
            row.note = "no device time: no GPU events in the trace"
            return
        if not dev.split:
            row.note = f"device time: mean ({dev.events_per_call:g} events a call, uneven)"
        row.device_ms = dev.median_s * 1e3
        if work is not None:
            row.device_rate = work / dev.median_s / _UNIT_SCALE.get(unit, 1e12)

    def jax_case(
        self,
        row: Row,
        fn: Callable,
        args: Sequence[Any],
        work: float | None,
        unit: str,
        context: Callable[[], Any] | None = None,
        device: bool = False,
    ) -> Row | None:
        """`case` for a JAX function: compiled once (inside `context()` if given), then timed."""

        def build() -> tuple[Callable[[], Any], dict[str, int] | None]:
            if context is None:
                compiled, mem = compile_jax(fn, args)
            else:
                with context():
                    compiled, mem = compile_jax(fn, args)
            return (lambda: compiled(*args)), mem

        return self.case(row, build, work, unit, device=device)


@dataclasses.dataclass(frozen=True)
class Plan:
    """The shapes and variants a run covers.

    Attributes:
      tokens: token counts (rows of the activations).
      dims: (in, out) feature pairs of the linear layers.
      dtypes: activation dtype names ("bfloat16", "float16").
      impls: fp8mm implementations ("xla", "pallas").
      layer_tokens: token counts for the Flax layer section.
      smoke: tiny CPU run (no meaningful numbers).
      ops: the ops section's ops to time (None: all).
      train_preset: the train section's preset of examples/train_lm.py.
      train_kinds: the train section's kinds (train_lm's names; None: all).
    """

    tokens: tuple[int, ...]
    dims: tuple[tuple[int, int], ...]
    dtypes: tuple[str, ...]
    impls: tuple[str, ...]
    layer_tokens: tuple[int, ...]
    smoke: bool = False
    ops: tuple[str, ...] | None = None
    train_preset: str = "gpu-large"
    train_kinds: tuple[str, ...] | None = None

    def linear_shapes(self, tokens: Iterable[int] | None = None) -> list[tuple[int, int, int]]:
        """(tokens, in, out) for every token count (default all) and feature pair."""
        return [(t, k, n) for t in (tokens or self.tokens) for k, n in self.dims]


def linear_label(t: int, k: int, n: int) -> str:
    return f"{t}x{k}->{n}"
