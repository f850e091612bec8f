"""The `Examples:` sections of the public docstrings run as doctests."""

import doctest

import pytest

import fp8mm.codebooks
import fp8mm.functional
import fp8mm.functional_fp8
import fp8mm.functional_switchback
import fp8mm.nn.linen
import fp8mm.nn.nnx
import fp8mm.nn.sharding
import fp8mm.ops._switchback_linear

MODULES = [
    fp8mm.codebooks,
    fp8mm.functional,
    fp8mm.functional_fp8,
    fp8mm.functional_switchback,
    fp8mm.nn.linen,
    fp8mm.nn.nnx,
    fp8mm.nn.sharding,
    fp8mm.ops._switchback_linear,
]


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"{module.__name__} has no examples"
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed"
