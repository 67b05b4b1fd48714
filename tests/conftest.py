"""Shared fixtures. The embedded digits model's weights ship in haq/models/weights/; a model
trained by the tests (another recipe) is cached under $HAQ_CACHE_DIR (default ~/.cache/haq;
.ci/run points it inside the checkout)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def digits_evaluator():
    from haq.data import load_digits_data
    from haq.evaluator import QuantEvaluator
    from haq.models import create_model

    return QuantEvaluator(create_model("digits-mbv2"), load_digits_data(), seed=0)
