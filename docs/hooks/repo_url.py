"""The site's repository link comes from pyproject.toml's [project.urls] (mkdocs.yml loads this).

One place holds the project's address: when [project.urls] names the repository
("Repository", "Source" or "Homepage", first found), the site gets `repo_url`,
`repo_name` ("owner/name") and, for GitHub and GitLab, `edit_uri` (the docs on
the main branch), unless mkdocs.yml sets them itself. Without such an entry the
site has no repository link.
"""

from __future__ import annotations

import pathlib
import tomllib
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

PYPROJECT = pathlib.Path(__file__).resolve().parents[2] / "pyproject.toml"
KEYS = ("Repository", "Source", "Homepage")


def repo_settings(urls: Mapping[str, str]) -> dict[str, str]:
    """The mkdocs repo_url / repo_name / edit_uri settings of a [project.urls] table."""
    url = next((urls[key] for key in KEYS if urls.get(key)), None)
    if url is None:
        return {}
    url = url.rstrip("/").removesuffix(".git")
    parts = urlsplit(url)
    settings = {"repo_url": url, "repo_name": parts.path.strip("/") or parts.netloc}
    if parts.netloc in ("github.com", "gitlab.com"):
        settings["edit_uri"] = "edit/main/docs/"
    return settings


def on_config(config: Any, **kwargs: Any) -> Any:
    """mkdocs hook: fills the repository settings that mkdocs.yml leaves unset."""
    urls = tomllib.loads(PYPROJECT.read_text())["project"].get("urls", {})
    for key, value in repo_settings(urls).items():
        if not config[key]:
            config[key] = value
    return config
