"""What the GPU check's sections share: the PASS / FAIL / SKIP report, the device, and small helpers."""

from __future__ import annotations

import os
import sys

# The two synthetic twins every trial and scoring check runs on.
TRIAL_DATASETS = ("copa", "boolq")


class Report:
    """Collects PASS / FAIL / SKIP lines per section and prints them as markdown tables."""

    def __init__(self):
        self.rows: list[tuple[str, str, str, str]] = []

    def add(self, section: str, check: str, ok: bool | None, detail: str) -> None:
        status = "SKIP" if ok is None else ("PASS" if ok else "FAIL")
        self.rows.append((section, check, status, detail))
        print(f"[{section}] {status} {check}: {detail}", file=sys.stderr, flush=True)

    @property
    def failed(self) -> bool:
        return any(r[2] == "FAIL" for r in self.rows)

    def table(self) -> str:
        lines = ["| section | check | result | detail |", "|---|---|---|---|"]
        lines += [f"| {s} | {c} | {st} | {d} |" for s, c, st, d in self.rows]
        return "\n".join(lines)


# ---------------------------------------------------------------- helpers


def resolve_device(name: str):
    """The torch device for --device auto|cuda|cpu; ValueError when CUDA is asked for and absent."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda but torch sees no GPU")
    return torch.device(name)


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cast_params(model, dtype) -> None:
    """Cast parameters only, keeping buffers (rotary inv_freq) in fp32, as DeepSpeed does for bf16."""
    for module in model.modules():
        for p in module.parameters(recurse=False):
            p.data = p.data.to(dtype)


def randomise_adapters(model, seed: int = 1) -> None:
    """Nonzero adapter parameters, as after training (a fresh B = 0 would hide the update)."""
    import torch

    import mor1e

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in mor1e.adapter_parameters(model):
            p.copy_((torch.randn(p.shape, generator=g) * 0.05).to(p.device, p.dtype))


def twins(tmp: str, n_train: int = 40, n_validation: int = 16) -> str:
    from harness.data import write_synthetic

    out = os.path.join(tmp, "twins")
    if not os.path.isdir(out):
        write_synthetic(out, seed=0, n_train=n_train, n_validation=n_validation, datasets=TRIAL_DATASETS)
    return out
