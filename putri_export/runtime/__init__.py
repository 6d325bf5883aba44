"""Running artifacts: llama.cpp (GGUF) and ONNX Runtime (ONNX folders), and the child process that holds them.

``llamacpp`` is the one place that opens llama.cpp models (with the CPU-safe buffer setting), ``ort`` the
ONNX session with the per-layer KV cache, ``process`` runs either in a child process so that a native crash
is an error, not the end of the caller. Nothing here imports torch.
"""
