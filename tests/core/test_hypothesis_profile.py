"""The Hypothesis profiles of tests/conftest.py: derandomised under CI, random locally."""

from __future__ import annotations

import os

from hypothesis import settings


def test_ci_profile_is_reproducible_and_dev_profile_is_random() -> None:
    ci, dev = settings.get_profile("ci"), settings.get_profile("dev")
    mutation = settings.get_profile("mutation")
    assert ci.derandomize is True
    assert ci.database is None
    assert dev.derandomize is False
    assert mutation.derandomize is True
    assert mutation.max_examples < dev.max_examples


def test_ci_runs_load_the_ci_profile() -> None:
    chosen = os.environ.get("HYPOTHESIS_PROFILE") or (
        "ci" if os.environ.get("CI", "").lower() in {"true", "1", "yes"} else "dev"
    )
    current = settings.default
    assert current is not None
    assert current.derandomize is settings.get_profile(chosen).derandomize
    if chosen == "ci":
        assert current.derandomize is True
