"""The verdict of a run: which metric judges it, its value, the threshold, and what to try when the
model falls short.

The metric is the config's (``--metric``), or chosen from the outputs (``auto``):

- ``top1``: an output shaped like class scores (``[N, C]``, ``C >= 2``): the share of samples whose
  arg-max class is the same as the FP32 model's, over the class-score outputs (the worst);
- ``cosine``: token embeddings (a 3-D ``[N, T, H]`` output of a model that reads integer token ids):
  the cosine of the mean-pooled embeddings, averaged over samples (the worst output);
- ``sqnr``: otherwise, the worst output's SQNR in dB.

The threshold is ``--min`` when given (then a miss is a failed gate: the command exits 3 after
writing the model and report), else the metric's default floor, at which a quantized model is
deployable without a second look: 30 dB SQNR (the error carries 0.1% of the output's energy),
0.99 top-1 agreement, 0.998 cosine.
"""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ["DEFAULT_FLOORS", "Verdict", "choose_metric", "judge", "metric_value"]

DEFAULT_FLOORS = {"sqnr": 30.0, "top1": 0.99, "cosine": 0.998}
_UNITS = {"sqnr": " dB", "top1": "", "cosine": ""}
# The parts of its search samples the automatic policy holds a plan to the target on, each pooled
# alone (``qonnx.trials.Trials.value``): all at once, each half, each sample.
MEET_ON = ("pooled", "halves", "each")
DEFAULT_MEET_ON = "each"


def search_samples(auto: dict[str, Any]) -> str:
    """How an automatic-policy record's ``achieved`` was taken, in words: "on each of the 10
    calibration samples (the lowest)"; records without ``meet_on`` were pooled."""
    count = auto.get("samples")
    samples = f"{count} calibration samples" if isinstance(count, int) and not isinstance(count, bool) else "calibration samples"
    meet_on = auto.get("meet_on") or "pooled"
    parts = auto.get("parts")
    if meet_on != "pooled" and parts == 1:
        return f"pooled over the {samples} (too few to judge parts alone)"
    if meet_on == "each" and isinstance(parts, int) and isinstance(count, int) and parts < count:
        return f"on each of {parts} runs of the {samples} (the lowest)"
    if meet_on == "each":
        return f"on each of the {samples} (the lowest)"
    if meet_on == "halves":
        return f"on each half of the {samples} (the lower)"
    return f"pooled over the {samples}"


@dataclasses.dataclass
class Verdict:
    """``met`` is None when nothing was measured (no evaluation data)."""

    metric: str
    value: float | None
    threshold: float | None
    met: bool | None
    source: str  # "--min", "default" or "not measured"
    chosen: str  # why this metric
    advice: list[str] = dataclasses.field(default_factory=list)

    @property
    def gate_failed(self) -> bool:
        """A threshold the user set (``--min``) that the model misses: exit code 3."""
        return self.source == "--min" and self.met is False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def line(self) -> str:
        """One line for people: PASS / BELOW / NOT MEASURED, the figures, what to try."""
        if self.met is None:
            return f"verdict    NOT MEASURED: {'; '.join(self.advice)}"
        unit = _UNITS.get(self.metric, "")
        figures = f"{self.metric} {self.value:.4g}{unit} {'>=' if self.met else '<'} {self.threshold:g}{unit} ({'--min' if self.source == '--min' else 'default floor'})"
        if self.met:
            return f"verdict    PASS {figures}"
        return f"verdict    BELOW {figures}; try: {'; '.join(self.advice)}"


def choose_metric(outputs: dict[str, dict[str, float]], token_inputs: bool) -> tuple[str, str]:
    """The metric for ``auto``, from the fidelity entries of the outputs, and why."""
    if any("top1_agreement" in entry for entry in outputs.values()):
        return "top1", "an output is shaped like class scores [N, C]"
    if token_inputs and any("next_token_agreement" in entry for entry in outputs.values()):
        return "top1", "an output holds next-token logits [N, T, V] of integer token inputs: top-1 agreement per position"
    if token_inputs and any("pooled_cosine" in entry for entry in outputs.values()):
        return "cosine", "an output holds token embeddings [N, T, H] of integer token inputs"
    return "sqnr", "no output is shaped like class scores or token embeddings"


def metric_value(metric: str, outputs: dict[str, dict[str, float]]) -> float | None:
    """The value of ``metric`` (sqnr, top1, cosine) over fidelity entries: the worst output's."""
    keys = {"sqnr": ("sqnr_db",), "top1": ("top1_agreement", "next_token_agreement"), "cosine": ("pooled_cosine", "cosine")}[metric]
    for key in keys:
        values = [entry[key] for entry in outputs.values() if key in entry]
        if values:
            return min(values)
    return None


def _advice(
    precision: str, mode: str, has_matmul: bool, metric: str, threshold: float, auto_met: float | None = None, calibrated: bool = False, auto_meet_on: str = DEFAULT_MEET_ON
) -> list[str]:
    """What to try, as options of the command. ``auto_met``: the value ``--policy auto`` reached on
    the calibration samples, when it met the target there (the held-out data then missed it), judged
    as ``auto_meet_on`` says (``MEET_ON``)."""
    if auto_met is not None:
        advice = [f"the auto plan met {metric} {auto_met:g} on the calibration samples, not on held-out data: calibrate on more, and more varied, data (--calib)"]
        if auto_meet_on != "each":  # the strictest: every sample alone
            advice.append(f"--meet-on each (every calibration sample must meet it, not {auto_meet_on})")
        return advice + [f"--min above {threshold:g} for a margin"]
    if precision == "int4":
        advice = ["--block-size 16 (a scale per 16 weights)", "--embedding-bits 8, or 8 bits for the lm_head by a policy rule on its name"]
        if not calibrated:
            advice.append("--calib DATA (AWQ rounding from its activations, the default with data)")
        return advice
    if precision == "fp8":
        return [
            "--precision int8 (TensorRT INT8: finer steps for bounded activations and Gaussian weights)",
            "--exclude NODE for the layers named in the report (they join the float remainder)",
            "--fp8-activations e5m2 (more range for outliers; TensorRT's Q/DQ take E4M3 only: qonnx check flags it)",
        ]
    if precision != "int8":
        return ["--calib DATA (FP32 islands measured on real data)", "--precision fp16 instead of bf16" if precision == "bf16" else "--exclude NODE for the layers named in the report"]
    advice = [f"--policy auto --metric {metric} --min {threshold:g} (keep the most sensitive layers in float)"]
    if mode == "static" and has_matmul:  # more MatMul than Conv: a transformer
        advice.append("--mode dynamic (MatMul activations quantized at run time, for transformers)")
    advice.append("qonnx analyze MODEL --calib DATA (per-layer sensitivity)")
    return advice


def judge(
    fidelity: dict[str, Any] | None,
    *,
    metric: str,
    minimum: float | None,
    precision: str,
    mode: str,
    token_inputs: bool,
    has_matmul: bool,
    custom: float | None = None,
    auto_met: float | None = None,
    auto_meet_on: str = DEFAULT_MEET_ON,
    skipped: bool = False,
    calibrated: bool = False,
) -> Verdict:
    """The verdict of a run from its fidelity record (None: not measured; ``skipped``: on request).
    ``custom``: the value of a Python metric (``metric`` is then its name); ``calibrated``: the run
    had calibration data (the advice does not ask for it)."""
    if fidelity is None:
        advice = ["run without --no-eval to measure fidelity on held-out data"] if skipped else ["give --calib or --eval data to measure fidelity"]
        return Verdict(metric if metric != "auto" else "sqnr", None, minimum, None, "not measured", "", advice)
    outputs = fidelity["outputs"]
    if custom is not None:
        value, chosen = custom, "the config's metric (a Python callable)"
    else:
        if metric == "auto":
            metric, chosen = choose_metric(outputs, token_inputs)
        else:
            chosen = "the config's metric (--metric)"
        value = metric_value(metric, outputs)
    threshold = minimum if minimum is not None else DEFAULT_FLOORS.get(metric)
    source = "--min" if minimum is not None else "default"
    if value is None or threshold is None:
        return Verdict(metric, value, threshold, None, "not measured", chosen, [f"no output is shaped for {metric}: choose --metric sqnr"])
    met = bool(value >= threshold)
    return Verdict(metric, round(value, 6), threshold, met, source, chosen, [] if met else _advice(precision, mode, has_matmul, metric, threshold, auto_met, calibrated, auto_meet_on))
