import os

# Tests compare float32 results exactly; keep XLA's CPU matmuls in full precision.
os.environ.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "highest")

import hypothesis

hypothesis.settings.register_profile("ci", max_examples=8, deadline=None, derandomize=True)
hypothesis.settings.register_profile("thorough", max_examples=400, deadline=None)
hypothesis.settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


import jax  # noqa: E402
import pytest  # noqa: E402


def _gpu() -> bool:
    return jax.default_backend() == "gpu"


@pytest.fixture(params=["xla", "pallas"])
def implementation(request):
    """Every implementation of the primitives: the XLA reference, and the Pallas kernels
    (interpreted on CPU, compiled on a GPU)."""
    return request.param
