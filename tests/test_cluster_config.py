"""cluster.yaml and cluster.local.yaml: Ray's own validation, plus the safe defaults we promise.

Ray validates exactly as `ray up` does (prepare_config, then validate_config
against ray-schema.json); the safe defaults are checked by `unsafe_settings`,
which the negative cases below show does catch each kind of problem.
"""

from __future__ import annotations

import copy
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

REPO = Path(__file__).resolve().parent.parent
CONFIGS = ["cluster.yaml", "cluster.local.yaml"]

SECRET_KEY = re.compile(r"secret|passw|token|credential|access_key|api_key|session_key", re.I)
SECRET_VALUE = re.compile(r"AKIA[0-9A-Z]{16}|ASIA[0-9A-Z]{16}|-----BEGIN [A-Z ]*PRIVATE KEY-----|aws_secret_access_key")


def load(name: str) -> dict:
    return yaml.safe_load((REPO / name).read_text())


def ray_validate(config: dict) -> dict:
    """What `ray up` does before touching any machine (commands._bootstrap_config)."""
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def _walk(node, path=()):
    if isinstance(node, dict):
        for k, v in node.items():
            yield path + (str(k),), k, v
            yield from _walk(v, path + (str(k),))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield path + (str(i),), None, v
            yield from _walk(v, path + (str(i),))


def _start_commands(config: dict) -> list[str]:
    return [c for key in ("head_start_ray_commands", "worker_start_ray_commands") for c in config.get(key) or []]


def _ray_start_args(command: str) -> list[list[str]]:
    """The argument lists of every `... ray start ...` in a shell command line."""
    out = []
    for part in re.split(r"[;&|]+", command):
        words = shlex.split(part)
        for i, w in enumerate(words[:-1]):
            if w.endswith("ray") and words[i + 1] == "start":
                out.append(words[i + 2:])
    return out


def unsafe_settings(config: dict) -> list[str]:
    """Every way this config departs from the safe defaults; empty when it is safe."""
    problems = []

    # 1. Inbound rules: Ray's AWS bootstrap adds SSH (22) and traffic from the
    #    group itself; anything listed here is added on top, so only 22 may appear.
    provider = config.get("provider", {})
    for rule in provider.get("security_group", {}).get("IpPermissions", []) or []:
        if (rule.get("FromPort"), rule.get("ToPort")) != (22, 22) or rule.get("IpProtocol") != "tcp":
            problems.append(f"inbound rule opens {rule.get('IpProtocol')} {rule.get('FromPort')}-{rule.get('ToPort')}")
    for name, node_type in config.get("available_node_types", {}).items():
        node_config = node_type.get("node_config", {})
        # A group of one's own replaces Ray's, and with it the SSH-only guarantee.
        for key in ("SecurityGroupIds", "NetworkInterfaces"):
            if key in node_config:
                problems.append(f"{name}: node_config.{key} bypasses the SSH-only security group")

    # 2. The dashboard binds to localhost on the head; no node opens it wider.
    head_starts = [a for c in config.get("head_start_ray_commands") or [] for a in _ray_start_args(c)]
    if not head_starts:
        problems.append("no `ray start` in head_start_ray_commands")
    for args in head_starts:
        if "--head" in args and "--dashboard-host=127.0.0.1" not in args:
            problems.append(f"head `ray start` without --dashboard-host=127.0.0.1: {' '.join(args)}")
    for command in _start_commands(config):
        if "0.0.0.0" in command or "--ray-debugger-external" in command:
            problems.append(f"binds beyond localhost: {command}")

    # 3. No credentials: neither secret-looking keys nor key material.
    for path, key, value in _walk(config):
        if key is not None and SECRET_KEY.search(str(key)):
            problems.append(f"secret-looking key {'.'.join(path)}")
        if isinstance(value, str) and SECRET_VALUE.search(value):
            problems.append(f"credential material in {'.'.join(path)}")
    key_path = config.get("auth", {}).get("ssh_private_key")
    if key_path is not None and ("\n" in key_path or len(key_path) > 300):
        problems.append("auth.ssh_private_key must be a path, not a key")
    return problems


# ------------------------------------------------------------------- the files


@pytest.mark.parametrize("name", CONFIGS)
def test_passes_rays_own_validation(name):
    prepared = ray_validate(load(name))
    assert prepared["head_node_type"] in prepared["available_node_types"]


@pytest.mark.parametrize("name", CONFIGS)
def test_safe_defaults(name):
    assert unsafe_settings(load(name)) == []


@pytest.mark.parametrize("name", CONFIGS)
def test_every_ray_process_is_the_projects_venv(name):
    config = load(name)
    commands = _start_commands(config)
    assert commands
    for command in commands:
        for word in shlex.split(command.replace(";", " ; ")):
            if word.endswith("/ray") or word == "ray":
                assert word == "~/mor1e/.venv/bin/ray", command


def test_aws_cluster_shape():
    config = load("cluster.yaml")
    prepared = ray_validate(config)
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0, "the head is a CPU node"
    workers = {n: t for n, t in types.items() if n != config["head_node_type"]}
    assert workers and all(t["resources"]["GPU"] >= 1 for t in workers.values())
    assert {t["node_config"]["InstanceType"] for t in workers.values()} >= {"p4d.24xlarge"}
    assert all(t["min_workers"] == 0 and t["max_workers"] >= 1 for t in workers.values())
    assert max(t["max_workers"] for t in workers.values()) <= prepared["max_workers"]
    assert 0 < config["idle_timeout_minutes"] <= 30
    assert config["provider"]["type"] == "aws" and config["provider"]["cache_stopped_nodes"] is False
    # The project is synced from the repo root and installed with the README's step.
    assert config["file_mounts"] == {"~/mor1e": "."} and (REPO / ".gitignore").exists()
    assert ".gitignore" in config["rsync_filter"]
    assert any("make install" in c for c in config["setup_commands"])
    # Nodes share no disk: the GPU nodes reach the study's S3 storage through an instance role (no keys),
    # and the documented study command names that storage.
    assert all(t["node_config"].get("IamInstanceProfile") for t in workers.values())
    assert "--storage s3://" in (REPO / "cluster.yaml").read_text()


def test_local_cluster_shape():
    config = load("cluster.local.yaml")
    assert config["provider"] == {"type": "local", "head_ip": "127.0.0.1", "worker_ips": []}
    assert config["file_mounts"] == {}
    head = " ".join(config["head_start_ray_commands"])
    assert "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0" in head, "keeps the one-machine cluster on 127.0.0.1"


# ------------------------------------------------- the checks can fail


def _mutated(name, mutate):
    config = load(name)
    mutate(config)
    return config


def test_ray_validation_rejects_unknown_fields_and_bad_worker_counts():
    with pytest.raises(jsonschema.ValidationError):
        ray_validate(_mutated("cluster.yaml", lambda c: c.update(dashbaord_host="0.0.0.0")))
    with pytest.raises(jsonschema.ValidationError):
        ray_validate(_mutated("cluster.yaml", lambda c: c["setup_commands"].append({"make": "install"})))
    with pytest.raises(ValueError, match="max_workers"):
        ray_validate(_mutated("cluster.yaml", lambda c: c["available_node_types"]["gpu_a100x8"].update(min_workers=9)))


UNSAFE = [
    ("cluster.yaml", lambda c: c["provider"]["security_group"]["IpPermissions"].append(
        {"FromPort": 8265, "ToPort": 8265, "IpProtocol": "tcp", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}),
     "inbound rule opens tcp 8265-8265"),
    ("cluster.yaml", lambda c: c["available_node_types"]["head"]["node_config"].update(SecurityGroupIds=["sg-1"]),
     "bypasses the SSH-only security group"),
    ("cluster.yaml", lambda c: c.update(head_start_ray_commands=[
        c["head_start_ray_commands"][1].replace("--dashboard-host=127.0.0.1", "--dashboard-host=0.0.0.0")]),
     "without --dashboard-host=127.0.0.1"),
    ("cluster.local.yaml", lambda c: c.update(head_start_ray_commands=["~/mor1e/.venv/bin/ray start --head"]),
     "without --dashboard-host=127.0.0.1"),
    ("cluster.yaml", lambda c: c["provider"].update(aws_secret_access_key="x"), "secret-looking key"),
    ("cluster.yaml", lambda c: c["setup_commands"].append("export AWS_ACCESS_KEY_ID=AKIAABCDEFGHIJKLMNOP"),
     "credential material"),
    ("cluster.local.yaml", lambda c: c["auth"].update(ssh_private_key="-----BEGIN OPENSSH PRIVATE KEY-----\nabc"),
     "credential material"),
]


@pytest.mark.parametrize("name, mutate, problem", UNSAFE, ids=[p for *_, p in UNSAFE])
def test_unsafe_settings_are_caught(name, mutate, problem):
    problems = unsafe_settings(_mutated(name, mutate))
    assert any(problem in p for p in problems), problems
