"""How many parameters to remove where: the 2SSP/Putri split between attention and FFN.

Sparsity is a fraction of the transformer-block parameters (embeddings and lm_head excluded).
With P_attn, P_ffn the parameters of one block's attention and FFN and L blocks,

    n_attn = round(L * s ** ((P_ffn / P_attn) / alpha)),  alpha = 1.5

attention-layer equivalents go (n_attn * K head groups, K = KV heads per layer), and the rest of
the budget comes uniformly from the FFNs: each keeps round(I * (1 - r_ffn)) neurons — or, with ``align`` N, a
multiple of N neurons (:func:`aligned_widths`: no more neurons in total than the unaligned split, so the target
is still met, short of it by less than N neurons' parameters).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import PutriError
from ..model import PutriForCausalLM, param_counts
from .settings import check_sparsity


@dataclass
class SplitBudget:
    sparsity: float
    alpha: float
    block_params: int
    target_removed: int  # parameters the target asks to remove
    attn_layer_params: float  # P_attn (mean over attention layers)
    ffn_layer_params: float  # P_ffn (mean over FFN layers)
    n_attn: int  # attention-layer equivalents to remove
    groups_per_layer: int  # K: head groups removed per attention-layer equivalent
    ffn_keep: list[int]  # neurons kept per layer
    align: int = 1  # every kept FFN width is a multiple of this

    @property
    def head_groups(self) -> int:
        return self.n_attn * self.groups_per_layer


def aligned_widths(ideal: list[float], widths: list[int], align: int) -> list[int]:
    """Per-layer widths that are multiples of ``align`` (at most each layer's ``widths``), summing to at most
    ``sum(ideal)`` and as close to it as ``align`` allows: every ideal width is rounded down, then the spare
    neurons go back ``align`` at a time to the layers that lost the most."""
    if align < 1:
        raise PutriError(f"align must be >= 1, got {align}")
    kept = [min(int(x // align), w // align) * align for x, w in zip(ideal, widths)]
    spare = sum(ideal) - sum(kept)
    for i in sorted(range(len(kept)), key=lambda i: (kept[i] - ideal[i], i)):
        if spare < align:
            break
        if kept[i] + align <= widths[i]:
            kept[i] += align
            spare -= align
    return kept


def split_budget(model: PutriForCausalLM, sparsity: float, alpha: float = 1.5, align: int = 1) -> SplitBudget:
    """The attention/FFN split of ``sparsity`` (kept FFN widths multiples of ``align``); fails clearly when it
    cannot be met."""
    check_sparsity(sparsity)
    if alpha <= 0:
        raise PutriError(f"alpha must be > 0, got {alpha}")
    c = model.config
    counts = param_counts(model)
    attn = [li for li in counts.layers if li.kv_heads > 0]
    ffn = [li for li in counts.layers if li.ffn > 0]
    if not attn or not ffn:
        raise PutriError("the attention/FFN budget split needs a model with both attention and FFN layers; "
                         "this one has " + ("no attention" if not attn else "no FFN"))
    p_attn = sum(li.attn_params for li in attn) / len(attn)
    p_ffn = sum(li.ffn_params for li in ffn) / len(ffn)
    n_layers = c.num_hidden_layers
    target = round(sparsity * counts.blocks)
    n_attn = min(round(n_layers * sparsity ** ((p_ffn / p_attn) / alpha)), len(attn))
    from_ffn = target - n_attn * p_attn
    ffn_total = sum(li.ffn_params for li in ffn)
    if from_ffn < 0:
        raise PutriError(
            f"sparsity {sparsity}: the split removes {n_attn} attention layer(s) ({n_attn * p_attn:,.0f} parameters), "
            f"more than the whole target ({target:,}); lower alpha or raise the sparsity")
    if from_ffn > ffn_total:
        raise PutriError(f"sparsity {sparsity}: needs {from_ffn:,.0f} FFN parameters removed but the FFNs hold only "
                         f"{ffn_total:,}")
    r_ffn = from_ffn / ffn_total
    widths = c.intermediate_size_per_layer
    if align > 1:
        keep = aligned_widths([w * (1 - r_ffn) for w in widths], widths, align)
    else:
        keep = [round(w * (1 - r_ffn)) for w in widths]
    groups = max(c.num_key_value_heads_per_layer)
    return SplitBudget(sparsity, alpha, counts.blocks, target, p_attn, p_ffn, n_attn, groups, keep, align)
