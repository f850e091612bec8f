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
