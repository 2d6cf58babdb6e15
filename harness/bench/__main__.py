"""``python -m harness.bench NAME [ARGS]`` runs the benchmark module ``harness.bench.NAME``."""

import ast
import importlib
import importlib.util
import pkgutil
import sys

import harness.bench

EPILOG = """examples:
  python -m harness.bench adapters --dtype fp32           one training step of each method, LoRA's as the unit
  python -m harness.bench scoring --examples 96           batched option scoring against one-token generation
  python -m harness.bench trial --steps 4 --workers 1,2   one short Ray Train trial at ZeRO-0/2/3
  python -m harness.bench NAME --help                     a benchmark's own options and defaults

Each prints a markdown table on stdout and writes nothing else; docs/benchmarks.md holds the
tables measured so far, with their date, commit, CPU and precision."""


def _names() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(harness.bench.__path__) if not m.name.startswith("_"))


def _summary(name: str) -> str:
    """The first line of a benchmark's docstring, read without importing it (and torch)."""
    with open(importlib.util.find_spec(f"harness.bench.{name}").origin) as fh:
        doc = ast.get_docstring(ast.parse(fh.read())) or ""
    return doc.splitlines()[0] if doc else ""


def _help() -> str:
    names = _names()
    width = max(map(len, names))
    lines = [f"usage: python -m harness.bench {{{','.join(names)}}} [ARGS]", "",
             "Benchmarks of the harness; each prints a markdown table.", "", "benchmarks:"]
    lines += [f"  {n:<{width}}  {_summary(n)}" for n in names]
    return "\n".join(lines) + "\n\n" + EPILOG


def main(argv: list[str]) -> int:
    names = _names()
    if argv and argv[0] in ("-h", "--help"):
        print(_help())
        return 0
    if not argv or argv[0] not in names:
        print(f"usage: python -m harness.bench {{{','.join(names)}}} [ARGS] (--help: what each one measures)",
              file=sys.stderr)
        return 2
    module = importlib.import_module(f"harness.bench.{argv[0]}")
    return module.main(argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
