"""Every command in README.md's and docs/*.md's shell blocks still parses, so the docs can't drift from the CLI.

For each program the docs run (``python harness/search.py``, ``python -m harness.data show``, ...) its
``--help`` runs once, in a subprocess with this interpreter from the repository root, and must exit 0;
every ``--flag`` a documented command passes must appear in that help. README's ``harness/search.py``
commands run for real with ``--show-plan`` added (every profile check, no Ray, nothing written), into a
temporary results dir. Commands of other tools are skipped by the explicit list ``SKIPPED``.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# Commands of other tools, not this project's CLI: skipped, by their first word (after VAR=value assignments).
SKIPPED = {
    "ray": "needs a cluster (ray up/down/exec/dashboard/job/rsync-down)",
    "make": "runs the install, the study or the suite",
    "pip": "installs packages",
    "tensorboard": "a separate server",
    "mlflow": "a separate server",
    "optuna-dashboard": "a separate server",
}
# Programs whose --help does not exit 0 yet. An entry that now passes fails the test: remove it then.
KNOWN_BAD_HELP: dict[tuple[str, ...], str] = {}
# Modules whose first positional argument is a subcommand with its own --help.
SUBCOMMAND_MODULES = {"harness.data", "harness.methods", "harness.bench", "harness.stats"}
PYTHONS = {"python", "python3", "python3.11", ".venv/bin/python"}
SEPARATORS = {";", "&&", "||", "|", "&"}


def shell_blocks(text: str) -> list[str]:
    return re.findall(r"^```(?:bash|sh|shell)\n(.*?)^```", text, flags=re.M | re.S)


def commands(block: str) -> list[list[str]]:
    """The block's commands as argument lists: continuation lines joined, comments dropped, split at ; && | ."""
    out, pending = [], ""
    for line in block.replace("\\\n", " ").splitlines():
        pending = f"{pending}\n{line}" if pending else line
        lexer = shlex.shlex(pending, posix=True, punctuation_chars=";&|")
        lexer.whitespace_split = True
        lexer.commenters = "#"
        try:
            tokens = list(lexer)
        except ValueError:  # an open quote: the command goes on on the next line
            continue
        pending = ""
        current: list[str] = []
        for tok in tokens + [";"]:
            if tok in SEPARATORS:
                if current:
                    out.append(current)
                current = []
            else:
                current.append(tok)
    assert not pending, f"unterminated quote in a shell block: {pending[:80]!r}"
    return out


def program(argv: list[str]) -> tuple[tuple[str, ...], list[str]] | None:
    """(program key, its arguments) for this project's Python commands; None for a SKIPPED tool."""
    while argv and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", argv[0]):
        argv = argv[1:]
    head = argv[0]
    if head in SKIPPED:
        return None
    assert head in PYTHONS or head.endswith("/python"), (
        f"`{shlex.join(argv)}`: not a Python command of this project; check it or add {head!r} to SKIPPED")
    args = argv[1:]
    if args[0] == "-m":
        key, rest = ("-m", args[1]), args[2:]
        if args[1] in SUBCOMMAND_MODULES and rest and not rest[0].startswith("-"):
            key, rest = (*key, rest[0]), rest[1:]
    else:
        key, rest = (args[0],), args[1:]
    return key, rest


def documented() -> list[tuple[str, tuple[str, ...], list[str]]]:
    found = []
    for path in DOCS:
        for block in shell_blocks(path.read_text()):
            for argv in commands(block):
                parsed = program(argv)
                if parsed is not None:
                    found.append((path.relative_to(ROOT).as_posix(), *parsed))
    return found


def unknown_flags(rest: list[str], help_text: str) -> list[str]:
    """The --flags of a command that its program's --help does not name."""
    flags = [a.split("=", 1)[0] for a in rest if a.startswith("--") and a != "--"]
    return [f for f in flags if not re.search(rf"(?<![\w-]){re.escape(f)}(?![\w-])", help_text)]


def run(args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_shell_blocks_are_split_into_commands():
    block = ('make search   # a comment\n'
             'python harness/leaderboard.py --sql "\n  SELECT 1 -- a # inside quotes\n  FROM t"\n'
             'python harness/train.py --method mor1e \\\n    --steps 40 && ray down cluster.yaml\n')
    assert commands(block) == [
        ["make", "search"],
        ["python", "harness/leaderboard.py", "--sql", "\n  SELECT 1 -- a # inside quotes\n  FROM t"],
        ["python", "harness/train.py", "--method", "mor1e", "--steps", "40"],
        ["ray", "down", "cluster.yaml"],
    ]
    assert program(["OMP_WAIT_POLICY=PASSIVE", "python", "-m", "harness.bench", "scoring", "--examples", "48"]) == (
        ("-m", "harness.bench", "scoring"), ["--examples", "48"])
    assert program(["ray", "up", "cluster.yaml"]) is None
    help_text = "  --results-dir RESULTS_DIR  where\n  --show-plan   check\n"
    assert unknown_flags(["--show-plan", "--results-dir=x", "--show", "--results", "--", "--bogus"], help_text) == [
        "--show", "--results", "--bogus"]


def test_documented_commands_parse(tmp_path):
    found = documented()
    readme = [c for c in found if c[0] == "README.md"]
    assert any(key == ("harness/search.py",) for _, key, _ in readme), "README runs no study command"
    keys = sorted({key for _, key, _ in found})
    with ThreadPoolExecutor(max_workers=4) as pool:
        helps = dict(zip(keys, pool.map(lambda k: run([*k, "--help"]), keys)))
        # README's study commands, for real: --show-plan runs every check, starts no Ray and writes nothing.
        plans = {}
        for i, (_, key, rest) in enumerate(c for c in readme if c[1] == ("harness/search.py",)):
            args = [a for a in rest if a != "--show-plan"]
            out = tmp_path / f"plan{i}"
            plans[(shlex.join(rest), out)] = pool.submit(run, [*key, *args, "--show-plan", "--results-dir", str(out)])

    problems = []
    for key, proc in helps.items():
        name = " ".join(key)
        if key in KNOWN_BAD_HELP:
            if proc.returncode == 0:
                problems.append(f"`{name} --help` exits 0 now: remove it from KNOWN_BAD_HELP")
        elif proc.returncode != 0:
            problems.append(f"`{name} --help` exited {proc.returncode}: {(proc.stderr or proc.stdout)[-300:]}")
    for doc, key, rest in found:
        if key in KNOWN_BAD_HELP or helps[key].returncode != 0:
            continue
        for flag in unknown_flags(rest, helps[key].stdout):
            problems.append(f"{doc}: `{' '.join(key)}` has no option {flag} (documented: {shlex.join(rest)})")
    for (command, out), future in plans.items():
        proc = future.result()
        if proc.returncode != 0:
            problems.append(f"README.md: `harness/search.py {command} --show-plan` exited {proc.returncode}: "
                            f"{(proc.stderr or proc.stdout)[-300:]}")
        elif "parameter band" not in proc.stdout or "sha256" not in proc.stdout:
            problems.append(f"README.md: `harness/search.py {command} --show-plan` printed no plan: {proc.stdout[-300:]}")
        if out.exists() and any(out.iterdir()):
            problems.append(f"README.md: `harness/search.py {command} --show-plan` wrote {sorted(out.iterdir())}")
    assert not problems, "\n".join(problems)
