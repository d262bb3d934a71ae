"""Flowstate benchmarks: the service measured side by side with the raw limits of its parts.

Run ``python -m bench.run``; see bench/README.md.
"""
