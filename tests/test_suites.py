"""Dataset suites: `datasets: commonsense8` in a profile, ARC names in a trial, `all` unchanged."""

import pytest
from profiles import default_profile_with

from harness.data import DATASETS, SUITES
from harness.searchspace import ConfigError, load_profile, parse_profile
from harness.trial import TrialConfig


def test_trial_config_accepts_suites_and_arc_names():
    assert TrialConfig(method="zeroshot").datasets == DATASETS
    assert TrialConfig(method="zeroshot", datasets="all").datasets == DATASETS
    assert TrialConfig(method="zeroshot", datasets="commonsense8").datasets == SUITES["commonsense8"]
    assert TrialConfig(method="lora", datasets="arc_easy,arc_challenge").datasets == ("arc_easy", "arc_challenge")
    assert TrialConfig(method="lora", datasets=["arc_challenge", "boolq"]).datasets == ("arc_challenge", "boolq")
    with pytest.raises(ValueError, match="unknown dataset"):
        TrialConfig(method="lora", datasets="commonsense9")


def test_profile_selects_a_suite_or_arc_names():
    p = parse_profile(default_profile_with(datasets="commonsense8"), "p.yaml")
    assert p.datasets == list(SUITES["commonsense8"])
    p = parse_profile(default_profile_with(datasets=["arc_easy", "openbookqa"]), "p.yaml")
    assert p.datasets == ["arc_easy", "openbookqa"]
    assert parse_profile(default_profile_with(datasets="all"), "p.yaml").datasets == list(DATASETS)
    with pytest.raises(ConfigError, match="unknown dataset 'commonsense9'"):
        parse_profile(default_profile_with(datasets="commonsense9"), "p.yaml")


def test_shipped_commonsense8_profile_follows_the_llm_adapters_budget():
    p = load_profile("commonsense8")
    assert p.datasets == list(SUITES["commonsense8"]) and p.data["synthetic"] is False
    t = p.training
    assert (t["epochs"], t["max_seq_len"], t["warmup_steps"], t["schedule"]) == (3, 256, 100, "linear")
    assert t["batch_size"] * t.get("grad_accum", 1) * p.resources["num_workers"] == 16
    lora = p.spaces["lora"].params
    assert (lora["rank"].value, lora["alpha_ratio"].value, lora["dropout"].value) == (32, 2.0, 0.05)
    assert lora["learning_rate"].low <= 3e-4 <= lora["learning_rate"].high
