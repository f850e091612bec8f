"""The declared minimum versions work: pyproject's lower bounds, installed exactly, pass a subset.

Reads the `>=` bounds of jax, jaxlib, flax and numpy from pyproject.toml (so the
test cannot drift from what is declared), installs exactly those releases with
`pip install --no-deps --target` into a temporary folder, and runs a fast subset
of the suite (XLA path on the CPU: primitives, ops, the nnx/linen layer APIs and
quantize_model) in a subprocess whose PYTHONPATH puts that folder first, so the
minimum releases shadow the environment's newer ones; every other dependency
(scipy, ml_dtypes, optax, ...) is the environment's. The subprocess reports the
versions and locations of jax, jaxlib, flax and numpy as it imported them, which
proves the shadowing worked.

Skipped only when pip cannot reach the package index (a connection error in
pip's output); any other failure to install is a failure. About a minute on 2
cores, ~10 s of it the install (the 80 MB jaxlib wheel is most of it); about two
minutes while another test file runs alongside, as under tools/run_tests.sh.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import tomllib

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = pathlib.Path(__file__).resolve().parents[1]
PINNED = ("jax", "jaxlib", "flax", "numpy")

# pip's messages when it cannot reach an index at all (urllib3 / socket errors).
UNREACHABLE = re.compile(
    r"NewConnectionError|Failed to establish a new connection|Temporary failure in name"
    r" resolution|Name or service not known|Network is unreachable|No route to host"
    r"|Connection refused|ConnectTimeoutError|ProxyError|Max retries exceeded",
    re.IGNORECASE,
)

# One pytest run (one jax import, one warm compile cache): the XLA primitives, the ops'
# gradients/transformations/int8 inference, and every layer API and quantize_model.
SUBSET = [
    "tests/test_primitives.py",
    "tests/test_ops.py",
    "tests/test_nn_errors.py",
    "tests/test_nn_native.py",
    "-k",
    "test_nn_errors or test_nn_native"
    " or (xla and not golden and not formulas and not kernels_match)",
]

# Runs pytest, then reports the modules it used (importing any the tests did not, e.g. flax
# for the primitives).
DRIVER = """
import importlib, json, sys
import pytest
rc = pytest.main(["-x", "-q", "-p", "no:cacheprovider", *sys.argv[1:]])
used = {}
for name in ("jax", "jaxlib", "flax", "numpy"):
    m = importlib.import_module(name)
    used[name] = [m.__version__, m.__file__]
print("FP8MM_VERSIONS " + json.dumps(used))
sys.exit(int(rc))
"""


def declared_minimums() -> dict[str, str]:
    """{package: lower bound} of PINNED, from pyproject's [project] dependencies."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    found = {}
    for dep in deps:
        req = Requirement(dep)
        if req.name in PINNED:
            lower = [s.version for s in req.specifier if s.operator == ">="]
            assert len(lower) == 1, f"{dep!r}: expected one '>=' lower bound"
            found[req.name] = lower[0]
    assert set(found) == set(PINNED), (
        f"pyproject lacks a lower bound for {set(PINNED) - set(found)}"
    )
    return found


def test_declared_minimums_are_consistent():
    mins = declared_minimums()
    # jax pins its jaxlib exactly; a mismatch could not be installed together.
    assert mins["jax"] == mins["jaxlib"], mins


def _install(pins: list[str], target: str) -> None:
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--only-binary=:all:"]
    cmd += ["--retries", "1", "--timeout", "60", "--target", target, *pins]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        out = proc.stdout + proc.stderr
        if UNREACHABLE.search(out):
            pytest.skip(f"pip cannot reach the package index to install {pins}:\n{out[-2000:]}")
        pytest.fail(f"pip could not install the declared minimums {pins}:\n{out[-4000:]}")


def test_declared_minimum_versions_pass_a_subset():
    mins = declared_minimums()
    pins = [f"{name}=={version}" for name, version in mins.items()]
    with tempfile.TemporaryDirectory(prefix="fp8mm-min-versions-") as target:
        _install(pins, target)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([target, str(ROOT)])
        env.pop("PYTHONHOME", None)
        # As tools/run_tests.sh: XLA's CPU backend at level 0 compiles faster; a caller's flags win.
        env["XLA_FLAGS"] = "--xla_backend_optimization_level=0 " + env.get("XLA_FLAGS", "")
        proc = subprocess.run(
            [sys.executable, "-c", DRIVER, *SUBSET],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, (
            f"with {pins}, pytest {' '.join(SUBSET)} failed:\n{out[-6000:]}"
        )
        line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("FP8MM_VERSIONS "))
        used = json.loads(line.removeprefix("FP8MM_VERSIONS "))
        for name, version in mins.items():
            got, where = used[name]
            assert Version(got) == Version(version), (
                f"{name} {got} from {where}, not the minimum {version}"
            )
            assert where.startswith(target), f"{name} came from {where}, not {target}"
