"""The warm-up + TPE sampler of a study (harness/study/sampler.py), on a real Optuna study (in memory)."""

import argparse

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from harness.searchspace import load_space
from harness.study.plan import build_plan
from harness.study.sampler import QuasiRandomThenTPE, StudySearcher, optuna_space, search_order
from profiles import tiny_profile, write_profile

SPACE = {
    "learning_rate": FloatDistribution(1e-4, 1e-2, log=True),
    "router_temperature": FloatDistribution(0.5, 2.0),
    "num_clusters": IntDistribution(2, 32, log=True),
    "rank": IntDistribution(1, 8),
    "expert_shape": CategoricalDistribution(["2x4", "4x8", "8x8"]),
}


def ask(study, n):
    return [study.ask(fixed_distributions=SPACE).params for _ in range(n)]


def test_warm_up_trials_are_distinct_sobol_points_even_when_asked_before_any_result():
    study = optuna.create_study(direction="maximize", sampler=QuasiRandomThenTPE(4, 0, SPACE))
    points = ask(study, 6)  # 6 trials in flight, none told: concurrent trials
    sampler = QuasiRandomThenTPE(4, 0, SPACE)
    assert points[:4] == [sampler.sobol_point(i) for i in range(4)]  # deterministic: the same after a resume
    assert len({tuple(sorted(p.items())) for p in points}) == 6
    for p in points:
        for name, dist in SPACE.items():
            assert dist._contains(dist.to_internal_repr(p[name])), (name, p[name])
    # a Sobol point of a scrambled sequence: the first 4 cover both halves of every continuous range
    lrs = sorted(p["learning_rate"] for p in points[:4])
    assert lrs[0] < 1e-3 < lrs[-1]


def test_after_the_warm_up_tpe_exploits_the_results():
    study = optuna.create_study(direction="maximize", sampler=QuasiRandomThenTPE(2, 1, SPACE))
    for _ in range(14):
        trial = study.ask(fixed_distributions=SPACE)
        # best near lr 1e-3: TPE should move its proposals there
        study.tell(trial, -abs(__import__("math").log10(trial.params["learning_rate"]) + 3))
    late = [t.params["learning_rate"] for t in study.trials[-5:]]
    assert sum(3e-4 < lr < 3e-3 for lr in late) >= 3, late


@pytest.mark.parametrize("method", ["mor1e", "lora", "molora", "dense"])
def test_shipped_spaces_convert_to_optuna_distributions(method):
    space = optuna_space(load_space(method))
    assert "learning_rate" in space
    sampler = QuasiRandomThenTPE(3, 0, space)
    for i in range(3):
        point = sampler.sobol_point(i)
        assert set(point) == set(space)
        for name, dist in space.items():
            assert dist._contains(dist.to_internal_repr(point[name]))


def test_a_study_starts_full_finetunings_search_first_then_the_profiles_order(tmp_path):
    assert search_order(["mor1e", "lora", "molora", "dense"]) == ["dense", "mor1e", "lora", "molora"]
    assert search_order(["lora", "mor1e"]) == ["lora", "mor1e"]
    config = write_profile(tmp_path / "p.yaml", tiny_profile(methods=["mor1e", "lora", "dense"]))
    plan = build_plan(argparse.Namespace(config=config, address=None, resume=False, results_dir=str(tmp_path / "r"),
                                         data_dir=None, study=None))
    searcher = StudySearcher(plan)
    suggested = [searcher.suggest(f"t{i}") for i in range(7)]
    assert [(c["phase"], c["method"]) for c in suggested] == [
        ("reference", "zeroshot"), ("search", "dense"), ("search", "dense"), ("search", "mor1e"),
        ("search", "mor1e"), ("search", "lora"), ("search", "lora")]
    assert searcher.suggest("t7") is None  # every search suggested; finals wait for results
