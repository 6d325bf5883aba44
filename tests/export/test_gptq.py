"""GPTQ for ONNX int4: the rounding math, and the codes as ONNX Runtime's MatMulNBits kernel reads them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from putri_export.export.onnx.gptq import LEVELS, MID, dequantize, gptq_quantize, pack_matmul_nbits


def _layer(rows: int = 48, cols: int = 96, tokens: int = 2048, seed: int = 0):
    """A weight and correlated inputs with a few loud channels, as real activations have."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(cols, cols, generator=g) / cols**0.5 + torch.eye(cols)
    x = torch.randn(tokens, cols, generator=g) @ mix
    x[:, :4] *= 8.0
    return torch.randn(rows, cols, generator=g), x


def _output_error(w: torch.Tensor, q: torch.Tensor, x: torch.Tensor) -> float:
    return float((x @ (w - q).T).pow(2).mean())


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("act_order", [True, False])
def test_gptq_lowers_the_output_error_of_round_to_nearest_on_its_own_grid(symmetric, act_order):
    w, x = _layer()
    h = (x.T @ x).double()
    codes, scales, zeros = gptq_quantize(w, h, symmetric=symmetric, act_order=act_order)
    assert codes.dtype == torch.uint8 and int(codes.max()) < LEVELS
    assert scales.shape == zeros.shape == (48, 3)
    if symmetric:
        assert (zeros == MID).all()
    q = dequantize(codes, scales, zeros)
    # plain rounding onto the very same grid (same scales and zero points)
    zeros_full = zeros.float().repeat_interleave(32, dim=1)
    scales_full = scales.repeat_interleave(32, dim=1)
    rtn = ((w / scales_full + zeros_full).round().clamp(0, LEVELS - 1) - zeros_full) * scales_full
    assert _output_error(w, q, x) < 0.7 * _output_error(w, rtn, x)


def test_gptq_keeps_always_zero_inputs_at_zero_and_survives_a_singular_gram_matrix():
    w, x = _layer(cols=64)
    x[:, 10] = 0.0  # a dead channel: H is singular without the guard
    codes, scales, zeros = gptq_quantize(w, (x.T @ x).double())
    q = dequantize(codes, scales, zeros)
    assert torch.isfinite(q).all() and (q[:, 10] == 0).all()


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("cols", [96, 72, 160])  # whole blocks; a partial last block; an odd block count
def test_packed_codes_are_what_onnxruntime_multiplies_by(symmetric, cols):
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    w, x = _layer(rows=40, cols=cols, tokens=512)
    codes, scales, zeros = gptq_quantize(w, (x.T @ x).double(), symmetric=symmetric)
    packed = pack_matmul_nbits(codes, scales, None if symmetric else zeros)
    names = ["b", "scales"] + ([] if symmetric else ["zero_points"])
    node = helper.make_node("MatMulNBits", ["x"] + names, ["y"], domain="com.microsoft", K=cols, N=40, bits=4,
                            block_size=32, accuracy_level=0)  # fp32 arithmetic: exact up to summation order
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, cols])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 40])],
                              [numpy_helper.from_array(a, n) for a, n in zip(packed, names)])
    opsets = [helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    inputs = x[:8].numpy()
    got = session.run(None, {"x": inputs})[0]
    want = inputs @ dequantize(codes, scales, zeros).numpy().T
    np.testing.assert_allclose(got, want, atol=1e-4 * np.abs(want).max())
