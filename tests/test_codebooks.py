import numpy as np
import pytest

import fp8mm
from tests import golden
from tests.helpers import assert_bits_equal

CASES = {
    "fp8_e4m3": lambda: fp8mm.create_fp8_map(True, 4, 3, 8),
    "fp8_e5m2": lambda: fp8mm.create_fp8_map(True, 5, 2, 8),
    "fp8_e2m5": lambda: fp8mm.create_fp8_map(True, 2, 5, 8),
    "fp8_unsigned_e4m4": lambda: fp8mm.create_fp8_map(False, 4, 4, 8),
    "dynamic": lambda: fp8mm.create_dynamic_map(),
    "dynamic_unsigned": lambda: fp8mm.create_dynamic_map(signed=False),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bit_identical_to_bitsandbytes(name):
    code = CASES[name]()
    assert code.dtype == np.float32 and code.shape == (256,)
    assert_bits_equal(code, golden.get("code", name), name)


def test_fp8_map_properties():
    code = fp8mm.create_fp8_map()
    assert np.all(np.diff(code) >= 0)
    assert code.max() == 1.0 and code.min() == -1.0
    assert np.isfinite(code).all()
    assert (code == 0).sum() == 2  # +0 and -0 both present in the signed grid
    # Not float8_e4m3fn: bnb's e4m3 grid tops out at 480x its smallest normal.
    e4m3 = fp8mm.create_fp8_map(True, 4, 3, 8)
    assert e4m3[255] / e4m3[e4m3 > 0].min() != 448 / 2**-9


def test_dynamic_map_range():
    code = fp8mm.create_dynamic_map()
    assert np.isclose(code.min(), -0.99297, atol=1e-5) and code.max() == 1.0


def test_named_codes_are_cached_and_read_only():
    assert fp8mm.e4m3_code() is fp8mm.e4m3_code()
    with pytest.raises(ValueError):
        fp8mm.e4m3_code()[0] = 0.0
    np.testing.assert_array_equal(fp8mm.e5m2_code(), fp8mm.create_fp8_map(True, 5, 2, 8))


@pytest.mark.parametrize(
    "args",
    [
        dict(signed=True, exponent_bits=4, precision_bits=4, total_bits=8),
        dict(signed=True, exponent_bits=-1, precision_bits=2, total_bits=8),
        dict(signed=True, exponent_bits=4, precision_bits=3, total_bits=9),
    ],
)
def test_fp8_map_bad_args(args):
    with pytest.raises(ValueError, match="bits"):
        fp8mm.create_fp8_map(**args)


def test_dynamic_code_is_the_cached_read_only_default():
    from fp8mm.codebooks import dynamic_code

    assert dynamic_code() is dynamic_code()
    np.testing.assert_array_equal(dynamic_code(), fp8mm.create_dynamic_map())
    with pytest.raises(ValueError):
        dynamic_code()[0] = 0.0


def test_dynamic_map_bad_args():
    with pytest.raises(ValueError, match="max_exponent_bits"):
        fp8mm.create_dynamic_map(max_exponent_bits=8)
