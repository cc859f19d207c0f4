"""The examples in the package's docstrings run and give what they show."""

from __future__ import annotations

import doctest
import importlib
import pkgutil
import tomllib
from pathlib import Path

import pytest

# the packages as pyproject.toml declares them (each has a folder of its own)
PACKAGES = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())[
    "tool"]["setuptools"]["packages"]
MODULES = sorted({*PACKAGES, *(f"{p}.{m.name}" for p in PACKAGES
                               for m in pkgutil.iter_modules(importlib.import_module(p).__path__)
                               if m.name != "__main__")})


def test_the_package_has_docstring_examples() -> None:
    finder = doctest.DocTestFinder()
    examples = sum(len(t.examples) for name in MODULES
                   for t in finder.find(importlib.import_module(name)))
    assert len(MODULES) > 40 and examples >= 10


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed"
