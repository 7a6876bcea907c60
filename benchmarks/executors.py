"""Benchmark the executors on the layer-sensitivity trials of one kit model (not run by CI).

The planned FP32 model is made once (``normalize,div-to-mul,resolve-policy,calibrate(adjacent=true)``
on the calibration photos); then the ``layer-sensitivity`` pass runs on it once per executor:

* ``serial``: every global trial in this process, one after the other;
* ``local``: the default process pool (``--workers`` spawned processes; each trial's onnxruntime
  session gets ``CPUs // workers`` threads), started by the pass (for the global trials alone: a fresh
  pool per round), its start-up included;
* ``ray``: a local Ray instance of ``--workers`` CPUs (``ray.init(num_cpus=...)``, timed apart), its
  worker processes started by the pass, their start-up included.

Per executor: the pass's wall time, the global trials and their count, and whether the record (every
node's local and global score, the ranking, the evaluations) is identical to the serial one. The
machine's facts (CPUs, load) go with the figures: on a machine shared with other work the times move.
Results go to ``<out>/executors.json`` and ``<out>/executors.md`` (written atomically).

Usage: ``python benchmarks/executors.py [--model ppocr-cls] [--workers 2] [--out benchmarks/results]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import environment_facts  # noqa: E402

from qonnx import ir as qir  # noqa: E402
from qonnx.calib.sources import ImageFolderSource, input_specs  # noqa: E402
from qonnx.executor import ProcessExecutor, RayExecutor, SerialExecutor  # noqa: E402
from qonnx.models import kit  # noqa: E402
from qonnx.models.data import photo_folders  # noqa: E402
from qonnx.pipeline import Context, apply, build, parse_pipeline, run_pipeline  # noqa: E402
from qonnx.trials import Trials  # noqa: E402

PREPARE = "normalize,div-to-mul,resolve-policy,calibrate(adjacent=true)"


def prepare(name: str, calib_samples: int) -> tuple[Any, Context]:
    model = qir.load(kit.fetch(name))
    calib, evaluation = photo_folders()
    preprocess = kit.KIT[name].preprocess
    context = Context(
        calib=ImageFolderSource(calib, input_specs(model), preprocess),
        eval_data=ImageFolderSource(evaluation, input_specs(model), preprocess),
        samples=calib_samples,
        reduce_range=True,
    )
    run_pipeline(model, build(parse_pipeline(PREPARE), context), context)
    return model, context


def run_pass(model: Any, context: Context, executor: Any, samples: int) -> tuple[float, Any]:
    context.executor = executor
    started = time.perf_counter()
    apply("layer-sensitivity", model, context, samples=samples)
    seconds = time.perf_counter() - started
    return seconds, context.analyses.pop("layer-sensitivity")


def time_trials(model: Any, context: Context, plans: list[set[str]], samples: int, executor: Any) -> tuple[float, list[float]]:
    """The global trials alone, as the pass runs them: a fresh ``Trials`` (its FP32 reference runs
    not timed), then ``Trials.scores`` on the executor, start-up of its workers included."""
    data = context.calib  # the pass measures on calibration samples; the evaluation data stays held out
    feeds = [data[i] for i in range(min(samples, len(data)))]
    trials = Trials(model, context, feeds, "sqnr")
    started = time.perf_counter()
    values = trials.scores(plans, executor)
    return time.perf_counter() - started, values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ppocr-cls", choices=sorted(kit.IMAGE_MODELS))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--samples", type=int, default=4, help="evaluation samples per trial (the pass's default)")
    parser.add_argument("--calib-samples", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3, help="timings of the trials per executor, interleaved (median reported)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args(argv)

    import ray

    facts = environment_facts()
    facts["cpus_available"] = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    model, context = prepare(args.model, args.calib_samples)

    # The pass once per executor: the whole record must be the serial one.
    passes: dict[str, dict[str, Any]] = {}
    serial_s, reference = run_pass(model, context, SerialExecutor(), args.samples)
    passes["serial"] = {"pass_s": round(serial_s, 2), "identical_to_serial": True}
    with ProcessExecutor(args.workers) as pool:
        seconds, result = run_pass(model, context, pool, args.samples)
    passes["local"] = {"pass_s": round(seconds, 2), "identical_to_serial": result.nodes == reference.nodes and result.evaluations == reference.evaluations}
    started = time.perf_counter()
    ray.init(address="local", num_cpus=args.workers, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    ray_init_s = time.perf_counter() - started
    seconds, result = run_pass(model, context, RayExecutor(), args.samples)
    passes["ray"] = {"pass_s": round(seconds, 2), "identical_to_serial": result.nodes == reference.nodes and result.evaluations == reference.evaluations}
    for name, entry in passes.items():
        print(f"pass {name:7s} {entry['pass_s']:7.2f} s identical={entry['identical_to_serial']}", flush=True)

    # The global trials alone, interleaved rounds: serial, a fresh process pool, the Ray instance.
    plans = [{e["node"]} for e in reference.nodes if e["global_db"] is not None]
    times: dict[str, list[float]] = {"serial": [], "local": [], "ray": []}
    values: dict[str, list[list[float]]] = {"serial": [], "local": [], "ray": []}
    loads = []
    for _ in range(args.rounds):
        for name in times:
            if name == "local":
                with ProcessExecutor(args.workers) as pool:
                    seconds, got = time_trials(model, context, plans, args.samples, pool)
            else:
                seconds, got = time_trials(model, context, plans, args.samples, SerialExecutor() if name == "serial" else RayExecutor())
            times[name].append(round(seconds, 2))
            values[name].append(got)
            print(f"trials {name:7s} {seconds:7.2f} s", flush=True)
        loads.append([round(x, 2) for x in os.getloadavg()])
    ray.shutdown()
    first = values["serial"][0]
    rows = []
    for name in times:
        rows.append(
            {
                "executor": name,
                "workers": 1 if name == "serial" else args.workers,
                "threads_per_trial": "onnxruntime default" if name == "serial" else (max(1, facts["cpus_available"] // args.workers) if name == "local" else 1),
                "trials": len(plans),
                "trials_s": times[name],
                "trials_median_s": statistics.median(times[name]),
                "scores_identical_to_serial": all(v == first for v in values[name]),
                **passes[name],
            }
        )
    document = {
        "model": args.model,
        "samples": args.samples,
        "environment": facts,
        "ray_version": ray.__version__,
        "ray_init_s": round(ray_init_s, 2),
        "load_after_rounds": loads,
        "results": rows,
        "scores": [{k: e[k] for k in ("node", "op_type", "local_db", "global_db")} for e in reference.nodes],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(document, indent=1) + "\n"
    qir.atomic_write(args.out / "executors.json", lambda f: f.write(text.encode()))
    qir.atomic_write(args.out / "executors.md", lambda f: f.write(markdown(document).encode()))
    return 0 if all(r["identical_to_serial"] and r["scores_identical_to_serial"] for r in rows) else 1


def markdown(document: dict[str, Any]) -> str:
    env = document["environment"]
    rows = document["results"]
    serial = rows[0]["trials_median_s"]
    lines = [
        f"# Executors: the layer-sensitivity trials of {document['model']}",
        "",
        f"`python benchmarks/executors.py --model {document['model']}`, {env['date']}. The `layer-sensitivity` pass "
        f"({document['samples']} evaluation samples per trial) on the same planned model once per executor, then its "
        f"{rows[0]['trials']} global trials alone (`Trials.scores`) in {len(rows[0]['trials_s'])} interleaved rounds: serial, "
        "a freshly started process pool, the local Ray instance.",
        "",
        f"Machine: {env['cpus_available']} CPUs ({env['cpu'].get('model', '')}), shared with other work: load average "
        f"{env['load_average_at_start']} at the start, {document['load_after_rounds']} after each round; the times move "
        f"with it. onnxruntime {env['onnxruntime_version']}, Ray {document['ray_version']} "
        f"(`ray.init(num_cpus={rows[1]['workers']})` took {document['ray_init_s']} s, not counted below), Python {env['python_version']}.",
        "",
        "| executor | workers | threads per trial | global trials: median (rounds) | vs serial | whole pass | record identical to serial | scores identical to serial |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['executor']} | {row['workers']} | {row['threads_per_trial']} | {row['trials_median_s']} s ({', '.join(map(str, row['trials_s']))}) | "
            f"{serial / row['trials_median_s']:.2f}x | {row['pass_s']} s | {'yes' if row['identical_to_serial'] else 'NO'} | "
            f"{'yes' if row['scores_identical_to_serial'] else 'NO'} |"
        )
    lines += [
        "",
        "Global trials: the pool's time includes starting its processes (spawned: each imports qonnx and onnxruntime "
        "and parses the model once); Ray's includes putting the model in the object store and each worker fetching "
        "and parsing it once (its worker processes outlive one round). The whole pass adds the local scores (one "
        "tapped run here, then three small sessions per node, also on the executor: the pool is started once for "
        "both kinds of work, the trials' payload reaching its running workers through a file). Record "
        "identical: every node's local and global score, the ranking and the evaluations counted; scores identical: "
        "the float values of every round, bit for bit.",
        "",
        "Reading: workers only help where cores are idle. Serially, onnxruntime already runs each trial's "
        "session on every core and only the Python part of a trial (cloning the model and inserting its Q/DQ, "
        "about half of it) is single-threaded; on a machine whose cores are taken by other work the workers "
        "compete with that work and with each other, and the pool's start-up is not won back.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
