"""``python -m harness.bench NAME [ARGS]`` runs the benchmark module ``harness.bench.NAME``."""

import importlib
import pkgutil
import sys

import harness.bench


def main(argv: list[str]) -> int:
    names = sorted(m.name for m in pkgutil.iter_modules(harness.bench.__path__) if not m.name.startswith("_"))
    if not argv or argv[0] not in names:
        print(f"usage: python -m harness.bench {{{','.join(names)}}} [ARGS]", file=sys.stderr)
        return 2
    module = importlib.import_module(f"harness.bench.{argv[0]}")
    return module.main(argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
