"""Smoke test of examples/train_lm.py (the `make demo` job) with a few steps and two kinds."""

import importlib.util
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_train_lm_smoke(tmp_path):
    pytest.importorskip("matplotlib")
    pytest.importorskip("tqdm")
    spec = importlib.util.spec_from_file_location("train_lm", ROOT / "examples" / "train_lm.py")
    train_lm = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = train_lm  # dataclasses look their module up
    spec.loader.exec_module(train_lm)
    results = train_lm.main(
        ["--steps", "4", "--kinds", "plain,switchback", "--no-checkpoint", "--out", str(tmp_path)]
    )
    assert set(results) == {"plain", "switchback"}
    assert (tmp_path / "train_lm_loss.png").stat().st_size > 0
    assert len((tmp_path / "train_lm_losses.csv").read_text().splitlines()) == 5
    # Each kind's run is saved as it ends; --combine rebuilds the outputs from them.
    saved = sorted(f.name for f in (tmp_path / "runs").iterdir())
    assert saved == ["plain.json", "switchback.json"]
    (tmp_path / "train_lm_losses.csv").unlink()
    combined = train_lm.main(["--combine", "--out", str(tmp_path)])
    assert list(combined) == ["plain", "switchback"]
    for kind in results:
        assert combined[kind]["eval_loss"] == results[kind]["eval_loss"]
    assert "| switchback |" in (tmp_path / "train_lm_table.md").read_text()
    assert len((tmp_path / "train_lm_losses.csv").read_text().splitlines()) == 5


MESH_WORKER = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("train_lm", sys.argv[1])
tl = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = tl
spec.loader.exec_module(tl)
common = ["--steps", "3", "--kinds", "plain,fp8_global", "--no-checkpoint", "--out", sys.argv[2]]
single = tl.main(common)
fsdp = tl.main(common + ["--mesh", "data=2,model=2", "--fsdp"])
shard_map = tl.main(common + ["--mesh", "data=4", "--partition"])
gather8 = tl.main(common + ["--mesh", "data=2,model=2", "--fsdp", "--partition", "--gather-8bit"])
print(json.dumps({"single": single, "fsdp": fsdp, "shard_map": shard_map, "gather8": gather8}))
"""


def test_train_lm_on_a_mesh(tmp_path):
    """--mesh (GSPMD with FSDP; shard_map; shard_map with FSDP and the 8-bit weight gather) on
    4 simulated CPU devices: the single-device run."""
    import json
    import os
    import subprocess

    pytest.importorskip("matplotlib")
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu"
    )
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, "-c", MESH_WORKER, str(ROOT / "examples" / "train_lm.py"), str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = json.loads(proc.stdout.strip().splitlines()[-1])
    for layout in ("fsdp", "shard_map", "gather8"):
        for kind in ("plain", "fp8_global"):
            got, want = runs[layout][kind], runs["single"][kind]
            for key in ("final_loss", "eval_loss"):
                assert abs(got[key] - want[key]) <= 1e-3 * abs(want[key]), (layout, kind, key)
