"""The run's report: ``report.json`` (everything), ``report.md`` (one section per step) and ``widths.png``."""

from __future__ import annotations

import json
from pathlib import Path

from ..model import Widths

# Greedy decoding with the exported per-layer KV cache using onnxruntime and the tokenizer only (tested).
GENAI_SNIPPET = """import onnxruntime_genai as og
model = og.Model('{onnx}')  # reads genai_config.json; the KV cache is written in place
tok = og.Tokenizer(model)
params = og.GeneratorParams(model)
params.set_search_options(max_length=64)
generator = og.Generator(model, params)
generator.append_tokens(tok.encode('Once upon a time'))
while not generator.is_done():
    generator.generate_next_token()
print(tok.decode(generator.get_sequence(0)))
"""
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


def write_report(report: dict, folder: Path) -> None:
    from ..search import plot_widths

    prune = report["prune"]
    dense = Widths.of(*zip(*[(w["heads"], w["kv_heads"], w["ffn"]) for w in prune["dense_widths"]]))
    pruned = Widths.of(*zip(*[(w["heads"], w["kv_heads"], w["ffn"]) for w in prune["widths"]]))
    (folder / "widths.png").write_bytes(plot_widths(dense, dense, pruned, labels=("dense", "pruned")))
    (folder / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (folder / "report.md").write_text(render_markdown(report))


def _summary(report: dict) -> list[str]:
    r, p = report["recipe"], report["prune"]
    return [f"# putri-export run: {r['model']} at block sparsity {r['sparsity']}", "",
            f"Method {p['method']}{_reconstruction(p)}; blocks {p['params_blocks']:,} / "
            f"{p['dense_params_blocks']:,} parameters (achieved {p['sparsity_blocks']:.4f}); whole model "
            f"{p['params_total']:,} / {p['dense_params_total']:,} ({p['sparsity_total']:.4f}). Pruning took "
            f"{p['seconds']:.0f} s, peak RSS {p['peak_rss_mb']:.0f} MB, {p['threads']} threads. Calibration "
            f"`{r['calib']}`, {r['calib_samples']} × {r['calib_len']} tokens.", "",
            *_recovery(p), "![per-layer widths](widths.png)", ""]


def _reconstruction(prune: dict) -> str:
    epochs = prune.get("reconstruct_epochs")
    text = f" on {prune['reconstruct_calib']}" if prune.get("reconstruct_calib") else ""
    return f" + block reconstruction ({epochs} epoch{'s' * (epochs > 1)}{text})" if epochs else ""


def _recovery(prune: dict) -> list[str]:
    rec = prune.get("recovery")
    if rec is None:
        return []
    kl = (f"; held-out KL to the dense model {rec['held_out_kl_before']:.4f} -> {rec['held_out_kl_after']:.4f}"
          if rec.get("held_out_kl_after") is not None else "")
    return [f"Recovered by distillation from the dense model (`putri-export recover`, `{rec['data']}`): "
            f"{rec['steps']} steps, {rec['tokens']:,} tokens in {rec['seconds']:.0f} s, stopped by "
            f"{rec['stopped_by']}{kl}. Every artifact below is of the recovered model.", ""]


def _widths(report: dict) -> list[str]:
    return ["## Per-layer widths", "", "| layer | query heads | KV heads | FFN |", "|---:|---:|---:|---:|",
            *[f"| {w['layer']} | {w['heads']} | {w['kv_heads']} | {w['ffn']} |" for w in report["prune"]["widths"]], ""]


def _quality(report: dict) -> list[str]:
    r, quality = report["recipe"], report["quality"]
    corpora = r["eval_data"]
    lines = [f"## Quality (perplexity, {quality[0]['windows']} windows × {r['seq_len']} tokens)", "",
             "| artifact | " + " | ".join(f"{c} dense | {c} pruned" for c in corpora) + " |",
             "|---|" + "---:|" * (2 * len(corpora))]
    for label in dict.fromkeys(q["artifact"] for q in quality):
        cells = []
        for c in corpora:
            for which in ("dense", "pruned"):
                row = next((q for q in quality if q["artifact"] == label and q["which"] == which), None)
                cells.append(f"{row[c]:.2f}" if row else "–")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _artifacts(report: dict) -> list[str]:
    lines = ["## Artifacts (each verified in its runtime before it was written)", "",
             "| file | MB | parity | max\\|Δlogit\\| rel. | Δppl |", "|---|---:|---|---:|---:|"]
    for a in report["artifacts"]:
        par = a["parity"]
        lines.append(f"| {a['path']} | {a['bytes'] / 1e6:.1f} | {'PASS' if par['passed'] else 'FAIL'} | "
                     f"{par['rel_logit_diff']:.2e} | {par['ppl_rel_diff']:+.2%} |")
    return [*lines, ""]


def _speed(report: dict) -> list[str]:
    if not report["bench"]:
        return []
    lines = ["## Speed and memory (pruned vs dense, same run; medians)", "",
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
    return [*lines, ""]


def _serving(report: dict) -> list[str]:
    gguf = next((a["path"] for a in report["artifacts"] if a["format"] == "gguf" and a["which"] == "pruned"), None)
    onnx = next((a["path"] for a in report["artifacts"] if a["format"] == "onnx" and a["which"] == "pruned"), None)
    lines = ["## Serving", "", "PyTorch / transformers (the checkpoint carries its modeling code):", "", "```python",
             "import putri_export.model  # registers the per-layer-width classes (or pass trust_remote_code=True)",
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
        lines += ["", "onnxruntime-genai (`pip install onnxruntime-genai`):", "", "```python",
                  *GENAI_SNIPPET.format(onnx=onnx).splitlines(), "```",
                  "", "ONNX Runtime alone (no putri-export needed; `putri_onnx.json` gives each layer's cache shape; "
                  "this loop passes the grown cache back, while `putri_export.runtime.ort.OrtModel` binds one buffer "
                  "per layer as both past and present, so GroupQueryAttention writes the cache in place):", "",
                  "```python", *ORT_SNIPPET.format(onnx=onnx).splitlines(), "```"]
    return [*lines, ""]


def render_markdown(report: dict) -> str:
    sections = (_summary, _widths, _quality, _artifacts, _speed, _serving)
    lines = [line for section in sections for line in section(report)]
    return "\n".join([*lines, f"Whole run: {report['seconds']:.0f} s.", ""])
