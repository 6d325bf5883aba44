"""The settings of ``putri-export recover`` (its flags are these fields)."""

from __future__ import annotations

from dataclasses import dataclass

from ..data import parse_weighted_specs
from ..errors import PutriError
from ..options import option

# Raw text only (no `<unk>`), none of it in an evaluation split: WikiText-2 validation, TinyStories train, C4 train.
DEFAULT_RECOVERY_DATA = "wikitext2:valid-raw,tinystories:train-2mib,c4"
AUTOCAST = ("auto", "none", "bf16")


@dataclass
class RecoverSettings:
    """Every setting of ``putri-export recover``."""

    data: str = option(DEFAULT_RECOVERY_DATA, "training text (comma-separated specs, windows taken evenly — SPEC*N "
                       "takes N shares — and interleaved); the evaluation splits (wikitext2:test, "
                       "tinystories:validation) are refused")
    windows: int = option(768, "training windows drawn from the data (each seen once per epoch)")
    seq_len: int = option(512, "tokens per training window")
    tokens: int = option(393_216, "training tokens in all (windows are revisited when this exceeds the data)")
    max_minutes: float = option(0.0, "stop after this much wall time, teacher passes included, counted over "
                                "resumed sessions (0: no limit)")
    batch_windows: int = option(4, "windows per optimizer step (gradients accumulated one window at a time)")
    # SmolLM2-135M Putri 0.5, 20 steps: held-out KL 0.953 -> 0.809 at 3e-4, -> 0.922 at 1e-3 (results/quality)
    lr: float = option(3e-4, "AdamW peak learning rate (linear warm-up, cosine decay to a tenth by --tokens or by "
                       "--max-minutes, whichever comes first)")
    warmup_steps: int = option(10, "optimizer steps of linear warm-up")
    top_k: int = option(64, "teacher logits kept per token; the KL is taken over these k tokens and the rest of "
                        "the vocabulary as one bin")
    hidden_weight: float = option(0.0, "weight of hidden-state matching: the student's last hidden state against "
                                  "the teacher's, squared error relative to the teacher's energy (0: KL only)")
    train_embeddings: bool = option(False, "also train the token embedding (tied to the output head in many "
                                    "models); off: blocks and final norm only")
    shard_windows: int = option(16, "windows per teacher-cache shard (the unit computed and stored at a time)")
    eval_windows: int = option(8, "held-out windows of the training data on which the KL to the teacher is "
                               "measured before and after")
    save_every: int = option(20, "optimizer steps between checkpoints of the training state (for --resume)")
    seed: int = option(0, "data order")
    # bf16: SmolLM2 Putri 0.5 on a Zen 4 CPU (AVX512-BF16), 1.5x the steps per minute of fp32 and a lower held-out
    # KL in the same 23.5 minutes (results/quality); where bf16 is emulated it is slower, hence "auto".
    autocast: str = option("auto", "run the student's and the teacher's training forwards under bfloat16 autocast "
                           "(weights, gradients, optimizer and the held-out KL stay fp32); auto: bf16 where the "
                           "device has bf16 arithmetic (CUDA, a CPU with AVX512-BF16 or AMX), none elsewhere",
                           choices=AUTOCAST)

    def check(self) -> None:
        if min(self.windows, self.tokens, self.batch_windows, self.top_k, self.shard_windows, self.save_every) < 1:
            raise PutriError("windows, tokens, batch-windows, top-k, shard-windows and save-every must be >= 1")
        if self.seq_len < 16:
            raise PutriError(f"seq-len must be >= 16, got {self.seq_len}")
        if self.lr <= 0 or self.max_minutes < 0 or self.hidden_weight < 0 or self.warmup_steps < 0:
            raise PutriError("lr must be > 0; max-minutes, hidden-weight and warmup-steps >= 0")
        if self.autocast not in AUTOCAST:
            raise PutriError(f"autocast must be one of {', '.join(AUTOCAST)}, got {self.autocast!r}")
        if self.eval_windows < 0:
            raise PutriError(f"eval-windows must be >= 0, got {self.eval_windows}")
        parse_weighted_specs(self.data)

    def resolved_autocast(self, device) -> str:
        """``none`` or ``bf16``: what ``autocast`` means on ``device``."""
        from ..compute import has_native_bf16

        if self.autocast != "auto":
            return self.autocast
        return "bf16" if has_native_bf16(device) else "none"

    @property
    def steps(self) -> int:
        """Optimizer steps the schedule spans."""
        return max(1, -(-self.tokens // (self.batch_windows * self.seq_len)))
