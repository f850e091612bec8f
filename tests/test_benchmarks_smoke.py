"""Smoke test of the benchmark suite (`python -m benchmarks.run --smoke`) and its target checks.

The smoke run times tiny shapes on the CPU (Pallas in interpret mode for a few
cases only); it asserts that every section produces rows, that no case errors
and that the JSON and Markdown results are written. No speed is asserted. The
target checks are read from benchmarks/targets.toml: the tests below check
that the file is read, that its numbers (not the code's) decide pass and miss,
and that a malformed file is refused before anything is measured.
"""

import json
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture()
def bench(monkeypatch):
    """The `benchmarks` package (it lives beside `fp8mm`, outside the installed package)."""
    monkeypatch.syspath_prepend(str(ROOT))
    from benchmarks import common, run

    return run, common


def test_smoke_run_writes_every_section(bench, tmp_path):
    pytest.importorskip("flax")
    pytest.importorskip("optax")
    pytest.importorskip("tqdm")  # examples/train_lm.py imports it
    run, _ = bench
    result = run.main(["--smoke", "--out", str(tmp_path)])

    json_path, md_path = result["json"], result["md"]
    assert json_path.parent == tmp_path and json_path.exists() and md_path.exists()
    data = json.loads(json_path.read_text())
    rows = data["rows"]
    problems = [(r["key"], r["error"] or r["skipped"]) for r in rows if r["error"] or r["skipped"]]
    assert not problems, problems

    sections = {r["section"] for r in rows}
    assert {"kernels", "ops", "layers", "train"} <= sections
    # bitsandbytes: either measured (torch + CUDA present) or skipped with a reason.
    assert "bnb" in sections or data["meta"]["bnb"].get("skipped")

    for section in ("kernels", "ops", "layers", "train"):
        sel = [r for r in rows if r["section"] == section]
        assert any(r["is_baseline"] for r in sel), section
        assert all(r["ms"] > 0 for r in sel), section
        # Every case is paired with a baseline of the same run.
        assert all(r["time_ratio"] is not None for r in sel if r["base"]), section
    # fp8mm's int8 matmuls are compared with XLA's own int8 dot, timed beside them.
    assert any(r["group"] == "int8 dot (XLA)" and r["ms"] > 0 for r in rows)
    impls = {(r["section"], r["impl"]) for r in rows}
    assert {("ops", "xla"), ("ops", "pallas"), ("kernels", "pallas")} <= impls
    modes = {r["mode"] for r in rows if r["section"] == "ops"}
    assert modes == {"fwd", "fwd+bwd"}
    assert {r["dtype"] for r in rows if r["section"] == "ops"} == {"bfloat16", "float16"}
    # Target checks are evaluated (PASS or MISS; CPU numbers mean nothing).
    assert any(r["checks"] for r in rows if r["section"] == "kernels" and r["impl"] == "pallas")
    assert any(r["checks"] for r in rows if r["section"] == "train")
    assert all(c["ok"] is not None for r in rows for c in r["checks"])
    # Peak memory from the compiled memory analysis, where the backend gives one.
    assert any(r["mem"] for r in rows if r["section"] == "ops")

    assert data["meta"]["targets"] == "benchmarks/targets.toml"
    md = md_path.read_text()
    for title in ("## Targets", "## Kernels: quantization", "## Kernels: int8 matmul", "## Ops"):
        assert title in md
    assert "From `benchmarks/targets.toml`." in md
    assert "## Train step" in md and "## Flax layers" in md


def _row(common, section, group, impl, mode, ms, base=None, **kw):
    return common.Row(section, group, impl, mode, "s", "bfloat16", base=base, ms=ms, **kw)


def _target_rows(run, common):
    """One row per kind of target, with known ratios (see test_targets_pass_and_miss)."""
    lin = _row(common, "ops", run.LINEAR, "jnp", "fwd+bwd", 1.0, is_baseline=True)
    lin.mem = {"peak": 100}
    fast = _row(common, "ops", "switchback_bnb", "pallas", "fwd+bwd", 0.9, lin.key)
    fast.mem = {"peak": 105}
    slow = _row(common, "ops", "matmul_fp8_global", "xla", "fwd+bwd", 1.3, lin.key)
    slow.mem = {"peak": 120}
    copy = _row(common, "kernels", "copy", "jnp", "-", 1.0, is_baseline=True, rate=2000.0)
    copy.unit = "GB/s"
    quant = _row(common, "kernels", "fake_quant_blockwise(4096)", "pallas", "-", 1.0, copy.key)
    quant.rate, quant.unit = 1600.0, "GB/s"
    mm = _row(common, "kernels", "matmul (baseline)", "jnp", "-", 1.0, is_baseline=True)
    mm.rate, mm.unit = 700.0, "TOPS"
    i8 = _row(common, "kernels", "int8 dot (XLA)", "jnp", "-", 1.0, mm.key)
    i8.rate, i8.unit = 1300.0, "TOPS"
    fused = _row(common, "kernels", "int8_linear_matmul_dequant", "pallas", "-", 1.0, mm.key)
    fused.rate, fused.unit = 1000.0, "TOPS"
    dense = _row(common, "train", run.DENSE, "flax", "step", 10.0, is_baseline=True)
    sb = _row(common, "train", "SwitchBackDense", "pallas", "step", 9.0, dense.key)
    dense.mem, sb.mem = {"peak": 100}, {"peak": 102}  # 0.90 <= 0.92 step, 1.02 <= 1.05 memory
    return [lin, fast, slow, copy, quant, mm, i8, fused, dense, sb]


def test_targets_pass_and_miss(bench):
    run, common = bench
    rows = _target_rows(run, common)
    lin, fast, slow, copy, quant, mm, i8, fused, dense, sb = rows
    run.finalize(rows)  # the targets of benchmarks/targets.toml

    assert common.status(fast) == "PASS"  # 0.90 <= 0.95 time, 1.05 <= 1.10 memory
    assert common.status(slow) == "MISS"  # 1.3 > 1.2 time, 1.2 > 1.1 memory
    assert [c["ok"] for c in slow.checks] == [False, False]
    assert common.status(quant) == "PASS"  # 1600 >= 0.75 * 2000
    assert [c["ok"] for c in fused.checks] == [True, False]  # 1.43x bf16; 0.77x XLA int8
    assert common.status(sb) == "PASS"
    md = run.render_markdown(
        {
            "card": "test",
            "date": "today",
            "command": "x",
            "jax": "0",
            "backend": "cpu",
            "python": "3",
            "fp8mm": "0",
            "bnb_status": "skipped",
            "timing": {"batches": 20, "batch_s": 0.004, "max_reps": 200},
        },
        rows,
    )
    assert "| MISS |" in md and "| PASS |" in md
    assert sys.modules["benchmarks.common"] is common

    # Where device times exist the copy check uses them (wall: 1600/2000 passes).
    copy.device_rate, quant.device_rate = 4000.0, 2800.0
    run.finalize(rows)
    assert quant.checks[0]["target"].endswith("(device time)")
    assert quant.checks[0]["value"] == pytest.approx(0.7) and common.status(quant) == "MISS"


def test_targets_file_is_read(bench, tmp_path):
    run, common = bench
    shipped = common.load_targets()
    assert common.TARGETS_PATH == ROOT / "benchmarks" / "targets.toml"
    assert {t.section for t in shipped} == {"kernels", "ops", "train"}
    assert {t.metric for t in shipped} == set(common.METRICS)
    rows = _target_rows(run, common)
    run.finalize(rows, shipped)
    labels = {c["target"] for r in rows for c in r.checks}
    assert labels == {
        "time ≤ 0.95x 16-bit",
        "time ≤ 1.20x 16-bit",
        "mem ≤ 1.10x 16-bit",
        "GB/s ≥ 0.75x copy",
        "TOPS ≥ 1.35x 16-bit",
        "TOPS ≥ 0.85x XLA int8 dot",
        "step < 1.00x bf16 Dense",
        "step ≤ 0.92x bf16 Dense",
        "peak memory ≤ 1.05x bf16 Dense",
    }

    # The numbers come from the file: with the switchback fwd+bwd limit lowered to 0.85,
    # the 0.90 row misses, and a file with only that target checks nothing else.
    text = common.TARGETS_PATH.read_text()
    old = 'group = ["switchback_bnb"]\nmode = "fwd+bwd"\nmetric = "time_ratio"\nop = "<="\n'
    old += "limit = 0.95"
    assert text.count(old) == 1
    strict = tmp_path / "strict.toml"
    strict.write_text(text.replace(old, old.replace("0.95", "0.85")))
    run.finalize(rows, common.load_targets(strict))
    fast = rows[1]
    assert [c["target"] for c in fast.checks] == ["time ≤ 0.85x 16-bit", "mem ≤ 1.10x 16-bit"]
    assert common.status(fast) == "MISS"
    only = tmp_path / "only.toml"
    only.write_text(
        '[[target]]\nsection = "train"\nmetric = "time_ratio"\nop = "<="\nlimit = 0.8\n'
        'what = "step"\nversus = "bf16 Dense"\n'
    )
    run.finalize(rows, common.load_targets(only))
    assert [(r.group, c["ok"]) for r in rows for c in r.checks] == [("SwitchBackDense", False)]


@pytest.mark.parametrize(
    "body, message",
    [
        ('section = "ops"\nmetric = "time_ratio"\nop = "<="\nlimit = 1\nwhat = "t"', "missing"),
        ('section = "ops"\nmetric = "speed"\nop = "<="\nlimit = 1\nwhat = "t"\nversus = "v"',
         "metric 'speed'"),
        ('section = "ops"\nmetric = "time_ratio"\nop = "=="\nlimit = 1\nwhat = "t"\nversus = "v"',
         "op '=='"),
        ('section = "ops"\nmetric = "rate_vs"\nop = "<="\nlimit = 1\nwhat = "t"\nversus = "v"',
         "other_group"),
        ('section = "ops"\nmetric = "time_ratio"\nop = "<="\nlimit = 1\nwhat = "t"\nversus = "v"'
         '\ngroups = ["x"]', "unknown keys ['groups']"),
    ],
)  # fmt: skip
def test_malformed_targets_file_fails_before_measuring(bench, tmp_path, body, message):
    run, common = bench
    bad = tmp_path / "bad.toml"
    bad.write_text(f"[[target]]\n{body}\n")
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        common.load_targets(bad)
    # main reads the file first: nothing is measured or written.
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="target 1"):
        run.main(["--smoke", "--out", str(out), "--only", "ops", "--targets", str(bad)])
    assert not out.exists()


def test_device_time_splits_events_into_calls(bench, monkeypatch):
    _, common = bench
    # Three calls of two events each (busy 3, 5 and 40 us), then a ragged trace.
    events = [("a", 0, 1000), ("b", 1, 2000), ("a", 9, 2000), ("b", 10, 3000)]
    events += [("a", 20, 10000), ("b", 21, 30000)]
    monkeypatch.setattr(common, "device_events", lambda call, n: events)
    assert common.device_time(lambda: None, 3) == common.DeviceTime(pytest.approx(5e-6), 2, True)
    monkeypatch.setattr(common, "device_events", lambda call, n: events[:5])
    uneven = common.device_time(lambda: None, 3)
    assert uneven == common.DeviceTime(pytest.approx(18e-6 / 3), pytest.approx(5 / 3), False)
    monkeypatch.setattr(common, "device_events", lambda call, n: [])
    assert common.device_time(lambda: None, 3) is None


def test_device_time_failure_keeps_the_wall_clock_row(bench, monkeypatch):
    _, common = bench

    def broken(call, n):
        raise RuntimeError("CUPTI unavailable")

    monkeypatch.setattr(common, "device_time", broken)
    r = common.Runner(common.SMOKE_TIMING, deadline=float("inf"))
    row = common.Row("kernels", "copy", "jnp", "-", "4", "float32", is_baseline=True)
    r.case(row, lambda: ((lambda: 1.0), None), 8.0, "GB/s", sync=lambda x: x, device=True)
    assert row.error is None and row.ms is not None and row.device_ms is None
    assert "CUPTI unavailable" in row.note
    monkeypatch.setattr(common, "device_time", lambda call, n: None)
    row2 = common.Row("kernels", "copy", "jnp", "-", "8", "float32", is_baseline=True)
    r.case(row2, lambda: ((lambda: 1.0), None), 8.0, "GB/s", sync=lambda x: x, device=True)
    assert row2.ms is not None and "no GPU events" in row2.note


def test_profile_step_categories_and_smoke(tmp_path, monkeypatch):
    from benchmarks import common, profile_step

    cat = profile_step.category
    assert cat("cudnn_generated_fort_native_sdpa_sm90_knob_7") == "attention"
    assert cat("nvjet_tst_128x256_64x4_1x2_h_bz_coopA_NNT") == "matmul"
    assert cat("fp8mm_int8_linear_matmul_dequant_wgmma") == "matmul"
    assert cat("fp8mm_int8_vectorwise_quant_t") == "quantization"
    assert cat("loop_add_fusion_3") == "other"
    # Fake GPU events: the table splits them by category, per step, beside plain's.
    events = [("nvjet_gemm", 0, 4_000_000), ("fp8mm_int8_stats", 1, 1_000_000), ("fusion", 2, 500)]
    monkeypatch.setattr(common, "device_events", lambda call, n: events * n)
    rows = profile_step.main(
        ["--smoke", "--kinds", "plain,switchback", "--steps", "2", "--out", str(tmp_path)]
    )
    assert [r["kind"] for r in rows] == ["plain", "switchback"]
    assert rows[1]["matmul_ms"] == pytest.approx(4.0) and rows[1]["quantization_ms"] == 1.0
    text = (tmp_path / "profile.md").read_text()
    assert "| switchback |" in text and "(1.00x)" in text
