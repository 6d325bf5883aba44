"""``putri-export run``: model → pruned checkpoint → GGUF/ONNX artifacts → verified → evaluated →
benchmarked → ``report.md``.

Each step writes into a staging folder beside ``--out`` and records itself in ``run_state.json``;
``--resume`` skips the steps already finished with the same recipe, and the folder is renamed to
``--out`` only when every step is done (an interrupted run never leaves a partial ``--out``).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from .errors import PutriError
from .export import FORMATS

BACKEND = {"gguf": "llama.cpp", "onnx": "onnxruntime", "torch": "torch"}


@dataclass
class Recipe:
    model: str = "smollm2-135m"
    sparsity: float = 0.5
    search: bool = False  # Týr-style search of per-layer widths before pruning
    formats: list[str] = field(default_factory=lambda: ["gguf", "onnx"])
    gguf_types: list[str] = field(default_factory=lambda: ["q8_0"])
    onnx_quantize: list[str] = field(default_factory=lambda: ["none", "int8"])
    calib: str = "wikitext2:valid,tinystories:train"
    calib_samples: int = 64
    calib_len: int = 512
    search_options: dict = field(default_factory=dict)  # SearchSettings fields (e.g. generations)
    eval_data: list[str] = field(default_factory=lambda: ["wikitext2", "tinystories"])
    eval_windows: int = 8
    seq_len: int = 512
    verify_windows: int = 4
    bench: bool = True
    bench_depths: list[int] = field(default_factory=lambda: [0, 512])
    bench_repeats: int = 3
    prompt_tokens: int = 128
    gen_tokens: int = 32
    threads: int | None = None

    def check(self) -> None:
        from .export_gguf import GGUF_TYPES
        from .export_onnx import QUANTIZATIONS

        if not 0 <= self.sparsity < 1:
            raise PutriError(f"sparsity must be in [0, 1) (a fraction of the block parameters), got {self.sparsity}")
        bad = [f for f in self.formats if f not in FORMATS]
        if bad or not self.formats:
            raise PutriError(f"unknown format(s) {bad or self.formats}: choose from {', '.join(FORMATS)}")
        bad = [t for t in self.gguf_types if t not in GGUF_TYPES]
        if bad:
            raise PutriError(f"unknown GGUF type(s) {bad}: choose from {', '.join(GGUF_TYPES)}")
        bad = [q for q in self.onnx_quantize if q not in QUANTIZATIONS]
        if bad:
            raise PutriError(f"unknown ONNX quantization(s) {bad}: choose from {', '.join(QUANTIZATIONS)}")
        if self.eval_windows < 1 or self.verify_windows < 1 or self.seq_len < 16:
            raise PutriError("eval-windows and verify-windows must be >= 1 and seq-len >= 16")
        if self.bench and (self.bench_repeats < 1 or any(d < 0 for d in self.bench_depths) or not self.bench_depths):
            raise PutriError("bench needs repeats >= 1 and non-negative depths")

    @classmethod
    def from_file(cls, path: Path, overrides: dict) -> Recipe:
        """A JSON or YAML recipe; keys are the field names (``-`` or ``_``); command-line flags win."""
        path = Path(path)
        if not path.is_file():
            raise PutriError(f"recipe not found: {path}")
        text = path.read_text()
        try:
            if path.suffix in (".yaml", ".yml"):
                import yaml

                data = yaml.safe_load(text)
            else:
                data = json.loads(text)
        except Exception as e:
            raise PutriError(f"recipe {path} could not be parsed: {str(e).splitlines()[0]}") from None
        if not isinstance(data, dict):
            raise PutriError(f"recipe {path} must be a mapping of settings, got {type(data).__name__}")
        data = {k.replace("-", "_"): v for k, v in data.items()}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise PutriError(f"recipe {path}: unknown key(s) {', '.join(unknown)}; accepted: {', '.join(sorted(known))}")
        try:
            return cls(**{**data, **overrides})
        except TypeError as e:
            raise PutriError(f"recipe {path}: {e}") from None


# ---------------------------------------------------------------------------------------------


class _Steps:
    """Finished steps of a run, kept in the staging folder (JSON, no pickle)."""

    def __init__(self, folder: Path, key: str, resume: bool):
        self.folder, self.file = folder, folder / "run_state.json"
        self.state = {"key": key, "done": {}}
        if resume and self.file.is_file():
            state = json.loads(self.file.read_text())
            if state.get("key") != key:
                raise PutriError(f"{folder} holds a run of another recipe; run without --resume to start over")
            self.state = state
        elif folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True, exist_ok=True)

    def done(self, name: str) -> dict | None:
        return self.state["done"].get(name)

    def run(self, name: str, make: Callable[[], dict]) -> dict:
        """The recorded result of step ``name``, or ``make()``'s, recorded. A step that fails says where the
        finished ones are kept."""
        done = self.done(name)
        if done is not None:
            return done
        try:
            result = make()
        except PutriError as e:
            raise type(e)(f"step {name} failed: {e} (finished steps are kept in {self.folder}: rerun the same "
                          "command with --resume to continue)") from None
        return self.finish(name, result)

    def finish(self, name: str, result: dict) -> dict:
        self.state["done"][name] = result
        tmp = self.folder / ".run_state.tmp"
        tmp.write_text(json.dumps(self.state, indent=1))
        tmp.replace(self.file)
        return result


def staging_folder(out: Path) -> Path:
    """Where a run works until every step is done (kept for --resume when it stops early)."""
    return out.with_name(f".{out.name}.running")


def _say(text: str) -> None:
    print(f"[run] {text}", file=sys.stderr, flush=True)


def run_pipeline(recipe: Recipe, out: Path, overwrite: bool = False, resume: bool = False) -> dict:
    import torch

    from .assets import resolve_model
    from .atomic import commit

    recipe.check()
    out = Path(out)
    if out.exists() and not overwrite:
        raise PutriError(f"{out} exists; pass --overwrite to replace it")
    if recipe.threads:
        torch.set_num_threads(recipe.threads)
    resolved = resolve_model(recipe.model)
    if resolved.gguf_file is not None:
        raise PutriError("run needs an HF model folder (or smollm2-135m), not a .gguf file")
    dense_dir = resolved.path
    key = hashlib.sha256(json.dumps(asdict(recipe), sort_keys=True).encode()).hexdigest()
    staging = staging_folder(out)
    steps = _Steps(staging, key, resume)
    start = time.perf_counter()

    pruned_dir = staging / "model"
    prune_info = steps.run("prune", lambda: _prune(recipe, dense_dir, pruned_dir))
    artifacts = []
    for fmt in recipe.formats:
        for variant in (recipe.gguf_types if fmt == "gguf" else recipe.onnx_quantize):
            for which, src in (("dense", dense_dir), ("pruned", pruned_dir)):
                name = f"{which}-{variant}.gguf" if fmt == "gguf" else f"{which}-onnx-{variant}"
                step = f"export:{name}"
                info = steps.run(step, lambda: _export(fmt, variant, src, staging / "artifacts" / name, recipe))
                artifacts.append({"format": fmt, "variant": variant, "which": which,
                                  "path": f"artifacts/{name}", **info})
    quality = steps.run("quality", lambda: _quality(recipe, dense_dir, pruned_dir, staging, artifacts))
    bench = {}
    if recipe.bench:
        for fmt in ["torch", *recipe.formats]:
            variants = ["fp32"] if fmt == "torch" else (recipe.gguf_types if fmt == "gguf" else recipe.onnx_quantize)
            for variant in variants:
                step = f"bench:{fmt}-{variant}"
                if fmt == "torch":
                    pair = [dense_dir, pruned_dir]
                else:
                    pair = [staging / a["path"] for w in ("dense", "pruned") for a in artifacts
                            if a["format"] == fmt and a["variant"] == variant and a["which"] == w]
                bench[f"{fmt}-{variant}"] = steps.run(
                    step, lambda: _bench(recipe, fmt, pair, staging / "bench" / f"{fmt}-{variant}"))
    report = {"recipe": asdict(recipe), "dense_model": str(dense_dir), "prune": prune_info, "artifacts": artifacts,
              "quality": quality, "bench": bench, "seconds": time.perf_counter() - start}
    _write_report(report, staging)
    (staging / "run_state.json").unlink()
    commit(staging, out)
    _say(f"done: {out}/report.md")
    return report


def _prune(recipe: Recipe, dense_dir: Path, out: Path) -> dict:
    import torch

    from .calibration import load_calibration
    from .model import load_model, save_checkpoint

    _say(f"pruning {recipe.model} to block sparsity {recipe.sparsity}" + (" with search" if recipe.search else ""))
    model, tokenizer = load_model(dense_dir)
    c = model.config
    dense_widths = [{"layer": l, "heads": c.num_attention_heads_per_layer[l], "kv_heads": c.num_key_value_heads_per_layer[l],
                     "ffn": c.intermediate_size_per_layer[l]} for l in range(c.num_hidden_layers)]
    calib = load_calibration(tokenizer, recipe.calib, recipe.calib_samples, recipe.calib_len)
    if out.exists():
        shutil.rmtree(out)
    if recipe.search:
        from .search import SearchSettings, search_and_prune

        settings = SearchSettings(sparsity=recipe.sparsity, **recipe.search_options)
        report, plots = search_and_prune(model, calib, settings, out.parent / "search-work", resume=True)
        files = {"search_report.json": json.dumps(report, indent=2) + "\n", **plots}
    else:
        from .prune import PruneSettings, prune_model

        report = prune_model(model, calib, PruneSettings(sparsity=recipe.sparsity), state_dir=out.parent / "prune-state",
                             resume=True)
        files = {"pruning_report.json": json.dumps(report, indent=2) + "\n"}
    report["threads"] = torch.get_num_threads()
    save_checkpoint(model, tokenizer, out, source_dir=dense_dir, extra_files=files)
    keys = ("method", "params_blocks", "params_total", "dense_params_blocks", "dense_params_total",
            "sparsity_blocks", "sparsity_total", "widths", "peak_rss_mb", "threads")
    return {k: report.get(k) for k in keys} | {"seconds": report.get("prune_seconds", report.get("seconds")),
                                               "dense_widths": dense_widths}


def _export(fmt: str, variant: str, src: Path, out: Path, recipe: Recipe) -> dict:
    """Write an artifact under a staging name, verify it in its runtime, then rename it."""
    from .export import export_verified
    from .model import load_model

    _say(f"exporting {out.name}")
    model, tokenizer = load_model(src)
    result = export_verified(model, tokenizer, src, out, fmt, variant, seq_len=recipe.seq_len,
                             max_windows=recipe.verify_windows, threads=recipe.threads, progress=False)
    _say(result.parity.summary())
    if not result.written:
        raise PutriError(f"{out.name} failed its parity check: {'; '.join(result.parity.failures)}")
    return {"bytes": result.bytes, "export_seconds": result.export_seconds, "parity": result.parity.to_dict(),
            "notes": result.notes}


def _quality(recipe: Recipe, dense_dir: Path, pruned_dir: Path, staging: Path, artifacts: list[dict]) -> list[dict]:
    """Perplexity of every model and artifact on every evaluation corpus (same windows, same tokens)."""
    import numpy as np
    import torch

    from .data import load_corpus
    from .evaluate import perplexity, tokenize_corpus, torch_logits_fn
    from .model import load_model

    rows = []
    runners = [("torch fp32", "dense", lambda: ("torch", dense_dir)), ("torch fp32", "pruned", lambda: ("torch", pruned_dir))]
    for a in artifacts:
        label = f"GGUF {a['variant']}" if a["format"] == "gguf" else f"ONNX {a['variant'] if a['variant'] != 'none' else 'fp32'}"
        runners.append((label, a["which"], lambda a=a: (a["format"], staging / a["path"])))
    tokenizer = load_model(dense_dir)[1]
    corpora = {name: load_corpus(name) for name in recipe.eval_data}
    ids = {name: tokenize_corpus(tokenizer, c) for name, c in corpora.items()}
    for label, which, get in runners:
        kind, path = get()
        _say(f"perplexity: {label} {which}")
        if kind == "torch":
            model = load_model(path)[0]
            fn, close = torch_logits_fn(model), (lambda: None)
        else:
            from .runtime_process import RuntimeProcess

            rt = RuntimeProcess(BACKEND[kind], path, n_ctx=recipe.seq_len, n_threads=recipe.threads)
            fn, close = (lambda b, rt=rt: torch.from_numpy(np.stack([rt.logits(r.tolist()) for r in b]))), rt.close
        try:
            row = {"artifact": label, "which": which}
            with torch.no_grad():
                for name in recipe.eval_data:
                    result = perplexity(fn, ids[name], recipe.seq_len, recipe.eval_windows, corpus=corpora[name],
                                        progress=False)
                    row[name] = result.perplexity
                    row["windows"] = result.windows
        finally:
            close()
        rows.append(row)
    return rows


def _bench(recipe: Recipe, fmt: str, pair: list[Path], out: Path) -> dict:
    from .bench_suite import run_sweep

    _say(f"benchmarking {fmt}: {', '.join(p.name for p in pair)}")
    if out.exists():
        shutil.rmtree(out)
    threads = recipe.threads or __import__("os").cpu_count() or 1
    report = run_sweep([str(p) for p in pair], BACKEND[fmt], threads, recipe.prompt_tokens, recipe.gen_tokens,
                       list(recipe.bench_depths), recipe.bench_repeats, out, progress=False)
    return {"comparison": report["comparison"], "models": report["models"],
            "results": [{k: r[k] for k in ("model", "depth", "ttft_s", "prefill_tps", "decode_tps", "peak_rss_mb",
                                             "load_s")} for r in report["results"]]}


# ---------------------------------------------------------------------------------------------


def _write_report(report: dict, folder: Path) -> None:
    from .search import plot_widths

    prune = report["prune"]
    (folder / "widths.png").write_bytes(plot_widths(prune["dense_widths"], prune["dense_widths"], prune["widths"],
                                                    labels=("dense", "pruned")))
    (folder / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (folder / "report.md").write_text(render_markdown(report))


# Greedy decoding with the exported per-layer KV cache using onnxruntime and the tokenizer only (tested).
ORT_SNIPPET = """import json, numpy as np, onnxruntime as ort
from transformers import AutoTokenizer
d = '{onnx}'
spec = json.load(open(f'{{d}}/putri_onnx.json'))
session, tok = ort.InferenceSession(f"{{d}}/{{spec['model_file']}}"), AutoTokenizer.from_pretrained(d)
past = {{f'past_key_values.{{l}}.{{kv}}': np.zeros((1, spec['num_key_value_heads_per_layer'][l], 0, spec['head_dim']),
                                             np.float32) for l in spec['cache_layers'] for kv in ('key', 'value')}}
ids, seen, out = tok('Once upon a time', return_tensors='np').input_ids, 0, []
for _ in range(32):
    n = ids.shape[1]
    logits, *present = session.run(None, {{'input_ids': ids, 'attention_mask': np.ones((1, seen + n), np.int64),
                                          'position_ids': np.arange(seen, seen + n)[None], **past}})
    past = {{k.replace('present.', 'past_key_values.'): v for k, v in zip(spec['outputs'][1:], present)}}
    seen, ids = seen + n, logits[:, -1:].argmax(-1)
    out.append(int(ids[0, 0]))
print(tok.decode(out))
"""


def render_markdown(report: dict) -> str:
    r, p = report["recipe"], report["prune"]
    lines = [f"# putri-export run: {r['model']} at block sparsity {r['sparsity']}", "",
             f"Method {p['method']}; blocks {p['params_blocks']:,} / {p['dense_params_blocks']:,} parameters "
             f"(achieved {p['sparsity_blocks']:.4f}); whole model {p['params_total']:,} / {p['dense_params_total']:,} "
             f"({p['sparsity_total']:.4f}). Pruning took {p['seconds']:.0f} s, peak RSS {p['peak_rss_mb']:.0f} MB, "
             f"{p['threads']} threads. Calibration `{r['calib']}`, {r['calib_samples']} × {r['calib_len']} tokens.", "",
             "![per-layer widths](widths.png)", "", "## Per-layer widths", "",
             "| layer | query heads | KV heads | FFN |", "|---:|---:|---:|---:|"]
    lines += [f"| {w['layer']} | {w['heads']} | {w['kv_heads']} | {w['ffn']} |" for w in p["widths"]]
    corpora = r["eval_data"]
    lines += ["", f"## Quality (perplexity, {report['quality'][0]['windows']} windows × {r['seq_len']} tokens)", "",
              "| artifact | " + " | ".join(f"{c} dense | {c} pruned" for c in corpora) + " |",
              "|---|" + "---:|" * (2 * len(corpora))]
    labels = list(dict.fromkeys(q["artifact"] for q in report["quality"]))
    for label in labels:
        cells = []
        for c in corpora:
            for which in ("dense", "pruned"):
                row = next((q for q in report["quality"] if q["artifact"] == label and q["which"] == which), None)
                cells.append(f"{row[c]:.2f}" if row else "–")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "## Artifacts (each verified in its runtime before it was written)", "",
              "| file | MB | parity | max\\|Δlogit\\| rel. | Δppl |", "|---|---:|---|---:|---:|"]
    for a in report["artifacts"]:
        par = a["parity"]
        lines.append(f"| {a['path']} | {a['bytes'] / 1e6:.1f} | {'PASS' if par['passed'] else 'FAIL'} | "
                     f"{par['rel_logit_diff']:.2e} | {par['ppl_rel_diff']:+.2%} |")
    if report["bench"]:
        lines += ["", "## Speed and memory (pruned vs dense, same run; medians)", "",
                  "| runtime | model | depth | prefill tok/s | decode tok/s | TTFT s | peak RSS MB | decode speed-up | "
                  "bytes-ratio limit |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for name, b in report["bench"].items():
            comp = {(c["model"], c["depth"]): c for c in b["comparison"]}
            which = {m["model"]: ("dense", "pruned")[i] for i, m in enumerate(b["models"])}
            for res in b["results"]:
                c = comp.get((res["model"], res["depth"]))
                ratio = f"{c['decode_speedup']:.2f}× | {c['bytes_ratio_limit']:.2f}×" if c else "(reference) | "
                lines.append(f"| {name} | {which[res['model']]} | {res['depth']} | {res['prefill_tps']['median']:.1f} | "
                             f"{res['decode_tps']['median']:.1f} | {res['ttft_s']['median']:.3f} | "
                             f"{res['peak_rss_mb']:.0f} | {ratio} |")
    gguf = next((a["path"] for a in report["artifacts"] if a["format"] == "gguf" and a["which"] == "pruned"), None)
    onnx = next((a["path"] for a in report["artifacts"] if a["format"] == "onnx" and a["which"] == "pruned"), None)
    lines += ["", "## Serving", "", "PyTorch / transformers (the checkpoint carries its modeling code):", "", "```python",
              "import putri_export  # registers the per-layer-width classes (or pass trust_remote_code=True)",
              "from transformers import AutoModelForCausalLM, AutoTokenizer",
              "model = AutoModelForCausalLM.from_pretrained('model'); tok = AutoTokenizer.from_pretrained('model')",
              "print(tok.decode(model.generate(**tok('Once upon a time', return_tensors='pt'), max_new_tokens=32)[0]))",
              "```"]
    if gguf:
        lines += ["", "llama.cpp (llama-cpp-python's OpenAI-compatible server, loopback only):", "", "```bash",
                  f"putri-export serve {gguf} --port 8000",
                  "curl -s http://127.0.0.1:8000/v1/completions -H 'Content-Type: application/json' \\",
                  "  -d '{\"prompt\": \"Once upon a time\", \"max_tokens\": 32}'",
                  f"llama-cli -m {gguf} -p 'Once upon a time' -n 32   # a llama.cpp build with the deci architecture",
                  "```", "", "On an Intel CPU with AMX (`grep -o amx_int8 /proc/cpuinfo`), llama.cpp's own tools need "
                  "`--no-repack` (`-nr`): their AMX kernels crash on quantized GGUFs (llama.cpp issue 20824). "
                  "`putri-export serve` applies this itself."]
    if onnx:
        lines += ["", "ONNX Runtime alone (no putri-export needed; `putri_onnx.json` gives each layer's cache shape, "
                  "and `putri_export.runtime_ort.OrtModel` wraps the same loop):", "", "```python", *ORT_SNIPPET.format(onnx=onnx).splitlines(), "```"]
    lines += ["", f"Whole run: {report['seconds']:.0f} s.", ""]
    return "\n".join(lines)
