"""The recovery job: distil the dense model into the pruned one (same widths), resumable and time-bounded.

Shape (gpt-fast style): :func:`training_windows` → :func:`window_loss` (one window's forward and loss) →
:func:`accumulate_gradients` (a batch) → :func:`recover_model` (the loop, checkpoints, report).
"""

from __future__ import annotations

import resource
import time
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..data import load_calibration
from ..data.corpus import is_evaluation_source
from ..errors import PutriError
from ..model import Widths, load_model, save_checkpoint
from ..model.checkpoint import PRUNING_REPORTS
from ..resume import ResumeStore, fingerprint, model_fingerprint
from .distill import hidden_mse, learning_rate, topk_kl
from .settings import RecoverSettings
from .teacher import TeacherCache, autocast_context


def training_windows(tokenizer, settings: RecoverSettings) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(train ids, held-out ids, provenance): ``windows + eval_windows`` windows split evenly over the corpora,
    shuffled once by the seed (so every shard mixes corpora), the first ``eval_windows`` held out."""
    data = load_calibration(tokenizer, settings.data, settings.windows + settings.eval_windows, settings.seq_len)
    for source in data.sources:
        if is_evaluation_source(source.source):
            raise PutriError(f"recovery data {source.corpus!r} is an evaluation split: a model trained on it would "
                             "be scored on its own training text; accepted: any other split or file (default "
                             f"{RecoverSettings.data})")
    order = torch.randperm(data.ids.shape[0], generator=torch.Generator().manual_seed(settings.seed))
    ids = data.ids[order]
    return ids[settings.eval_windows:], ids[:settings.eval_windows], data.provenance()


def window_loss(student: torch.nn.Module, ids: torch.Tensor, teacher: dict[str, torch.Tensor],
                hidden_weight: float, autocast: str = "none") -> tuple[torch.Tensor, float]:
    """(loss, its KL part) of one batch of windows: mean top-k KL per token (+ weighted hidden-state matching); the
    forward under ``autocast`` (the losses are taken in fp32 either way)."""
    with autocast_context(ids.device, autocast):
        out = student(input_ids=ids, use_cache=False, output_hidden_states=hidden_weight > 0)
    kl = topk_kl(out.logits, teacher["logp"], teacher["ids"]).mean()
    loss = kl
    if hidden_weight > 0:
        loss = loss + hidden_weight * hidden_mse(out.hidden_states[-1], teacher["hidden"])
    return loss, float(kl.detach())


def accumulate_gradients(student: torch.nn.Module, batch: list[tuple[torch.Tensor, dict]],
                         hidden_weight: float, autocast: str = "none") -> float:
    """The gradient of the batch's mean loss, one window at a time (memory: one window's activations); the batch's
    mean KL."""
    kls = []
    for ids, teacher in batch:
        loss, kl = window_loss(student, ids, teacher, hidden_weight, autocast)
        (loss / len(batch)).backward()
        kls.append(kl)
    return sum(kls) / len(kls)


@torch.no_grad()
def held_out_kl(student: torch.nn.Module, ids: torch.Tensor, teacher: dict[str, torch.Tensor]) -> float | None:
    """Mean top-k KL per token on the held-out windows (None without any)."""
    if ids.shape[0] == 0:
        return None
    device = student.get_input_embeddings().weight.device
    kls = [float(topk_kl(student(input_ids=ids[i:i + 1].to(device), use_cache=False).logits,
                         teacher["logp"][i:i + 1].to(device), teacher["ids"][i:i + 1].to(device)).mean())
           for i in range(ids.shape[0])]
    return sum(kls) / len(kls)


def trainable_parameters(student: torch.nn.Module, train_embeddings: bool) -> dict[str, torch.nn.Parameter]:
    """Every floating-point weight of the blocks and the final norm; the token embedding (and a tied output head)
    only with ``train_embeddings``."""
    embed = student.get_input_embeddings().weight
    return {name: p for name, p in student.named_parameters()
            if p.is_floating_point() and (train_embeddings or p is not embed)}


def _shards(n: int, size: int) -> list[list[int]]:
    return [list(range(i, min(n, i + size))) for i in range(0, n, size)]


def _epoch_order(shards: list[list[int]], epoch: int, seed: int) -> list[int]:
    """The shards' order in ``epoch``: as cached in the first (teacher passes then follow training), shuffled after."""
    if epoch == 0:
        return list(range(len(shards)))
    return torch.randperm(len(shards), generator=torch.Generator().manual_seed(seed + epoch)).tolist()


def _schedule_step(step: int, elapsed: float, settings: RecoverSettings) -> int:
    """Where the schedule stands: the share of --tokens done, or of --max-minutes spent when that is larger, so a
    time-bounded run still ends its decay at the bound instead of being cut at a high rate."""
    if not settings.max_minutes:
        return step
    return max(step, int(settings.steps * elapsed / (60 * settings.max_minutes)))


def _save_state(store: ResumeStore, params: dict, optimizer: torch.optim.Optimizer, **progress) -> None:
    state = {f"{name}.{key}": optimizer.state[p][key] for name, p in params.items() if p in optimizer.state
             for key in ("exp_avg", "exp_avg_sq")}
    store.save(tensors={"student": {n: p.detach() for n, p in params.items()}, "optimizer": state}, **progress)


def _load_state(store: ResumeStore, params: dict, optimizer: torch.optim.Optimizer, step: int) -> None:
    weights, state = store.tensors("student"), store.tensors("optimizer")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(weights[name])
            if f"{name}.exp_avg" in state:
                optimizer.state[p] = {"step": torch.tensor(float(step)), "exp_avg": state[f"{name}.exp_avg"].clone(),
                                      "exp_avg_sq": state[f"{name}.exp_avg_sq"].clone()}


def recover_model(student: torch.nn.Module, teacher: torch.nn.Module, tokenizer, settings: RecoverSettings,
                  state_dir: Path | None = None, resume: bool = False, progress: bool = True) -> dict:
    """Train ``student`` in place to reproduce ``teacher``'s next-token distributions; returns the report.

    The widths do not change, so every exporter takes the result as it takes the pruned model. ``state_dir``: the
    teacher cache and the training state every ``save_every`` steps (``resume=True`` continues from them)."""
    settings.check()
    if teacher.config.vocab_size != student.config.vocab_size or \
            teacher.config.hidden_size != student.config.hidden_size:
        raise PutriError(f"the teacher (vocab {teacher.config.vocab_size}, hidden {teacher.config.hidden_size}) is not "
                         f"the dense model of this student (vocab {student.config.vocab_size}, hidden "
                         f"{student.config.hidden_size})")
    widths = Widths.from_config(student.config).to_json()
    train_ids, eval_ids, provenance = training_windows(tokenizer, settings)
    device = student.get_input_embeddings().weight.device
    autocast = settings.resolved_autocast(device)  # in the key: a resumed run keeps the precision it started in
    key = fingerprint(asdict(settings), autocast, provenance, model_fingerprint(student), model_fingerprint(teacher))
    store = ResumeStore(state_dir, key, resume, what="recovery")
    teacher.eval()
    student.eval()  # no dropout: the loss is the only noise
    teacher.requires_grad_(False)
    params = trainable_parameters(student, settings.train_embeddings)
    student.requires_grad_(False)
    for p in params.values():
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(list(params.values()), lr=settings.lr, betas=(0.9, 0.95), weight_decay=0.0)
    cache = TeacherCache(teacher, train_ids, settings.top_k, settings.hidden_weight > 0, store, autocast=autocast)
    shards = _shards(train_ids.shape[0], settings.shard_windows)

    step = store.get("step", 0)
    if step:
        _load_state(store, params, optimizer, step)
    seconds_before = store.get("seconds", 0.0)
    start = time.perf_counter()
    eval_cache = TeacherCache(teacher, eval_ids, settings.top_k, False, store)
    held_out = list(range(eval_ids.shape[0]))
    if held_out and store.get("kl_before") is None:
        store.save(kl_before=held_out_kl(student, eval_ids, eval_cache.get("eval", held_out)))
    log: list[dict] = store.get("log", [])
    stopped_by = "tokens"
    per_step = settings.batch_windows
    bar = tqdm(total=settings.steps, initial=step, desc="recover", unit="step", disable=not progress)
    window_total = train_ids.shape[0]
    orders: dict[int, list[int]] = {}
    kls: list[float] = []
    updating = False
    try:
        while step < settings.steps:
            elapsed = seconds_before + time.perf_counter() - start
            if settings.max_minutes and elapsed >= 60 * settings.max_minutes:
                stopped_by = "max-minutes"
                break
            batch = []
            for position in range(step * per_step, (step + 1) * per_step):
                epoch, i = divmod(position, window_total)
                if epoch not in orders:
                    orders[epoch] = [w for j in _epoch_order(shards, epoch, settings.seed) for w in shards[j]]
                window = orders[epoch][i]
                j = window // settings.shard_windows
                teacher_out = cache.get(str(j), shards[j])
                row = window - shards[j][0]
                batch.append((train_ids[window:window + 1].to(device),
                              {k: v[row:row + 1].to(device) for k, v in teacher_out.items()}))
            optimizer.zero_grad(set_to_none=True)
            kls.append(accumulate_gradients(student, batch, settings.hidden_weight, autocast))
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(_schedule_step(step, elapsed, settings), settings.steps, settings.lr,
                                            settings.warmup_steps)
            updating = True
            optimizer.step()
            updating = False
            step += 1
            bar.update(1)
            bar.set_postfix(kl=f"{kls[-1]:.4f}")
            if step % settings.save_every == 0 or step == settings.steps:
                log.append({"step": step, "tokens": step * per_step * settings.seq_len,
                            "kl": sum(kls) / len(kls), "seconds": seconds_before + time.perf_counter() - start})
                kls = []
                _save_state(store, params, optimizer, step=step, log=log,
                            seconds=seconds_before + time.perf_counter() - start)
    except KeyboardInterrupt:
        # The weights are those of the last finished step unless the interrupt hit the update itself; saving
        # there could store half-updated weights, so only a clean stop point is saved.
        if store.get("step", 0) != step and not updating:
            _save_state(store, params, optimizer, step=step, log=log,
                        seconds=seconds_before + time.perf_counter() - start)
        raise
    finally:
        bar.close()
        student.requires_grad_(False)
        for p in params.values():
            p.grad = None
    if kls:
        log.append({"step": step, "tokens": step * per_step * settings.seq_len, "kl": sum(kls) / len(kls),
                    "seconds": seconds_before + time.perf_counter() - start})
    kl_after = None
    if held_out:
        kl_after = held_out_kl(student, eval_ids, eval_cache.get("eval", held_out))
    assert Widths.from_config(student.config).to_json() == widths  # recovery never changes a width
    report = {
        "settings": asdict(settings),
        "data": provenance,
        "steps": step, "planned_steps": settings.steps,
        "tokens": step * per_step * settings.seq_len,
        "stopped_by": stopped_by,
        "held_out_windows": int(eval_ids.shape[0]),
        "held_out_kl_before": store.get("kl_before"), "held_out_kl_after": kl_after,
        "seconds": seconds_before + time.perf_counter() - start,
        "teacher_seconds_this_session": cache.seconds,
        "resumed": store.resumed,
        "trainable_params": sum(p.numel() for p in params.values()),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "device": str(device),
        "autocast": autocast,
        "log": log,
    }
    store.clear()
    return report


def recover_checkpoint(pruned: Path, teacher: str | Path, out: Path, settings: RecoverSettings,
                       device: torch.device, state_dir: Path | None = None, resume: bool = False,
                       overwrite: bool = False, progress: bool = True) -> dict:
    """:func:`recover_model` from a pruned checkpoint folder to ``out`` (written atomically, with
    ``recovery_report.json`` and the pruned checkpoint's reports beside the weights); returns the report."""
    import json

    student, tokenizer = load_model(Path(pruned))
    dense, _ = load_model(teacher)
    report = recover_model(student.to(device), dense.to(device), tokenizer, settings, state_dir=state_dir,
                           resume=resume, progress=progress)
    report |= {"student_model": str(pruned), "teacher_model": str(teacher), "threads": torch.get_num_threads()}
    extra = {"recovery_report.json": json.dumps(report, indent=2) + "\n",
             **{name: (Path(pruned) / name).read_text() for name in PRUNING_REPORTS if (Path(pruned) / name).is_file()}}
    save_checkpoint(student.cpu(), tokenizer, out, source_dir=Path(pruned), overwrite=overwrite, extra_files=extra)
    return report
