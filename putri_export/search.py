"""Týr-style global search of per-layer widths on top of Putri's local pruners.

Plumbing around three small units: ``level_grid``/``mutate`` (the search space and its moves, which
keep the attention and FFN budgets fixed as Týr does), ``FitnessEvaluator`` (KL divergence to the
dense model's cached top-k next-token distribution, re-running only the layers after a candidate's
first change from its parent), and ``evolve`` (offspring scored in stages of growing calibration
size, parent always kept). ``search`` iterates coarse to fine, rebuilding the supernet around the
best configuration with half the step, and saves its progress after every iteration.
"""

from __future__ import annotations

import hashlib
import json
import random
import resource
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .budget import split_budget
from .calibration import Calibration, batches, block_kwargs, embed
from .errors import PutriError
from .model import PutriLlamaForCausalLM, param_counts
from .supernet import SubLayer, VariantBank, build_supernet, level_grid, sublayers

Config = tuple[int, ...]  # kept units per sub-layer, in ``sublayers()`` order


@dataclass
class SearchSettings:
    sparsity: float = 0.5
    alpha: float = 1.5  # Putri's attention/FFN split: fixes the two budgets the search keeps
    iterations: int = 3  # coarse-to-fine rounds (the step halves each time)
    step: float = 0.125  # level spacing at the first iteration, fraction of a sub-layer
    levels: int = 9  # levels per sub-layer (centre +- levels // 2 steps)
    generations: int = 20  # per iteration
    offspring: int = 16  # per generation
    stage_samples: tuple[int, ...] = (1, 4)  # calibration windows scoring each selection stage
    stage_keep: tuple[int, ...] = (4, 1)  # survivors of each stage (the last must be 1)
    max_shifts: int = 4  # level shifts per mutation (uniform in 1..max_shifts)
    top_k: int = 256  # dense next-token probabilities kept for the KL
    propagation: str = "expectation"  # or "centre"
    damping: float = 1e-2
    batch_size: int = 8
    seed: int = 0

    def check(self, calib_samples: int) -> None:
        if not 0 <= self.sparsity < 1:
            raise PutriError(f"sparsity must be in [0, 1), got {self.sparsity}")
        if self.iterations < 1 or self.generations < 0 or self.offspring < 1 or self.max_shifts < 1:
            raise PutriError("iterations, offspring and max-shifts must be >= 1, generations >= 0")
        if not 0 < self.step <= 1 or self.levels < 2:
            raise PutriError(f"step must be in (0, 1] and levels >= 2, got {self.step} and {self.levels}")
        if len(self.stage_samples) != len(self.stage_keep) or not self.stage_samples:
            raise PutriError("stage-samples and stage-keep need one entry per selection stage")
        if self.stage_keep[-1] != 1 or any(k < 1 for k in self.stage_keep):
            raise PutriError(f"stage-keep must be >= 1 and end with 1, got {list(self.stage_keep)}")
        if max(self.stage_samples) > calib_samples or min(self.stage_samples) < 1:
            raise PutriError(f"stage-samples {list(self.stage_samples)} must lie in 1..{calib_samples} "
                             "(the calibration windows)")
        if self.propagation not in ("expectation", "centre"):
            raise PutriError(f"propagation must be expectation or centre, got {self.propagation!r}")
        if self.top_k < 1:
            raise PutriError("top-k must be >= 1")


# ---------------------------------------------------------------------------------------------
# Search space


def initial_config(model: PutriLlamaForCausalLM, subs: list[SubLayer], sparsity: float, alpha: float) -> Config:
    """Putri's split, spread as evenly as the units allow: the attention head groups it removes go
    round-robin over the layers, and every FFN keeps the same neuron count (±1)."""
    budget = split_budget(model, sparsity, alpha)
    attn = [i for i, s in enumerate(subs) if s.kind == "attn" and s.max_units]
    ffn = [i for i, s in enumerate(subs) if s.kind == "ffn" and s.max_units]
    units = [s.max_units for s in subs]
    groups, extra = divmod(budget.head_groups, len(attn))
    extra_at = {round((j + 0.5) * len(attn) / extra - 0.5) for j in range(extra)} if extra else set()
    for j, i in enumerate(attn):
        units[i] = max(0, units[i] - groups - (1 if j in extra_at else 0))
    target_kept = budget.block_params - budget.target_removed
    attn_params = sum(subs[i].params(units[i]) for i in attn)
    norms = sum(subs[i].norm_params for i in ffn)
    neurons = round((target_kept - attn_params - norms) / subs[ffn[0]].unit_params)
    neurons = min(max(neurons, 0), sum(subs[i].max_units for i in ffn))
    for j, i in enumerate(ffn):  # even spread, each within its width
        units[i] = min(subs[i].max_units, neurons // len(ffn) + (1 if j < neurons % len(ffn) else 0))
    return repair_budget(subs, tuple(units), target_kept)


def repair_budget(subs: list[SubLayer], config: Config, target_kept: int) -> Config:
    """Move FFN neurons one at a time (from the widest, to the narrowest) until the kept block
    parameters are within half a neuron of the target: the search keeps unit totals, and a
    sub-layer emptied or revived changes the count by its norm."""
    units = list(config)
    ffn = [i for i, s in enumerate(subs) if s.kind == "ffn" and s.max_units]
    half = subs[ffn[0]].unit_params / 2 if ffn else 0
    for _ in range(sum(s.max_units for s in subs if s.kind == "ffn") + 1):
        diff = sum(s.params(u) for s, u in zip(subs, units)) - target_kept
        if abs(diff) <= half:
            break
        if diff > 0:
            options = [i for i in ffn if units[i] > 1] or [i for i in ffn if units[i] > 0]
            if not options:
                break
            units[max(options, key=lambda i: (units[i], -i))] -= 1
        else:
            options = ([i for i in ffn if 0 < units[i] < subs[i].max_units]
                       or [i for i in ffn if units[i] < subs[i].max_units])
            if not options:
                break
            units[min(options, key=lambda i: (units[i], i))] += 1
    return tuple(units)


def mutate(config: Config, levels: list[list[int]], kinds: list[str], rng: random.Random, max_shifts: int) -> Config:
    """1..max_shifts level shifts: one sub-layer one level sparser, another of the same kind one
    level denser by exactly as many units, so each kind's total is unchanged."""
    child = list(config)
    for _ in range(rng.randint(1, max_shifts)):
        for _try in range(64):
            a = rng.randrange(len(child))
            ia = levels[a].index(child[a])
            if ia == 0:
                continue
            delta = child[a] - levels[a][ia - 1]
            partners = []
            for b in range(len(child)):
                if b == a or kinds[b] != kinds[a]:
                    continue
                ib = levels[b].index(child[b])
                if ib + 1 < len(levels[b]) and levels[b][ib + 1] - child[b] == delta:
                    partners.append(b)
            if partners:
                b = rng.choice(partners)
                child[a] -= delta
                child[b] += delta
                break
    return tuple(child)


# ---------------------------------------------------------------------------------------------
# Fitness: KL(dense || candidate) on calibration tokens, dense top-k cached, parent prefix cached


class FitnessEvaluator:
    def __init__(self, model: PutriLlamaForCausalLM, ids: torch.Tensor, top_k: int, batch_size: int = 8):
        self.model, self.ids, self.bs = model, ids, batch_size
        self.bank: VariantBank | None = None
        self.parent: Config | None = None
        self.layers = model.config.num_hidden_layers
        with torch.no_grad():
            self.kw = block_kwargs(model, embed(model, ids[:1]))
            hidden = embed(model, ids)
            for layer in model.model.layers:
                hidden = self._run(layer, layer.self_attn, layer.mlp, hidden)
            logp = self._logits(hidden).log_softmax(-1)
            k = min(top_k, logp.shape[-1])
            self.dense_logp, self.dense_idx = logp.topk(k, dim=-1)
            self.dense_rest = (1 - self.dense_logp.exp().sum(-1)).clamp_min(1e-12)

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.model.lm_head(self.model.model.norm(hidden)).float()

    def _attn(self, layer, attn, x):
        if attn is None:
            return x
        out = torch.empty_like(x)
        for b in batches(x.shape[0], self.bs):
            out[b] = x[b] + attn(layer.input_layernorm(x[b]), **self.kw)[0]
        return out

    def _mlp(self, layer, mlp, h):
        return h if mlp is None else h + mlp(layer.post_attention_layernorm(h))

    def _run(self, layer, attn, mlp, x):
        return self._mlp(layer, mlp, self._attn(layer, attn, x))

    def _modules(self, config: Config, l: int):
        return (self.bank.module("attn", l, config[2 * l]), self.bank.module("ffn", l, config[2 * l + 1]))

    @torch.no_grad()
    def set_parent(self, config: Config, bank: VariantBank) -> None:
        """Cache the hidden states entering each attention and each FFN of ``config``."""
        self.bank, self.parent = bank, config
        self.entering = []
        x = embed(self.model, self.ids)
        for l, layer in enumerate(self.model.model.layers):
            attn, mlp = self._modules(config, l)
            h = self._attn(layer, attn, x)
            self.entering += [x, h]
            x = self._mlp(layer, mlp, h)
        self.parent_final = x

    def kl_from_hidden(self, hidden: torch.Tensor, samples: int) -> float:
        total = 0.0
        for b in batches(samples, self.bs):
            logq = self._logits(hidden[b]).log_softmax(-1)
            p_logp = self.dense_logp[b]
            q_top = logq.gather(-1, self.dense_idx[b])
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
            layer = self.model.model.layers[l]
            attn, mlp = self._modules(config, l)
            if not (l == l0 and first % 2 == 1):
                x = self._attn(layer, attn, x)
            x = self._mlp(layer, mlp, x)
        return self.kl_from_hidden(x, samples)

    @torch.no_grad()
    def model_kl(self, model: PutriLlamaForCausalLM, samples: int) -> float:
        """KL of a physically pruned model on the same tokens."""
        x = embed(model, self.ids[:samples])
        for layer in model.model.layers:
            x = self._run(layer, layer.self_attn, layer.mlp, x)
        return self.kl_from_hidden(x, samples)


@dataclass
class Generation:
    best: float  # parent's fitness after this generation (last-stage tokens)
    evaluated: int
    improved: bool


def evolve(parent: Config, parent_fitness: float, levels: list[list[int]], kinds: list[str],
           fitness: FitnessEvaluator, bank: VariantBank, settings: SearchSettings, rng: random.Random,
           desc: str, progress: bool = True) -> tuple[Config, float, list[Generation]]:
    history = []
    bar = tqdm(range(settings.generations), desc=desc, unit="gen", disable=not progress)
    for _ in bar:
        fitness.set_parent(parent, bank)
        seen = {parent}
        pool = []
        for _try in range(settings.offspring * 4):
            child = mutate(parent, levels, kinds, rng, settings.max_shifts)
            if child not in seen:
                seen.add(child)
                pool.append(child)
            if len(pool) == settings.offspring:
                break
        evaluated = 0
        for samples, keep in zip(settings.stage_samples, settings.stage_keep):
            scored = sorted((fitness(c, samples), i, c) for i, c in enumerate(pool))
            evaluated += len(pool)
            pool = [c for _, _, c in scored[:keep]]
            last = scored[0][0] if scored else float("inf")
        improved = bool(pool) and last < parent_fitness
        if improved:
            parent, parent_fitness = pool[0], last
        history.append(Generation(parent_fitness, evaluated, improved))
        bar.set_postfix(kl=f"{parent_fitness:.4f}")
    return parent, parent_fitness, history


# ---------------------------------------------------------------------------------------------
# Driver


def config_widths(model: PutriLlamaForCausalLM, subs: list[SubLayer], config: Config) -> list[dict]:
    c = model.config
    out = []
    for l in range(c.num_hidden_layers):
        kv, heads = c.num_key_value_heads_per_layer[l], c.num_attention_heads_per_layer[l]
        group = heads // kv if kv else 0
        out.append({"layer": l, "heads": config[2 * l] * group, "kv_heads": config[2 * l], "ffn": config[2 * l + 1]})
    return out


def _key(model, calib, settings) -> str:
    ident = {"settings": asdict(settings), "calibration": calib.provenance(), "config": model.config.to_dict(),
             "weights": float(sum(p.detach().double().sum() for p in model.parameters()))}
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class SearchResult:
    config: Config
    uniform: Config
    widths: list[dict]
    uniform_widths: list[dict]
    report: dict = field(default_factory=dict)
    fitness: FitnessEvaluator | None = None  # scores physically pruned models on the search's tokens
    bank: VariantBank | None = None  # the last iteration's supernet (None when resumed past it)


def search(model: PutriLlamaForCausalLM, calib: Calibration, settings: SearchSettings, work_dir: Path,
           resume: bool = False, progress: bool = True) -> SearchResult:
    """Coarse-to-fine evolutionary search of per-layer widths (the model is not modified)."""
    settings.check(calib.ids.shape[0])
    start = time.perf_counter()
    work_dir = Path(work_dir)
    subs = sublayers(model)
    kinds = [s.kind for s in subs]
    counts = param_counts(model)
    target_kept = counts.blocks - round(settings.sparsity * counts.blocks)
    uniform = initial_config(model, subs, settings.sparsity, settings.alpha)
    key = _key(model, calib, settings)
    state_file = work_dir / "state.json"
    state = {"key": key, "iterations": []}
    if resume and state_file.is_file():
        state = json.loads(state_file.read_text())
        if state.get("key") != key:
            raise PutriError(f"search state in {work_dir} comes from other settings, model or calibration; "
                             "run without --resume to start over")
    elif work_dir.exists():
        shutil.rmtree(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)

    fitness_ids = calib.ids[: max(settings.stage_samples)]
    fitness = FitnessEvaluator(model, fitness_ids, settings.top_k, settings.batch_size)
    last = max(settings.stage_samples)
    config = tuple(state["iterations"][-1]["best"]) if state["iterations"] else uniform
    side = settings.levels // 2
    peak_disk = max([it["supernet_bytes"] for it in state["iterations"]], default=0)
    for it in range(len(state["iterations"]), settings.iterations):
        t0 = time.perf_counter()
        step_frac = settings.step / 2 ** it
        levels = []
        for s, u in zip(subs, config):
            step = max(1, round(step_frac * s.max_units)) if s.max_units else 1
            levels.append(level_grid(u, step, side, s.max_units) if s.max_units else [0])
        bank_dir = work_dir / f"supernet{it}"
        if bank_dir.exists():
            shutil.rmtree(bank_dir)
        bank = VariantBank(model, bank_dir)
        build_supernet(model, calib.ids, {(s.kind, s.layer): lv for s, lv in zip(subs, levels)},
                       {(s.kind, s.layer): u for s, u in zip(subs, config)}, bank, settings.propagation,
                       settings.damping, settings.batch_size, progress)
        disk = bank.disk_bytes()
        peak_disk = max(peak_disk, disk)
        t1 = time.perf_counter()
        fitness.set_parent(config, bank)
        start_fitness = fitness(config, last)
        config, best, history = evolve(config, start_fitness, levels, kinds, fitness, bank, settings,
                                       random.Random(settings.seed * 1000 + it),  # resumes reproducibly
                                       f"search {it + 1}/{settings.iterations}", progress)
        state["iterations"].append({
            "iteration": it, "step": step_frac, "levels_per_sublayer": [len(lv) for lv in levels],
            "supernet_seconds": t1 - t0, "search_seconds": time.perf_counter() - t1, "supernet_bytes": disk,
            "start_fitness": start_fitness, "best_fitness": best, "best": list(config),
            "generations": [asdict(g) for g in history]})
        tmp = work_dir / ".state.tmp"
        tmp.write_text(json.dumps(state))
        tmp.replace(state_file)
        if it + 1 < settings.iterations:
            shutil.rmtree(bank_dir)  # the next iteration builds its own supernet around the new centre

    bank = VariantBank(model, work_dir / f"supernet{settings.iterations - 1}")
    final = repair_budget(subs, config, target_kept)
    report = {
        "settings": asdict(settings), "target_kept_block_params": target_kept,
        "dense_block_params": counts.blocks, "iterations": state["iterations"],
        "search_seconds": time.perf_counter() - start, "peak_supernet_bytes": peak_disk,
        "budget_repair": [{"layer": s.layer, "from": a, "to": b} for s, a, b in zip(subs, config, final)
                          if a != b and s.kind == "ffn"],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    return SearchResult(final, uniform, config_widths(model, subs, final), config_widths(model, subs, uniform),
                        report, fitness, bank)


# ---------------------------------------------------------------------------------------------
# Distributions as JSON, plots


def read_widths(path: Path) -> tuple[list[int], list[int]]:
    """Per-layer KV heads and FFN widths from a JSON list of ``{"kv_heads", "ffn"}`` entries, or an
    object holding such a list under ``widths`` (``search_report.json``, ``pruning_report.json``)."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise PutriError(f"widths file not found: {path}") from None
    except json.JSONDecodeError as e:
        raise PutriError(f"widths file {path} is not valid JSON ({e})") from None
    entries = data.get("widths") if isinstance(data, dict) else data
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise PutriError(f"widths file {path}: expected a list of per-layer objects with kv_heads and ffn "
                         '(e.g. [{"kv_heads": 2, "ffn": 768}, ...]) or {"widths": [...]}')
    try:
        return [int(e["kv_heads"]) for e in entries], [int(e["ffn"]) for e in entries]
    except (KeyError, TypeError, ValueError):
        raise PutriError(f"widths file {path}: every layer needs integer kv_heads and ffn") from None


def _png(fig) -> bytes:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def plot_widths(dense: list[dict], uniform: list[dict], searched: list[dict],
                labels: tuple[str, str] = ("uniform (Putri split)", "searched")) -> bytes:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    layers = [w["layer"] for w in dense]
    for ax, key, title in ((axes[0], "kv_heads", "attention (KV-head groups kept)"), (axes[1], "ffn", "FFN neurons kept")):
        frac = lambda ws: [w[key] / d[key] if d[key] else 0 for w, d in zip(ws, dense)]  # noqa: E731
        ax.plot(layers, frac(uniform), "o--", label=labels[0])
        ax.plot(layers, frac(searched), "s-", label=labels[1])
        ax.set_ylabel("kept fraction")
        ax.set_ylim(-0.05, 1.05)
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend()
    axes[1].set_xlabel("layer")
    data = _png(fig)
    plt.close(fig)
    return data


def plot_fitness(iterations: list[dict]) -> bytes:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    x = 0
    for it in iterations:
        ys = [it["start_fitness"]] + [g["best"] for g in it["generations"]]
        ax.plot(range(x, x + len(ys)), ys, "-", label=f"iteration {it['iteration'] + 1} (step {it['step']:.4g})")
        x += len(ys) - 1
    ax.set_xlabel("generation")
    ax.set_ylabel("KL(dense || candidate) per token")
    ax.set_yscale("log")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    data = _png(fig)
    plt.close(fig)
    return data


def _assemble(result: SearchResult, subs: list[SubLayer]) -> list[dict] | None:
    """Per-layer weights of the searched configuration taken from the supernet's variants (None if
    the budget repair moved a width off the supernet's levels, or the supernet is gone)."""
    if result.bank is None or not result.bank.dir.is_dir() or result.config != tuple(result.report["iterations"][-1]["best"]):
        return None
    out = []
    try:
        for l in range(len(subs) // 2):
            layer = {}
            for kind, name in (("attn", "self_attn"), ("ffn", "mlp")):
                module = result.bank.module(kind, l, result.config[2 * l + (kind == "ffn")])
                if module is not None:
                    layer[name] = {k: v.detach().clone() for k, v in module.state_dict().items()}
            out.append(layer)
    except FileNotFoundError:  # a resumed run whose last supernet was cleaned away: re-pruning only
        return None
    return out


# ---------------------------------------------------------------------------------------------
# The whole job: search (or read) a distribution, then prune the model to it


def search_and_prune(model: PutriLlamaForCausalLM, calib: Calibration, settings: SearchSettings, work_dir: Path,
                     resume: bool = False, widths_file: Path | None = None, progress: bool = True
                     ) -> tuple[dict, dict[str, bytes]]:
    """Prune ``model`` in place to searched (or given) per-layer widths; return the report and its plots."""
    from .budget import achieved
    from .supernet import check_widths, prune_to_widths

    start = time.perf_counter()
    dense = param_counts(model)
    subs = sublayers(model)
    dense_widths = config_widths(model, subs, tuple(s.max_units for s in subs))
    report: dict = {"calibration": calib.provenance()}
    plots: dict[str, bytes] = {}
    if widths_file is not None:
        kv, ffn = read_widths(widths_file)
        check_widths(model, kv, ffn)
        report["distribution"] = {"source": str(widths_file)}
        result = None
    else:
        result = search(model, calib, settings, work_dir, resume, progress)
        kv = [w["kv_heads"] for w in result.widths]
        ffn = [w["ffn"] for w in result.widths]
        report.update(result.report)
        report["uniform_widths"] = result.uniform_widths
        plots["search_widths.png"] = plot_widths(dense_widths, result.uniform_widths, result.widths)
        plots["search_fitness.png"] = plot_fitness(result.report["iterations"])
    # The searched configuration exists twice: assembled from supernet variants (fitted on expected
    # inputs) and re-pruned at its widths on the real pruned prefix. Keep whichever is closer to dense.
    assembled = _assemble(result, subs) if result is not None else None
    with torch.no_grad():
        log = prune_to_widths(model, calib.ids, kv, ffn, settings.damping, settings.batch_size, progress)
    if result is not None:
        last = max(settings.stage_samples)
        kl_repruned = result.fitness.model_kl(model, last)
        kl_assembled = result.report["iterations"][-1]["best_fitness"] if assembled is not None else None
        use_assembled = kl_assembled is not None and kl_assembled < kl_repruned
        if use_assembled:
            for l, layer in enumerate(model.model.layers):
                for name, state in assembled[l].items():
                    getattr(layer, name).load_state_dict(state)
        report["final_kl"] = {"assembled_from_supernet": kl_assembled, "repruned_at_widths": kl_repruned,
                              "chosen": "assembled" if use_assembled else "repruned",
                              "kl": result.fitness.model_kl(model, last), "tokens": last * calib.ids.shape[1]}
        shutil.rmtree(work_dir, ignore_errors=True)
    c = model.config
    report.update({
        "method": "putri+search" if widths_file is None else "putri (given widths)",
        "sparsity_target": settings.sparsity if widths_file is None else None,
        **achieved(model, dense.blocks, dense.total),
        "widths": [{"layer": l, "heads": c.num_attention_heads_per_layer[l],
                    "kv_heads": c.num_key_value_heads_per_layer[l], "ffn": c.intermediate_size_per_layer[l]}
                   for l in range(c.num_hidden_layers)],
        "prune_log": log,
        "seconds": time.perf_counter() - start,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    })
    return report, plots
