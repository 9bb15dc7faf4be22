"""Benchmarks: ``python -m benchmarks`` (``make bench``) runs every stage and prints one table.

A stage is a module with ``async def run() -> list[dict]``; each dict is one row:
``figure`` (what was measured), ``throughput`` and ``unit``, ``baseline`` (the same work done the
simplest way, measured in the same run, or None), ``ratio`` (throughput / baseline, or None) and
``peak_mb`` (peak resident memory). Figures are only compared as ratios within one run: absolute
numbers depend on the machine.
"""
