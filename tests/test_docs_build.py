"""The docs site builds without a warning, its references are links, the quickstart runs.

`mkdocs build --strict` (mkdocs.yml) renders the API reference from the docstrings, so a
docstring griffe cannot parse, a renamed object in docs/api/*.md or a broken link between
the pages fails here; the code spans that name fp8mm objects must come out as links
(docs/hooks/crossrefs.py) and the repository link must follow pyproject.toml
(docs/hooks/repo_url.py). Needs the docs extra (`pip install -e '.[docs]'`; `make test`
installs it).
"""

import importlib.util
import os
import pathlib
import re
import subprocess
import sys
import tomllib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _link(href: str, text: str) -> str:
    """The pattern of an autorefs link with this target and code text."""
    return (
        r'<a class="autorefs autorefs-internal"[^>]*href="' + re.escape(href) + r'"[^>]*>'
        f"<code>{re.escape(text)}</code></a>"
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The built site's folder and mkdocs' output."""
    site = tmp_path_factory.mktemp("docs") / "site"
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", "mkdocs.yml", "-d", str(site)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    return site, proc.returncode, proc.stdout + proc.stderr


def test_mkdocs_build_strict(site):
    site, rc, output = site
    assert rc == 0, f"mkdocs build --strict failed:\n{output}"
    assert not re.search(r"^WARNING +-", output, re.M), output
    assert (site / "index.html").is_file()
    assert (site / "api" / "ops" / "index.html").is_file()
    assert not (site / "hooks").exists()  # the build's code is not published


def test_code_spans_naming_fp8mm_objects_are_links(site):
    site = site[0]
    ops = (site / "api" / "ops" / "index.html").read_text()
    linen = (site / "api" / "linen" / "index.html").read_text()
    porting = (site / "porting" / "index.html").read_text()
    # A full path in a docstring, to another page of the reference.
    partition = "fp8mm.nn.sharding.partition"
    assert re.search(_link(f"../sharding/#{partition}", partition), ops)
    # A short name, resolved in the docstring's own scope (fp8mm.nn.linen).
    assert re.search(_link("#fp8mm.nn.linen.quantize_dense", "quantize_dense"), linen)
    # A written page: a name only fp8mm's API has, with its call.
    want = _link("../api/nn/#fp8mm.nn.quantize_model", "quantize_model(model, kind)")
    assert re.search(want, porting)
    # bitsandbytes' spellings and an argument named like a module stay code.
    assert "<code>F.quantize_blockwise(" in porting
    assert not re.search(r'href="[^"]*#fp8mm\.state"[^>]*><code>state</code>', ops)
    for page in (ops, linen, porting):
        assert "<autoref" not in page  # every reference was resolved or dropped


def _repo_hook():
    spec = importlib.util.spec_from_file_location("repo_url", ROOT / "docs/hooks/repo_url.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_repository_link_follows_pyproject(site):
    settings = _repo_hook().repo_settings(
        {"Homepage": "https://example.org", "Repository": "https://github.com/owner/fp8mm.git"}
    )
    assert settings == {
        "repo_url": "https://github.com/owner/fp8mm",
        "repo_name": "owner/fp8mm",
        "edit_uri": "edit/main/docs/",
    }
    urls = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"].get("urls", {})
    want = _repo_hook().repo_settings(urls).get("repo_url")
    index = (site[0] / "index.html").read_text()
    found = re.findall(r'href="([^"]*)"[^>]*class="md-source"', index)
    assert found[:1] == ([want] if want else [])


def test_quickstart_code_runs():
    """Every ```python block of docs/quickstart.md, in order, in one namespace."""
    text = (ROOT / "docs" / "quickstart.md").read_text()
    blocks = re.findall(r"^```python\n(.*?)^```", text, re.S | re.M)
    assert len(blocks) >= 5
    namespace = {"__name__": "quickstart"}
    for i, block in enumerate(blocks):
        exec(compile(block, f"docs/quickstart.md (python block {i})", "exec"), namespace)
