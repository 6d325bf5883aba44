"""Recovery by distillation: the pruned model (same widths) trained to reproduce the dense model's next-token
distributions on text that no evaluation uses.

Entry points: :func:`recover_model` (a model in memory) and :func:`recover_checkpoint` (folder to folder), with
:class:`RecoverSettings`. Inside: ``distill`` (the losses and schedule, pure
functions), ``teacher`` (the dense model's top-k outputs, cached per shard), ``job`` (the loop, resume, report).
"""

from .._lazy import lazy_exports
from .settings import DEFAULT_RECOVERY_DATA, RecoverSettings

__getattr__ = lazy_exports(__name__, {"recover_model": ".job", "recover_checkpoint": ".job"})
__all__ = ["DEFAULT_RECOVERY_DATA", "RecoverSettings", "recover_checkpoint", "recover_model"]
