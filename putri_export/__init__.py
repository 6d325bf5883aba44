"""putri-export: structured pruning of Llama-family models into smaller, deployable artifacts."""

import os

__version__ = "0.1.0"

# Runtime child processes (runtime_process.py) set this: they run llama.cpp / ONNX Runtime only, and
# importing torch and transformers would cost each of them seconds and hundreds of MB.
if not os.environ.get("PUTRI_EXPORT_LIGHT_IMPORT"):
    try:
        # Importing the model code registers the per-layer-width classes with transformers' Auto classes.
        from .configuration_putri_llama import PutriLlamaConfig
        from .model import PutriLlamaForCausalLM
    except ImportError:  # a benchmark-only install on a device (deploy/): no torch/transformers
        pass

__all__ = ["PutriLlamaConfig", "PutriLlamaForCausalLM", "__version__"]
