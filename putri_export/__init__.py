"""putri-export: structured pruning of Llama, Qwen2 and Qwen3 models into smaller, deployable artifacts.

Importing the package is light (no torch): the CLI starts in a fraction of a second, runtime child processes
and benchmark-only installs never load torch. ``import putri_export.model`` (or touching
``putri_export.PutriLlamaForCausalLM``) loads the model classes and registers them with transformers' Auto
classes, so saved checkpoints then load without ``trust_remote_code``.
"""

from ._lazy import lazy_exports

__version__ = "0.1.0"

__getattr__ = lazy_exports(__name__, {"PutriLlamaConfig": ".model", "PutriLlamaForCausalLM": ".model"})
__all__ = ["PutriLlamaConfig", "PutriLlamaForCausalLM", "__version__"]
