"""Keep a pipeline step's process lean.

pyarrow imports pandas (about 0.3 s here) on its first conversion whenever
pandas is installed, although negset never uses it; under ``dvc repro`` every
step is its own process, so that is paid six times per refresh. A finder at
the head of ``sys.meta_path`` makes ``import pandas`` raise ImportError,
which pyarrow and DuckDB treat as "pandas not installed", a configuration
both support. Only the plain step commands do
this (``negset --no-prefect STEP``, also what ``negset refresh`` runs);
``NEGSET_ALLOW_PANDAS=1`` turns it off.
"""

from __future__ import annotations

import os
import sys


class _NoPandas:
    """Finds pandas (it is installed: ``importlib.util.find_spec`` says so, as torch checks) but refuses to
    load it: ``import pandas`` raises ImportError, which its optional users take as "not installed"."""

    @staticmethod
    def find_spec(name, path=None, target=None):
        if name != "pandas":
            return None
        from importlib.machinery import ModuleSpec

        return ModuleSpec(name, _NoPandas)

    @staticmethod
    def create_module(spec):
        raise ImportError("pandas is not loaded in negset's step processes (NEGSET_ALLOW_PANDAS=1 allows it)",
                          name="pandas")

    @staticmethod
    def exec_module(module):  # pragma: no cover - create_module raises first
        raise ImportError("pandas", name="pandas")


def skip_pandas() -> bool:
    """Make pandas unimportable in this process unless it is loaded already; True when done."""
    if "pandas" in sys.modules or os.environ.get("NEGSET_ALLOW_PANDAS") == "1":
        return False
    if _NoPandas not in sys.meta_path:
        sys.meta_path.insert(0, _NoPandas)
    return True
