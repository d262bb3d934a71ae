"""Tests of the pure Flowstate core (flowstate.core)."""
