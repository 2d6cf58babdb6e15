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


ORPHANS = """
import json, time
import ray
from ray.util.placement_group import placement_group
from harness.ray_env import init_ray, remove_orphaned_placement_groups
init_ray(num_cpus=3)

@ray.remote(num_cpus=0)
class Maker:  # stands in for a Ray Train controller: it creates its workers' placement group
    def make(self):
        pg = placement_group([{"CPU": 1}])
        ray.get(pg.ready())
        return pg.id.hex()

doomed, alive = Maker.remote(), Maker.remote()
orphan, kept = ray.get(doomed.make.remote()), ray.get(alive.make.remote())
own = placement_group([{"CPU": 1}])  # made by the driver, as Tune makes its trial groups
ray.get(own.ready())
before = remove_orphaned_placement_groups()
ray.kill(doomed)
deadline = time.time() + 30
removed = []
while not removed and time.time() < deadline:  # the GCS marks the creator dead shortly after the kill
    removed = remove_orphaned_placement_groups()
    time.sleep(0.2)
while ray.available_resources().get("CPU", 0) < 1 and time.time() < deadline:
    time.sleep(0.2)
table = ray.util.placement_group_table()
print(json.dumps(dict(before=before, removed=removed, orphan=orphan, states={k[:8]: v["state"] for k, v in table.items()},
                      kept=kept[:8], own=own.id.hex()[:8], free_cpu=ray.available_resources().get("CPU", 0))))
"""


def test_placement_groups_of_dead_creators_are_removed_and_no_others():
    out = subprocess.run([sys.executable, "-c", ORPHANS], capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["before"] == [] and r["removed"] == [r["orphan"]]
    assert r["states"][r["orphan"][:8]] == "REMOVED"
    assert r["states"][r["kept"]] == "CREATED" and r["states"][r["own"]] == "CREATED"
    assert r["free_cpu"] == 1  # 3 CPUs: the kept group and the driver's group hold one each
