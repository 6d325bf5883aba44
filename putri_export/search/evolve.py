"""Týr-style global search of per-layer widths on top of Putri's local pruners.

Plumbing around three small units: the search space and its budget-keeping moves (``space.py``), the
KL-to-dense fitness (``fitness.py``) and :func:`evolve` (offspring scored in stages of growing calibration
size, parent always kept). :func:`search` iterates coarse to fine, rebuilding the supernet around the best
configuration with half the step, and saves its progress after every iteration.
"""

from __future__ import annotations

import random
import resource
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

from tqdm.auto import tqdm

from ..data import Calibration
from ..model import PutriForCausalLM, Widths, param_counts
from ..model.blocks import BlockStore
from ..resume import ResumeStore, fingerprint, model_fingerprint
from .fitness import FitnessEvaluator
from .settings import SearchSettings
from .space import (
    Config,
    SubLayer,
    config_widths,
    initial_config,
    kept_params,
    level_grid,
    level_step,
    mutate,
    repair_budget,
    start_config,
    sublayers,
    trade,
)
from .start import greedy_widths, resolve_start, widths_from
from .supernet import VariantBank, build_supernet

# ---------------------------------------------------------------------------------------------


@dataclass
class Generation:
    best: float  # parent's fitness after this generation (last-stage tokens)
    evaluated: int
    improved: bool


def evolve(parent: Config, parent_fitness: float, levels: list[list[int]], kinds: list[str],
           fitness: FitnessEvaluator, bank: VariantBank, settings: SearchSettings, rng: random.Random,
           desc: str, progress: bool = True, trade_move: Callable[[Config, random.Random], Config] | None = None
           ) -> tuple[Config, float, list[Generation]]:
    """Generations of offspring (each kind's total kept; with ``trade_move`` half of them also move parameters
    between attention and FFN), scored in stages; the parent is replaced only by a better child."""
    history = []
    bar = tqdm(range(settings.generations), desc=desc, unit="gen", disable=not progress)
    for _ in bar:
        fitness.set_parent(parent, bank)
        seen = {parent}
        pool = []
        for _try in range(settings.offspring * 4):
            child = mutate(parent, levels, kinds, rng, settings.max_shifts)
            if trade_move is not None and rng.random() < 0.5:
                child = trade_move(child, rng)
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


def _final_config(subs: list[SubLayer], config: Config, target_kept: int, limit: int, settings: SearchSettings
                  ) -> Config:
    """The searched configuration as the supernet holds it (so its assembled weights can be used) when it keeps at
    most ``limit`` and less than one last-iteration FFN level below the target, which is what a trade leaves: the
    model is then that much smaller than asked. Otherwise it is moved to the target by :func:`repair_budget`."""
    step_frac = settings.step / 2 ** (settings.iterations - 1)
    level = min((level_step(s, step_frac, settings.align) * s.unit_params
                 for s in subs if s.kind == "ffn" and s.max_units), default=0)
    if target_kept - level < kept_params(subs, config) <= limit:
        return config
    return repair_budget(subs, config, target_kept, settings.align)


@dataclass
class SearchResult:
    config: Config
    uniform: Config
    widths: Widths
    uniform_widths: Widths
    report: dict = field(default_factory=dict)
    start_widths: Widths | None = None  # where the search started (--start, or the uniform split)
    fitness: FitnessEvaluator | None = None  # scores physically pruned models on the search's tokens
    bank: VariantBank | None = None  # the last iteration's supernet (None when resumed past it)


def search(model: PutriForCausalLM, calib: Calibration, settings: SearchSettings, work_dir: Path,
           resume: bool = False, progress: bool = True, blocks: BlockStore | None = None) -> SearchResult:
    """Coarse-to-fine evolutionary search of per-layer widths (the model is not modified; a streamed model's
    blocks are read in turn from ``blocks``)."""
    settings.check(calib.ids.shape[0])
    start = time.perf_counter()
    work_dir = Path(work_dir)
    subs = sublayers(model)
    kinds = [s.kind for s in subs]
    counts = param_counts(model)
    target_kept = counts.blocks - round(settings.sparsity * counts.blocks)
    uniform = initial_config(model, subs, settings.sparsity, settings.alpha, settings.align)
    start_from = resolve_start(settings, blocks)
    if start_from == "uniform":
        first = uniform
    else:
        dense = Widths.from_config(model.config)
        given = (greedy_widths(model, calib, settings, work_dir / "greedy", resume, progress)
                 if start_from == "greedy" else widths_from(start_from, dense))
        first = start_config(subs, given, target_kept, settings.align)
    limit = max(target_kept, kept_params(subs, first))  # a trade never keeps more than the start
    weights = model_fingerprint(model) if blocks is None else blocks.fingerprint()
    # reconstruction runs after the search: another --reconstruct-epochs resumes the same search
    searched_by = {k: v for k, v in asdict(settings).items() if not k.startswith("reconstruct")}
    store = ResumeStore(work_dir, fingerprint(searched_by, calib.provenance(), weights, first), resume,
                        what="search")
    iterations: list[dict] = store.get("iterations", [])

    # Every stage scores a prefix of these: spread over the set, so each stage sees every corpus it can (the first
    # windows alone would all be from the first corpus, and the search would fit that corpus only).
    fitness_ids = calib.ids[calib.spread(max(settings.stage_samples))]
    fitness = FitnessEvaluator(model, fitness_ids, settings.top_k, settings.batch_size, blocks)
    # Rebuilt variants are cached up to 1/8 of the dense blocks' bytes: a candidate touches every sub-layer after
    # its first change, and rebuilding one is a file read and a row gather.
    cache_bytes = counts.blocks * model.model.embed_tokens.weight.element_size() // 8
    last = max(settings.stage_samples)
    config = tuple(iterations[-1]["best"]) if iterations else first
    side = settings.levels // 2
    peak_disk = max([it["supernet_bytes"] for it in iterations], default=0)
    for it in range(len(iterations), settings.iterations):
        t0 = time.perf_counter()
        step_frac = settings.step / 2 ** it
        levels = []
        for s, u in zip(subs, config):
            levels.append(level_grid(u, level_step(s, step_frac, settings.align), side, s.max_units)
                          if s.max_units else [0])
        bank_dir = work_dir / f"supernet{it}"
        if bank_dir.exists():
            shutil.rmtree(bank_dir)
        bank = VariantBank(model, bank_dir, cache_bytes)
        build_supernet(model, calib.ids, {(s.kind, s.layer): lv for s, lv in zip(subs, levels)},
                       {(s.kind, s.layer): u for s, u in zip(subs, config)}, bank, settings.propagation,
                       settings.damping, settings.batch_size, progress, blocks)
        disk = bank.disk_bytes()
        peak_disk = max(peak_disk, disk)
        t1 = time.perf_counter()
        fitness.set_parent(config, bank)
        start_fitness = fitness(config, last)
        trade_move = partial(trade, levels=levels, subs=subs, limit=limit) if settings.trade else None
        config, best, history = evolve(config, start_fitness, levels, kinds, fitness, bank, settings,
                                       random.Random(settings.seed * 1000 + it),  # resumes reproducibly
                                       f"search {it + 1}/{settings.iterations}", progress, trade_move)
        iterations.append({
            "iteration": it, "step": step_frac, "levels_per_sublayer": [len(lv) for lv in levels],
            "supernet_seconds": t1 - t0, "search_seconds": time.perf_counter() - t1, "supernet_bytes": disk,
            "start_fitness": start_fitness, "best_fitness": best, "best": list(config),
            "generations": [asdict(g) for g in history]})
        store.save(iterations=iterations)
        if it + 1 < settings.iterations:
            shutil.rmtree(bank_dir)  # the next iteration builds its own supernet around the new centre

    bank = VariantBank(model, work_dir / f"supernet{settings.iterations - 1}", cache_bytes)
    final = _final_config(subs, config, target_kept, limit, settings)
    report = {
        "settings": asdict(settings), "target_kept_block_params": target_kept,
        "start": {"source": start_from, "config": list(first), "uniform_config": list(uniform)},
        "attention_block_params": {"start": sum(s.params(u) for s, u in zip(subs, first) if s.kind == "attn"),
                                   "searched": sum(s.params(u) for s, u in zip(subs, final) if s.kind == "attn")},
        "dense_block_params": counts.blocks, "iterations": iterations,
        "search_seconds": time.perf_counter() - start, "peak_supernet_bytes": peak_disk,
        "budget_repair": [{"layer": s.layer, "from": a, "to": b} for s, a, b in zip(subs, config, final)
                          if a != b and s.kind == "ffn"],
        "kept_block_params": kept_params(subs, final),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    return SearchResult(final, uniform, config_widths(model, final), config_widths(model, uniform),
                        report, config_widths(model, first), fitness, bank)


