import os

# Tests compare float32 results exactly; keep XLA's CPU matmuls in full precision.
os.environ.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "highest")

import hypothesis

hypothesis.settings.register_profile("ci", max_examples=6, deadline=None, derandomize=True)
hypothesis.settings.register_profile("thorough", max_examples=400, deadline=None)
hypothesis.settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


import pytest  # noqa: E402

from tests import helpers  # noqa: E402


@pytest.fixture(params=helpers.IMPLEMENTATIONS)
def implementation(request):
    """Every implementation of the primitives, injected into the shared suites.

    "xla" (the reference) and "pallas" (the first kernel that serves each call:
    interpreted on the CPU, compiled on a GPU) everywhere; on a GPU also each
    kernel by name ("pallas_triton", "pallas_mosaic_gpu"). A case that a named
    kernel does not serve (a primitive it lacks, a shape or device it rejects)
    is skipped, not failed: "pallas" covers it.
    """
    return request.param


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    try:
        return (yield)
    except NotImplementedError as e:
        params = getattr(item, "callspec", None)
        impl = params.params.get("implementation") if params else None
        if impl in helpers.KERNEL_NAMES and "cannot serve this call" in str(e):
            pytest.skip(f"{impl} does not serve this case: {e}")
        raise
