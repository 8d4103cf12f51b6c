"""Benchmarks of captioner: run ``python -m benchmarks`` (``--quick`` for a smoke test, ``--only NAME``)."""
