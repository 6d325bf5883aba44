"""A model streamed block by block: the skeleton on the meta device, one decoder block's weights at a time.

Alive at once: the embeddings, final norm and head (materialized on the device), and the block being worked on.
Weights come from the checkpoint's safetensors shards through safetensors' memory-mapped reader, one block at a
time; a block that was changed is written to a work folder when it is closed, so later passes (and ``--resume``)
read it back from there. :func:`save_streamed_checkpoint` writes the result as sharded safetensors, one shard per
block, never holding more than one block.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import torch
from accelerate.utils import set_module_tensor_to_device
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from transformers import GenerationConfig

from ..atomic import save_tensors_atomic, staged
from ..errors import PutriError
from ..finite import check_finite
from .families import PutriForCausalLM, family_of
from .load import config_from_source, load_tokenizer, read_config

LAYER_PREFIX = "model.layers."
INDEX_FILE = "model.safetensors.index.json"


def weight_files(path: Path) -> dict[str, Path]:
    """Tensor name → the safetensors file of ``path`` that holds it (single file or sharded with an index)."""
    index = path / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise PutriError(f"corrupt {index}: {type(e).__name__}: {e}") from None
        return {name: path / file for name, file in weight_map.items()}
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise PutriError(f"no safetensors weights in {path} (putri-export never loads pickled .bin weights)")
    out = {}
    for file in files:
        with safe_open(file, framework="pt") as f:
            out.update(dict.fromkeys(f.keys(), file))
    return out


def read_tensors(files: dict[str, Path], names: list[str]) -> dict[str, torch.Tensor]:
    """The named tensors, copied out of the memory-mapped files (each file opened once, closed after)."""
    by_file: dict[Path, list[str]] = {}
    for name in names:
        if name not in files:
            raise PutriError(f"tensor {name} is missing from the checkpoint ({sorted(set(files.values()))[0].parent})")
        by_file.setdefault(files[name], []).append(name)
    out = {}
    for file, group in by_file.items():
        try:
            with safe_open(file, framework="pt") as f:
                for name in group:
                    out[name] = f.get_tensor(name).clone()
        except PutriError:
            raise
        except Exception as e:  # safetensors raises several types for damaged files
            raise PutriError(f"could not read {file}: {type(e).__name__}: {e}") from None
    return out


def layer_widths_of(tensors: dict[str, torch.Tensor], head_dim: int) -> tuple[int, int, int]:
    """Query heads, KV heads and FFN width of a block from its tensors (names relative to the block)."""
    q, k, g = (tensors.get(f"{m}.weight") for m in ("self_attn.q_proj", "self_attn.k_proj", "mlp.gate_proj"))
    return (q.shape[0] // head_dim if q is not None else 0, k.shape[0] // head_dim if k is not None else 0,
            g.shape[0] if g is not None else 0)


def load_skeleton(path: Path, dtype: torch.dtype, device: torch.device) -> PutriForCausalLM:
    """The per-layer-width model of the HF folder ``path`` with every block on the meta device and the embeddings,
    final norm and head materialized on ``device`` in ``dtype``; no block weight is read."""
    source = read_config(path)
    family = family_of(source.get("model_type"))
    family.check(source)
    config = family.config_class.from_dict({k: v for k, v in source.items() if k != "auto_map"}) \
        if source.get("model_type") == family.model_type else config_from_source(source)
    config._attn_implementation = "sdpa"  # what from_pretrained picks for these classes on CPU and CUDA
    with torch.device("meta"):
        model = family.model_class(config)
    files = weight_files(path)
    rest = [name for name, _ in model.named_parameters() if not name.startswith(LAYER_PREFIX)]
    if config.tie_word_embeddings:
        rest = [name for name in rest if name != "lm_head.weight"]
    for name, tensor in read_tensors(files, rest).items():
        check_finite(tensor, f"{path}: weight {name}", "the checkpoint is damaged; re-export or re-download it")
        set_module_tensor_to_device(model, name, device, value=tensor, dtype=dtype)
    model.model.rotary_emb = type(model.model.rotary_emb)(config=config).to(device)
    if config.tie_word_embeddings:
        model.tie_weights()
    if (path / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(path)
    return model.eval()


class BlockStore:
    """Materializes decoder block ``l`` of a skeleton on ``open(l)`` and frees it on ``close(l)``.

    A block is read from ``work`` (where a changed block was written when it was closed) or else from the
    source checkpoint; its module is rebuilt at the widths its tensors have, so the model's config always
    follows the blocks on disk. ``work=None``: read-only (evaluation), nothing is written.
    """

    def __init__(self, model: PutriForCausalLM, source: Path, device: torch.device, dtype: torch.dtype,
                 work: Path | None = None):
        self.model, self.source, self.device, self.dtype = model, Path(source), device, dtype
        self.work = Path(work) if work is not None else None
        self.files = weight_files(self.source)
        if self.work is not None:
            self.work.mkdir(parents=True, exist_ok=True)

    def reset(self) -> None:
        """Drop every written block (a job that starts over reads the source again)."""
        if self.work is not None:
            shutil.rmtree(self.work, ignore_errors=True)
            self.work.mkdir(parents=True)

    def _work_file(self, l: int) -> Path | None:
        return self.work / f"block{l:05d}.safetensors" if self.work is not None else None

    def tensors(self, l: int) -> dict[str, torch.Tensor]:
        """Block ``l``'s tensors on the CPU as stored (names relative to the block): the work copy, else the source."""
        work = self._work_file(l)
        if work is not None and work.is_file():
            names = _keys(work)
            return read_tensors(dict.fromkeys(names, work), names)
        prefix = f"{LAYER_PREFIX}{l}."
        names = [name for name in self.files if name.startswith(prefix)]
        return {name[len(prefix):]: t for name, t in read_tensors(self.files, names).items()}

    def tensor(self, l: int, name: str) -> torch.Tensor:
        """One tensor of block ``l`` (name relative to the block) on the CPU as stored, read alone."""
        work = self._work_file(l)
        if work is not None and work.is_file():
            return read_tensors({name: work}, [name])[name]
        full = f"{LAYER_PREFIX}{l}.{name}"
        return read_tensors(self.files, [full])[full]

    def open(self, l: int) -> nn.Module:
        tensors = self.tensors(l)
        config = self.model.config
        widths = layer_widths_of(tensors, config.head_dim)
        layers = self.model.model.layers
        if widths != (config.num_attention_heads_per_layer[l], config.num_key_value_heads_per_layer[l],
                       config.intermediate_size_per_layer[l]):
            config.set_layer_widths(l, *widths)
        with torch.device("meta"):
            layers[l] = type(layers[l])(config, l)
        expected = {name for name, _ in layers[l].named_parameters()}
        if expected != set(tensors):
            raise PutriError(f"block {l} in {self.source}: tensors {sorted(set(tensors) ^ expected)} do not match the "
                             "architecture its config describes")
        for name, tensor in tensors.items():
            check_finite(tensor, f"{self.source}: weight {LAYER_PREFIX}{l}.{name}",
                         "the checkpoint is damaged; re-export or re-download it")
            set_module_tensor_to_device(layers[l], name, self.device, value=tensor, dtype=self.dtype)
        return layers[l].eval()

    def close(self, l: int, save: bool = True) -> None:
        """Write the block to the work folder (when there is one and ``save``) and send its weights back to the
        meta device."""
        layer = self.model.model.layers[l]
        if self.work is not None and save:
            save_tensors_atomic(self._work_file(l),
                                {name: t.detach().to("cpu").contiguous() for name, t in layer.state_dict().items()})
        layer.to("meta")

    def in_turn(self, progress: bool = False, desc: str = "blocks") -> Iterator[nn.Module]:
        """Every block, opened in turn and closed when the next one is asked for."""
        from tqdm.auto import tqdm

        for l in tqdm(range(len(self.model.model.layers)), desc=desc, unit="block", disable=not progress):
            yield self.open(l)
            self.close(l)

    def fingerprint(self) -> dict:
        """What identifies the source weights cheaply without reading the blocks: the config, the files' names
        and sizes, and the sum of the materialized (non-block) weights."""
        files = sorted(set(self.files.values()))
        rest = float(sum(p.detach().double().sum() for n, p in self.model.named_parameters()
                         if not n.startswith(LAYER_PREFIX)))
        return {"config": self.model.config.to_dict(), "files": [(f.name, f.stat().st_size) for f in files],
                "weights": rest}

    def forget(self) -> None:
        if self.work is not None and self.work.exists():
            shutil.rmtree(self.work)


def _keys(file: Path) -> list[str]:
    with safe_open(file, framework="pt") as f:
        return list(f.keys())


def save_streamed_checkpoint(model: PutriForCausalLM, blocks: BlockStore, out: Path, overwrite: bool = False,
                             extra_files: dict[str, str | bytes] | None = None) -> Path:
    """An HF checkpoint of a streamed model, whole or not at all: one safetensors shard per block plus one for the
    embeddings/norm/head, an index, the config with the per-layer widths and the model files (``auto_map``), and
    the source's tokenizer files. One block is in memory at a time."""
    from transformers.dynamic_module_utils import custom_object_save

    from .checkpoint import write_beside_weights

    out = Path(out)
    if out.exists() and not overwrite:
        raise PutriError(f"{out} exists; pass --overwrite to replace it")
    n = len(model.model.layers)
    shards = [f"model-{i:05d}-of-{n + 1:05d}.safetensors" for i in range(1, n + 2)]
    weight_map: dict[str, str] = {}
    total = 0
    with staged(out, make_dir=True) as tmp:
        for l in range(n):
            tensors = {f"{LAYER_PREFIX}{l}.{k}": v.contiguous() for k, v in blocks.tensors(l).items()}
            save_file(tensors, str(tmp / shards[l]), metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(tensors, shards[l]))
            total += sum(t.numel() * t.element_size() for t in tensors.values())
        rest = {name: p.detach().to("cpu").contiguous() for name, p in model.named_parameters()
                if not name.startswith(LAYER_PREFIX) and not (model.config.tie_word_embeddings
                                                              and name == "lm_head.weight")}
        save_file(rest, str(tmp / shards[n]), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(rest, shards[n]))
        total += sum(t.numel() * t.element_size() for t in rest.values())
        (tmp / INDEX_FILE).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map},
                                                 indent=2) + "\n")
        config = model.config
        config.architectures = [type(model).__name__]
        config.dtype = blocks.dtype
        custom_object_save(model, tmp, config=config)
        config.save_pretrained(tmp)
        if model.can_generate() and model.generation_config is not None:
            model.generation_config.save_pretrained(tmp)
        write_beside_weights(tmp, load_tokenizer(blocks.source), blocks.source, extra_files)
    return out


def checkpoint_bytes(path: Path, dtype: torch.dtype) -> int:
    """Bytes the weights of the HF folder ``path`` take in ``dtype`` (from the safetensors headers; nothing read)."""
    files = weight_files(path)
    size = torch.tensor([], dtype=dtype).element_size()
    total = 0
    for file in set(files.values()):
        with safe_open(file, framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open has keys(), no __iter__)
                numel = 1
                for dim in f.get_slice(name).get_shape():
                    numel *= dim
                total += numel * size
    return total


def open_model(spec: str | Path, compute, work: Path | None = None
               ) -> tuple[PutriForCausalLM, object, Path, BlockStore | None]:
    """Model, tokenizer, source folder and block store (None: held whole on the device) for ``compute``'s device,
    dtype and streaming choice. Only HF folders stream (a .gguf is dequantized whole by transformers)."""
    from ..compute import return_freed_memory
    from .assets import resolve_model
    from .load import load_model

    resolved = resolve_model(spec)
    device, dtype = compute.torch_device(), compute.torch_dtype()
    streamable = resolved.gguf_file is None and (resolved.path / "config.json").is_file()
    if streamable and compute.use_streaming(checkpoint_bytes(resolved.path, dtype)):
        return_freed_memory()  # blocks come and go: their memory must go back to the system
        model = load_skeleton(resolved.path, dtype, device)
        return model, load_tokenizer(resolved.path), resolved.path, BlockStore(model, resolved.path, device, dtype,
                                                                               work)
    if compute.streaming == "on":
        raise PutriError(f"--streaming on needs an HF folder with safetensors weights; {spec} is a GGUF file")
    model, tokenizer = load_model(spec, dtype)
    return model.to(device), tokenizer, resolved.path, None


def save_model(model: PutriForCausalLM, tokenizer, source: Path, blocks: BlockStore | None, out: Path,
               overwrite: bool = False, extra_files: dict[str, str | bytes] | None = None) -> Path:
    """Save what :func:`open_model` opened: a streamed model block by block (then its work copies are dropped), a
    whole one as a checkpoint beside the source's tokenizer files."""
    if blocks is None:
        from .checkpoint import save_checkpoint

        return save_checkpoint(model, tokenizer, out, source_dir=source, overwrite=overwrite, extra_files=extra_files)
    path = save_streamed_checkpoint(model, blocks, out, overwrite=overwrite, extra_files=extra_files)
    blocks.forget()
    return path
