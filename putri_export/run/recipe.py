"""The settings of ``putri-export run``: one recipe, given as flags or as a JSON/YAML file."""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path

from ..compute import DTYPES
from ..data import DEFAULT_CALIBRATION, RAW_CALIBRATION, parse_weighted_specs
from ..errors import PutriError
from ..export import FORMATS, QUANTIZATIONS
from ..export.formats import ALL_GGUF_TYPES, ONNX_ATTENTIONS
from ..options import option
from ..prune import check_sparsity
from ..prune.settings import PUTRI_METHODS, RECONSTRUCT_CALIB_HELP, RECONSTRUCTION, ReconstructionSettings

# run's default route (a model held in memory): the paper preset plus these epochs of block reconstruction, on the
# default calibration's corpora as raw text (RAW_CALIBRATION) where neither --calib nor --reconstruct-calib is given.
# SmolLM2-135M 0.5, 64 test windows: 2 epochs on the pruning windows 99.2/13.2, 4 on them 91.3/12.1, 4 on raw text
# 87.0/12.2; whole sets 113.2/16.4 -> 99.6/15.1 (results/quality).
DEFAULT_RECONSTRUCT_EPOCHS = 4


@dataclass
class Recipe(ReconstructionSettings):
    """Every setting of ``putri-export run`` (flags and recipe-file keys are these fields; block reconstruction's
    are inherited, its epochs with run's default)."""

    model: str = option("smollm2-135m", "HF folder or built-in name")
    sparsity: float = option(0.5, "fraction of block parameters to remove, [0, 1)")
    method: str = option("putri", "pruning preset: putri (the paper's) or putri-dense-fit (fits each layer to the "
                         "dense model; keeps a dense copy in memory, so not for a streamed model; SmolLM2-135M at 0.5: "
                         "TinyStories 0.79x, WikiText-2 1.07x the paper's, results/quality)",
                         choices=PUTRI_METHODS)
    reconstruct_epochs: int | None = option(
        None, "block reconstruction after pruning (prune/search --reconstruct-epochs): each pruned block's kept "
        f"weights trained to the dense block's output. Default: {DEFAULT_RECONSTRUCT_EPOCHS} for a model held in "
        "memory (SmolLM2-135M Putri 0.5, on the raw text below: 0.66x/0.64x the paper preset's whole-set "
        "perplexities, +9.5 min), 0 for a streamed one (it runs a dense copy beside the pruned blocks)",
        group=RECONSTRUCTION)
    reconstruct_calib: str | None = option(
        None, RECONSTRUCT_CALIB_HELP.format(default=f"--calib; with the default --calib the same corpora as raw text, "
                                            f"{RAW_CALIBRATION}"), group=RECONSTRUCTION)
    search: bool = option(False, "Týr-style search of per-layer widths, started from Putri's greedy allocation "
                          "(putri-export search; SmolLM2-135M 0.5: 0.79x/0.86x the paper preset's whole-set "
                          "perplexities, one Putri prune + 47 min here)")
    formats: list[str] = option(["gguf", "onnx"], f"artifact formats ({', '.join(FORMATS)})")
    gguf_types: list[str] = option(["q8_0"], f"GGUF types ({', '.join(ALL_GGUF_TYPES)}; the K-/i-quants with an "
                                   "importance matrix from the calibration set)")
    onnx_quantize: list[str] = option(["none", "int8"], f"ONNX quantizations ({', '.join(QUANTIZATIONS)})")
    onnx_attention: str = option("gqa", "ONNX attention: gqa (GroupQueryAttention, KV cache written in place) or "
                                 "standard (portable ops, cache concatenated)", choices=ONNX_ATTENTIONS)
    calib: str = option(DEFAULT_CALIBRATION, "calibration data (comma-separated specs, split evenly; SPEC*N "
                        "takes N shares)")
    calib_samples: int = option(64, "calibration windows")
    calib_len: int = option(512, "tokens per calibration window")
    search_options: dict = option({}, "SearchSettings fields for --search (recipe file only)")
    recover: bool = option(False, "after pruning, distil the dense model into the pruned one (putri-export "
                           "recover; same widths) before anything is exported. SmolLM2-135M searched at 0.5 + "
                           "reconstruction + 23.5 min of bf16 recovery: 0.45x/0.52x the paper preset's perplexities")
    recover_minutes: float = option(20.0, "wall-time bound of --recover (teacher passes included)")
    recover_options: dict = option({}, "RecoverSettings fields for --recover (recipe file only)")
    align: int = option(32, "kept FFN widths in multiples of N, the target still met. 32 (default): every "
                        "ffn_down row holds whole Q8_0/Q4_x blocks (SmolLM2-135M Putri 0.5: GGUF q8_0 98.9 -> 88.3 "
                        "MB, perplexity within noise); 256: K-quant super-blocks; 1: unaligned (prune's default)")
    eval_data: list[str] = option(["wikitext2", "tinystories"], "corpora every model and artifact is scored on")
    eval_windows: int = option(8, "perplexity windows per corpus")
    seq_len: int = option(512, "tokens per perplexity window")
    verify_windows: int = option(4, "perplexity windows of each artifact's parity check")
    bench: bool = option(True, "benchmark dense vs pruned in every runtime")
    bench_depths: list[int] = option([0, 512], "context depths of the benchmark")
    bench_repeats: int = option(3, "timed repeats per benchmark configuration")
    prompt_tokens: int = option(128, "benchmark prompt tokens")
    gen_tokens: int = option(32, "benchmark decoded tokens")
    threads: int | None = option(None, "threads for torch and the runtimes (default: all cores)")
    device: str = option("auto", "where pruning runs: cpu, cuda, cuda:N or mps; auto: the best available")
    dtype: str = option("float32", "weights and activations while pruning (statistics stay fp64/fp32)",
                        choices=DTYPES)

    def check(self) -> None:
        check_sparsity(self.sparsity)
        if self.align < 1:
            raise PutriError(f"align must be >= 1, got {self.align}")
        bad = [f for f in self.formats if f not in FORMATS]
        if bad or not self.formats:
            raise PutriError(f"unknown format(s) {bad or self.formats}: choose from {', '.join(FORMATS)}")
        bad = [t for t in self.gguf_types if t not in ALL_GGUF_TYPES]
        if bad:
            raise PutriError(f"unknown GGUF type(s) {bad}: choose from {', '.join(ALL_GGUF_TYPES)}")
        bad = [q for q in self.onnx_quantize if q not in QUANTIZATIONS]
        if bad:
            raise PutriError(f"unknown ONNX quantization(s) {bad}: choose from {', '.join(QUANTIZATIONS)}")
        if self.eval_windows < 1 or self.verify_windows < 1 or self.seq_len < 16:
            raise PutriError("eval-windows and verify-windows must be >= 1 and seq-len >= 16")
        parse_weighted_specs(self.calib)
        self.check_reconstruction(self.reconstruction_epochs(streamed=False))
        if self.recover:
            from ..recover import RecoverSettings

            unknown = sorted(set(self.recover_options) - set(RecoverSettings.__dataclass_fields__))
            if unknown:
                raise PutriError(f"unknown recover option(s) {', '.join(unknown)}; accepted: "
                                 f"{', '.join(RecoverSettings.__dataclass_fields__)}")
            self.recover_settings().check()
        if self.bench and (self.bench_repeats < 1 or any(d < 0 for d in self.bench_depths) or not self.bench_depths):
            raise PutriError("bench needs repeats >= 1 and non-negative depths")

    def reconstruction_epochs(self, streamed: bool) -> int:
        """The epochs of block reconstruction this run uses: as given, else the default (none when streamed, unless
        a reconstruction text is named: then prune says why a streamed model cannot)."""
        if self.reconstruct_epochs is not None:
            return self.reconstruct_epochs
        return 0 if streamed and not self.names_reconstruction_text() else DEFAULT_RECONSTRUCT_EPOCHS

    def run_reconstruction(self, streamed: bool) -> ReconstructionSettings:
        """Block reconstruction as this run does it: :meth:`reconstruction_epochs`, on the named text, else on
        --calib, except that the default calibration is read as raw text (its WikiText-2 split is the tokenized one,
        with literal <unk>)."""
        settings = self.reconstruction(self.reconstruction_epochs(streamed))
        if settings.reconstruct_epochs and self.reconstruct_calib is None and self.calib == DEFAULT_CALIBRATION:
            settings.reconstruct_calib = RAW_CALIBRATION
        return settings

    def recover_settings(self):
        from ..recover import RecoverSettings

        return RecoverSettings(**{"max_minutes": self.recover_minutes, **self.recover_options})

    def variants(self, fmt: str) -> list[str]:
        return self.gguf_types if fmt == "gguf" else self.onnx_quantize if fmt == "onnx" else ["fp32"]

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
            raise PutriError(f"recipe {path}: unknown key(s) {', '.join(unknown)}; accepted: "
                             f"{', '.join(sorted(known))}")
        try:
            return cls(**{**data, **overrides})
        except TypeError as e:
            raise PutriError(f"recipe {path}: {e}") from None
