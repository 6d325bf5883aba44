"""The search's fitness: KL(dense ‖ candidate) of next-token distributions on calibration tokens.

The dense model's top-k next-token log-probabilities are computed once; a candidate re-runs only the layers
after its first change from the current parent (the parent's hidden states entering each sub-layer are cached).
A streamed model's blocks are read in turn for each pass and never written.
"""

from __future__ import annotations

import torch

from ..model import PutriForCausalLM
from ..model.blocks import BlockStore
from ..prune.stream import BlockRunner
from .space import Config
from .supernet import VariantBank


class FitnessEvaluator:
    def __init__(self, model: PutriForCausalLM, ids: torch.Tensor, top_k: int, batch_size: int = 8,
                 blocks: BlockStore | None = None):
        self.model, self.ids = model, ids
        self.runner = BlockRunner(model, batch_size, blocks, save_blocks=False)
        self.bank: VariantBank | None = None
        self.parent: Config | None = None
        self.layers = model.config.num_hidden_layers
        with torch.no_grad():
            hidden = self.runner.blocks(self.runner.embed(ids))
            top = [self.runner.logits(hidden[b]).log_softmax(-1).topk(min(top_k, model.lm_head.out_features), dim=-1)
                   for b in self.runner.head_batches(hidden)]
            self.dense_logp = torch.cat([t.values for t in top])
            self.dense_idx = torch.cat([t.indices for t in top])
            self.dense_rest = (1 - self.dense_logp.exp().sum(-1)).clamp_min(1e-12)

    def _modules(self, config: Config, l: int):
        return (self.bank.module("attn", l, config[2 * l]), self.bank.module("ffn", l, config[2 * l + 1]))

    @torch.no_grad()
    def set_parent(self, config: Config, bank: VariantBank) -> None:
        """Cache the hidden states entering each attention and each FFN of ``config``."""
        self.bank, self.parent = bank, config
        self.entering = []
        x = self.runner.embed(self.ids)
        for l in range(self.layers):
            with self.runner.opened(l) as layer:
                attn, mlp = self._modules(config, l)
                h = self.runner.attention(layer, x, attn)
                self.entering += [x, h]
                x = self.runner.ffn(layer, h, mlp)
        self.parent_final = x

    def kl_from_hidden(self, hidden: torch.Tensor, samples: int) -> float:
        total = 0.0
        for b in self.runner.head_batches(hidden[:samples]):
            logq = self.runner.logits(hidden[b]).log_softmax(-1)
            p_logp = self.dense_logp[b]
            q_top = logq.gather(-1, self.dense_idx[b])
            del logq
            q_rest = (1 - q_top.exp().sum(-1)).clamp_min(1e-12)
            p_rest = self.dense_rest[b]
            kl = (p_logp.exp() * (p_logp - q_top)).sum(-1) + p_rest * (p_rest.log() - q_rest.log())
            total += float(kl.sum())
        return total / (samples * self.ids.shape[1])

    @torch.no_grad()
    def __call__(self, config: Config, samples: int) -> float:
        """Mean per-token KL over the first ``samples`` windows (top-k + rest bucket of the dense distribution)."""
        first = next((i for i, (u, p) in enumerate(zip(config, self.parent)) if u != p), None)
        if first is None:
            return self.kl_from_hidden(self.parent_final, samples)
        l0 = first // 2
        x = self.entering[first][:samples]
        for l in range(l0, self.layers):
            with self.runner.opened(l) as layer:
                attn, mlp = self._modules(config, l)
                if not (l == l0 and first % 2 == 1):
                    x = self.runner.attention(layer, x, attn)
                x = self.runner.ffn(layer, x, mlp)
        return self.kl_from_hidden(x, samples)

    @torch.no_grad()
    def model_kl(self, model: PutriForCausalLM, samples: int) -> float:
        """KL of a physically pruned model on the same tokens (a streamed one: its pruned blocks, read in turn)."""
        runner = BlockRunner(model, self.runner.batch_size, self.runner.block_store, save_blocks=False)
        return self.kl_from_hidden(runner.blocks(runner.embed(self.ids[:samples])), samples)
