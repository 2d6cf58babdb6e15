"""An embedded Ray started by harness.ray_env stays on loopback, even when the caller's environment says nothing."""

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

PROBE = """
import json
import ray  # imported first, as harness/search.py does
from harness.ray_env import init_ray
init_ray(num_cpus=1)
print(json.dumps(sorted({n["NodeManagerAddress"] for n in ray.nodes()})))
ray.shutdown()
"""


def test_embedded_ray_binds_to_loopback_without_the_env_var():
    env = {k: v for k, v in os.environ.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
    env.pop("RAY_ADDRESS", None)
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == ["127.0.0.1"]
