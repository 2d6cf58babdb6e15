"""What a study prints: timed progress lines, trial counts, best scores and ETA; quiet third-party logs.

Used by every other module of the study package, and uses none of them. The live ``Progress``
of this process is a module global that callbacks look up when called (see ``current``).
"""

from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from pathlib import Path

# Seconds between status lines while trials run (besides the one after each trial ends).
STATUS_EVERY_S = 30.0


class Progress:
    """Readable progress lines: trial counts, best selection accuracy per method, elapsed, ETA.

    ``eta``: a callable giving the seconds left (harness.study.timing.Eta), set by whoever runs the
    study; without one the ETA shows "?".
    """

    def __init__(self, total_trials: int):
        self.total = total_trials
        self.start = time.time()
        self.counts = {"completed": 0, "pruned": 0, "failed": 0}
        self.running: set[str] = set()
        self.best: dict[str, float] = {}
        self.eta = None
        self.status_at = 0.0  # time.monotonic() of the last status line

    def line(self, msg: str) -> None:
        print(f"[{clock(time.time() - self.start)}] {msg}", file=console(), flush=True)

    def finished(self, trial_id: str, status: str, method: str, score: float | None) -> None:
        self.running.discard(trial_id)
        self.counts[status] += 1
        if status == "completed" and score is not None:
            self.best[method] = max(score, self.best.get(method, -1.0))

    def status(self) -> str:
        self.status_at = time.monotonic()
        done = sum(self.counts.values())
        best = " ".join(f"{m}={100 * v:.1f}" for m, v in self.best.items()) or "-"
        left = self.eta() if self.eta is not None else None
        eta = "?" if left is None else clock(left)
        c = self.counts
        return (f"trials {done}/{self.total} (completed {c['completed']}, pruned {c['pruned']}, "
                f"failed {c['failed']}, running {len(self.running)}) | best selection %: {best} | ETA {eta}")


    def status_due(self) -> bool:
        """Whether a status line is due: trials are running and none was printed for STATUS_EVERY_S."""
        return bool(self.running) and time.monotonic() - self.status_at >= STATUS_EVERY_S


def clock(seconds: float) -> str:
    """h:mm:ss (48 hours is 48:00:00)."""
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def short(v):
    """A value as a progress line shows it (floats to 3 significant digits)."""
    return f"{v:.3g}" if isinstance(v, float) else v


# Routing has collapsed when more than this share of a router's experts get almost no load.
COLLAPSE_DEAD_FRACTION = 0.5


def routing_note(metrics: dict) -> str:
    """How the trial's routers routed in its final scoring (", routers: ..."), with a warning on collapse."""
    keys = ("router_load_entropy", "router_max_share", "router_dead_fraction", "router_token_entropy",
            "router_gate_mean")
    if all(metrics.get(k) is None for k in keys):
        return ""
    names = {"router_load_entropy": "load entropy", "router_max_share": "max share",
             "router_dead_fraction": "dead", "router_token_entropy": "token entropy", "router_gate_mean": "gate"}
    shown = ", ".join(f"{names[k]} {metrics[k]:.2f}" for k in keys if metrics.get(k) is not None)
    dead = metrics.get("router_dead_fraction")
    warning = (f"; WARNING: routing collapsed ({100 * dead:.0f}% of experts get almost no load)"
               if dead is not None and dead > COLLAPSE_DEAD_FRACTION else "")
    return f", routers: {shown}{warning}"


# The live Progress of this process. Callbacks look it up here at call time
# rather than holding it: Tune pickles its callbacks into tuner.pkl, and a
# restored (resumed) Tuner must report to the new run's progress, not a copy.
_PROGRESS: Progress | None = None


def start(total_trials: int) -> Progress:
    """A fresh Progress for ``total_trials`` trials, made the live one."""
    global _PROGRESS
    _PROGRESS = Progress(total_trials)
    return _PROGRESS


def current() -> Progress:
    """The live Progress (one counting no trials if none was started)."""
    global _PROGRESS
    if _PROGRESS is None:
        _PROGRESS = Progress(total_trials=0)
    return _PROGRESS


# Where the study's own lines go: this process's stdout, or, once quiet_logs has sent file
# descriptors 1 and 2 to the study's log, a copy of the stdout it had before.
_CONSOLE = None


def console():
    """The stream a study's own lines are printed to (see quiet_logs)."""
    return _CONSOLE if _CONSOLE is not None else sys.stdout


def quiet_logs(log_path: Path | None = None, *, verbose: bool = False) -> None:
    """The environment a study's Ray runs in, and a readable terminal.

    With ``log_path`` (and not ``verbose``), everything this process and the Ray processes it
    starts write to stdout and stderr -- Ray's and DeepSpeed's warnings, the workers' forwarded
    logs, tracebacks -- is appended to that file instead (file descriptors 1 and 2 point at it),
    and the study's own lines go to the terminal through ``console()``. ``verbose``: nothing is
    redirected or silenced.
    """
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Tune's own loggers stay on: every trial's results, the training curves included, go to
    # TensorBoard event files, result.json and progress.csv in its trial dir on this node
    # (``tensorboard --logdir <results>/ray``; docs/watching.md).
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Snapshot Tune's experiment state every second (default: every >= 10 s), so
    # that a killed study's snapshot is close to its leaderboard when resumed.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
    # Tune's own Ctrl-C handler ends only the current Tuner, and the study would
    # go on to the next method; a Ctrl-C should stop the study (--resume continues it).
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")
    # A diverged trial's last report carries no selection score (it stopped before it could be
    # scored); the searcher and ASHA skip such reports (harness.study.sampler.StudySearch).
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    if verbose:
        return
    for name in ("ray", "ray.tune", "ray.train", "ray.air", "optuna"):
        logging.getLogger(name).setLevel(logging.ERROR)
    import optuna

    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    if log_path is not None:
        _redirect(Path(log_path))


def _redirect(log_path: Path) -> None:
    global _CONSOLE
    log_path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    if _CONSOLE is None:
        _CONSOLE = os.fdopen(os.dup(1), "w", buffering=1)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    _CONSOLE.write(f"(Ray's, DeepSpeed's and the libraries' messages go to {log_path}; --verbose shows them)\n")
