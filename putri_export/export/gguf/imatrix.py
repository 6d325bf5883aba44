"""The importance matrix llama.cpp's quantizer weighs rounding errors with: for every matmul weight, the mean of
x² of each input column over calibration tokens (the diagonal of the Gram matrix the pruner accumulates, divided
by the token count). Computed by running calibration text through the PyTorch model block by block (a streamed
model's blocks are opened in turn), and named after the GGUF tensors each input feeds.
"""

from __future__ import annotations

from contextlib import ExitStack

import numpy as np
import torch
from torch import nn

from ...model.blocks import BlockStore
from ...prune.scores import ChannelStats
from ...prune.stream import BlockRunner, capture_inputs, sequential

# GGUF tensor (per layer) → the HF linear whose input it multiplies (q/k/v and gate/up share theirs).
_INPUT_OF = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.q_proj", "attn_v": "self_attn.q_proj",
             "attn_qkv": "self_attn.q_proj", "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj",
             "ffn_up": "mlp.gate_proj", "ffn_down": "mlp.down_proj"}
_OBSERVED = sorted(set(_INPUT_OF.values()))


@torch.no_grad()
def importance_matrix(model: nn.Module, ids: torch.Tensor, blocks: BlockStore | None = None, batch_size: int = 8,
                      progress: bool = True) -> dict[str, np.ndarray]:
    """HF linear name (``model.layers.{l}.self_attn.q_proj``, …, ``lm_head``) → mean x² of its input columns."""
    runner = BlockRunner(model, batch_size, blocks, save_blocks=False)
    stats: dict[str, ChannelStats] = {}
    hooks = ExitStack()

    def observe(l: int, _x: torch.Tensor) -> None:  # the block is open: hook its linears for this pass
        layer = runner.layers[l]
        for name in _OBSERVED:
            owner, _, attr = name.partition(".")
            module = getattr(getattr(layer, owner, None), attr, None)  # absent sub-layers are None
            if module is not None:
                acc = stats.setdefault(f"model.layers.{l}.{name}", ChannelStats(module.in_features))
                hooks.enter_context(capture_inputs(module, acc.add_batch))

    def release(_l: int, _x_in: torch.Tensor, _x_out: torch.Tensor) -> None:
        hooks.close()

    hidden = sequential(runner, runner.embed(ids), attention=observe, after_block=release, desc="importance matrix",
                        progress=progress)
    head = stats["lm_head"] = ChannelStats(hidden.shape[-1])
    for b in runner.head_batches(hidden):
        head.add_batch(model.model.norm(hidden[b]).float())
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
