"""A real multi-node Ray cluster on loopback, for integration tests.

Each node is a separate `ray start --block` with its own loopback address
(127.A.B.n, A and B random per cluster), temp dir and ports, so several
raylets share this host without meeting anyone else's Ray. Every node
runs under a small supervisor that makes itself a child subreaper: processes
Ray orphans (workers whose raylet died) stay its descendants, so teardown can
find and stop every one of them by pid. Nothing here calls `ray stop`, which
would kill every Ray on the machine.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

VENV_BIN = Path(sys.executable).parent
RAY = str(VENV_BIN / "ray")

# Adopts orphaned descendants (PR_SET_CHILD_SUBREAPER = 36) and reaps them
# until none is left, so the whole tree of one node stays findable by pid.
# Waits (up to a timeout) for N alive nodes, then prints one JSON line with
# every node and every actor the GCS knows, dead ones included.
_PROBE = r"""
import json, sys, time
import ray
from ray._private import state
address, want, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
ray.init(address=address, log_to_driver=False, logging_level="ERROR")
deadline = time.monotonic() + timeout
while sum(n["Alive"] for n in ray.nodes()) < want and time.monotonic() < deadline:
    time.sleep(0.5)
nodes = [dict(node_id=n["NodeID"], alive=n["Alive"], resources=n.get("Resources", {}),
              address=n.get("NodeManagerAddress"), manager_port=n.get("NodeManagerPort"))
         for n in ray.nodes()]
actors = [dict(actor_id=a["ActorID"], class_name=a.get("ActorClassName", ""), state=a["State"],
               node_id=(a.get("Address") or {}).get("NodeID"), pid=a.get("Pid"))
          for a in state.actors().values()]
print(json.dumps(dict(nodes=nodes, actors=actors)))
"""

_SUPERVISOR = r"""
import ctypes, os, signal, subprocess, sys
ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)
child = subprocess.Popen(sys.argv[1:])
signal.signal(signal.SIGTERM, lambda sig, frame: child.send_signal(sig))
code = 0
while True:
    try:
        pid, status = os.wait()
    except ChildProcessError:
        break
    if pid == child.pid:
        code = os.waitstatus_to_exitcode(status)
sys.exit(code if code >= 0 else 128 - code)
"""


def free_ports(count: int) -> list[int]:
    """Ports the kernel reports free right now, all distinct."""
    sockets, ports = [], []
    try:
        while len(ports) < count:
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in sockets:
            s.close()
    return ports


def free_port_range(width: int, *, low: int = 20000, high: int = 32000, tries: int = 50) -> tuple[int, int]:
    """A run of `width` ports below the ephemeral range that nobody is bound to.

    Workers of different raylets on one host must not draw from the same pool,
    and Ray's default pool (10002-19999) is shared with every embedded Ray here.
    """
    for _ in range(tries):
        start = random.randrange(low, high - width)
        busy = {c.laddr.port for c in psutil.net_connections("tcp") if c.laddr}
        if not busy.intersection(range(start, start + width)):
            return start, start + width - 1
    raise RuntimeError(f"no free run of {width} ports in {low}-{high}")


def node_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            # Keeps every Ray process on loopback (see DESIGN.md, "Network").
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
            "RAY_USAGE_STATS_ENABLED": "0",
            # A killed raylet is declared dead within ~3 s instead of ~30 s.
            "RAY_health_check_initial_delay_ms": "1000",
            "RAY_health_check_period_ms": "1000",
            "RAY_health_check_timeout_ms": "1000",
            "RAY_health_check_failure_threshold": "3",
            "OMP_NUM_THREADS": "1",
            # torch.distributed's gloo would otherwise pick the interface the
            # hostname resolves to, which need not be loopback.
            "GLOO_SOCKET_IFNAME": "lo",
            "TOKENIZERS_PARALLELISM": "false",
        }
    )
    env.pop("RAY_ADDRESS", None)
    env.update(extra or {})
    return env


def auth_env(root: Path) -> dict[str, str]:
    """Token authentication with a token of this cluster's own.

    `ray start --head` turns token auth on whenever ~/.ray/auth_token exists
    (any embedded ray.init() writes one), while a client given an explicit
    address never does; setting the mode and token path for every process makes
    both sides agree and keeps the test away from the user's token.
    """
    token = root / "auth_token"
    if not token.exists():
        token.write_text(secrets.token_hex(32))
        token.chmod(0o600)
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}


@dataclass
class RayNode:
    name: str
    num_cpus: int
    temp_dir: Path
    log_path: Path
    supervisor: subprocess.Popen
    head: bool
    ip: str = ""

    @property
    def marker(self) -> str:
        """A custom resource only this node has, to map Ray node ids to names."""
        return f"mor1e_test_node_{self.name}"

    def descendants(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.supervisor.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def raylet(self) -> psutil.Process:
        for proc in self.descendants():
            try:
                if proc.name() == "raylet":
                    return proc
            except psutil.NoSuchProcess:
                continue
        raise RuntimeError(f"node {self.name}: no raylet process")

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


@dataclass
class LoopbackCluster:
    """Head plus worker nodes started with `ray start` on loopback addresses."""

    root: Path
    nodes: list[RayNode] = field(default_factory=list)
    # Distinct per cluster: `ray start` rewrites 127.0.0.1 itself to the
    # primary interface (see _start), and other people's Rays live there.
    ray_root: Path | None = None
    known_nodes: dict[str, str] = field(default_factory=dict)  # Ray node id -> node name
    subnet: str = field(default_factory=lambda: f"127.{random.randrange(1, 255)}.{random.randrange(1, 255)}.")
    gcs_port: int = 0
    env_extra: dict[str, str] = field(default_factory=dict)
    # Node name -> a command the node's supervisor runs under (e.g. `unshare -m ...` for a private mount namespace).
    node_prefix: dict[str, list[str]] = field(default_factory=dict)
    # `ray start` tries per node: on an overloaded machine a node can miss Ray's fixed 30 s start-up window.
    start_attempts: int = 2

    @property
    def head_ip(self) -> str:
        return self.subnet + "1"

    @property
    def address(self) -> str:
        return f"{self.head_ip}:{self.gcs_port}"

    def env(self) -> dict[str, str]:
        return node_env({**auth_env(self.root), **self.env_extra})

    def _start(self, name: str, num_cpus: int, head: bool, resources: dict | None) -> RayNode:
        self.root.mkdir(parents=True, exist_ok=True)
        if self.ray_root is None:
            # Ray's socket paths must fit in 107 bytes; pytest's tmp_path does not leave room.
            self.ray_root = Path(tempfile.mkdtemp(prefix="mor1e-ray-", dir="/tmp"))
        temp_dir = self.ray_root / name
        temp_dir.mkdir(parents=True, exist_ok=True)
        # Node-local ports are explicit: two raylets on one host would
        # otherwise both try the defaults (e.g. the agent's 52365).
        agent_listen, agent_grpc, runtime_env, metrics, object_manager, node_manager = free_ports(6)
        low, high = free_port_range(64)
        node = RayNode(name, num_cpus, temp_dir, self.root / f"{name}.log", None, head)  # type: ignore[arg-type]
        node.ip = self.subnet + str(len(self.nodes) + 1)
        args = [
            RAY, "start", "--block", "--disable-usage-stats", f"--node-ip-address={node.ip}",
            f"--num-cpus={num_cpus}", "--num-gpus=0",
            f"--resources={json.dumps({node.marker: 1, **(resources or {})})}",
            "--object-store-memory=150000000",
            f"--object-manager-port={object_manager}", f"--node-manager-port={node_manager}",
            f"--min-worker-port={low}", f"--max-worker-port={high}",
            f"--dashboard-agent-listen-port={agent_listen}", f"--dashboard-agent-grpc-port={agent_grpc}",
            f"--runtime-env-agent-port={runtime_env}", f"--metrics-export-port={metrics}",
            "--log-style=record", "--log-color=false",
        ]
        if head:
            (self.gcs_port,) = free_ports(1)
            args += [
                "--head", f"--port={self.gcs_port}", f"--temp-dir={temp_dir}",
                "--include-dashboard=false",
            ]
        else:
            args += [f"--address={self.address}"]
        env = self.env()
        if not head:
            # Under RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 `ray start` refuses to
            # join a cluster at all. At 1 it would rewrite "127.0.0.1" (only
            # that spelling) to the primary interface, so every node here has
            # an explicit address elsewhere in 127/8, which it keeps; probe()
            # reports each node's address so a test can check it.
            env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "1"
        with open(node.log_path, "ab") as log:
            node.supervisor = subprocess.Popen(
                [*self.node_prefix.get(name, []), sys.executable, "-c", _SUPERVISOR, *args],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=env, cwd=temp_dir, start_new_session=True,
            )
        self.nodes.append(node)
        return node

    def start_head(self, num_cpus: int, resources: dict | None = None) -> RayNode:
        node = self._start_retrying("head", num_cpus, True, resources, attempts=self.start_attempts)
        self.wait_for_nodes(1, timeout=120)
        return node

    def _start_retrying(self, name: str, num_cpus: int, head: bool, resources: dict | None,
                        attempts: int = 2) -> RayNode:
        """Start a node; on an overloaded machine `ray start` can give up on a slow GCS, so once more."""
        for attempt in range(attempts):
            node = self._start(name, num_cpus, head, resources)
            try:
                self._wait_started(node, timeout=180)
                return node
            except RuntimeError:
                if attempt == attempts - 1 or node.supervisor.poll() is None:
                    raise
                self._stop_node(node)
                self.nodes.remove(node)
                (node.log_path).rename(node.log_path.with_suffix(f".failed{attempt}.log"))
        raise AssertionError("unreachable")

    def _wait_started(self, node: RayNode, timeout: float) -> None:
        """Until `ray start` says the node is up; a node that died says why at once."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if node.supervisor.poll() is not None:
                raise RuntimeError(f"node {node.name} exited ({node.supervisor.returncode}):\n{node.log_tail()}")
            if "Ray runtime started" in node.log_tail(200_000):
                return
            time.sleep(0.5)
        raise TimeoutError(f"node {node.name} not started after {timeout:.0f}s:\n{node.log_tail()}")

    def add_worker(self, name: str, num_cpus: int, resources: dict | None = None) -> RayNode:
        node = self._start_retrying(name, num_cpus, False, resources, attempts=self.start_attempts)
        self.wait_for_nodes(len(self.nodes), timeout=120)
        return node

    def probe(self, *, wait_nodes: int = 0, timeout: float = 60, attempts: int = 3) -> dict:
        """Nodes and actors as the GCS sees them, read by a short-lived driver.

        A subprocess keeps this test process free of Ray state, and the GCS
        tables need no dashboard (the pinned install has no ray[default]).
        A loaded machine can make a GCS call time out, so it tries again.
        """
        for attempt in range(attempts):
            try:
                out = subprocess.run(
                    [sys.executable, "-c", _PROBE, self.address, str(wait_nodes), str(timeout)],
                    capture_output=True, text=True, env=self.env(), timeout=timeout + 120,
                )
            except subprocess.TimeoutExpired as exc:
                error = f"timed out after {exc.timeout:.0f}s"
            else:
                if out.returncode == 0:
                    break
                error = f"exit {out.returncode}:\n{out.stderr[-3000:]}"
        else:
            raise RuntimeError(f"probe of {self.address} failed {attempts} times; last: {error}")
        data = json.loads(out.stdout.strip().splitlines()[-1])
        names = {f"mor1e_test_node_{n.name}": n.name for n in self.nodes}
        for node in data["nodes"]:
            name = next((names[k] for k in node["resources"] if k in names), None)
            # The GCS drops a dead node's resources; its name is remembered from earlier probes.
            if name is not None:
                self.known_nodes[node["node_id"]] = name
            node["name"] = self.known_nodes.get(node["node_id"])
        data["node_names"] = {n["node_id"]: n["name"] for n in data["nodes"]}
        return data

    def wait_for_nodes(self, count: int, timeout: float) -> dict:
        for node in self.nodes:
            if node.supervisor.poll() is not None:
                raise RuntimeError(f"node {node.name} exited ({node.supervisor.returncode}):\n{node.log_tail()}")
        data = self.probe(wait_nodes=count, timeout=timeout)
        alive = [n for n in data["nodes"] if n["alive"]]
        if len(alive) < count:
            tails = "\n".join(f"--- {n.name}\n{n.log_tail(1500)}" for n in self.nodes)
            raise TimeoutError(f"{len(alive)} of {count} Ray nodes alive after {timeout:.0f}s\n{tails}")
        return data

    def kill_raylet(self, name: str) -> int:
        node = next(n for n in self.nodes if n.name == name)
        raylet = node.raylet()
        raylet.send_signal(signal.SIGKILL)
        return raylet.pid

    def _stop_node(self, node: RayNode, grace: float = 10) -> list[int]:
        """SIGTERM every process of the node, SIGKILL what is left after `grace` seconds."""
        killed = []
        procs = node.descendants()
        for proc in procs:
            try:
                proc.send_signal(signal.SIGTERM)
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(procs, timeout=grace)
        # The supervisor adopted orphans that may have appeared meanwhile.
        alive += [p for p in node.descendants() if p not in alive]
        for proc in alive:
            try:
                proc.kill()
                killed.append(proc.pid)
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=grace)
        try:
            node.supervisor.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            node.supervisor.kill()
            node.supervisor.wait()
        return killed

    def shutdown(self, grace: float = 10) -> list[int]:
        """Stop every process each node started, by pid; return the pids that needed SIGKILL."""
        killed = []
        for node in reversed(self.nodes):
            killed += self._stop_node(node, grace)
        if self.ray_root is not None and not self.leftover_pids():
            shutil.rmtree(self.ray_root, ignore_errors=True)
        return killed

    def leftover_pids(self) -> list[int]:
        pids = []
        for node in self.nodes:
            pids += [p.pid for p in node.descendants()]
            if node.supervisor.poll() is None:
                pids.append(node.supervisor.pid)
        return pids
