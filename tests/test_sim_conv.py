"""Convolutions as matmul sequences (target/conv_tiles.py): right numbers, formula cycles, race-free."""
import numpy as np
import pytest

from target.conv_tiles import conv_program
from target.simulator import simulate


@pytest.mark.parametrize("shape,mode,cycles", [
    ((3, 32, 32, 16, 7, 7, 2, 3), "im2col", 2 * max(64, 16 * 16)),       # 147 rows -> 2 K chunks
    ((16, 12, 12, 8, 1, 1, 1, 0), "taps", 144),
    ((16, 12, 12, 8, 3, 3, 1, 1), "taps", 9 * 144),
    ((16, 12, 12, 8, 3, 3, 1, 1), "packed_taps", 5 * 144),
])
def test_conv_numbers_and_cycles(shape, mode, cycles):
    prog, tens, ref = conv_program(*shape, mode=mode)
    res = simulate(prog, "inf2", tens)
    np.testing.assert_allclose(res.outputs["y"], ref, rtol=2e-3, atol=2e-3)
    assert res.report.engine_active_cycles["tensor"] == cycles
    C, H, W, K, R, S, st, pad = shape
    OH = (H + 2 * pad - R) // st + 1
    assert res.report.macs == C * R * S * K * OH * OH
