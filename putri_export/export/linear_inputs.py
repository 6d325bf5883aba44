"""Calibration statistics of every linear layer's input, for the exporters' quantizers (llama.cpp's importance
matrix, GPTQ for ONNX int4): calibration text streamed through the PyTorch model block by block (a streamed
model's blocks are opened in turn), one accumulator per distinct input (q/k/v share theirs, gate/up theirs).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from typing import Protocol

import torch
from torch import nn

from ..model.blocks import BlockStore
from ..prune.stream import BlockRunner, capture_inputs, sequential

# The sub-layer whose input is observed → every linear that multiplies that same input.
SHARED_INPUTS = {"self_attn.q_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
                 "self_attn.o_proj": ("self_attn.o_proj",),
                 "mlp.gate_proj": ("mlp.gate_proj", "mlp.up_proj"),
                 "mlp.down_proj": ("mlp.down_proj",)}


class Accumulator(Protocol):
    def add_batch(self, x: torch.Tensor) -> None: ...


def sublayer(layer: nn.Module, name: str) -> nn.Module | None:
    """``layer.self_attn.q_proj`` for ``"self_attn.q_proj"``; None where the sub-layer was removed."""
    owner, _, attr = name.partition(".")
    return getattr(getattr(layer, owner, None), attr, None)


@torch.no_grad()
def observe_linear_inputs(model: nn.Module, ids: torch.Tensor, make: Callable[[int], Accumulator],
                          blocks: BlockStore | None = None, batch_size: int = 8,
                          on_block: Callable[[int, nn.Module, dict[str, Accumulator]], None] | None = None,
                          desc: str = "calibration statistics", progress: bool = True
                          ) -> tuple[dict[str, Accumulator], torch.Tensor]:
    """``make(width)`` accumulators fed every input row of each observed linear (keys of :data:`SHARED_INPUTS`,
    named ``model.layers.{l}.{sub-layer}``), and the hidden states leaving the last block.

    ``on_block(l, layer, accumulators of block l)`` runs while block l is still open (its weights present): a
    quantizer uses the block's statistics there and may drop them (``dict.clear``) to bound memory.
    """
    runner = BlockRunner(model, batch_size, blocks, save_blocks=False)
    stats: dict[str, Accumulator] = {}
    hooks = ExitStack()

    def observe(l: int, _x: torch.Tensor) -> None:  # the block is open: hook its linears for this pass
        layer = runner.layers[l]
        for name in SHARED_INPUTS:
            module = sublayer(layer, name)
            if module is not None:
                acc = stats.setdefault(f"model.layers.{l}.{name}", make(module.in_features))
                hooks.enter_context(capture_inputs(module, acc.add_batch))

    def finish(l: int, h: torch.Tensor) -> torch.Tensor:  # the FFN runs here so that on_block sees the block open
        layer = runner.layers[l]
        out = runner.ffn(layer, h)
        hooks.close()
        if on_block is not None:
            prefix = f"model.layers.{l}."
            mine = {k: v for k, v in stats.items() if k.startswith(prefix)}
            on_block(l, layer, mine)
            for k in [k for k in stats if k.startswith(prefix) and k not in mine]:
                del stats[k]
        return out

    hidden = sequential(runner, runner.embed(ids), attention=observe, ffn=finish, desc=desc, progress=progress)
    return stats, hidden
