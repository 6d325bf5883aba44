"""ONNX Runtime contrib ops as onnxscript functions, for ``torch.onnx.export``'s custom translation table.

Script mode (``onnxscript.script``) because the contrib ops have no schema in ``onnx``; the annotations give the
output count and types. (No ``from __future__ import annotations``: onnxscript evaluates them.)
"""

import onnxscript
from onnxscript import FLOAT, INT32

microsoft = onnxscript.values.Opset("com.microsoft", 1)


@onnxscript.script(microsoft)
def group_query_attention_onnx(query: FLOAT, key: FLOAT, value: FLOAT, past_key: FLOAT, past_value: FLOAT,
                               seqlens_k: INT32, total_sequence_length: INT32, num_heads: int, kv_num_heads: int,
                               scale: float) -> tuple[FLOAT, FLOAT, FLOAT]:
    output, present_key, present_value = microsoft.GroupQueryAttention(
        query, key, value, past_key, past_value, seqlens_k, total_sequence_length, num_heads=num_heads,
        kv_num_heads=kv_num_heads, scale=scale)
    return output, present_key, present_value
