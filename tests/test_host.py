"""Which weights the cpu target chooses for the machine: 7-bit where onnxruntime's U8S8 kernels saturate."""

import numpy as np
import pytest

from conftest import outputs, run_text
from qonnx import host
from qonnx.metrics import sqnr_db
from qonnx.models import tiny

QUANTIZE = "normalize,resolve-policy,calibrate,insert-qdq,remove-dead,finalize"


@pytest.mark.parametrize(
    ("machine", "flags", "saturates"),
    [
        ("x86_64", frozenset({"avx2", "fma"}), True),
        ("x86_64", frozenset({"avx2", "avx512bw"}), True),  # AVX-512 without VNNI still uses vpmaddubsw
        ("x86_64", frozenset({"avx2", "avx512_vnni"}), False),
        ("AMD64", frozenset({"avx2", "avx_vnni"}), False),
        ("x86_64", frozenset({"amx_int8"}), False),
        ("aarch64", frozenset(), False),
        ("arm64", None, False),
        ("x86_64", None, True),  # flags unknown: assume no VNNI
    ],
)
def test_u8s8_saturation_is_read_from_the_cpu_flags(machine, flags, saturates):
    assert host.saturates(machine, flags) is saturates


def test_cpu_flags_are_parsed_from_a_cpuinfo_file(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx2 avx512_vnni\n\nprocessor\t: 1\n")
    assert host.cpu_flags(cpuinfo) == frozenset({"fpu", "avx2", "avx512_vnni"})
    assert host.cpu_flags(tmp_path / "missing") is None


def _weight_levels(model) -> int:
    """The largest |q| of the stored INT8 weights."""
    levels = [
        int(np.abs(v.const_value.numpy().astype(np.int32)).max())
        for v in model.graph.initializers.values()
        if v.const_value is not None and v.const_value.dtype.name == "INT8" and v.const_value.size > 1
    ]
    return max(levels)


def test_the_cpu_target_uses_seven_bit_conv_weights_exactly_where_the_cpu_needs_them():
    model, _, context = run_text(tiny.conv_chain(), QUANTIZE)
    assert context.records["reduce_range_ops"].reduce_range_ops == (["Conv"] if host.u8s8_saturates() else [])
    assert _weight_levels(model) == (63 if host.u8s8_saturates() else 127)


def test_matmul_weights_keep_full_range_on_every_machine_unless_asked():
    # MiniLM loses more to 7-bit MatMul weights than to saturation (see Target.seven_bit_ops_without_vnni).
    model, _, context = run_text(tiny.matmul_model(), QUANTIZE)
    assert context.records["reduce_range_ops"].reduce_range_ops == [] and _weight_levels(model) == 127


@pytest.mark.parametrize("reduce_range", [True, False])
@pytest.mark.parametrize("make", [tiny.conv_chain, tiny.matmul_model])
def test_an_explicit_choice_overrides_the_machine(reduce_range, make):
    model, _, context = run_text(make(), QUANTIZE, reduce_range=reduce_range)
    assert bool(context.records["reduce_range_ops"].reduce_range_ops) is reduce_range
    assert _weight_levels(model) == (63 if reduce_range else 127)


@pytest.mark.skipif(not host.u8s8_saturates(), reason="platform: this CPU has VNNI, full-range weights do not saturate here")
def test_without_vnni_seven_bit_weights_recover_the_fidelity_that_saturation_costs():
    # Measured on an AVX2 CPU: 22.3 dB with full-range weights, 32.8 dB with 7-bit ones. The margin of
    # 5 dB is far above run-to-run noise (the session is deterministic for a fixed feed).
    proto = tiny.conv_chain()
    feed = tiny.random_feed(proto, seed=11)
    full, _, _ = run_text(proto, QUANTIZE, reduce_range=False)
    seven, _, _ = run_text(proto, QUANTIZE, reduce_range=True)
    reference = outputs(proto, feed)[0]
    assert sqnr_db(reference, outputs(seven, feed)[0]) > sqnr_db(reference, outputs(full, feed)[0]) + 5
