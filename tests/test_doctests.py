"""The examples in docstrings run as tests: a wrong example fails ``make test``.

Each module listed here must hold examples (a module that lost them fails too). The worked examples
of the design notes (§10) are in ``qonnx.quant``'s docstrings.
"""

import doctest
import importlib

import pytest

MODULES = ["qonnx.quant", "qonnx.lm_metrics"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"{name} has no docstring examples"
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples of {name} failed (output above)"
