"""The method registry: a method declared in a module outside harness/ runs in a study beside dora and a
peft method (IA3), and bad registrations, methods and peft configs are refused before Ray starts."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from profiles import tiny_profile, write_profile

from harness import methods, search
from harness.records import read_rows

REPO = Path(__file__).resolve().parent.parent

# A method of one's own: train the RMSNorm weights only (no adapter layers). Its module and its
# search space live outside harness/; nothing of the harness is edited to run it.
PLUGIN = '''
from pathlib import Path

from harness.methods import Method, register


def config(hparams):
    unknown = sorted(set(hparams) - {"final_norm"})
    if unknown:
        raise ValueError(f"unknown hparam(s) for method 'normtune': {', '.join(unknown)}")
    return {"final_norm": bool(hparams.get("final_norm", True))}


def apply(model, config):
    for name, param in model.named_parameters():
        final = name == "model.norm.weight"
        param.requires_grad_(name.endswith("norm.weight") and (config["final_norm"] or not final))
    return model


register(Method(name="normtune", config=config, apply=apply, space=str(Path(__file__).with_name("normtune.yaml")),
                space_params={"final_norm"}, order=35, baseline=True))
'''

SPACE = """
kind: space
method: normtune
params:
  # nuisance: tuned per method.
  learning_rate: {role: nuisance, type: float, low: 1.0e-3, high: 1.0e-2, log: true}
  # scientific: whether the final norm trains too.
  final_norm: {role: scientific, type: categorical, choices: [true, false]}
"""

CLASH = 'from harness.methods import Method, register\nregister(Method(name="lora", config=dict, apply=None, space="lora"))\n'


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("plugins")
    (d / "normtune_plugin.py").write_text(PLUGIN)
    (d / "normtune.yaml").write_text(SPACE)
    (d / "clash_plugin.py").write_text(CLASH)
    sys.path.insert(0, str(d))
    saved = dict(methods._REGISTRY)
    yield d
    sys.path.remove(str(d))
    # the plugins registered for this module's tests only: later tests see the built-in methods
    methods._REGISTRY.clear()
    methods._REGISTRY.update(saved)
    methods.METHODS = tuple(saved)
    for name in ("normtune_plugin", "clash_plugin"):
        sys.modules.pop(name, None)


def test_leaderboard_order_and_baselines_come_from_the_registry():
    order = methods.leaderboard_order()
    assert order[:2] == ("zeroshot", "dense") and order[-1] == "mor1e"
    assert {"dense", "lora", "dora", "molora", "peft"} == set(methods.baselines())
    assert methods.registered("adapter") == ("mor1e", "lora", "dora", "molora", "peft")


def test_registration_clash_is_refused():
    with pytest.raises(ValueError, match="'lora' is already registered"):
        methods.register(methods.Method(name="lora", config=dict, apply=None, space="lora"))
    assert methods.get("lora").space == "lora"  # the original declaration stays


def test_peft_configs_from_hparams():
    from peft import IA3Config, LoHaConfig, LoraConfig

    assert isinstance(methods.method_config("peft", {"peft_type": "ia3"}), IA3Config)
    cfg = methods.method_config("peft", {"peft_type": "LOHA", "r": 4, "alpha": 8, "target_modules": ["q_proj"]})
    assert isinstance(cfg, LoHaConfig) and (cfg.r, cfg.alpha) == (4, 8)
    dora = methods.method_config("dora", {"rank": 4, "alpha": 8.0})
    assert isinstance(dora, LoraConfig) and dora.use_dora and not methods.method_config("lora", {}).use_dora
    assert methods.count_trainable_params("tiny-random-llama", "dora", {"rank": 4}) > \
        methods.count_trainable_params("tiny-random-llama", "lora", {"rank": 4})


def _bad(tmp_path, plugin_dir, **changes):
    return ["--config", write_profile(tmp_path / "p.yaml", tiny_profile(**changes)),
            "--results-dir", str(tmp_path / "results"), "--show-plan"]


BAND = {"match": "lora", "at": {"rank": 8}, "tolerance": 0.3}
BAD = [
    (dict(methods=["dora", "bogus"]), "unknown method 'bogus'"),
    (dict(methods=["peft"], overrides={"peft": {"peft_type": {"value": "IA4"}}}), "unknown peft_type 'IA4'"),
    (dict(methods=["peft"], overrides={"peft": {"r": {"role": "fixed", "value": 4}}}), "unknown key 'r'"),
    (dict(methods=["peft"], overrides={"peft": {"peft_type": {"role": "scientific", "type": "categorical",
                                                              "choices": ["IA3", "LOHA"]}}}),
     "peft_type must be a fixed parameter"),
    (dict(methods=["lora", "peft"], param_budget=BAND), "peft has no size inside the parameter band"),
    (dict(methods=["lora"], plugins=["clash_plugin"]), "plugin module 'clash_plugin': method 'lora' is already"),
    (dict(methods=["lora"], plugins=["no_such_plugin"]), "plugin module 'no_such_plugin' cannot be imported"),
]


@pytest.mark.parametrize("changes, message", BAD, ids=[m for _, m in BAD])
def test_bad_methods_exit_2_before_ray(tmp_path, plugin_dir, capsys, changes, message):
    import ray

    with pytest.raises(SystemExit) as info:
        sys.exit(search.main(_bad(tmp_path, plugin_dir, reference=[], **changes)))
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "results").exists() and not ray.is_initialized()


def test_plugin_method_joins_the_band_and_the_leaderboard_order(tmp_path, plugin_dir, capsys):
    band = {"match": "lora", "at": {"rank": 8}, "tolerance": 0.3}
    args = _bad(tmp_path, plugin_dir, methods=["lora", "dora", "normtune"], reference=[], plugins=["normtune_plugin"],
                param_budget=band)
    code = search.main(args)
    out = capsys.readouterr()
    # RMSNorm weights of tiny-random-llama are far fewer than a rank-8 LoRA: outside the band, refused
    assert code == 2 and "normtune has no size inside the parameter band" in out.err, out
    assert "normtune" in methods.METHODS and methods.leaderboard_order().index("normtune") == \
        methods.leaderboard_order().index("dora") + 1


# Run in a fresh process: a MoR1E adapter a study exported loads with peft's own API after `import mor1e`,
# and scores the report split as the study recorded it.
FRESH = """
import json, sys
import mor1e
from peft import PeftModel
from harness.evaluate import predictions, score_examples
from harness.models import load_model
from harness.trial.driver import prepare_data
from harness.trial import TrialConfig

adapter, data_dir, hparams = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
base, tokenizer = load_model("tiny-random-llama", seed=0)
model = PeftModel.from_pretrained(base, adapter).eval()
cfg = TrialConfig(method="mor1e", model="tiny-random-llama", datasets=["boolq", "copa"], hparams=hparams, seed=0,
                  data_dir=data_dir, train_limit=32, selection_limit=8, report_limit=8, scored_roles=("report",))
data = prepare_data(cfg)
loglikes = score_examples(model, tokenizer, data.report, intuition_scores=data.report_scores, progress=False)
preds = predictions(data.report, loglikes)
# with no scores given, the adapter computes them from the input (its centroids, the packaged embedder)
mor1e.peft_method.set_tokenizer(model, tokenizer)
ids = tokenizer([data.report[0].prompt], return_tensors="pt")
computed = model.base_model.intuition_from_ids(ids.input_ids, ids.attention_mask)
logits = model(input_ids=ids.input_ids, attention_mask=ids.attention_mask).logits
print(json.dumps({"rows": [[e.dataset, e.id, p, ll] for e, (p, _), ll in zip(data.report, preds, loglikes)],
                  "computed_shape": list(computed.shape), "finite": bool(logits.isfinite().all()),
                  "peft_type": str(model.peft_config["default"].peft_type.value)}))
"""


def test_every_method_of_a_plan_has_its_budget_record(tmp_path):
    """Rows record each method's budget; a method without defaults (peft needs its peft_type) too."""
    import argparse

    from harness.study.plan import build_plan

    config = write_profile(tmp_path / "p.yaml", tiny_profile(methods=["mor1e", "dora", "peft", "dense"]))
    plan = build_plan(argparse.Namespace(config=config, results_dir=str(tmp_path / "r"), data_dir=None, study=None,
                                         address=None, resume=False, accept_changed_profile=False))
    for method in ("mor1e", "dora", "peft", "dense", "zeroshot"):
        assert json.loads(plan.budget_json(method, "search"))["steps"] == 4


@pytest.mark.slow
def test_study_with_a_plugin_method_dora_and_ia3(tmp_path, plugin_dir):
    """One tiny study: a method from a module outside harness/, dora, peft's IA3 and mor1e, each searched and
    final; then mor1e's exported adapter loads with PeftModel.from_pretrained in a fresh process."""
    profile = tiny_profile(study="byo", methods=["normtune", "dora", "peft", "mor1e"], reference=[],
                           plugins=["normtune_plugin"], trials_per_method=1, search={"algorithm": "random", "seed": 0})
    config = write_profile(tmp_path / "byo.yaml", profile)
    results = tmp_path / "results"
    env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
               PYTHONPATH=os.pathsep.join([str(plugin_dir), str(REPO), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, str(REPO / "harness" / "search.py"), "--config", config,
                           "--results-dir", str(results)], env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    df = read_rows(results / "leaderboard.parquet").to_pandas()
    final = df[(df.study == "byo") & (df.phase == "final")]
    assert sorted(zip(final.method, final.dataset)) == sorted(
        (m, d) for m in ("normtune", "dora", "peft", "mor1e") for d in ("boolq", "copa"))
    assert (final.status == "completed").all() and (final.role == "report").all(), final.status_reason.tolist()
    params = final.groupby("method").trainable_params.first()
    assert 0 < params["peft"] < params["dora"] and params["normtune"] > 0
    assert final[final.method == "peft"].hparams_json.str.contains('"peft_type": "IA3"').all()
    # the leaderboard's table lists the built-in methods in the registry's order; the plugin's method, which
    # the leaderboard's process did not import, after them
    table = subprocess.run([sys.executable, str(REPO / "harness" / "leaderboard.py"), "--results-dir", str(results),
                            "--study", "byo"], env=env, capture_output=True, text=True, timeout=300)
    assert table.returncode == 0, table.stderr[-2000:]
    table_rows = [line.split("|")[1].strip() for line in table.stdout.splitlines() if line.startswith("| ")]
    assert table_rows[1:] == ["dora", "peft", "mor1e", "normtune"], table.stdout

    # mor1e's final run exported its adapter; loaded by peft in a fresh process it scores as recorded
    from harness.predictions import read_predictions

    (row,) = final[(final.method == "mor1e")].drop_duplicates("trial_id").itertuples()
    adapters = [p.parent for p in results.rglob("adapter/adapter_config.json")
                if '"method": "mor1e"' in p.read_text()]
    assert adapters, "no MoR1E adapter exported"
    record = json.loads((adapters[-1] / "adapter_config.json").read_text())
    assert record["peft_type"] == "MOR1E" and record["centroids"] and record["format_version"] >= 2
    data_dir = next(results.rglob("boolq/train.jsonl")).parent.parent
    hparams = {k: v for k, v in json.loads(row.hparams_json).items() if k != "learning_rate"}
    fresh = subprocess.run([sys.executable, "-c", FRESH, str(adapters[-1]), str(data_dir), json.dumps(hparams)],
                           env=env, capture_output=True, text=True, timeout=300)
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    got = json.loads(fresh.stdout.strip().splitlines()[-1])
    assert got["peft_type"] == "MOR1E" and got["finite"] and got["computed_shape"][0] == 1
    assert got["computed_shape"][1] == len(record["centroids"])
    preds = read_predictions(results / "predictions.parquet", study="byo")
    recorded = preds[(preds.trial_id == row.trial_id) & (preds.role == "report")].set_index(["dataset", "example_id"])
    assert len(recorded) == len(got["rows"]) == 16
    for dataset, example_id, pred, loglikes in got["rows"]:
        r = recorded.loc[(dataset, example_id)]
        assert pred == r.pred, (dataset, example_id)
        assert np.allclose(loglikes, list(r.option_loglikes), atol=1e-3), (loglikes, list(r.option_loglikes))
