"""`QuantizeReport`: which modules a conversion quantized and which it left in 16 bits.

`fp8mm.nn.quantize_model(model, kind, report=True)` returns one with the model,
and `fp8mm.nn.linen.quantize_dense(kind, report=True)` yields one that fills up
while model code is traced inside the context.
"""

from __future__ import annotations

from typing import NamedTuple

from fp8mm.nn._core import QuantSpec

__all__ = ["ModuleRecord", "QuantizeReport"]


class ModuleRecord(NamedTuple):
    """One module a conversion saw.

    Attributes:
      path: the module's path, its names joined by "/" ("block/attn/query"; ""
        for the top module itself).
      type: the module's class name ("DenseGeneral", "LinearGeneral", ...).
      reason: why it was left in 16 bits (skipped), or what it already runs
        (already quantized); "" for a converted module.
    """

    path: str
    type: str
    reason: str = ""


class QuantizeReport:
    """What one `quantize_model` call or `quantize_dense` context did, module by module.

    Every module appears once, by path and type, in the order first seen (a linen
    module traced by both `init` and `apply` in the context is one entry).

    Attributes:
      spec: the `QuantSpec` the conversion applies.
      converted: `ModuleRecord`s of the modules that now run `spec`'s product
        (Dense / Linear, DenseGeneral / LinearGeneral, Einsum).
      already_quantized: fp8mm layers found in the model, which keep running
        their own options (nnx: equal to `spec`, else quantize_model raises).
      skipped: modules left as they are, in 16 bits, each with its reason
        (`filter` returned False, an einsum that is not a matmul, a convolution).
    """

    def __init__(self, spec: QuantSpec):
        if not isinstance(spec, QuantSpec):
            raise TypeError(f"spec must be a QuantSpec, got {type(spec).__name__}")
        self.spec = spec
        self._records: dict[str, dict[tuple[str, str], ModuleRecord]] = {
            "converted": {},
            "already_quantized": {},
            "skipped": {},
        }

    def add(self, which: str, path: str, type_name: str, reason: str = "") -> None:
        """Records a module under `which` ("converted", "already_quantized" or "skipped").

        A module (path and type) recorded before, in any list, keeps its first record.
        """
        if which not in self._records:
            raise ValueError(f"which must be one of {tuple(self._records)}, got {which!r}")
        key = (path, type_name)
        if any(key in records for records in self._records.values()):
            return
        self._records[which][key] = ModuleRecord(path, type_name, reason)

    @property
    def converted(self) -> tuple[ModuleRecord, ...]:
        return tuple(self._records["converted"].values())

    @property
    def already_quantized(self) -> tuple[ModuleRecord, ...]:
        return tuple(self._records["already_quantized"].values())

    @property
    def skipped(self) -> tuple[ModuleRecord, ...]:
        return tuple(self._records["skipped"].values())

    def __repr__(self) -> str:
        return (
            f"QuantizeReport(kind={self.spec.kind!r}, converted={len(self.converted)}, "
            f"already_quantized={len(self.already_quantized)}, skipped={len(self.skipped)})"
        )

    def __str__(self) -> str:
        lines = [
            f"{self.spec.kind}: {len(self.converted)} converted, "
            f"{len(self.already_quantized)} already quantized, {len(self.skipped)} skipped"
        ]
        for title, records in (
            ("converted", self.converted),
            ("already quantized", self.already_quantized),
            ("skipped", self.skipped),
        ):
            for r in records:
                why = f": {r.reason}" if r.reason else ""
                lines.append(f"  {title:<17} {r.path or '<top>'} ({r.type}){why}")
        return "\n".join(lines)
