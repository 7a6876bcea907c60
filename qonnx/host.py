"""Facts about the machine that will run the quantized model on onnxruntime's CPU provider.

Without a VNNI instruction (AVX-512 VNNI, AVX-VNNI or AMX), onnxruntime's x86 U8S8 kernels multiply
with ``vpmaddubsw``, which adds two ``u8 x s8`` products into a saturating int16:
``2 * 255 * 127 = 64770 > 32767``. Full-range INT8 weights then lose accuracy (on a tiny Conv chain
22 dB instead of 33 dB output SQNR). 7-bit weights (``|q| <= 63``) keep the pair sum within
``2 * 255 * 63 = 32130``: the ``reduce_range`` option. ARM's dot-product kernels do not saturate.
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path

__all__ = ["cpu_flags", "u8s8_saturates", "saturates"]

_X86 = ("x86_64", "amd64", "i386", "i686", "x86")
_VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})


@functools.cache
def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> frozenset[str] | None:
    """The CPU's feature flags from ``/proc/cpuinfo``; None where that file cannot be read."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return None


def u8s8_saturates() -> bool:
    """Whether onnxruntime's U8S8 integer kernels saturate on this machine's CPU."""
    return saturates(platform.machine(), cpu_flags())


def saturates(machine: str, flags: frozenset[str] | None) -> bool:
    """Whether U8S8 kernels saturate on a CPU of architecture ``machine`` with feature ``flags``.

    An x86 CPU whose flags are unknown (None) is assumed to lack VNNI: 7-bit weights cost a little
    accuracy everywhere, full-range weights cost a lot where the instruction is missing.
    """
    if machine.lower() not in _X86:
        return False
    return flags is None or not (flags & _VNNI_FLAGS)
