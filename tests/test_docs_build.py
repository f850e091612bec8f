"""The docs site builds without a warning, and the quickstart's code runs.

`mkdocs build --strict` (mkdocs.yml) renders the API reference from the docstrings, so a
docstring griffe cannot parse, a renamed object in docs/api/*.md or a broken link between
the pages fails here. Needs the docs extra (`pip install -e '.[docs]'`; `make test`
installs it).
"""

import os
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_mkdocs_build_strict(tmp_path):
    site = tmp_path / "site"
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", "mkdocs.yml", "-d", str(site)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{output}"
    assert not re.search(r"^WARNING +-", output, re.M), output
    assert (site / "index.html").is_file()
    assert (site / "api" / "ops" / "index.html").is_file()


def test_quickstart_code_runs():
    """Every ```python block of docs/quickstart.md, in order, in one namespace."""
    text = (ROOT / "docs" / "quickstart.md").read_text()
    blocks = re.findall(r"^```python\n(.*?)^```", text, re.S | re.M)
    assert len(blocks) >= 5
    namespace = {"__name__": "quickstart"}
    for i, block in enumerate(blocks):
        exec(compile(block, f"docs/quickstart.md (python block {i})", "exec"), namespace)
