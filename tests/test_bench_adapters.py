"""The adapter-throughput benchmark runs end to end on the tiny preset and prints its table."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_adapters_bench_prints_a_row_per_method(dtype):
    cmd = [sys.executable, "-m", "harness.bench", "adapters", "--model", "tiny-random-llama", "--methods",
           "lora,mor1e", "--batch", "2", "--seq", "16", "--warmup", "0", "--steps", "1", "--threads", "1",
           "--dtype", dtype]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert f"tiny-random-llama, {dtype}, batch 2 x 16 tokens" in run.stdout
    rows = [line for line in run.stdout.splitlines() if line.startswith("| lora ") or line.startswith("| mor1e ")]
    assert len(rows) == 2, run.stdout
    assert rows[0].split("|")[7].strip() == "1.00x"  # LoRA against itself


def test_adapters_bench_refuses_an_unknown_method():
    run = subprocess.run([sys.executable, "-m", "harness.bench", "adapters", "--methods", "qlora"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "unknown method(s) qlora" in run.stderr
