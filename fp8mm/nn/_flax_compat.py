"""Every flax internal and version-dependent name that fp8mm.nn uses, in one place.

`linen.py` and `nnx.py` import only public flax API (`flax.linen`, `flax.nnx`,
`flax.typing`) and this module. pyproject requires flax >= 0.12.1 (the first
with `nnx.iter_modules`, which `quantize_model` uses); tests/test_min_versions.py
runs flax 0.12.1 on jax 0.8.1 and the suite runs the newest flax (0.12.8). What
lives here, and which of those versions need it:

* `autoname_like`: linen auto-naming under another class's prefix. Every
  version: flax has no public hook for it, so this reads the private
  `flax.linen.module._context`, `_unspecified_parent`, `Module._state`
  (`in_setup`, `autoname_cursor`) and `Module._initialization_allowed`, all
  unchanged from 0.12.1 to 0.12.8. If a flax release moves them, only this
  function needs to follow.
* `linen_promote_dtype`, `linen_default_kernel_init`, `nnx_promote_dtype`,
  `nnx_default_kernel_init`, `nnx_default_bias_init`: the defaults of nn.Dense
  and nnx.Linear, which flax keeps in submodules (`flax.linen.dtypes`,
  `flax.linen.linear`, `flax.nnx.nn.dtypes`, `flax.nnx.nn.linear`) and
  re-exports from neither `flax.linen` nor `flax.nnx`. Every version (same
  paths from 0.12.1 to 0.12.8); imported here so that a move is fixed in one place.
* `should_sow`: flax 0.12.1 to 0.12.5 and 0.12.6 on differ. `nnx.capture`
  exists from 0.12.6, and from then on `Module.sow` outside a capture is
  deprecated (it warns); inside one the module holds the private `__captures__`.
  0.12.1 to 0.12.5 have no capture and keep sown values as `nnx.Intermediate`
  attributes, so there the layers always sow.
"""

from __future__ import annotations

from typing import Any

from flax import nnx
from flax.linen import module as _linen_module
from flax.linen.dtypes import promote_dtype as linen_promote_dtype
from flax.linen.linear import default_kernel_init as linen_default_kernel_init
from flax.nnx.nn.dtypes import promote_dtype as nnx_promote_dtype
from flax.nnx.nn.linear import default_bias_init as nnx_default_bias_init
from flax.nnx.nn.linear import default_kernel_init as nnx_default_kernel_init

__all__ = [
    "autoname_like",
    "linen_default_kernel_init",
    "linen_promote_dtype",
    "nnx_default_bias_init",
    "nnx_default_kernel_init",
    "nnx_promote_dtype",
    "should_sow",
]


def autoname_like(module: Any, prefix: str) -> None:
    """Names an unnamed linen submodule `{prefix}_{n}`, sharing the parent's `prefix` counter.

    Call it from the module's `__post_init__` before flax's: flax would otherwise
    name it after its own class. A module built in `setup`, outside a module, or
    with an explicit name is left as it is (flax names those).
    """
    parent = module.parent
    if parent is _linen_module._unspecified_parent:
        parent = _linen_module._context.module_stack[-1]
    if (
        module.name is None
        and isinstance(parent, _linen_module.Module)
        and not parent._state.in_setup
        and parent._initialization_allowed
    ):
        cursor = parent._state.autoname_cursor.get(prefix, 0)
        object.__setattr__(module, "name", f"{prefix}_{cursor}")
        parent._state.autoname_cursor[prefix] = cursor + 1


def should_sow(module: nnx.Module) -> bool:
    """Whether `module.sow` keeps a value now (see the module docstring: flax 0.12.6's capture)."""
    return not hasattr(nnx, "capture") or hasattr(module, "__captures__")
