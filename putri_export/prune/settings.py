"""The settings of a pruning run (the CLI's ``prune`` flags are these fields)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

from ..data import parse_weighted_specs
from ..errors import PutriError
from ..options import option

if TYPE_CHECKING:  # torch-free at import: the CLI checks settings before loading anything
    from ..data import Calibration

METHOD_NAMES = ("putri", "putri-dense-fit", "2ssp", "shortgpt", "flap")
PUTRI_METHODS = ("putri", "putri-dense-fit")
FIT_TARGETS = ("local", "dense")
# The values a Putri method's unset options take. "putri" is the paper's algorithm as published plus the o_proj refit
# (the reference every ratio is measured against); "putri-dense-fit" fits every kept layer to the *dense* model's
# output from the pruned stream, removes FFN neurons in OBS rounds, refits each FFN once its block's heads are gone,
# and scores heads on whole calibration windows.
PRESETS = {
    "putri": {"obs_rounds": 1, "fit_target": "local", "final_refit": False, "attn_len": 256},
    "putri-dense-fit": {"obs_rounds": 16, "fit_target": "dense", "final_refit": True, "attn_len": 512},
}
ATTN_SCORINGS = ("auto", "loss", "local")
# auto scores attention locally on CPU from this many block parameters up (loss-based trials cost
# rounds x candidates x remaining depth forward passes).
LOCAL_SCORING_FROM_PARAMS = 500_000_000


# {default}: what the command reads where no text is named
RECONSTRUCT_CALIB_HELP = ("text of block reconstruction (calibration specs, SPEC*N takes N shares; default: "
                          "{default}). SmolLM2-135M searched at 0.5, 2 epochs on 256 windows of "
                          "wikitext2:valid-raw,tinystories:train-2mib instead of the 64 pruning windows: 0.62x/0.65x "
                          "the paper preset's whole-set perplexities instead of 0.73x/0.73x, 23 min instead of 6; 8 "
                          "epochs on 64 such windows about the same in 15 min (the steps pay; results/quality)")
RECONSTRUCT_SAMPLES_HELP = "windows of block reconstruction (default: --calib-samples); its time grows with them"
RECONSTRUCT_LR_HELP = ("Adam learning rate of block reconstruction, constant. SmolLM2-135M at 0.5, 2 windows per step: "
                       "3e-3 scored 3%/5% lower perplexity than 1e-3 on the paper preset but 8%/9% higher on the "
                       "searched widths (64 test windows; a cosine decay fitted worse; results/quality)")
DEFAULT_RECONSTRUCT_LR = 1e-3
RECONSTRUCT_BATCH_HELP = ("calibration windows per Adam step of block reconstruction (the same passes in more, smaller "
                          "steps, about the same time). SmolLM2-135M Putri 0.5, 2 epochs on the 64 pruning windows at "
                          "lr 1e-3: 2 scored 10%/10% lower perplexity than 8; 1 about 2%/4% lower than 2, 16% slower "
                          "(64 test windows; results/quality)")
DEFAULT_RECONSTRUCT_BATCH = 2


RECONSTRUCTION = "block reconstruction"  # the --help group of its flags


@dataclass
class ReconstructionSettings:
    """Block reconstruction's settings, declared once: prune's, search's and run's settings inherit these fields
    (and so their flags, listed under one heading in ``--help``) and this check."""

    reconstruct_epochs: int = option(0, "train each pruned block's kept weights for this many passes over its text to "
                                     "reproduce the dense block's output (keeps a dense copy in memory, so not for a "
                                     "streamed model; prune: the Putri methods)", group=RECONSTRUCTION)
    # SmolLM2-135M putri-dense-fit 0.5: 4 epochs at 1e-4 moved the mean block error 0.0224 -> 0.0220; 2 epochs at 1e-3
    # took the whole-set perplexities 1.07x/0.79x -> 0.95x/0.75x the paper preset's (results/quality)
    reconstruct_lr: float = option(DEFAULT_RECONSTRUCT_LR, RECONSTRUCT_LR_HELP, group=RECONSTRUCTION)
    reconstruct_batch: int = option(DEFAULT_RECONSTRUCT_BATCH, RECONSTRUCT_BATCH_HELP, group=RECONSTRUCTION)
    reconstruct_calib: str | None = option(None, RECONSTRUCT_CALIB_HELP.format(default="--calib"),
                                           group=RECONSTRUCTION)
    reconstruct_samples: int | None = option(None, RECONSTRUCT_SAMPLES_HELP, group=RECONSTRUCTION)

    def names_reconstruction_text(self) -> bool:
        """Whether block reconstruction is given its own text or window count (else it reads the pruning
        calibration)."""
        return self.reconstruct_calib is not None or self.reconstruct_samples is not None

    def reconstruction(self, epochs: int | None = None) -> ReconstructionSettings:
        """These settings alone (``epochs``: instead of ``reconstruct_epochs``), to hand to the reconstruction or
        to another command's settings (``PruneSettings(**asdict(r))``)."""
        values = {f.name: getattr(self, f.name) for f in fields(ReconstructionSettings)}
        return ReconstructionSettings(**{**values, **({} if epochs is None else {"reconstruct_epochs": epochs})})

    def check_reconstruction(self, epochs: int | None = None) -> None:
        """Epochs >= 0 (``epochs``: the value the caller will use, where the field may be unset), a positive
        learning rate and step size, and its own text refused where there is no reconstruction to read it, or
        malformed."""
        epochs = self.reconstruct_epochs if epochs is None else epochs
        if epochs < 0:
            raise PutriError(f"reconstruct-epochs must be >= 0, got {epochs}")
        if self.reconstruct_lr <= 0:
            raise PutriError(f"reconstruct-lr must be > 0, got {self.reconstruct_lr}")
        if self.reconstruct_batch < 1:
            raise PutriError(f"reconstruct-batch must be >= 1, got {self.reconstruct_batch}")
        if self.names_reconstruction_text() and epochs <= 0:
            raise PutriError("--reconstruct-calib and --reconstruct-samples choose the text of block reconstruction: "
                             "give --reconstruct-epochs N (N >= 1) too")
        if self.reconstruct_samples is not None and self.reconstruct_samples < 1:
            raise PutriError(f"reconstruct-samples must be >= 1, got {self.reconstruct_samples}")
        if self.reconstruct_calib is not None:
            parse_weighted_specs(self.reconstruct_calib)

    def load_reconstruction_text(self, tokenizer, default_calib: str, default_samples: int,
                                 seq_len: int) -> Calibration | None:
        """The windows block reconstruction trains on where a text or a window count is named for it (the other as
        the pruning calibration's), loaded as a :class:`~putri_export.data.Calibration`; None: the pruning
        calibration."""
        if not self.names_reconstruction_text():
            return None
        from ..data import load_calibration

        return load_calibration(tokenizer, self.reconstruct_calib or default_calib,
                                self.reconstruct_samples or default_samples, seq_len)

    def require_loaded_text(self, loaded: object | None) -> None:
        """A job whose settings name a reconstruction text must be given it loaded (it holds no tokenizer)."""
        if self.names_reconstruction_text() and loaded is None:
            raise PutriError("the settings name a text for block reconstruction: pass it loaded as reconstruct_calib "
                             "(load_reconstruction_text)")


def check_sparsity(sparsity: float) -> None:
    if not (0.0 <= sparsity < 1.0):
        raise PutriError(f"sparsity must be in [0, 1) (a fraction of the block parameters), got {sparsity}")


@dataclass
class PruneSettings(ReconstructionSettings):
    """Every setting of ``putri-export prune`` (the CLI's flags are these fields; block reconstruction's are
    inherited)."""

    method: str = option("putri", "pruning method", choices=METHOD_NAMES)
    sparsity: float = option(0.5, "fraction of block parameters to remove, [0, 1)")
    alpha: float = option(1.5, "attention/FFN budget split (2SSP/Putri): n_attn = round(L * s^((P_ffn/P_attn)/alpha))")
    damping: float = option(1e-2, "relative Hessian damping for OBS scores")
    update: bool = option(True, "least-squares update of the kept down_proj columns (Putri)")
    update_damping: float = option(0.0, "relative ridge in the least-squares updates")
    # Default on: measured better on held-out text (results/pruning/refit_study_0.50.json).
    o_refit: bool = option(True, "least-squares refit of the kept o_proj columns after head removal (Putri)")
    attn_scoring: str = option(
        "auto", "how KV-head groups are chosen (Putri): loss = greedy rounds scored by calibration loss (the paper's); "
        "local = each group's o_proj output error after the least-squares refit, relative to the stream, allocated "
        "globally (cost independent of depth); auto = local when streaming or on CPU from "
        f"{LOCAL_SCORING_FROM_PARAMS / 1e9:g}B block parameters, else loss", choices=ATTN_SCORINGS)
    attn_samples: int = option(2, "calibration samples scoring attention removals")
    attn_len: int | None = option(None, "their first tokens (default: the method's preset; putri 256, "
                                  "putri-dense-fit 512)")
    obs_rounds: int | None = option(None, "FFN neurons removed in this many OBS rounds, re-scored after each "
                                    "update (default: the method's preset; putri 1, putri-dense-fit 16)")
    fit_target: str | None = option(None, "what the least-squares updates of down_proj and o_proj reproduce: local = "
                                    "the layer's own output on the pruned stream (the paper); dense = the dense "
                                    "model's output, so each layer absorbs the error of the blocks before it "
                                    "(default: the method's preset)", choices=FIT_TARGETS)
    final_refit: bool | None = option(None, "after the heads are removed, refit each FFN's down_proj once more on "
                                      "the final pruned stream (default: the method's preset)")
    batch_size: int = option(8, "calibration samples per forward")
    align: int = option(1, "kept FFN widths rounded to multiples of N (Putri, 2SSP), the target still met: 32 lets "
                        "Q8_0/Q4_x quantize every ffn_down row, 256 the K-quants")

    def preset(self, name: str):
        """The value of a preset option: the one given, else the method's (putri's outside Putri methods)."""
        value = getattr(self, name)
        return value if value is not None else PRESETS.get(self.method, PRESETS["putri"])[name]

    def check(self) -> None:
        if self.method not in METHOD_NAMES:
            raise PutriError(f"unknown method {self.method!r}; choose one of {', '.join(METHOD_NAMES)}")
        check_sparsity(self.sparsity)
        if self.attn_samples < 1 or self.preset("attn_len") < 2 or self.batch_size < 1:
            raise PutriError("attn-samples and batch-size must be >= 1 and attn-len >= 2")
        if self.damping < 0 or self.update_damping < 0:
            raise PutriError("damping must be >= 0")
        if self.align < 1:
            raise PutriError(f"align must be >= 1, got {self.align}")
        self.check_reconstruction()
        if self.reconstruct_epochs and self.method not in PUTRI_METHODS:
            raise PutriError(f"--reconstruct-epochs is a stage of the Putri methods ({', '.join(PUTRI_METHODS)}); "
                             f"{self.method} has none")
        if self.preset("obs_rounds") < 1:
            raise PutriError(f"obs-rounds must be >= 1, got {self.obs_rounds}")
        if self.fit_target not in (None, *FIT_TARGETS):
            raise PutriError(f"unknown fit-target {self.fit_target!r}; choose one of {', '.join(FIT_TARGETS)}")
        if self.preset("final_refit") and self.preset("fit_target") != "dense":
            raise PutriError("--final-refit fits each FFN to the dense model's output: it needs --fit-target dense (a "
                             "refit to the layer's own output changes nothing)")
        if self.align > 1 and self.method not in (*PUTRI_METHODS, "2ssp"):
            raise PutriError(f"--align applies to the putri and 2ssp budgets; {self.method} chooses its own widths")
        if self.attn_scoring not in ATTN_SCORINGS:
            raise PutriError(f"unknown attn-scoring {self.attn_scoring!r}; choose one of {', '.join(ATTN_SCORINGS)}")

    def scoring(self, device_type: str, block_params: int, streamed: bool) -> str:
        """The attention scoring ``auto`` stands for on this run."""
        if self.attn_scoring != "auto":
            return self.attn_scoring
        return "local" if streamed or (device_type == "cpu" and block_params >= LOCAL_SCORING_FROM_PARAMS) else "loss"
