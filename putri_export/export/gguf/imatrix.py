"""The importance matrix llama.cpp's quantizer weighs rounding errors with: for every matmul weight, the mean of
x² of each input column over calibration tokens (the diagonal of the Gram matrix the pruner accumulates, divided
by the token count), named after the GGUF tensors each input feeds.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ...model.blocks import BlockStore
from ...prune.scores import ChannelStats
from ..linear_inputs import observe_linear_inputs

# GGUF tensor (per layer) → the HF linear whose input it multiplies (q/k/v and gate/up share theirs).
_INPUT_OF = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.q_proj", "attn_v": "self_attn.q_proj",
             "attn_qkv": "self_attn.q_proj", "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj",
             "ffn_up": "mlp.gate_proj", "ffn_down": "mlp.down_proj"}


@torch.no_grad()
def importance_matrix(model: nn.Module, ids: torch.Tensor, blocks: BlockStore | None = None, batch_size: int = 8,
                      progress: bool = True) -> dict[str, np.ndarray]:
    """HF linear name (``model.layers.{l}.self_attn.q_proj``, …, ``lm_head``) → mean x² of its input columns."""
    stats, hidden = observe_linear_inputs(model, ids, ChannelStats, blocks, batch_size, desc="importance matrix",
                                          progress=progress)
    head = stats["lm_head"] = ChannelStats(hidden.shape[-1])
    for start in range(0, hidden.shape[0], batch_size):
        head.add_batch(model.model.norm(hidden[start:start + batch_size]).float())
    return {name: acc.mean_square.float().cpu().numpy() for name, acc in stats.items()}


def gguf_importance(by_module: dict[str, np.ndarray], tensor_names: list[str]) -> dict[str, np.ndarray]:
    """The entries for the GGUF tensors ``tensor_names`` (``blk.{l}.{kind}.weight``, ``output.weight``) whose input
    was observed; placeholders written for missing sub-layers have none (llama.cpp quantizes them plainly)."""
    out = {}
    for name in tensor_names:
        parts = name.split(".")
        if name == "output.weight":
            source = "lm_head"
        elif len(parts) == 4 and parts[0] == "blk" and parts[3] == "weight" and parts[2] in _INPUT_OF:
            source = f"model.layers.{parts[1]}.{_INPUT_OF[parts[2]]}"
        else:
            continue
        if source in by_module:
            out[name] = by_module[source]
    return out
