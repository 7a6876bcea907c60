"""Mutation testing of the numerical core with mutmut: ``make mutate`` and ``make mutate-quick``.

qonnx installs ``passes/``, ``calib/`` and ``models/`` as ``qonnx.passes``, ``qonnx.calib`` and
``qonnx.models`` (``package-dir`` in pyproject.toml). mutmut copies the code it mutates into
``mutants/`` and puts that folder first on ``sys.path``: run on this tree, ``import qonnx`` would
load the mutated ``qonnx/`` but ``qonnx.passes`` the untouched ``passes/`` through the editable
install, and mutants of ``passes/`` would never run. So the package is staged first as it is
installed (``build/mutation/qonnx/passes`` ...), with the tests beside it, and mutmut runs there:
every mutant is the code the tests import. The tests reach the code in-process (mutmut records
which tests call which function); the kit tests (real models, minutes each) are left out of the
selection so that each mutant costs seconds.

mutmut keeps its verdicts in ``mutants/`` and, on the next run, re-tests only the mutants of
functions whose source changed: a new, changed or deleted test, or a change to code that is not
mutated, would leave stale verdicts (a mutant killed by a test since weakened stays "killed"). So
the verdicts are kept only while the staged files (package and tests) are those they were made
with; otherwise the run starts afresh. An interrupted run on unchanged files resumes.

Hypothesis draws new examples on every run and replays the failures it stored: a mutant killed
by a lucky draw in one run could survive the next. The mutation runs load a Hypothesis profile
(``derandomize``, no example database), so that every run of a test draws the same examples and
the verdicts repeat.

The kill rate of a module is ``killed / (mutants - equivalent)``; mutants listed in
``tools/equivalent_mutants.toml`` with the reason are equivalent (no test can tell them apart
from the original). Results: ``benchmarks/results/mutation.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import filecmp
import hashlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STAGE = ROOT / "build" / "mutation"
LAYOUT = {"qonnx": "qonnx", "passes": "qonnx/passes", "calib": "qonnx/calib", "models": "qonnx/models", "tests": "tests"}
EQUIVALENT = ROOT / "tools" / "equivalent_mutants.toml"

# The numerical core, module by module (staged paths).
MODULES = {
    "metrics": "qonnx/metrics.py",
    "quant": "qonnx/quant.py",
    "histogram": "qonnx/calib/histogram.py",
    "observers": "qonnx/calib/observers.py",
    "means": "qonnx/calib/means.py",
    "insert_qdq": "qonnx/passes/insert_qdq.py",
    "qdq_placement": "qonnx/passes/qdq_placement.py",
    "float_islands": "qonnx/passes/float_islands.py",
    "cast_placement": "qonnx/cast_placement.py",
}
QUICK = ("metrics", "quant")
# The tests --quick runs: those written against these modules. Without the rest (the subprocess
# CLI tests take minutes), the set-up check stays within a few minutes.
QUICK_TESTS = ("tests/test_metrics.py", "tests/test_quant.py", "tests/test_fp8.py", "tests/test_reference_values.py", "tests/test_doctests.py")
# A pytest plugin staged beside the package: the same Hypothesis examples in every run.
PROFILE = "mutation_profile"
PROFILE_SOURCE = '''"""Written by tools/mutate.py: the same Hypothesis examples in every mutation run."""

from hypothesis import settings

settings.register_profile("mutation", derandomize=True, database=None)
settings.load_profile("mutation")
'''
TARGET = 0.90
# mutmut's exit codes of a mutant run, by meaning (mutmut.stats.status_by_exit_code).
KILLED = {"killed", "timeout", "caught by type check", "segfault"}


def stage() -> None:
    """Mirror the installed package layout under ``build/mutation``, touching only changed files."""
    STAGE.mkdir(parents=True, exist_ok=True)
    wanted: set[Path] = set()
    for source, dest in LAYOUT.items():
        for path in sorted((ROOT / source).rglob("*")):
            if "__pycache__" in path.parts or not path.is_file() or path.suffix not in (".py", ".json", ".txt"):
                continue
            target = STAGE / dest / path.relative_to(ROOT / source)
            wanted.add(target)
            if not target.exists() or not filecmp.cmp(path, target, shallow=False):
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)
    for path in list((STAGE / "qonnx").rglob("*.py")) + list((STAGE / "tests").rglob("*.py")):
        if path not in wanted:
            path.unlink()
    profile = STAGE / f"{PROFILE}.py"
    if not profile.exists() or profile.read_text() != PROFILE_SOURCE:
        profile.write_text(PROFILE_SOURCE)


def inputs_digest() -> str:
    """sha256 of mutmut's version and of every staged file: what mutmut's cached verdicts depend on."""
    digest = hashlib.sha256(importlib.metadata.version("mutmut").encode())
    digest.update(PROFILE_SOURCE.encode())
    for root in ("qonnx", "tests"):
        for path in sorted((STAGE / root).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                digest.update(str(path.relative_to(STAGE)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def discard_stale_verdicts() -> None:
    """Remove mutmut's results (``mutants/``) unless they were made with the files staged now."""
    mark = STAGE / "inputs.sha256"
    digest = inputs_digest()
    if mark.exists() and mark.read_text().strip() == digest:
        return
    if (STAGE / "mutants").exists():
        print("staged files changed since the last run: mutmut's cached verdicts are discarded", flush=True)
        shutil.rmtree(STAGE / "mutants")
    mark.write_text(digest + "\n")


def write_config(modules: list[str], tests: tuple[str, ...] = ("tests",)) -> None:
    only = ", ".join(json.dumps(MODULES[m]) for m in modules)
    selection = ", ".join(json.dumps(t) for t in tests)
    (STAGE / "pyproject.toml").write_text(
        f"""# Written by tools/mutate.py: the staged package, the tests, and mutmut's settings.
[tool.mutmut]
source_paths = ["qonnx"]
only_mutate = [{only}]
also_copy = ["{PROFILE}.py"]
pytest_add_cli_args_test_selection = [{selection}, "-m", "not kit", "-p", "no:cacheprovider"]
pytest_add_cli_args = ["-q", "-x", "-p", "no:randomly", "-p", "{PROFILE}"]
use_git_change_detection = false

[tool.pytest.ini_options]
testpaths = ["tests"]
markers = ["kit: needs a real model from the kit (fetched from PyPI on first use)"]
"""
    )


def load_equivalent() -> dict[str, str]:
    if not EQUIVALENT.exists():
        return {}
    return {name: entry["reason"] for name, entry in tomllib.loads(EQUIVALENT.read_text()).items()}


def collect(modules: list[str]) -> dict:
    """Per-module counts from mutmut's result files (``mutants/<path>.meta``)."""
    from mutmut.stats import status_by_exit_code  # mutmut's own table of exit codes

    equivalent = load_equivalent()
    summary = {}
    for module in modules:
        meta = STAGE / "mutants" / (MODULES[module] + ".meta")
        codes = json.loads(meta.read_text())["exit_code_by_key"] if meta.exists() else {}
        statuses = {key: status_by_exit_code.get(code, "not checked") for key, code in codes.items()}
        survivors = sorted(k for k, s in statuses.items() if s not in KILLED)
        listed = [k for k in survivors if k in equivalent]
        killed = sum(s in KILLED for s in statuses.values())
        counted = len(statuses) - len(listed)
        # Entries of the list that no longer name a surviving mutant of this module (renumbered
        # after an edit, or killed by now): the list must say which mutants it excuses.
        prefix = MODULES[module].removesuffix(".py").replace("/", ".") + "."
        stale = sorted(k for k in equivalent if k.startswith(prefix) and k not in listed) if codes else []
        summary[module] = {
            "path": MODULES[module],
            "mutants": len(statuses),
            "killed": killed,
            "equivalent": len(listed),
            "survived": [k for k in survivors if k not in equivalent],
            "statuses": {s: list(statuses.values()).count(s) for s in sorted(set(statuses.values()))},
            "kill_rate": round(killed / counted, 4) if counted else None,
            "stale_equivalent": stale,
        }
    return summary


def write_results(summary: dict, out: Path, seconds: float) -> None:
    out.mkdir(parents=True, exist_ok=True)
    equivalent = load_equivalent()
    doc = {"command": "make mutate", "seconds": round(seconds, 1), "target": TARGET, "modules": summary}
    (out / "mutation.json").write_text(json.dumps(doc, indent=1) + "\n")
    lines = [
        "# Mutation testing (`make mutate`)",
        "",
        f"mutmut over the numerical core; kill rate = killed / (mutants - equivalent); target {TARGET:.0%}. {seconds:.0f} s on this machine.",
        "",
        "| module | mutants | killed | equivalent | survived | kill rate |",
        "|---|---|---|---|---|---|",
    ]
    for module, s in summary.items():
        rate = "-" if s["kill_rate"] is None else f"{s['kill_rate']:.1%}"
        lines.append(f"| `{s['path']}` | {s['mutants']} | {s['killed']} | {s['equivalent']} | {len(s['survived'])} | {rate} |")
    listed = [(k, r) for k, r in equivalent.items() if any(k.startswith(MODULES[m].removesuffix(".py").replace("/", ".")) for m in summary)]
    if listed:
        lines += ["", "Equivalent mutants (no test can tell them from the original):", ""]
        lines += [f"- `{k}`: {r}" for k, r in sorted(listed)]
    (out / "mutation.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("modules", nargs="*", help=f"modules to mutate (default: all): {', '.join(MODULES)}")
    parser.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)}: the subset CI runs")
    parser.add_argument("--out", type=Path, help="write mutation.md/.json here")
    parser.add_argument("--check", action="store_true", help=f"exit 1 when a module kills fewer than {TARGET:.0%}".replace("%", "%%"))
    parser.add_argument("--max-children", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args(argv)
    modules = list(QUICK) if args.quick else (args.modules or list(MODULES))
    unknown = [m for m in modules if m not in MODULES]
    if unknown:
        parser.error(f"unknown module(s) {', '.join(unknown)}; known: {', '.join(MODULES)}")
    stage()
    discard_stale_verdicts()
    write_config(modules, QUICK_TESTS if args.quick else ("tests",))
    started = time.perf_counter()
    print(f"mutmut: {', '.join(MODULES[m] for m in modules)} (log: {STAGE / 'mutmut.log'})", flush=True)
    with open(STAGE / "mutmut.log", "w") as log:  # mutmut redraws a progress line many times a second
        run = subprocess.run([sys.executable, "-m", "mutmut", "run", "--max-children", str(args.max_children)], cwd=STAGE, stdout=log, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - started
    if run.returncode != 0:
        print(f"mutmut exited {run.returncode}; see {STAGE / 'mutmut.log'}", file=sys.stderr)
        return run.returncode
    summary = collect(modules)
    for module, s in summary.items():
        rate = "-" if s["kill_rate"] is None else f"{s['kill_rate']:.1%}"
        print(f"{s['path']:<34} {s['mutants']:>5} mutants  {s['killed']:>5} killed  {s['equivalent']:>3} equivalent  {rate:>6}")
        for name in s["survived"]:
            print(f"    survived: {name}   (show: cd {STAGE.relative_to(ROOT)} && mutmut show '{name}')")
        for name in s["stale_equivalent"]:
            print(f"    listed as equivalent but not a survivor (killed, or renumbered): {name}", file=sys.stderr)
    if args.out:
        write_results(summary, args.out, seconds)
    low = [m for m, s in summary.items() if s["kill_rate"] is not None and s["kill_rate"] < TARGET]
    stale = [m for m, s in summary.items() if s["stale_equivalent"]]
    if args.check and (low or stale):
        if low:
            print(f"below {TARGET:.0%}: {', '.join(low)}", file=sys.stderr)
        if stale:
            print(f"stale entries in {EQUIVALENT.relative_to(ROOT)}: {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
