
import pytest
import yaml
from profiles import default_profile_with

from harness.searchspace import (
    SUITES,
    SPACES_DIR,
    ConfigError,
    expand_params,
    load_profile,
    load_space,
    num_experts,
    default_methods,
    parse_profile,
    searched_methods,
    space_params,
)

SHIPPED = sorted(SPACES_DIR.glob("*.yaml"))


def test_every_method_has_a_space_and_two_profiles_ship():
    kinds = {p.stem: yaml.safe_load(p.read_text())["kind"] for p in SHIPPED}
    assert {m for m, k in kinds.items() if k == "space"} == set(searched_methods())
    assert {"default", "paper"} <= {m for m, k in kinds.items() if k == "profile"}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_file_loads_and_tags_every_parameter(path):
    kind = yaml.safe_load(path.read_text())["kind"]
    if kind == "space":
        space = load_space(path.stem)
        assert "learning_rate" in space.params and space.params["learning_rate"].role == "nuisance"
        # every parameter carries a role, and the file says why in a comment
        text = path.read_text()
        for name, p in space.params.items():
            assert p.role in ("scientific", "nuisance", "fixed")
            line = text[: text.index(f"  {name}:")].splitlines()[-1]
            assert line.strip().startswith("#") and p.role in line, f"{name}: no role comment above it"
    else:
        profile = load_profile(str(path))
        assert set(profile.spaces) == set(profile.methods)
        suite = yaml.safe_load(path.read_text()).get("datasets", "all")
        assert profile.datasets == list(SUITES[suite] if suite in SUITES else suite)
        for m, space in profile.spaces.items():
            lr, hp = expand_params(m, {k: _some_value(p) for k, p in space.searched().items()}, space)
            fixed = {n: p.value for n, p in space.params.items() if p.role == "fixed"}
            assert lr > 0 and set(hp) <= space_params(m, fixed, m) | {"r1", "r2", "alpha"}


def _some_value(p):
    return p.choices[0] if p.type == "categorical" else p.low


def test_default_profile_is_offline_and_same_budget_for_all():
    p = load_profile(None)
    assert p.name == "default" and p.model == "smollm2-135m" and p.data["synthetic"] is True
    assert p.reference == ["zeroshot"] and "zeroshot" not in p.methods
    assert set(p.methods) == set(default_methods()) == {"mor1e", "lora", "molora", "dense"}


def test_paper_profile_centres_on_the_authors_settings():
    p = load_profile("paper")
    assert p.model == "meta-llama/Llama-2-7b-hf"
    assert p.resources == {"num_workers": 8, "use_gpu": True, "zero_stage": 2, "trial_timeout_s": 172800,
                           "trial_retries": 1, "measure_unit": False}
    t = p.training
    assert t["epochs"] == 3 and t["warmup_steps"] == 100 and t["max_seq_len"] == 2048
    assert t["batch_size"] * t["grad_accum"] * p.resources["num_workers"] == 256
    # the authors' recipe wherever the profile fixes a value (train_args/llama2-13b-trex.json)
    assert (t["batch_size"], t["grad_accum"], t["schedule"], t["min_lr_ratio"]) == (4, 8, "cosine", 0.0)
    assert (t["max_grad_norm"], t["weight_decay"], t["loss_reduction"]) == (0.3, 0.0, "token")
    assert t["embedder"] == "nomic-ai/nomic-embed-text-v1" and t["embedder_trust_remote_code"] is True
    from harness.trial import TrialConfig

    fields = {k: v for k, v in t.items() if k not in ("eval_every",)}
    TrialConfig(method="mor1e", **fields)  # every fixed value is one a trial accepts
    mor1e = p.spaces["mor1e"].params
    assert mor1e["learning_rate"].low < 5e-5 < mor1e["learning_rate"].high
    assert "4x8" in mor1e["expert_shape"].choices
    assert mor1e["num_clusters"].role == "fixed" and mor1e["num_clusters"].value is None  # k = E = 32


def test_expand_params_maps_shapes_and_lora_alpha():
    space = load_space("mor1e")
    lr, hp = expand_params("mor1e", {"learning_rate": 1e-3, "expert_shape": "4x8", "num_clusters": 8,
                                     "router_temperature": 0.5}, space)
    assert lr == 1e-3 and hp == {"r1": 4, "r2": 8, "num_clusters": 8, "router_temperature": 0.5, "top_k": None,
                                 "parameterization": "authors", "share_routers": False}
    assert num_experts("mor1e", hp) == 32
    lr, hp = expand_params("lora", {"learning_rate": 1e-3, "rank": 8}, load_space("lora"))
    assert hp == {"rank": 8, "alpha": 16.0, "dropout": 0.0}


@pytest.mark.parametrize("changes, message", [
    (dict(methods=["mor1e", "prefix"]), "unknown method 'prefix'"),
    (dict(methods=["zeroshot"]), "zeroshot is a reference"),
    (dict(datasets=["boolq", "squad"]), "unknown dataset 'squad'"),
    (dict(colour="red"), "unknown key 'colour'"),
    (dict(search__sampler="cmaes"), "unknown key 'sampler'"),
    (dict(overrides__mor1e={"expert_shape": {"choices": ["0x8", "4x8"]}}), "expert count must be >= 1"),
    (dict(overrides__molora={"num_experts": {"choices": [0, 4]}}), "expert count must be >= 1"),
    (dict(overrides__mor1e={"router_temperature": {"low": 0, "high": 1, "log": False}}), "tau"),
    (dict(overrides__lora={"learning_rate": {"low": -1e-3, "high": 1e-3, "log": False}}), "lr must be > 0"),
    (dict(overrides__dense={"learning_rate": {"value": 0.0}}), "lr must be > 0"),
    (dict(overrides__mor1e={"num_clusters": {"role": "scientific", "type": "int", "low": 4, "high": 5000}}),
     "clusters exceed"),
    (dict(overrides__mor1e={"num_clusters": {"low": 4, "high": 32}}), "num_clusters is fixed"),
    (dict(overrides__mor1e={"rank": {"role": "fixed", "value": 2}}), "unknown key 'rank'"),
    (dict(trials_per_method=0), "trials_per_method"),
    (dict(final__seeds=[0, 0]), "without repeats"),
    (dict(search__trial_seed=1), "trial_seed 1 is one of final.seeds"),
    (dict(search__trial_seed=-1), "search.trial_seed"),
    (dict(training__scored_roles=["report"]), "set by the search"),
    (dict(resources__zero_stage=4), "zero_stage"),
    (dict(resources__trial_timeout_s=0), "trial_timeout_s must be > 0"),
    (dict(resources__trial_timeout_s="soon"), "trial_timeout_s"),
    (dict(resources__trial_retries=-1), "trial_retries"),
    (dict(resources__measure_unit="yes"), "measure_unit must be true or false"),
    (dict(training__learning_rate=1e-3), "set by the search"),
    (dict(study="my study"), "study name"),
])
def test_bad_profiles_name_the_problem(changes, message):
    data = default_profile_with(**changes)
    with pytest.raises(ConfigError, match=message) as info:
        # 64 train examples x 14 datasets bound num_clusters in the default profile
        parse_profile(data, "default.yaml", count_train_examples=lambda raw: 64 * len(raw["datasets"]))
    assert "\n" not in str(info.value)


def test_unknown_profile_and_space_as_profile_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="unknown profile 'fast'"):
        load_profile("fast")
    with pytest.raises(ConfigError, match="not a profile"):
        load_profile("mor1e")
    with pytest.raises(ConfigError, match="does not exist"):
        load_profile(str(tmp_path / "x.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: profile\nstudy: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_profile(str(bad))


def test_unknown_training_keys_are_refused_when_fields_are_known():
    data = default_profile_with(training__stepz=3)
    with pytest.raises(ConfigError, match="unknown key 'stepz'"):
        parse_profile(data, "x.yaml", training_keys=set(data["training"]) - {"stepz"})


def test_search_trials_default_to_a_seed_no_final_run_uses():
    data = default_profile_with(final__seeds=[3, 7])
    del data["search"]["trial_seed"]
    profile = parse_profile(data, "default.yaml")
    assert profile.search["trial_seed"] == 8 and 8 not in profile.final["seeds"]
