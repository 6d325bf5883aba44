"""An exported ONNX decoder run by ONNX Runtime: logits, greedy decoding with the per-layer KV cache.

A GroupQueryAttention graph (``"kv_cache": "in-place"`` in its layout) runs with IO binding: each layer's cache is
one preallocated buffer bound as both its past input and its present output, so a step writes the new keys and
values in place (:class:`InPlaceCache`). A graph of standard ops returns the grown cache every step."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..errors import PutriError

LAYOUT_FILE = "putri_onnx.json"  # written by export_onnx beside the graph: the cache layout


def read_layout(folder: Path) -> dict:
    folder = Path(folder)
    spec_file = folder / LAYOUT_FILE
    if not spec_file.is_file():
        raise PutriError(f"{folder} is not a putri-export ONNX folder (no {LAYOUT_FILE})")
    try:
        return json.loads(spec_file.read_text())
    except json.JSONDecodeError as e:
        raise PutriError(f"corrupt {spec_file}: {e}") from None


def check_onnx_folder(folder: Path) -> dict:
    """Fail with a clear message on a missing, truncated or damaged export before onnxruntime sees it.

    Reads the graph without its weights and checks that every external tensor lies inside its data file.
    Returns the layout (``putri_onnx.json``)."""
    import onnx

    folder = Path(folder)
    spec = read_layout(folder)
    graph_file = folder / spec["model_file"]
    if not graph_file.is_file():
        raise PutriError(f"{folder} has no {spec['model_file']} (the ONNX graph)")
    try:
        model = onnx.load(str(graph_file), load_external_data=False)
    except Exception as e:
        raise PutriError(f"{graph_file} is not a readable ONNX graph ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else 'truncated or corrupt'})") from None
    ends: dict[str, tuple[int, str]] = {}
    tensors = [*model.graph.initializer,
               *(a.t for node in model.graph.node for a in node.attribute if a.HasField("t"))]
    for tensor in tensors:
        if not onnx.external_data_helper.uses_external_data(tensor):
            continue
        info = {e.key: e.value for e in tensor.external_data}
        end = int(info.get("offset", 0)) + int(info.get("length", 0))
        location = info.get("location", "")
        if end > ends.get(location, (0, ""))[0]:
            ends[location] = (end, tensor.name)
    for location, (end, name) in ends.items():
        data = folder / location
        if not data.is_file():
            raise PutriError(f"{folder}: weights file {location} is missing (the graph's tensors live there)")
        if data.stat().st_size < end:
            raise PutriError(f"{data} is truncated: tensor {name} ends at byte {end}, file has {data.stat().st_size}")
    return spec


class InPlaceCache:
    """Per-layer cache buffers [batch, K_l, capacity, head_dim] shared with ONNX Runtime (``OrtValue``s over the
    numpy arrays, no copy); grown by doubling when a step needs more room than ``capacity``."""

    def __init__(self, kv_heads: dict[int, int], head_dim: int, batch: int = 1, capacity: int = 256):
        self.shapes = {f"past_key_values.{l}.{kv}": (batch, k, head_dim) for l, k in kv_heads.items()
                       for kv in ("key", "value")}
        self.capacity = 0
        self.arrays: dict[str, np.ndarray] = {}
        self.values: dict = {}
        self.binding = None  # the session's IO binding with these buffers bound; rebuilt when they grow
        self.reserve(capacity)

    def reserve(self, capacity: int) -> None:
        """Room for at least ``capacity`` positions; positions already written are kept."""
        import onnxruntime as ort

        if capacity <= self.capacity:
            return
        capacity = max(capacity, 2 * self.capacity)
        for name, (batch, heads, dim) in self.shapes.items():
            grown = np.zeros((batch, heads, capacity, dim), np.float32)
            if name in self.arrays:
                grown[:, :, : self.capacity] = self.arrays[name]
            self.arrays[name] = grown
            self.values[name] = ort.OrtValue.ortvalue_from_numpy(grown)
        self.capacity = capacity
        self.binding = None

    @property
    def nbytes(self) -> int:
        return int(sum(a.nbytes for a in self.arrays.values()))


class OrtModel:
    """``tokenizer=False``: the session alone (no transformers import), as in a runtime child process."""

    def __init__(self, folder: str | Path, n_threads: int | None = None, tokenizer: bool = True):
        import onnxruntime as ort

        self.folder = Path(folder)
        self.spec = check_onnx_folder(self.folder)
        options = ort.SessionOptions()
        options.intra_op_num_threads = n_threads or os.cpu_count() or 1
        options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(self.folder / self.spec["model_file"]), options,
                                                providers=["CPUExecutionProvider"])
        except Exception as e:
            raise PutriError(f"onnxruntime could not load {self.folder}: {str(e).splitlines()[0]}") from None
        if tokenizer:
            from ..model import load_tokenizer

            self.tokenizer = load_tokenizer(self.folder)
        self.kv_heads = {l: self.spec["num_key_value_heads_per_layer"][l] for l in self.spec["cache_layers"]}
        self.in_place = self.spec.get("kv_cache") == "in-place"

    def tokenize(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def empty_cache(self, batch: int = 1) -> dict[str, np.ndarray]:
        """Zero-length cache inputs for ``session.run`` (either graph: GroupQueryAttention then appends)."""
        d = self.spec["head_dim"]
        return {f"past_key_values.{l}.{kv}": np.zeros((batch, k, 0, d), np.float32)
                for l, k in self.kv_heads.items() for kv in ("key", "value")}

    def new_cache(self, batch: int = 1, capacity: int = 256) -> InPlaceCache | dict[str, np.ndarray]:
        """The cache :meth:`step` takes: in-place buffers for ``capacity`` positions, or empty cache inputs."""
        if self.in_place:
            return InPlaceCache(self.kv_heads, self.spec["head_dim"], batch, capacity)
        return self.empty_cache(batch)

    def step(self, tokens: np.ndarray, cache: InPlaceCache | dict[str, np.ndarray], past_len: int):
        """Run new tokens [B, T] after ``past_len`` cached ones; returns logits and the cache after the step
        (the same in-place buffers, or the grown cache outputs)."""
        batch, new = tokens.shape
        feeds = {"input_ids": tokens.astype(np.int64),
                 "attention_mask": np.ones((batch, past_len + new), np.int64),
                 "position_ids": np.broadcast_to(np.arange(past_len, past_len + new), (batch, new)).astype(np.int64)}
        if isinstance(cache, InPlaceCache):
            return self._step_in_place(feeds, cache, past_len + new), cache
        outputs = self.session.run(None, {**feeds, **cache})
        names = self.spec["outputs"]
        present = {n.replace("present.", "past_key_values."): v for n, v in zip(names[1:], outputs[1:])}
        return outputs[0], present

    def _step_in_place(self, feeds: dict[str, np.ndarray], cache: InPlaceCache, length: int) -> np.ndarray:
        cache.reserve(length)
        if cache.binding is None:  # the cache buffers are bound once per buffer size, not every step
            cache.binding = self.session.io_binding()
            cache.binding.bind_output("logits")  # the first output bound
            for name, value in cache.values.items():
                cache.binding.bind_ortvalue_input(name, value)
                cache.binding.bind_ortvalue_output(name.replace("past_key_values.", "present."), value)
        for name, array in feeds.items():
            cache.binding.bind_cpu_input(name, np.ascontiguousarray(array))
        cache.binding.bind_output("logits")  # unallocated again: its shape changes with the step's tokens
        self.session.run_with_iobinding(cache.binding)
        return cache.binding.get_outputs()[0].numpy()  # (copy_outputs_to_cpu would copy the whole cache too)

    def logits(self, tokens: list[int]) -> np.ndarray:
        out, _ = self.step(np.array([tokens]), self.new_cache(capacity=len(tokens)), 0)
        return out[0]

    def greedy(self, prompt: list[int], new_tokens: int) -> tuple[list[int], np.ndarray]:
        logits, cache = self.step(np.array([prompt]), self.new_cache(capacity=len(prompt) + new_tokens), 0)
        last = logits[0, -1]
        out, steps = [], []
        for i in range(new_tokens):
            steps.append(last)
            token = int(last.argmax())
            out.append(token)
            logits, cache = self.step(np.array([[token]]), cache, len(prompt) + i)
            last = logits[0, -1]
        return out, np.stack(steps)

    def close(self) -> None:
        self.session = None
