"""A native runtime (llama.cpp, ONNX Runtime) in a child process, so that its crash is an error, not ours.

llama.cpp aborts the process on a failed ``GGML_ASSERT``, ggml's AMX kernels have segfaulted, and the
out-of-memory killer takes whatever is largest: none of that may take down a user's command or the test
run. :class:`RuntimeProcess` opens one artifact in a fresh ``python -m putri_export.runtime.process`` and
offers the runtime's methods (``tokenize``, ``logits``, ``greedy``); the child imports only the runtime
(no torch). When the child dies, the caller gets one :class:`RuntimeCrashed` line: the artifact, the
runtime, the signal, and the last lines the runtime printed.

Wire format, both directions: an 8-byte little-endian length, a JSON header, then the raw bytes of the
arrays the header lists (dtype and shape). No pickle.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import struct
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import BinaryIO

import numpy as np

from ..errors import PutriError

RUNTIMES = ("llama.cpp", "onnxruntime")


class RuntimeCrashed(PutriError):
    """The runtime's process died (a signal or an exit) while it held an artifact."""


# ---------------------------------------------------------------------------------------------
# Messages


def _read_exact(stream: BinaryIO, n: int) -> bytearray:
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        chunk = stream.readinto(view[got:])
        if not chunk:
            raise EOFError(f"stream closed after {got} of {n} bytes")
        got += chunk
    return buf


def send(stream: BinaryIO, header: dict, arrays: list[np.ndarray] = ()) -> None:
    arrays = [np.ascontiguousarray(a) for a in arrays]
    blob = json.dumps({**header, "arrays": [[a.dtype.str, list(a.shape)] for a in arrays]}).encode()
    stream.write(struct.pack("<Q", len(blob)) + blob)
    for a in arrays:
        stream.write(a.data)
    stream.flush()


def receive(stream: BinaryIO) -> tuple[dict, list[np.ndarray]]:
    (size,) = struct.unpack("<Q", _read_exact(stream, 8))
    header = json.loads(_read_exact(stream, size))
    arrays = []
    for dtype, shape in header.pop("arrays"):
        dt = np.dtype(dtype)
        count = int(np.prod(shape)) if shape else 1
        arrays.append(np.frombuffer(_read_exact(stream, count * dt.itemsize), dt).reshape(shape))
    return header, arrays


# ---------------------------------------------------------------------------------------------
# How a process ended, in words


SIGNAL_HINTS = {
    "SIGSEGV": "invalid memory access inside the runtime",
    "SIGABRT": "the runtime aborted, e.g. a failed GGML_ASSERT",
    "SIGKILL": "killed from outside; the kernel's out-of-memory killer sends this when memory runs out",
    "SIGBUS": "bad memory access, e.g. a file truncated while mapped",
    "SIGILL": "an instruction this CPU lacks: the runtime was built for another CPU",
    "SIGFPE": "arithmetic fault inside the runtime",
}


def output_tail(text: str, lines: int = 4, width: int = 400) -> str:
    """The last non-empty lines of a process's output, on one line."""
    kept = [line.strip() for line in text.splitlines() if line.strip()][-lines:]
    tail = " | ".join(kept)
    return tail if len(tail) <= width else "…" + tail[-width:]


def describe_exit(returncode: int) -> str:
    """``killed by SIGSEGV (…)`` or ``exited with code N``."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        hint = SIGNAL_HINTS.get(name)
        return f"killed by {name}" + (f" ({hint})" if hint else "")
    return f"exited with code {returncode}"


def crash_message(runtime: str, artifact: str | Path, doing: str, returncode: int, output: str) -> str:
    tail = output_tail(output)
    return (f"{runtime} crashed while {doing} {artifact}: its process was {describe_exit(returncode)}; "
            f"last output: {tail or '(none)'}")


# ---------------------------------------------------------------------------------------------
# Parent side


def child_environment() -> dict[str, str]:
    """Environment of a runtime child: no backtrace from ggml on an abort (it runs gdb, slowly, and buries the
    one line that says what failed)."""
    return dict(os.environ, GGML_NO_BACKTRACE="1")


class RuntimeProcess:
    """An artifact open in its runtime in a child process; ``tokenize``/``logits``/``greedy`` as the runtime's.

    ONNX Runtime has no tokenizer: for ONNX folders ``tokenize`` uses the folder's HF tokenizer files in this
    process (what a deployer pairs with the session). llama.cpp tokenizes with its own vocabulary, in the child.
    """

    def __init__(self, runtime: str, artifact: str | Path, n_ctx: int = 1024, n_threads: int | None = None):
        if runtime not in RUNTIMES:
            raise PutriError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
        self.runtime, self.artifact = runtime, Path(artifact)
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - the child's stderr, open as long as it runs
        env = child_environment()
        if n_threads:
            env["OMP_NUM_THREADS"] = str(n_threads)
        self._proc = subprocess.Popen([sys.executable, "-m", "putri_export.runtime.process"], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=self._log, env=env)
        self._tokenizer = None
        try:
            self.info = self._call("loading", "open", runtime=runtime, path=str(self.artifact), n_ctx=n_ctx,
                                   n_threads=n_threads)[0]
        except BaseException:
            self.close()
            raise

    @property
    def pid(self) -> int:
        return self._proc.pid

    def _call(self, doing: str, op: str, **fields) -> tuple[dict, list[np.ndarray]]:
        try:
            send(self._proc.stdin, {"op": op, **fields})
            reply, arrays = receive(self._proc.stdout)
        except (EOFError, BrokenPipeError, ConnectionError, OSError, ValueError):
            raise self._crashed(doing) from None
        if not reply.get("ok"):
            raise PutriError(reply.get("error", "the runtime process failed"))
        return reply, arrays

    def _crashed(self, doing: str) -> RuntimeCrashed:
        try:
            code = self._proc.wait(timeout=30)
        except subprocess.TimeoutExpired:  # alive but not answering: end it
            self._proc.kill()
            code = self._proc.wait()
        self._log.seek(0)
        output = self._log.read()[-65536:].decode("utf-8", errors="replace")
        return RuntimeCrashed(crash_message(self.runtime, self.artifact, doing, code, output))

    def tokenize(self, text: str) -> list[int]:
        if self.runtime == "onnxruntime":
            if self._tokenizer is None:
                from ..model import load_tokenizer

                self._tokenizer = load_tokenizer(self.artifact)
            return self._tokenizer(text, add_special_tokens=False)["input_ids"]
        return self._call("tokenizing with", "tokenize", text=text)[0]["tokens"]

    def logits(self, tokens: list[int]) -> np.ndarray:
        return self._call("running", "logits", tokens=[int(t) for t in tokens])[1][0]

    def token_nll(self, tokens: list[int]) -> np.ndarray:
        """−log p(token t | tokens < t) for t = 1..T−1, computed in the child: the logits never cross the pipe."""
        return self._call("scoring with", "token_nll", tokens=[int(t) for t in tokens])[1][0]

    def greedy(self, prompt: list[int], new_tokens: int) -> tuple[list[int], np.ndarray]:
        reply, arrays = self._call("decoding with", "greedy", prompt=[int(t) for t in prompt], new_tokens=new_tokens)
        return reply["tokens"], arrays[0]

    def close(self) -> None:
        if self._proc.poll() is None:
            try:
                send(self._proc.stdin, {"op": "close"})
                self._proc.stdin.close()
                self._proc.wait(timeout=30)
            except (OSError, ValueError, subprocess.TimeoutExpired):
                self._proc.kill()
                self._proc.wait()
        for stream in (self._proc.stdin, self._proc.stdout):
            with contextlib.suppress(OSError):  # unsent bytes for a child that is gone
                stream.close()
        self._log.close()

    def __enter__(self) -> RuntimeProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------
# Child side


def _open(runtime: str, path: str, n_ctx: int, n_threads: int | None):
    if runtime == "llama.cpp":
        from .llamacpp import LlamaCppModel

        return LlamaCppModel(path, n_ctx=n_ctx, n_threads=n_threads)
    from .ort import OrtModel

    return OrtModel(path, n_threads=n_threads, tokenizer=False)


def token_nll(logits: np.ndarray, tokens: list[int]) -> np.ndarray:
    """Each next token's negative log-likelihood from one sequence's logits [T, V] (float32 log-softmax, as the
    parent's perplexity computes it; float64 out)."""
    x = logits[:-1].astype(np.float32)
    top = x.max(axis=-1, keepdims=True)
    log_norm = top[:, 0] + np.log(np.exp(x - top).sum(axis=-1))
    return (log_norm - x[np.arange(len(x)), np.asarray(tokens[1:])]).astype(np.float64)


def serve_requests(requests: BinaryIO, replies: BinaryIO) -> None:
    """Answer requests until ``close`` or the end of the input (the parent is gone)."""
    model = None
    while True:
        try:
            request, _ = receive(requests)
        except EOFError:
            return
        op, arrays, reply = request["op"], [], {"ok": True}
        try:
            if op == "open":
                model = _open(request["runtime"], request["path"], request["n_ctx"], request["n_threads"])
            elif op == "tokenize":
                reply["tokens"] = model.tokenize(request["text"])
            elif op == "logits":
                arrays = [model.logits(request["tokens"])]
            elif op == "token_nll":
                arrays = [token_nll(model.logits(request["tokens"]), request["tokens"])]
            elif op == "greedy":
                reply["tokens"], steps = model.greedy(request["prompt"], request["new_tokens"])
                arrays = [steps]
            elif op == "close":
                if model is not None:
                    model.close()
                return
            else:
                reply = {"ok": False, "error": f"unknown request {op!r}"}
        except PutriError as e:
            reply = {"ok": False, "error": str(e)}
        except Exception as e:  # the runtime's own exceptions: one line for the parent
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            reply = {"ok": False, "error": f"{type(e).__name__}: {first}"}
        send(replies, reply, arrays)


def main() -> None:
    # The parent decides when this process ends (Ctrl-C reaches the whole process group).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Runtimes print to file descriptor 1 as well as 2: keep the reply pipe for replies only.
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    serve_requests(sys.stdin.buffer, replies)


if __name__ == "__main__":
    main()
