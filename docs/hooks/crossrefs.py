"""Code spans that name fp8mm objects become links in the docs site (mkdocs.yml loads this).

The docstrings and pages write references as plain code spans (`quantize_dense`,
`fp8mm.nn.sharding.partition`), which read well in `help()` and on GitHub. Two hooks
turn those that name an fp8mm object into mkdocs-autorefs cross-references:

* `DocstringCrossrefs`, a griffe extension (mkdocstrings' `extensions:`), rewrites
  docstrings: a span holding a name, dotted path or call (`QuantSpec`,
  `fp8mm.nn.KINDS`, `quantize_dense(kind)`) that resolves, in the scope of the
  object the docstring belongs to, to an fp8mm object is wrapped in an autoref.
* `on_page_content`, a mkdocs hook, does the same for the written pages (those
  outside docs/api/, which have no scope): a span holding a full `fp8mm.` path,
  or the name of exactly one object that docs/api/*.md renders (or a member of a
  module it renders), e.g. `quantize_dense(kind)`. bitsandbytes' spellings
  (`F.quantize_blockwise`, `research.switchback_bnb`) name nothing of fp8mm's
  and stay plain code.

The autorefs are optional: one whose target the site does not render (a private
module's helper) stays plain code, without a warning, so the build stays strict.
"""

from __future__ import annotations

import html
import pathlib
import re
from typing import Any

import griffe

# A code span that is one name, a dotted path, or either followed by a call's arguments.
_NAME = r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*"
_DOC_SPAN = re.compile(rf"(?<![`\[])`(?P<name>{_NAME})(?P<call>\([^`\n]*\))?`(?!`)")
# A written page's inline code holding a name, path or call (HTML-escaped).
_PAGE_SPAN = re.compile(rf"<code>(?P<name>{_NAME})(?P<call>\([^<]*\))?</code>")
_API_PAGES = pathlib.Path(__file__).resolve().parents[1] / "api"


def _autoref(identifier: str, slug: str | None, inner: str) -> str:
    slug_attr = f' slug="{html.escape(slug)}"' if slug and slug != identifier else ""
    return f'<autoref identifier="{html.escape(identifier)}"{slug_attr} optional>{inner}</autoref>'


def _parameters(obj: griffe.Object) -> set[str]:
    """The parameter names of a function, or of a class's constructor."""
    try:
        params = obj.parameters if (obj.is_function or obj.is_class) else ()
    except (AttributeError, griffe.AliasResolutionError):
        return set()
    return {p.name for p in params}


class DocstringCrossrefs(griffe.Extension):
    """Wraps each docstring code span that names an fp8mm object in an optional autoref."""

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        if pkg.name == "fp8mm":
            self._root = pkg
            self._walk(pkg)

    def _walk(self, obj: griffe.Object) -> None:
        if obj.docstring is not None:
            obj.docstring.value = self._rewrite(obj, obj.docstring.value)
        for member in obj.members.values():
            if not member.is_alias:  # an alias's docstring is its target's, done there
                self._walk(member)

    def _rewrite(self, obj: griffe.Object, text: str) -> str:
        lines, fenced = [], False
        for line in text.split("\n"):
            stripped = line.lstrip()
            if stripped.startswith("```"):
                fenced = not fenced
            elif not fenced and not stripped.startswith((">>>", "...")):
                line = _DOC_SPAN.sub(lambda m: self._link(obj, m), line)
            lines.append(line)
        return "\n".join(lines)

    def _link(self, obj: griffe.Object, match: re.Match) -> str:
        if match["name"] in _parameters(obj):  # `state` is the argument, not fp8mm.state
            return match[0]
        target = self._resolve(obj, match["name"])
        if target is None:
            return match[0]
        identifier, canonical = target
        if canonical == obj.canonical_path:  # an object naming itself
            return match[0]
        return _autoref(identifier, canonical, match[0])

    def _resolve(self, obj: griffe.Object, name: str) -> tuple[str, str] | None:
        """(identifier, canonical path) of the fp8mm object `name` means in `obj`'s scope."""
        first, *rest = name.split(".")
        if first == "fp8mm":
            target: Any = self._root
        else:
            try:
                path = obj.resolve(first)
            except griffe.NameResolutionError:
                return None
            if not path.startswith("fp8mm."):
                return None  # flax's nn.Dense, jax.jit, ...
            try:
                target = self._root[path.removeprefix("fp8mm.")]
            except (KeyError, griffe.AliasResolutionError):
                return None
        try:
            for part in rest:
                target = target[part]
            if target.is_alias:
                target = target.final_target
            canonical = target.path
        except (KeyError, griffe.AliasResolutionError, griffe.CyclicAliasError):
            return None
        # A full path is registered where it is rendered; a scoped name by its canonical path.
        return (name if first == "fp8mm" else canonical), canonical


# Short name -> (rendered path, canonical path) of the objects docs/api/*.md renders, for
# the names that mean one object only.
_rendered: dict[str, tuple[str, str]] = {}


def _rendered_names() -> dict[str, tuple[str, str]]:
    """The rendered path is the one a page gives it (`::: path`), else the module's member path.

    The written pages link to that path, under which the object has exactly one
    heading: its canonical path may have several (fp8mm.nn and fp8mm.nn.linen
    both render int8_inference_params), which autorefs cannot choose between
    from outside docs/api/.
    """
    pkg = griffe.load("fp8mm")
    found: dict[str, dict[str, str]] = {}

    def add(obj: Any, path: str, explicit: bool) -> None:
        try:
            canonical = obj.canonical_path
        except (griffe.AliasResolutionError, griffe.CyclicAliasError):
            return
        paths = found.setdefault(path.rsplit(".", 1)[-1], {})
        if explicit or canonical not in paths:
            paths[canonical] = path

    idents = [
        ident
        for page in sorted(_API_PAGES.glob("*.md"))
        for ident in re.findall(r"^::: (fp8mm\S*)", page.read_text(), re.M)
    ]
    for ident in idents:
        try:
            obj = pkg[ident.removeprefix("fp8mm.")] if ident != "fp8mm" else pkg
        except (KeyError, griffe.AliasResolutionError):
            continue
        if obj.is_module:
            for name, member in obj.members.items():
                if not name.startswith("_") and member.is_public:
                    add(member, f"{ident}.{name}", explicit=False)
    for ident in idents:  # an explicit page entry wins over a module's member
        try:
            add(pkg[ident.removeprefix("fp8mm.")] if ident != "fp8mm" else pkg, ident, True)
        except (KeyError, griffe.AliasResolutionError):
            continue
    return {
        name: (path, canonical)
        for name, paths in found.items()
        if len(paths) == 1
        for canonical, path in paths.items()
    }


def on_page_content(html_text: str, page: Any, **kwargs: Any) -> str:
    """mkdocs hook: the written pages' code spans naming fp8mm objects become optional autorefs."""
    if page.file.src_uri.startswith("api/"):
        return html_text  # docstrings: linked in their own scope by DocstringCrossrefs
    if not _rendered:
        _rendered.update(_rendered_names())

    def link(match: re.Match) -> str:
        name = match["name"]
        if name.startswith("fp8mm."):
            return _autoref(name, None, match[0])
        if name not in _rendered:
            return match[0]
        return _autoref(*_rendered[name], match[0])

    return _PAGE_SPAN.sub(link, html_text)
