"""How a study samples: scrambled Sobol points first, then TPE, over each method's Optuna space.

Owns the sampler (``QuasiRandomThenTPE``), the translation of a search space into Optuna
distributions, and the Ray Tune searcher (``OptunaSearch``, sampling on the driver, with the
Optuna study kept in SQLite under the results dir so that a study can resume).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import optuna
from ray.tune.search.optuna import OptunaSearch

from harness.searchspace import Space
from harness.study.plan import METRIC, Plan


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

