"""Every flax internal and version-dependent name that fp8mm.nn uses, in one place.

`linen.py` and `nnx.py` import only public flax API (`flax.linen`, `flax.nnx`,
`flax.typing`) and this module. What lives here, and which flax versions need it
(pyproject requires flax >= 0.12.1, the first with `nnx.iter_modules`, which
`quantize_model` uses; tests/test_min_versions.py runs flax 0.12.1 on jax 0.8.1,
and the suite runs flax 0.12.8 on jax 0.10.2; checked against flax's tags
v0.10.0 ... v0.12.7 and its main branch at 0.12.8). The fallbacks below for
flax < 0.12.1 predate that minimum and are unreachable under it:

* `autoname_like`: linen auto-naming under another class's prefix. Every
  version: flax has no public hook for it, so this reads the private
  `flax.linen.module._context`, `_unspecified_parent`, `Module._state`
  (`in_setup`, `autoname_cursor`) and `Module._initialization_allowed`, all
  unchanged from 0.10.0 to 0.12.8. If a flax release moves them, only this
  function needs to follow.
* `PromoteDtypeFn`: in `flax.typing` since flax 0.10.6 (the release that gave
  nn.Dense / nnx.Linear their `promote_dtype` field); older flax has no such
  type, so a plain callable type stands in.
* `linen_promote_dtype`, `linen_default_kernel_init`, `nnx_promote_dtype`,
  `nnx_default_kernel_init`, `nnx_default_bias_init`: the defaults of nn.Dense
  and nnx.Linear, which flax keeps in submodules (`flax.linen.dtypes`,
  `flax.linen.linear`, `flax.nnx.nn.dtypes`, `flax.nnx.nn.linear`) and
  re-exports from neither `flax.linen` nor `flax.nnx`. Same paths in every
  version; imported here so that a move is fixed in one place.
* `nnx_data`: `nnx.data` (marks an attribute as data, e.g. an absent bias) exists
  from flax 0.11.0; in 0.10.x every plain attribute is kept as it is, so the
  value itself stands in.
* `should_sow`: `nnx.capture` exists from flax 0.12.6, and from then on
  `Module.sow` outside a capture is deprecated (it warns); inside one the module
  holds the private `__captures__`. Older flax has no capture and keeps sown
  values as `nnx.Intermediate` attributes, so there the layers always sow.
* `preferred_element_type`: `nnx.Linear.preferred_element_type` exists from flax
  0.12.0; an older Linear has none, which means None.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.typing
from flax import nnx
from flax.linen import module as _linen_module
from flax.linen.dtypes import promote_dtype as linen_promote_dtype
from flax.linen.linear import default_kernel_init as linen_default_kernel_init
from flax.nnx.nn.dtypes import promote_dtype as nnx_promote_dtype
from flax.nnx.nn.linear import default_bias_init as nnx_default_bias_init
from flax.nnx.nn.linear import default_kernel_init as nnx_default_kernel_init

__all__ = [
    "PromoteDtypeFn",
    "autoname_like",
    "linen_default_kernel_init",
    "linen_promote_dtype",
    "nnx_data",
    "nnx_default_bias_init",
    "nnx_default_kernel_init",
    "nnx_promote_dtype",
    "preferred_element_type",
    "should_sow",
]

PromoteDtypeFn: Any = getattr(flax.typing, "PromoteDtypeFn", Callable[..., Any])  # < 0.10.6

nnx_data: Callable[[Any], Any] = getattr(nnx, "data", lambda value: value)  # < 0.11.0


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


def preferred_element_type(linear: nnx.Module) -> Any:
    """`linear.preferred_element_type`; None on a flax < 0.12 nnx.Linear, which has none."""
    return getattr(linear, "preferred_element_type", None)
