"""What the host can know while a function is traced: concrete values and the platform."""

from __future__ import annotations

import jax
import numpy as np


def platform() -> str:
    """Platform computations land on: a `jax.default_device` context counts, then the backend."""
    device = jax.config.jax_default_device
    if device is None:
        return jax.default_backend()
    return getattr(device, "platform", device)


def concrete_float32(x) -> np.ndarray | None:
    """x as a float32 numpy array if its value is known now, None for a tracer."""
    try:
        return np.array(x, np.float32)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None
