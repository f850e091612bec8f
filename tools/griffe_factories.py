"""Griffe extension for the docs build (mkdocs.yml): functions built by factories.

Some public functions are made by a factory and bound at module level
(`matmul_fp8_mixed = _public_op(...)`, the `fp8mm.nn` `dot_general` factories). Griffe's
static analysis sees an attribute assigned a call; this extension imports each such
public attribute and, where it is a function of that name defined in that module,
replaces the attribute with the inspected function (signature and docstring), so the
API reference documents it like any other function. Everything else stays static.
"""

from __future__ import annotations

import inspect
from typing import Any

import griffe


class InspectFactoryFunctions(griffe.Extension):
    """Replace module attributes bound to factory-made functions by the inspected functions."""

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        self._module(pkg, loader)

    def _module(self, mod: griffe.Module, loader: griffe.GriffeLoader) -> None:
        inspected = None
        for name, member in list(mod.members.items()):
            if member.is_alias:
                continue
            if member.is_module:
                self._module(member, loader)
                continue
            if not member.is_attribute or name.startswith("_"):
                continue
            if not isinstance(member.value, griffe.ExprCall):
                continue
            try:
                runtime = griffe.dynamic_import(member.path)
            except ImportError:
                continue
            made_here = (
                inspect.isfunction(runtime)
                and runtime.__name__ == name
                and runtime.__module__ == mod.path
            )
            if not made_here:
                continue
            if inspected is None:
                inspected = griffe.inspect(
                    mod.path,
                    filepath=mod.filepath,
                    docstring_parser=loader.docstring_parser,
                    docstring_options=loader.docstring_options,
                )
            if name in inspected.members and inspected[name].is_function:
                mod.set_member(name, inspected[name])
