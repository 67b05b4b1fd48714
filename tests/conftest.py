"""Shared fixtures. The embedded digits model is trained once per machine and cached; tests
point the cache at a per-session folder only when HAQ_CACHE_DIR is not set."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def digits_evaluator():
    from haq.data import load_digits_data
    from haq.evaluator import QuantEvaluator
    from haq.models import create_model

    return QuantEvaluator(create_model("digits-mbv2"), load_digits_data(), seed=0)
