"""putri-export: structured pruning of Llama-family models into smaller, deployable artifacts."""

__version__ = "0.1.0"

try:
    from transformers import AutoConfig, AutoModelForCausalLM

    from .configuration_putri_llama import PutriLlamaConfig
    from .modeling_putri_llama import PutriLlamaForCausalLM
except ImportError:  # a benchmark-only install on a device (deploy/): no torch/transformers
    pass
else:
    # With the package imported, the Auto classes load saved checkpoints without trust_remote_code.
    AutoConfig.register(PutriLlamaConfig.model_type, PutriLlamaConfig, exist_ok=True)
    AutoModelForCausalLM.register(PutriLlamaConfig, PutriLlamaForCausalLM, exist_ok=True)

__all__ = ["PutriLlamaConfig", "PutriLlamaForCausalLM", "__version__"]
