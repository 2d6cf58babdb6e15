"""What one ``ray.train.report(metrics)`` without a checkpoint costs a Ray Train worker.

    python -m harness.bench.report_cost [--reports N] [--gap SECONDS] [--workers W]

Times each report inside the worker loop of one ``TorchTrainer`` on an embedded Ray, sleeping
``--gap`` seconds before each, and prints {"reports", "gap_s", "median_s", "p90_s", "max_s"} as
JSON. Back to back, a report waits until Train's controller has taken the previous one; spaced by
more than the controller's poll interval it does not (docs/watching.md, "Measurements").
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path


def _loop(config: dict) -> None:
    import ray.train

    spent = []
    for i in range(config["reports"]):
        time.sleep(config["gap_s"])
        t0 = time.perf_counter()
        ray.train.report({"step": i, "train/loss": 1.0 / (i + 1)})
        spent.append(time.perf_counter() - t0)
    if ray.train.get_context().get_world_rank() == 0:
        spent.sort()
        n = len(spent)
        Path(config["out"]).write_text(json.dumps({
            "reports": n, "gap_s": config["gap_s"], "median_s": spent[n // 2], "p90_s": spent[int(n * 0.9)],
            "max_s": spent[-1]}))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reports", type=int, default=20)
    ap.add_argument("--gap", type=float, default=0.0, help="seconds of sleep before each report")
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args(argv)
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    with tempfile.TemporaryDirectory(prefix="report-cost-") as tmp:
        out = Path(tmp) / "cost.json"
        ray.init(num_cpus=max(4, 2 * args.workers), include_dashboard=False)
        try:
            TorchTrainer(_loop, train_loop_config={"reports": args.reports, "gap_s": args.gap, "out": str(out)},
                         scaling_config=ScalingConfig(num_workers=args.workers),
                         run_config=RunConfig(storage_path=tmp, name="cost")).fit()
        finally:
            ray.shutdown()
        result = json.loads(out.read_text())
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
