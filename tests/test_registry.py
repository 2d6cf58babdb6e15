"""The method registry: a method declared in a module outside harness/ runs in a study beside dora and a
peft method (IA3), and bad registrations, methods and peft configs are refused before Ray starts."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
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
    yield d
    sys.path.remove(str(d))


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


@pytest.mark.slow
def test_study_with_a_plugin_method_dora_and_ia3(tmp_path, plugin_dir):
    """One tiny study: a method from a module outside harness/, dora, and peft's IA3, each searched and final."""
    profile = tiny_profile(study="byo", methods=["normtune", "dora", "peft"], reference=[], plugins=["normtune_plugin"],
                           trials_per_method=1, overrides={}, search={"algorithm": "random", "seed": 0})
    config = write_profile(tmp_path / "byo.yaml", profile)
    results = tmp_path / "results"
    env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
               PYTHONPATH=os.pathsep.join([str(plugin_dir), str(REPO), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, str(REPO / "harness" / "search.py"), "--config", config,
                           "--results-dir", str(results)], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    df = read_rows(results / "leaderboard.parquet").to_pandas()
    final = df[(df.study == "byo") & (df.phase == "final")]
    assert sorted(zip(final.method, final.dataset)) == sorted(
        (m, d) for m in ("normtune", "dora", "peft") for d in ("boolq", "copa"))
    assert (final.status == "completed").all() and (final.role == "report").all(), final.status_reason.tolist()
    params = final.groupby("method").trainable_params.first()
    assert 0 < params["peft"] < params["dora"] and params["normtune"] > 0
    assert final[final.method == "peft"].hparams_json.str.contains('"peft_type": "IA3"').all()
    # the leaderboard's table lists the three methods in the registry's order
    table = subprocess.run([sys.executable, str(REPO / "harness" / "leaderboard.py"), "--results-dir", str(results),
                            "--study", "byo"], env=env, capture_output=True, text=True, timeout=300)
    assert table.returncode == 0, table.stderr[-2000:]
    print(table.stdout)
