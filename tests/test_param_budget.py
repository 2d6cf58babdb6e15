"""Parameter-matched search: the band, the sizes the sampler may offer, and the shipped profiles.

Counts in these tests are made independently of the plan's meta-device counts: by loading the real
tiny-random-llama and preparing it as a trial's worker does.
"""

import argparse
import copy
import functools
import itertools
import json
import sys

import pytest
from profiles import tiny_profile, write_profile

import mor1e
from harness import search
from harness.data import write_synthetic
from harness.methods import apply_method
from harness.models import load_model
from harness.searchspace import SIZE_PARAM, expand_params, load_space
from harness.study.plan import METRIC, build_plan, trial_point
from harness.study.sampler import make_searcher, optuna_space

MATCH = {"match": "mor1e", "at": {"expert_shape": "4x8", "share_routers": False, "num_clusters": 4}, "tolerance": 0.3}
ADAPTERS = ("mor1e", "lora", "molora")


@functools.lru_cache(maxsize=1)
def _tiny():
    return load_model("tiny-random-llama")[0]


def real_count(method: str, hparams: dict) -> int:
    model = copy.deepcopy(_tiny())
    apply_method(model, method, hparams)
    return mor1e.count_trainable(model)


def args_for(config: str, results, **kw) -> argparse.Namespace:
    values = dict(config=config, address=None, resume=False, results_dir=str(results), data_dir=None, study=None)
    values.update(kw)
    return argparse.Namespace(**values)


@pytest.fixture(scope="module")
def plan(tmp_path_factory):
    d = tmp_path_factory.mktemp("budget")
    return build_plan(args_for(write_profile(d / "p.yaml", tiny_profile(param_budget=MATCH)), d / "results"))


def test_band_is_centred_on_the_matched_reference(plan):
    reference = real_count("mor1e", {"r1": 4, "r2": 8, "num_clusters": 4, "share_routers": False})
    band = plan.band
    assert band.centre == reference and band.matched == "mor1e"
    assert (band.low, band.high) == (round(0.7 * reference), round(1.3 * reference))


@pytest.mark.parametrize("method", ADAPTERS)
def test_only_sizes_inside_the_band_are_in_the_space(plan, method):
    """The sampler's space holds exactly the sizes whose real counts are inside the band (at both
    ends of every range that moves the count, e.g. MoR1E's num_clusters)."""
    original = load_space(method)
    size_names = [n for n in original.searched() if n in ("expert_shape", "share_routers", "rank", "num_experts")]
    space = plan.profile.spaces[method]
    assert not set(size_names) & set(space.params)  # joined into one categorical
    offered = [json.loads(c) for c in space.params[SIZE_PARAM].choices]
    ends = [{}] if method != "mor1e" else [{"num_clusters": 2}, {"num_clusters": 4}]
    inside, outside = [], []
    for combo in itertools.product(*(original.params[n].choices for n in size_names)):
        size = dict(zip(size_names, combo))
        counts = [real_count(method, expand_params(method, {**size, **end}, original)[1]) for end in ends]
        (inside if all(plan.band.low <= c <= plan.band.high for c in counts) else outside).append(size)
    assert offered == inside
    assert outside, "the band should exclude some sizes of the shipped space"
    assert set(optuna_space(space)) == set(space.searched())


@pytest.mark.parametrize("method", ADAPTERS)
def test_the_sampler_never_offers_a_size_outside_the_band(plan, method):
    searcher = make_searcher(plan, method, "tpe")
    space = plan.profile.spaces[method]
    for i in range(8):
        config = searcher.suggest(f"{method}-{i}")
        _, hparams, _ = trial_point(method, space.params, 0, config)
        count = real_count(method, hparams)
        assert plan.band.low <= count <= plan.band.high, (config, count)
        searcher.on_trial_complete(f"{method}-{i}", {METRIC: (i % 3) / 3})


def test_dense_stays_full_finetuning_and_says_so(plan):
    assert plan.profile.spaces["dense"].params.keys() == {"learning_rate"}
    dense, lora = json.loads(plan.budget_json("dense", "search")), json.loads(plan.budget_json("lora", "search"))
    assert dense["param_band"] == lora["param_band"] == [plan.band.low, plan.band.high]
    assert dense["param_matched"] is False and lora["param_matched"] is True


def test_an_absolute_band(tmp_path):
    plan = build_plan(args_for(write_profile(tmp_path / "p.yaml", tiny_profile(
        methods=["lora"], param_budget={"params": 49152, "tolerance": 0.1})), tmp_path / "r"))
    assert (plan.band.low, plan.band.high) == (44237, 54067) and plan.band.matched is None
    assert [json.loads(c) for c in plan.profile.spaces["lora"].params[SIZE_PARAM].choices] == [{"rank": 24}]


BAD = [
    ({"params": 1000, "tolerance": 0.1}, "has no size inside the parameter band"),
    ({"match": "dense"}, "dense is full finetuning"),
    ({"match": "mor1e", "params": 5}, "exactly one of match"),
    ({"match": "mor1e", "tolerance": 1.5}, "tolerance: must be in (0, 1)"),
    ({"match": "mor1e", "at": {"rank": 4}}, "unknown key 'rank'"),
    ({"match": "mor1e", "at": {"expert_shape": "0x4"}}, "expert count must be >= 1"),
    ({"params": 100, "at": {"r1": 4}}, "only with match"),
    ({"match": "lora", "model_config": "missing/config.json"}, "is neither a config.json"),
    ({"match": "lora", "budget": 3}, "unknown key 'budget'"),
]


@pytest.mark.parametrize("spec, message", BAD, ids=[m for _, m in BAD])
def test_bad_budgets_exit_2_with_one_line_before_ray(tmp_path, capsys, spec, message):
    import ray

    results = tmp_path / "results"
    config = write_profile(tmp_path / "p.yaml", tiny_profile(param_budget=spec))
    with pytest.raises(SystemExit) as info:
        sys.exit(search.main(["--config", config, "--results-dir", str(results)]))
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not results.exists() and not ray.is_initialized()


def test_lora_and_molora_share_the_alpha_convention():
    """Both scale every update by alpha / rank = 2 at every rank the search may pick; MoLoRA searches
    its size and router temperature like MoR1E."""
    lora, molora, mor1e_space = load_space("lora"), load_space("molora"), load_space("mor1e")
    for rank in lora.params["rank"].choices:
        assert expand_params("lora", {"rank": rank}, lora)[1]["alpha"] == 2 * rank
    for rank in molora.params["rank"].choices:
        assert expand_params("molora", {"rank": rank, "num_experts": 2}, molora)[1]["alpha"] == 2 * rank
    assert {"rank", "num_experts", "router_temperature"} <= set(molora.searched())
    tau, mor1e_tau = molora.params["router_temperature"], mor1e_space.params["router_temperature"]
    assert (tau.low, tau.high, tau.log) == (mor1e_tau.low, mor1e_tau.high, mor1e_tau.log)

    model, _ = load_model("tiny-random-llama")
    apply_method(model, "lora", expand_params("lora", {"rank": 16}, lora)[1])
    peft_scales = {m.scaling["default"] for m in model.modules() if hasattr(m, "lora_A")}
    model, _ = load_model("tiny-random-llama")
    apply_method(model, "molora", expand_params("molora", {"rank": 4, "num_experts": 2}, molora)[1])
    molora_scales = {m.scaling for m in model.modules() if isinstance(m, mor1e.MoLoRALinear)}
    assert peft_scales == molora_scales == {2.0}


def test_shipped_profiles_plan_offline_with_every_adapter_in_the_band(tmp_path, monkeypatch):
    """default counts on the packaged SmolLM2; paper (a hub model) on its bundled config.json, no network."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    default = build_plan(args_for(None, tmp_path / "r1"))
    data = tmp_path / "data"
    write_synthetic(data, seed=0, n_train=40, n_validation=8)
    paper = build_plan(args_for("paper", tmp_path / "r2", data_dir=str(data)))
    assert paper.band.counted_on.endswith("model_configs/Llama-2-7b-hf")
    for plan in (default, paper):
        band = plan.band
        assert band.matched == "mor1e" and band.low < band.centre < band.high
        for method in ADAPTERS:
            sizes = plan.profile.spaces[method].params[SIZE_PARAM].choices
            assert len(sizes) >= 2, (plan.study, method, sizes)
            assert all(band.low <= c <= band.high for _, counts in band.methods[method].admitted for c in counts)
        assert "size" not in plan.profile.spaces["dense"].params
    # paper parameter-matches DoRA as it does LoRA: its ranks inside the band, listed in the plan's band lines
    assert len(paper.profile.spaces["dora"].params[SIZE_PARAM].choices) >= 2
    assert any(line.strip().startswith("dora: rank=") for line in paper.band.describe())
