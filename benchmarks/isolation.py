"""Run one quantizer, calibrator or converter in a freshly spawned interpreter, and measure its peak memory.

Each benchmark measures the cost of a tool in a process of its own, so that no tool inherits
another's memory high-water mark or imports. The peak is the child's ``VmHWM``: ``ru_maxrss`` is
not used on Linux, because exec keeps the high-water mark of the process image it replaces, so a
spawned child would report at least its parent's size; ``VmHWM`` belongs to the address space,
which exec creates anew. The tools' chatter (onnxruntime's calibrators and onnxconverter-common
print to stdout) is silenced, and their log warnings are kept, counted by kind, in the outcome.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import re
import resource
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["peak_rss_mib", "run_isolated", "first_line"]


def peak_rss_mib() -> float:
    """This process's peak resident memory since its last exec, in MiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux, the best left


def first_line(exc: BaseException) -> str:
    """``Type: first line of the message``, or the type and where it was raised when there is no message."""
    text = str(exc).strip()
    if text:
        # onnxruntime's load errors carry the file path and a full node dump before the reason.
        text = re.sub(r"Load model from \S+ failed:\s*", "", text.splitlines()[0])
        text = re.sub(r"In Node, \(.*\) , ", "", text)
        return f"{type(exc).__name__}: {text}"
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" in {Path(frames[-1].filename).name}:{frames[-1].lineno} ({frames[-1].name})" if frames else ""
    return f"{type(exc).__name__}{where}"


class _LogCollector(logging.Handler):
    """Keeps the distinct log warnings of a tool (with counts) instead of printing them."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.counts: dict[str, int] = {}

    def emit(self, record: logging.LogRecord) -> None:
        lines = record.getMessage().strip().splitlines()
        # Messages that differ only in a tensor name count as one kind.
        kind = re.sub(r"'[^']*'", "'…'", lines[0]) if lines else ""
        self.counts[kind] = self.counts.get(kind, 0) + 1


def _child(connection, workdir: str | None, function: Callable[..., Any], args: tuple) -> None:
    if workdir is not None:
        os.chdir(workdir)  # tools that drop scratch files drop them here, not in the repository
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    collector = _LogCollector()
    logging.basicConfig(handlers=[collector], level=logging.WARNING, force=True)
    logging.captureWarnings(True)
    warnings.simplefilter("default")
    rss_at_start = peak_rss_mib()
    try:
        outcome = {"ok": True, "result": function(*args)}
    except BaseException as exc:  # reported to the parent, not raised
        outcome = {"ok": False, "error": first_line(exc), "traceback": traceback.format_exc(limit=-6)}
    outcome.update(rss_at_start_mib=rss_at_start, peak_rss_mib=peak_rss_mib(), log_warnings=collector.counts)
    try:
        connection.send(outcome)
    finally:
        connection.close()


def run_isolated(function: Callable[..., Any], args: tuple, timeout_s: float, workdir: Path | None = None) -> dict[str, Any]:
    """``function(*args)`` in a fresh interpreter: ``{"ok", "result" | "error", "peak_rss_mib", …, "process_s"}``.

    ``function`` must be a module-level function (the child imports it by name).
    """
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(sender, None if workdir is None else str(workdir), function, args))
    started = time.perf_counter()
    process.start()
    sender.close()
    message = None
    try:
        if receiver.poll(timeout_s):
            message = receiver.recv()
    except EOFError:  # the child died before answering
        pass
    process.join(10 if message is not None else 1)
    timed_out = process.is_alive()
    if timed_out:
        process.kill()
        process.join()
    wall_s = time.perf_counter() - started
    if message is None:
        reason = f"no answer within {timeout_s:g} s" if timed_out else f"process died (exit code {process.exitcode})"
        return {"ok": False, "error": reason, "process_s": wall_s}
    message["process_s"] = wall_s
    return message
