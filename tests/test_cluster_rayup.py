"""`ray up` / `ray down` with cluster.local.yaml on this machine, through a real sshd on loopback.

The sshd the test starts listens on one random 127/8 address only, accepts
root with a throwaway key only, and runs in its own PID and mount namespaces:
 - PID: `ray down` runs a bare `ray stop` on the head, which would kill every
   Ray on a shared machine; inside the namespace it sees only this cluster.
   Killing the namespace's first process (sshd) ends everything in it.
 - mount: root's home is an overlay (writes such as ~/ray_bootstrap_key.pem go
   to the test's dir) holding ~/mor1e -> this checkout, so the shipped
   cluster.local.yaml runs unchanged; /tmp/ray is private to the cluster.
The rendered copy of cluster.local.yaml changes only the cluster name, the
head address, the key and the ports.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from multinode import free_port_range, free_ports
from test_cluster_multinode import write_profile

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
RAY = str(Path(sys.executable).parent / "ray")
APT_ENV = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}


def _sshd_binary() -> str | None:
    return shutil.which("sshd") or next((p for p in ("/usr/sbin/sshd",) if os.path.exists(p)), None)


def _sshd_pids() -> set[int]:
    pids = set()
    for proc in psutil.process_iter(["name"]):
        if proc.info["name"] == "sshd":
            pids.add(proc.pid)
    return pids


def ensure_openssh() -> str | None:
    """Install openssh-server and rsync if missing; the reason they are unavailable, or None."""
    if _sshd_binary() and shutil.which("rsync") and shutil.which("ssh"):
        return None
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return "openssh-server/rsync missing and cannot be installed here (needs root and apt-get)"
    before = _sshd_pids()
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "openssh-server", "openssh-client", "rsync"]
    out = subprocess.run(install, env=APT_ENV, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:  # a fresh machine has no package lists yet
        subprocess.run(["apt-get", "update", "-q"], env=APT_ENV, capture_output=True, timeout=600)
        out = subprocess.run(install, env=APT_ENV, capture_output=True, text=True, timeout=600)
    # Where the package's own service got started, stop it: no sshd on 0.0.0.0 stays behind.
    for pid in _sshd_pids() - before:
        with contextlib.suppress(psutil.NoSuchProcess):
            psutil.Process(pid).terminate()
    if out.returncode != 0 or not _sshd_binary():
        tail = (out.stderr or out.stdout).strip().splitlines()[-1:] or ["?"]
        return f"apt-get install openssh-server failed: {tail[0]}"
    return None


def _free_loopback_ip() -> str:
    for _ in range(50):
        ip = f"127.{secrets.randbelow(254) + 1}.{secrets.randbelow(254) + 1}.{secrets.randbelow(253) + 2}"
        with socket.socket() as s:
            try:
                s.bind((ip, 22))
            except OSError:
                continue
        return ip
    raise RuntimeError("no free 127/8 address with port 22 free")


def _in_namespace_of(pid: int) -> list[psutil.Process]:
    target = os.readlink(f"/proc/{pid}/ns/pid")
    out = []
    for proc in psutil.process_iter():
        try:
            if os.readlink(f"/proc/{proc.pid}/ns/pid") == target:
                out.append(proc)
        except OSError:
            continue
    return out


@pytest.fixture
def sshd(tmp_path):
    reason = ensure_openssh()
    if reason:
        pytest.skip(reason)
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare(1) to give the test sshd its own PID and mount namespaces")

    d = tmp_path / "ssh"
    d.mkdir()
    for name in ("client_key", "host_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "mor1e-test", "-f", str(d / name)],
                       check=True)
    (d / "authorized_keys").write_text((d / "client_key.pub").read_text())
    ip = _free_loopback_ip()
    config = d / "sshd_config"
    config.write_text("\n".join([
        f"ListenAddress {ip}:22", f"HostKey {d / 'host_key'}", f"PidFile {d / 'sshd.pid'}",
        f"AuthorizedKeysFile {d / 'authorized_keys'}", "AllowUsers root", "PermitRootLogin prohibit-password",
        "PubkeyAuthentication yes", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
        "UsePAM no", "StrictModes no", "X11Forwarding no", "PrintMotd no", "",
    ]))
    upper, work, ray_tmp = tmp_path / "home-upper", tmp_path / "home-work", tmp_path / "ray-tmp"
    for p in (upper, work, ray_tmp):
        p.mkdir()
    (upper / "mor1e").symlink_to(REPO)
    Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # sshd's privilege-separation dir
    Path("/tmp/ray").mkdir(parents=True, exist_ok=True)   # the mount point for the private one
    inner = (f"mount -t overlay overlay -o lowerdir=/root,upperdir={upper},workdir={work} /root"
             f" && mount --bind {ray_tmp} /tmp/ray && exec {_sshd_binary()} -D -e -f {config}")
    log = open(tmp_path / "sshd.log", "wb")
    unshare = subprocess.Popen(
        ["unshare", "--pid", "--fork", "--kill-child", "--mount", "--mount-proc", "--propagation", "private",
         "sh", "-c", inner],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            if unshare.poll() is not None:
                pytest.skip(f"could not start an isolated sshd: {(tmp_path / 'sshd.log').read_text()[-500:]}")
            with socket.socket() as s:
                if s.connect_ex((ip, 22)) == 0:
                    break
            assert time.monotonic() < deadline, (tmp_path / "sshd.log").read_text()
            time.sleep(0.2)
        ns_init = psutil.Process(unshare.pid).children()[0].pid  # sshd, pid 1 of the namespace
        yield {"ip": ip, "key": d / "client_key", "ns_init": ns_init, "ray_tmp": ray_tmp}
    finally:
        # SIGKILL to the namespace's init takes every process in it down with it.
        for child in psutil.Process(unshare.pid).children() if unshare.poll() is None else []:
            child.kill()
        try:
            unshare.wait(timeout=30)
        except subprocess.TimeoutExpired:
            unshare.kill()
            unshare.wait()
        log.close()
        with socket.socket() as s:
            assert s.connect_ex((ip, 22)) != 0, "the test sshd is still listening"


def render(tmp_path: Path, ip: str, key: Path) -> tuple[Path, str, int]:
    """cluster.local.yaml with only the name, head address, key and ports filled in."""
    config = yaml.safe_load((REPO / "cluster.local.yaml").read_text())
    name = f"mor1e-test-{secrets.token_hex(4)}"
    gcs, dashboard, agent, metrics = free_ports(4)
    low, high = free_port_range(64)
    config["cluster_name"] = name
    config["provider"]["head_ip"] = ip
    config["auth"]["ssh_private_key"] = str(key)
    ports = (f" --dashboard-agent-listen-port={agent} --metrics-export-port={metrics}"
             f" --min-worker-port={low} --max-worker-port={high}")
    config["head_start_ray_commands"] = [
        c.replace("--port=6379", f"--port={gcs}").replace("--dashboard-port=8265", f"--dashboard-port={dashboard}")
        + (ports if "--head" in c else "")
        for c in config["head_start_ray_commands"]
    ]
    path = tmp_path / "cluster.local.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path, name, gcs


def ray_cli(*args: str, timeout: float, log: Path) -> tuple[int, str]:
    """Run the ray CLI, its output appended to `log` as it comes (a timeout keeps what was said)."""
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    start = log.stat().st_size if log.exists() else 0
    with open(log, "ab") as fh:
        fh.write(f"$ ray {' '.join(args)}\n".encode())
        fh.flush()
        proc = subprocess.Popen([RAY, *args], stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=REPO,
                                start_new_session=True)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            code = -1
    with open(log, "rb") as fh:
        fh.seek(start)
        return code, fh.read().decode(errors="replace")


def test_ray_up_submit_study_ray_down(sshd, tmp_path):
    started = time.monotonic()
    config, name, gcs_port = render(tmp_path, sshd["ip"], sshd["key"])
    log = tmp_path / "ray-cli.log"

    def tail() -> str:
        return log.read_text(errors="replace")[-5000:]

    try:
        code, _ = ray_cli("up", "-y", "--no-config-cache", str(config), timeout=300, log=log)
        assert code == 0, tail()
        up_s = time.monotonic() - started
        ray_procs = [p for p in _in_namespace_of(sshd["ns_init"]) if p.name() in ("raylet", "gcs_server")]
        assert {p.name() for p in ray_procs} == {"raylet", "gcs_server"}, "the head runs inside the namespace"

        results = tmp_path / "results"
        profile = write_profile(tmp_path / "profile.yaml", study="rayup", trials=1, concurrent=1)
        study = (f"export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 && cd ~/mor1e && .venv/bin/python harness/search.py"
                 f" --address auto --config {profile} --results-dir {results}")
        code, output = ray_cli("exec", str(config), study, timeout=600, log=log)
        assert code == 0, tail()
        assert "study rayup finished" in output, tail()
        # The study joined the cluster `ray up` started, not an embedded Ray of its own.
        sessions = list(sshd["ray_tmp"].glob("session_*/logs"))
        assert sessions and any(f.name.startswith(("job-driver", "python-core-driver"))
                                for s in sessions for f in s.iterdir()), "no driver log in the cluster's session"

        from harness.records import read_rows

        rows = read_rows(results / "leaderboard.parquet").to_pandas()
        rows = rows[rows.study == "rayup"]
        assert not rows.empty and (rows.status == "completed").any(), rows[["trial_id", "status", "status_reason"]]
        assert (rows.role == "report").any()
        study_s = time.monotonic() - started - up_s
    finally:
        down, _ = ray_cli("down", "-y", str(config), timeout=180, log=log)
        for suffix in (".lock", ".state"):  # the local provider's bookkeeping on this side
            Path(f"/tmp/ray/cluster-{name}{suffix}").unlink(missing_ok=True)
    assert down == 0, tail()
    left = [p.name() for p in _in_namespace_of(sshd["ns_init"]) if p.name() in ("raylet", "gcs_server")]
    assert not left, f"ray down left {left} running"
    print(f"\nray up: head up in {up_s:.0f}s; one-trial study via `ray exec` in {study_s:.0f}s; "
          f"ray down ok; total {time.monotonic() - started:.0f}s")
