"""The sections of ``python -m harness.bench gpu``, one module each (see harness/bench/gpu.py)."""
