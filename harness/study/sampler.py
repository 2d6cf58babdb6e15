"""What a study runs next: scrambled Sobol points first, then TPE, over each method's Optuna space.

Owns the sampler (``QuasiRandomThenTPE``), the translation of a search space into Optuna
distributions, each method's Ray Tune searcher (``OptunaSearch``, sampling on the driver, with
the Optuna study kept in SQLite under the results dir so that a study can resume), the study's
searcher over every phase and method (``StudySearcher``) and ASHA per method (``MethodScheduler``).
"""

from __future__ import annotations

import json
import math
import pickle
import warnings
from typing import Any

import optuna
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from harness.searchspace import Space
from harness.study.plan import METRIC, Plan
from harness.study.progress import current


class QuasiRandomThenTPE(optuna.samplers.BaseSampler):
    """Scrambled Sobol points for the first ``n_quasi`` trials, TPE after: explore, then exploit.

    Picks by trial number, so the switch is the same after a resume (Optuna
    numbers trials in its SQLite storage). Trial n of the warm-up is Sobol
    point n of the whole space, known up front: Optuna's own QMCSampler learns
    the space from a first, randomly sampled trial. TPE runs with a constant
    liar, so trials asked while others are still running get distinct points.
    Module-level so Tune can pickle it with the searcher's checkpoint.
    """

    def __init__(self, n_quasi: int, seed: int, space: dict[str, optuna.distributions.BaseDistribution]):
        self.n_quasi = n_quasi
        self.seed = seed
        self.space = dict(space)
        self.tpe = optuna.samplers.TPESampler(n_startup_trials=n_quasi, seed=seed, constant_liar=True)

    def _quasi(self, trial) -> bool:
        return trial.number < self.n_quasi

    def sobol_point(self, number: int) -> dict[str, Any]:
        """Sobol point ``number`` (scrambled with ``seed``), mapped onto the space."""
        from scipy.stats import qmc

        names = sorted(self.space)
        sobol = qmc.Sobol(d=len(names), scramble=True, seed=self.seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # balance warnings: single points are what a trial needs
            if number:
                sobol.fast_forward(number)
            u = sobol.random(1)[0]
        return {name: _from_unit(self.space[name], float(x)) for name, x in zip(names, u)}

    def infer_relative_search_space(self, study, trial):
        if self._quasi(trial):
            return dict(self.space)
        return self.tpe.infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        if self._quasi(trial):
            return {k: v for k, v in self.sobol_point(trial.number).items() if k in search_space}
        return self.tpe.sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self.tpe.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study, trial):
        self.tpe.before_trial(study, trial)

    def after_trial(self, study, trial, state, values):
        self.tpe.after_trial(study, trial, state, values)

    def reseed_rng(self):
        self.tpe.reseed_rng()


def _from_unit(dist, u: float):
    """The value at quantile ``u`` in [0, 1) of a uniform (or log-uniform) draw from ``dist``."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if isinstance(dist, CategoricalDistribution):
        return dist.choices[min(int(u * len(dist.choices)), len(dist.choices) - 1)]
    if isinstance(dist, FloatDistribution):
        if dist.log:
            return math.exp(math.log(dist.low) + u * (math.log(dist.high) - math.log(dist.low)))
        return dist.low + u * (dist.high - dist.low)
    if isinstance(dist, IntDistribution):
        if dist.log:  # uniform in log space over [low - 0.5, high + 0.5], as Optuna rounds
            lo, hi = math.log(dist.low - 0.5), math.log(dist.high + 0.5)
            return min(max(round(math.exp(lo + u * (hi - lo))), dist.low), dist.high)
        return min(dist.low + int(u * (dist.high - dist.low + 1)), dist.high)
    raise TypeError(f"unsupported distribution {dist!r}")


class StudySearch(OptunaSearch):
    """OptunaSearch for a study's trials.

    - It ignores results for an Optuna trial its SQLite study already closed. That happens
      only on resume, when a trial finished in the interrupted run is replayed (see
      trial_driver); the study keeps the first, real outcome.
    - A report without the selection metric (a diverged run's, which stopped before it could
      be scored) is no intermediate value, and the trial ends as FAIL in Optuna: its sampler
      learns nothing from a run that produced no score.
    """

    def on_trial_result(self, trial_id: str, result: dict):
        if METRIC not in result:
            return
        try:
            super().on_trial_result(trial_id, result)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        super().on_trial_complete(trial_id, result, error=error or bool((result or {}).get("diverged")))


def optuna_space(space: Space) -> dict[str, optuna.distributions.BaseDistribution]:
    """The searched parameters of ``space`` as Optuna distributions (the searcher samples them)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    out: dict[str, optuna.distributions.BaseDistribution] = {}
    for name, p in space.searched().items():
        if p.type == "categorical":
            out[name] = CategoricalDistribution(list(p.choices))
        elif p.type == "float":
            out[name] = FloatDistribution(float(p.low), float(p.high), log=bool(p.log))
        else:
            out[name] = IntDistribution(int(p.low), int(p.high), log=bool(p.log))
    return out


def make_searcher(plan: Plan, method: str, algorithm: str) -> StudySearch:
    """The Tune searcher of one method's search: its Optuna study lives in the plan's SQLite file."""
    s = plan.profile.search
    space = optuna_space(plan.profile.spaces[method])
    if algorithm == "random":
        sampler = optuna.samplers.RandomSampler(seed=s["seed"])
    elif s["quasi_random_trials"]:
        sampler = QuasiRandomThenTPE(s["quasi_random_trials"], s["seed"], space)
    else:
        sampler = optuna.samplers.TPESampler(seed=s["seed"], constant_liar=True)
    plan.optuna_path.parent.mkdir(parents=True, exist_ok=True)
    storage = optuna.storages.RDBStorage(f"sqlite:///{plan.optuna_path}")
    return StudySearch(space=space, metric=METRIC, mode="max", sampler=sampler, storage=storage,
                       study_name=f"{plan.study}-{method}")



# What a study runs, in this order of priority: reference runs, final runs of methods whose
# search has ended, search trials.
PHASES = ("reference", "search", "final")


def search_order(methods: list[str]) -> list[str]:
    """The order methods' search trials start in: full finetuning first, then the profile's order.

    Dense trials are a study's longest (a full-finetuning step costs ~1.6x an adapter's on a CPU).
    Searched last, its final runs were the last to start, and a slot sat idle while its search
    wound down; searched first, the cheaper adapter runs fill the study's end.
    """
    from harness import methods as registry

    return sorted(methods, key=lambda m: m not in registry.registered("full"))


class StudySearcher(Searcher):
    """Every trial of a study for one Tuner: the reference runs, each method's search trials (its
    own Optuna study, Sobol then TPE), and each method's fresh final runs once its search has ended.

    One Tuner keeps every core busy: when ASHA stops a trial, or a method's search winds down, a
    trial of another method or a final run takes the free slot, where a Tuner per method and phase
    would leave it idle until that Tuner's last trial ended. Each trial's config names its
    ``method`` and ``phase``; search configs carry the sampled point, the others ``learning_rate``,
    ``hparams`` and ``seed``. A method's finals use its best search trial, chosen on the selection
    split from the leaderboard (harness.leaderboard.best_trials), which the recording callback has
    written by the time Tune asks for the next trial.
    """

    def __init__(self, plan: Plan, *, phases: tuple[str, ...] = PHASES, algorithm: str | None = None):
        super().__init__(metric=METRIC, mode="max")
        p = plan.profile
        self.study, self.leaderboard_dir = plan.study, plan.results_dir
        self.reference = [dict(phase="reference", method=m, learning_rate=None, hparams={}, seed=p.final["seeds"][0])
                          for m in (p.reference if "reference" in phases else ())]
        self.methods = list(p.methods) if "search" in phases else []
        self.to_suggest = {m: p.trials_per_method for m in self.methods}
        self.to_finish = dict(self.to_suggest)
        self.searchers = {m: make_searcher(plan, m, algorithm or p.search["algorithm"]) for m in self.methods}
        self.final_seeds = list(p.final["seeds"]) if "final" in phases else []
        self.finals: list[dict] = []  # final configs ready to run
        self.finals_planned: set[str] = set()
        self.running: dict[str, tuple[str, str]] = {}  # trial_id -> (phase, method)

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return metric in (None, METRIC) and mode in (None, "max")  # each method's searcher has its space

    def suggest(self, trial_id: str):
        if self.reference:
            config = self.reference.pop(0)
        else:
            self._plan_finals()
            config = self.finals.pop(0) if self.finals else self._next_search(trial_id)
        if config is None:
            return Searcher.FINISHED if self._exhausted() else None
        self.running[trial_id] = (config["phase"], config["method"])
        return config

    def _next_search(self, trial_id: str) -> dict | None:
        """The next search trial: methods in ``search_order``, each sampled by its own searcher."""
        for method in search_order(self.methods):
            if self.to_suggest[method] > 0:
                point = self.searchers[method].suggest(trial_id)
                if point is None:
                    continue
                self.to_suggest[method] -= 1
                return {"phase": "search", "method": method, **point}
        return None

    def _plan_finals(self) -> None:
        """Queue the final runs of every method whose search trials have all ended."""
        if not self.final_seeds:
            return
        ended = [m for m in self.methods if self.to_finish[m] == 0 and m not in self.finals_planned]
        if not ended:
            return
        from harness import leaderboard

        best = leaderboard.best_trials(leaderboard.load(self.leaderboard_dir), self.study).set_index("method")
        for method in ended:
            self.finals_planned.add(method)
            if method not in best.index:
                current().line(f"final: {method} has no completed search trial; skipped")
                continue
            b = best.loc[method]
            hparams = json.loads(b.hparams_json)
            learning_rate = hparams.pop("learning_rate")
            current().line(f"final: {method} best trial {b.trial_id} (selection {100 * b.selection_accuracy:.1f}%), "
                           f"fresh runs with seeds {self.final_seeds}")
            self.finals += [dict(phase="final", method=method, learning_rate=learning_rate, hparams=hparams, seed=s)
                            for s in self.final_seeds]

    def _exhausted(self) -> bool:
        return (not self.reference and not self.finals and not any(self.to_suggest.values())
                and (not self.final_seeds or self.finals_planned == set(self.methods)))

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        phase, method = self.running.get(trial_id, (None, None))
        if phase == "search":
            self.searchers[method].on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        phase, method = self.running.pop(trial_id, (None, None))
        if phase == "search":
            self.searchers[method].on_trial_complete(trial_id, result, error=error)
            self.to_finish[method] -= 1

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as fh:
            pickle.dump(self.__dict__, fh)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as fh:
            self.__dict__.update(pickle.load(fh))


class MethodScheduler(FIFOScheduler):
    """ASHA per method over the search trials (a trial is only ever compared with trials of its own
    method); reference and final runs always run to the end."""

    def __init__(self, make_asha):
        super().__init__()
        self.make_asha = make_asha
        self.asha: dict[str, TrialScheduler] = {}
        self.properties: dict = {}

    def set_search_properties(self, metric, mode, **spec) -> bool:
        self.properties = dict(metric=metric, mode=mode, **spec)
        return True

    def _for(self, trial) -> TrialScheduler | None:
        if trial.config.get("phase") != "search":
            return None
        method = trial.config["method"]
        if method not in self.asha:
            self.asha[method] = self.make_asha()
            self.asha[method].set_search_properties(**self.properties)
        return self.asha[method]

    def on_trial_add(self, tune_controller, trial):
        if (s := self._for(trial)) is not None:
            s.on_trial_add(tune_controller, trial)

    def on_trial_error(self, tune_controller, trial):
        if (s := self._for(trial)) is not None:
            s.on_trial_error(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result):
        s = self._for(trial)
        return TrialScheduler.CONTINUE if s is None else s.on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller, trial, result):
        if (s := self._for(trial)) is not None:
            s.on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller, trial):
        if (s := self._for(trial)) is not None:
            s.on_trial_remove(tune_controller, trial)

    def debug_string(self) -> str:
        return "ASHA per method: " + "; ".join(f"{m}: {s.debug_string()}" for m, s in self.asha.items())
