"""BIG-bench's multiple-choice JSON tasks as real offline datasets: ``bigbench_<task>``.

The task files come from the ``bigbench==1.0.0`` source distribution on PyPI (Apache-2.0),
which is downloaded, never installed (installing it would pull tensorflow, t5, seqio and pinned
transformers). ``python -m harness.data fetch bigbench`` checks its sha256 and extracts only the
chosen tasks' ``task.json`` files into the model cache (``$MOR1E_CACHE/bigbench-1.0.0/``), in one
streaming pass over the archive. Every task file carries BIG-bench's canary string, asking that
the data never appear in training corpora or be published: never commit one.

Names: ``bigbench_<task>`` for a task whose ``task.json`` holds its examples, and
``bigbench_<task>__<subtask>`` for one subtask of a task that has subtasks (the subtask's folder
name), e.g. ``bigbench_goal_step_wikihow__step_inference``.

How a task file becomes examples (docs/datasets.md, "BIG-bench"):

- rows are the examples with ``target_scores`` (the multiple-choice ones); the options are its
  keys and the gold is its highest score. Exact duplicate examples are dropped (BIG-bench's own
  rule, with keys sorted); a row whose highest score is shared by two options is refused (a tie
  has no gold), as is one with fewer than two options.
- prompts follow BIG-bench's zero-shot format (``bigbench/api/json_task.py``): ``task_prefix``
  + ``example_input_prefix`` (default ``"\\nQ: "``) + input, the options after ``choice_prefix``
  (default ``"\\n  choice: "``) when ``append_choices_to_input`` (default true), then
  ``example_output_prefix`` (default ``"\\nA: "``); the option text is the continuation. That is
  the ``cloze`` format. The ``letter`` format lists the options as ``A. ...`` instead, after the
  task prefix, the input and the task's own output prefix (when it sets one), and ends in
  ``Answer:``.
- options are shuffled per row: sorted by sha256 of (SHUFFLE_SEED, dataset, input, option). The
  order is fixed, needs no RNG, and is independent of the file's key order, which in some tasks
  puts the gold in a fixed place (first in physics, third in timedial).
- BIG-bench ships no train split: ``validation`` (the report split) is a seeded share of the
  rows, made of whole units of meaning (rows that share a context, see GROUP_RULES), and
  ``train`` is the rest, from which the selection split is carved by the usual grouped carve
  (harness.data.loading). Rows of each split come in a fixed pseudo-random order (their group's
  hash), so the first N (``train_limit``, ``report_limit``, ``--limit``) are a sample of it.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import logging
import os
import re
import shutil
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

from harness.data.adapters import LETTERS, SUITES, Adapter, DataError, Parsed, RowError
from harness.data.groups import group_rows

log = logging.getLogger("harness.data")

PREFIX = "bigbench_"
SUBTASK_SEP = "__"
SDIST = "bigbench==1.0.0"
SDIST_FILE = "bigbench-1.0.0.tar.gz"
SDIST_SHA256 = "1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2"
SDIST_BYTES = 358_249_635
TASKS_IN_SDIST = "bigbench-1.0.0/bigbench/benchmark_tasks/"
CACHE_FOLDER = "bigbench-1.0.0"
DEFAULT_INDEX = "https://pypi.org/simple"

MAX_OPTIONS = len(LETTERS)  # the letter format names at most this many options; cloze keeps the same cap
SHUFFLE_SEED = 0
SPLIT_SEED = 0
REPORT_FRACTION = 0.3  # the report split's share of a task's rows, capped: the rest trains
REPORT_CAP = 1000
SPLITS = ("train", "validation")

# BIG-bench's defaults (json_task.py) for what a task file may set.
DEFAULT_INPUT_PREFIX = "\nQ: "
DEFAULT_OUTPUT_PREFIX = "\nA: "
DEFAULT_CHOICE_PREFIX = "\n  choice: "
TASK_FIELDS = ("task_prefix", "example_input_prefix", "example_output_prefix", "choice_prefix",
               "append_choices_to_input")

# The suite `datasets: bigbench`: BIG-bench tasks that together cover the task types of the paper's
# 14 datasets (the dataset each stands for; docs/datasets.md says why).
SUITE: dict[str, str] = {
    "bigbench_strategyqa": "boolq",
    "bigbench_causal_judgment": "multirc",
    "bigbench_metaphor_boolean": "wic",
    "bigbench_winowhy": "wsc",
    "bigbench_vitaminc_fact_verification": "rte",
    "bigbench_goal_step_wikihow__step_ordering": "copa",
    "bigbench_timedial": "winogrande",
    "bigbench_disambiguation_qa": "winogrande",
    "bigbench_presuppositions_as_nli": "anli",
    "bigbench_goal_step_wikihow__step_inference": "hellaswag / piqa",
    "bigbench_social_iqa": "siqa",
    "bigbench_physics": "openbookqa / arc",
    "bigbench_elementary_math_qa__question_only": "mmlu",
    "bigbench_abstract_narrative_understanding__4_distractors": "commonsense_qa",
}

assert tuple(SUITE) == SUITES["bigbench"]

# Units of meaning: a regex whose first group, searched in the whitespace-collapsed input, names
# the context rows share; rows with equal contexts stay on one side of every split. Any other task
# (and a row the regex misses): the collapsed input itself, so rows that repeat an input with other
# options stay together.
_BEFORE_LAST_QUESTION = r"^(.*[.!?\"'])\s+[^.!?]*\?$"
GROUP_RULES: dict[str, str] = {
    "social_iqa": _BEFORE_LAST_QUESTION,  # the situation, before its question
    "causal_judgment": _BEFORE_LAST_QUESTION,  # the story, before its question
    "winowhy": r"^(.*?) The '[^']*' refers to",  # the Winograd sentence, before each offered reason
    "vitaminc_fact_verification": r"^(.*?) Claim:",  # the Wikipedia evidence, before each claim
    "presuppositions_as_nli": r"^Sentence 1: (.*?) Sentence 2:",  # the premise
    "metaphor_boolean": r"^(.*?) <-->",  # the metaphor, before each paraphrase
    "timedial": r"Context: (.{0,60})",  # the dialogue's opening: one dialogue, several masked spans
    "goal_step_wikihow__step_inference": r"^The most reasonable step of '(.*)' is",  # the goal
    "goal_step_wikihow__step_ordering": r"^In order to '(.*?)', one can",  # the goal
    "goal_step_wikihow__goal_inference": r"^The most reasonable goal of '(.*)' is",  # the step
}

_NAME = re.compile(r"^[a-z0-9][a-z0-9_]*$")


# ------------------------------------------------------------------ names and places

def is_bigbench(dataset: str) -> bool:
    return isinstance(dataset, str) and dataset.startswith(PREFIX)


def task_path(dataset: str) -> tuple[str, str | None]:
    """``(task, subtask or None)`` of a ``bigbench_...`` name; DataError (one line) if malformed."""
    rest = dataset[len(PREFIX):] if is_bigbench(dataset) else ""
    task, _, subtask = rest.partition(SUBTASK_SEP)
    if not _NAME.match(task) or task.endswith("_") or (subtask and not _NAME.match(subtask)) \
            or (_ and not subtask):
        raise DataError(f"{dataset!r} is not a BIG-bench dataset name: expected bigbench_<task> or "
                        f"bigbench_<task>__<subtask> (lower-case letters, digits, '_')")
    return task, subtask or None


def check_name(dataset: str) -> None:
    task_path(dataset)


def cache_root(cache: str | os.PathLike | None = None) -> Path:
    """Where the task files live: <cache>/bigbench-1.0.0. The cache is harness.models.cache_dir()
    (``$MOR1E_CACHE``, else ``$XDG_CACHE_HOME/mor1e``, else ``~/.cache/mor1e``), found here
    without importing torch."""
    if cache is None:
        if os.environ.get("MOR1E_CACHE"):
            cache = os.environ["MOR1E_CACHE"]
        else:
            base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
            cache = os.path.join(base, "mor1e")
    return Path(cache) / CACHE_FOLDER


def task_file(dataset: str, cache: str | os.PathLike | None = None) -> Path:
    task, subtask = task_path(dataset)
    root = cache_root(cache) / task
    return root / subtask / "task.json" if subtask else root / "task.json"


# ------------------------------------------------------------------ fetching

@dataclass
class FetchReport:
    """What one fetch did: the tasks it extracted (none when all were there), bytes and seconds."""

    root: Path
    extracted: tuple[str, ...]
    downloaded_bytes: int = 0
    extracted_bytes: int = 0
    seconds: float = 0.0
    source: str = ""

    def line(self) -> str:
        if not self.extracted:
            return f"BIG-bench task files already in {self.root}: nothing to fetch"
        return (f"fetched {len(self.extracted)} BIG-bench task(s) ({self.extracted_bytes / 1e6:.1f} MB of task.json) "
                f"from {self.source} ({self.downloaded_bytes / 1e6:.0f} MB, sha256 checked) in {self.seconds:.1f} s "
                f"into {self.root}")


def suite_tasks() -> tuple[str, ...]:
    return tuple(SUITE)


def _wanted(datasets) -> tuple[dict[str, list[str | None]], list[str]]:
    """({task: [subtask or None, ...]}, names) for dataset names or bare task names."""
    wanted: dict[str, list[str | None]] = {}
    names = []
    for name in datasets:
        name = name if is_bigbench(name) else PREFIX + name
        task, subtask = task_path(name)
        wanted.setdefault(task, []).append(subtask)
        names.append(name)
    return wanted, names


def missing_tasks(datasets, cache: str | os.PathLike | None = None) -> list[str]:
    """The top-level task folders of ``datasets`` not yet in the cache (each is renamed in whole)."""
    wanted, _ = _wanted(datasets)
    root = cache_root(cache)
    return [t for t in wanted if not (root / t).is_dir()]


class _HashingReader(io.RawIOBase):
    """A read-only stream that hashes and counts every byte read through it."""

    def __init__(self, stream):
        self.stream, self.sha256, self.n = stream, hashlib.sha256(), 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self.stream.read(len(buffer))
        self.sha256.update(data)
        self.n += len(data)
        buffer[:len(data)] = data
        return len(data)

    def drain(self) -> None:
        while self.read(1 << 20):
            pass


def sdist_url(index_url: str | None = None, timeout: float = 30.0) -> str:
    """The download URL of bigbench-1.0.0.tar.gz on a package index (PEP 691 JSON or PEP 503 HTML).

    ``pip download`` cannot fetch this sdist: pip prepares its metadata first, which runs its
    setup.py, and refuses the result because the package declares a direct URL dependency; so the
    index is read directly. The sha256 check makes the source irrelevant to what is extracted.
    """
    index = (index_url or os.environ.get("PIP_INDEX_URL") or DEFAULT_INDEX).rstrip("/")
    page = f"{index}/bigbench/"
    request = urllib.request.Request(page, headers={
        "Accept": "application/vnd.pypi.simple.v1+json, text/html;q=0.1"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        body = response.read().decode("utf-8", errors="replace")
        kind = response.headers.get("Content-Type", "")
    if "json" in kind:
        links = [(f.get("filename", ""), f.get("url", "")) for f in json.loads(body).get("files", [])]
    else:
        links = [(Path(urllib.parse.urlparse(h).path).name, h) for h in re.findall(r'href="([^"]+)"', body)]
    for filename, url in links:
        if filename == SDIST_FILE:
            return urllib.parse.urljoin(page, url.split("#", 1)[0])
    raise DataError(f"{page} lists no {SDIST_FILE}")


def _open_source(source: str, timeout: float):
    if "://" not in source:
        return open(source, "rb")
    return urllib.request.urlopen(source, timeout=timeout)


def fetch(datasets=None, *, source: str | None = None, sha256: str = SDIST_SHA256,
          cache: str | os.PathLike | None = None, index_url: str | None = None,
          timeout: float = 60.0) -> FetchReport:
    """Extract the task files of ``datasets`` (dataset or task names; default: the suite) into the cache.

    ``source``: a path or URL of the sdist (default: found on the package index). Nothing is done
    when every task is already there. Errors (offline, checksum mismatch, an unknown task) raise
    DataError with one line and leave the cache as it was: files go to a temp dir beside it, and
    each task's folder is renamed into place only once the whole archive has been read and checked.
    """
    wanted, names = _wanted(datasets if datasets is not None else SUITE)
    root = cache_root(cache)
    todo = missing_tasks(names, cache)
    if not todo:
        _check_subtasks(wanted, root)
        return FetchReport(root, ())
    start = time.time()
    try:
        if source is None:
            where = index_url or os.environ.get("PIP_INDEX_URL") or DEFAULT_INDEX
            try:
                source = sdist_url(index_url, timeout=timeout)
            except (OSError, ValueError) as exc:  # URLError is an OSError; a bad JSON page a ValueError
                raise DataError(f"cannot find {SDIST} on the package index {where} ({_reason(exc)}); offline? "
                                f"copy {SDIST_FILE} here and pass --sdist PATH") from None
        root.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".bigbench-fetch-", dir=root.parent))
    except OSError as exc:
        raise DataError(f"cannot write to the cache {root.parent}: {_reason(exc)}") from None
    try:
        try:
            with _open_source(source, timeout) as stream:
                reader = _HashingReader(stream)
                extracted_bytes = _extract(reader, set(todo), tmp)
                reader.drain()
        except (OSError, EOFError, tarfile.TarError, zlib.error) as exc:
            raise DataError(f"cannot read {SDIST} from {source} ({_reason(exc)}); nothing written") from None
        if reader.sha256.hexdigest() != sha256:
            raise DataError(f"checksum mismatch for {source}: sha256 {reader.sha256.hexdigest()}, expected "
                            f"{sha256}; nothing written")
        unknown = [t for t in todo if not (tmp / t).is_dir()]
        if unknown:
            raise DataError(f"unknown BIG-bench task {', '.join(map(repr, unknown))}: {SDIST} has no "
                            f"benchmark_tasks/<task>/task.json of that name (programmatic tasks have none); "
                            "nothing written")
        _check_subtasks(wanted, tmp, only=todo)
        root.mkdir(parents=True, exist_ok=True)
        for task in todo:
            try:
                os.rename(tmp / task, root / task)
            except OSError:
                if not (root / task).is_dir():  # else another fetch put it there first
                    raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return FetchReport(root, tuple(todo), downloaded_bytes=reader.n, extracted_bytes=extracted_bytes,
                       seconds=time.time() - start, source=source)


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or exc
    return " ".join(str(reason).split()) or type(exc).__name__


def _extract(reader: _HashingReader, tasks: set[str], out: Path) -> int:
    """One streaming pass: write benchmark_tasks/<task>/task.json and <task>/<sub>/task.json of
    ``tasks`` under ``out``; the target paths are built from checked names, never from the archive."""
    n_bytes = 0
    with tarfile.open(fileobj=io.BufferedReader(reader, 1 << 20), mode="r|gz") as archive:
        for member in archive:
            if not member.isfile() or not member.name.startswith(TASKS_IN_SDIST):
                continue
            parts = member.name[len(TASKS_IN_SDIST):].split("/")
            if parts[-1] != "task.json" or len(parts) not in (2, 3) or parts[0] not in tasks:
                continue
            if any(p in ("", ".", "..") or "\\" in p for p in parts):
                continue
            data = archive.extractfile(member).read()
            target = out.joinpath(*parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            n_bytes += len(data)
    return n_bytes


def _check_subtasks(wanted: dict[str, list[str | None]], root: Path, only=None) -> None:
    for task, subtasks in wanted.items():
        if only is not None and task not in only:
            continue
        for subtask in subtasks:
            if subtask is not None and not (root / task / subtask / "task.json").is_file():
                raise DataError(f"unknown subtask {subtask!r} of BIG-bench task {task!r}; it has: "
                                f"{' '.join(_subtasks(root / task)) or 'none'}")


def _subtasks(folder: Path) -> list[str]:
    return sorted(p.parent.name for p in folder.glob("*/task.json"))


def ensure_fetched(datasets, cache: str | os.PathLike | None = None) -> FetchReport | None:
    """Fetch the task files of the BIG-bench datasets among ``datasets``; None when there are none."""
    names = [d for d in datasets if is_bigbench(d)]
    return fetch(names, cache=cache) if names else None


# ------------------------------------------------------------------ reading a task

def _collapse(text: str) -> str:
    return " ".join(text.split())


def _group(dataset: str, text: str) -> str:
    task, subtask = task_path(dataset)
    rule = GROUP_RULES.get(task + (SUBTASK_SEP + subtask if subtask else ""))
    collapsed = _collapse(text)
    match = re.search(rule, collapsed) if rule else None
    return match.group(1) if match and match.group(1) else collapsed


@dataclass
class TaskRows:
    """The multiple-choice rows of one task file, split; and what was dropped on the way."""

    splits: dict[str, list[tuple[int, dict]]]
    n_examples: int
    n_duplicates: int
    n_refused: int


def read_task(dataset: str, cache: str | os.PathLike | None = None) -> TaskRows:
    """Rows of a fetched task file, each a dict in BIG-bench's example schema plus the task's own
    prefix fields and its ``group``, keyed by the example's 1-based position in the file.

    DataError (one line, naming the task): not fetched, a task with subtasks named without one,
    no multiple-choice examples, or more options than the scorer supports.
    """
    path = task_file(dataset, cache)
    if not path.is_file():
        task, subtask = task_path(dataset)
        folder = cache_root(cache) / task
        if subtask is not None and folder.is_dir():
            raise DataError(f"{dataset}: BIG-bench task {task!r} has no subtask {subtask!r}; it has: "
                            f"{' '.join(_subtasks(folder)) or 'none'}")
        raise DataError(f"{dataset}: {path} not found; fetch it with `python -m harness.data fetch bigbench "
                        f"--tasks {dataset}` (the default fetch gets the suite's tasks)")
    stat = path.stat()
    return _read_task(dataset, str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=32)
def _read_task(dataset: str, path: str, _mtime_ns: int, _size: int) -> TaskRows:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError) as exc:
        raise DataError(f"{dataset}: cannot read {path}: {_reason(exc)}") from None
    if not isinstance(data, dict):
        raise DataError(f"{dataset}: {path} is not a BIG-bench task (not a JSON object)")
    if "examples" not in data:
        subtasks = _subtasks(Path(path).parent)
        if subtasks:
            raise DataError(f"{dataset}: this BIG-bench task has subtasks; name one: "
                            + " ".join(f"{dataset}{SUBTASK_SEP}{s}" for s in subtasks))
        raise DataError(f"{dataset}: {path} holds no examples")
    examples = data["examples"] if isinstance(data["examples"], list) else []
    fields = {k: data[k] for k in TASK_FIELDS if k in data}
    seen: set[str] = set()
    rows: list[tuple[int, dict]] = []
    n_duplicates = n_refused = widest = 0
    for number, example in enumerate(examples, start=1):
        if not isinstance(example, dict) or not isinstance(example.get("target_scores"), dict):
            continue  # a generative example
        key = json.dumps(example, sort_keys=True, ensure_ascii=False, default=str)
        if key in seen:
            n_duplicates += 1
            continue
        seen.add(key)
        row = {"input": example.get("input"), "target_scores": example["target_scores"], **fields}
        try:
            _options(row)
        except RowError:
            n_refused += 1
            continue
        widest = max(widest, len(row["target_scores"]))
        row["group"] = _group(dataset, row["input"])
        rows.append((number, row))
    if not rows:
        raise DataError(f"{dataset}: no usable multiple-choice examples (none with target_scores, a clear "
                        f"best option and at least two options) in {path}")
    if widest > MAX_OPTIONS:
        raise DataError(f"{dataset}: rows with {widest} options; the scorer supports at most {MAX_OPTIONS}")
    if n_duplicates or n_refused:
        log.info("%s: dropped %d exact duplicate example(s) and refused %d (tied best score or < 2 options) "
                 "of %d", dataset, n_duplicates, n_refused, len(examples))
    return TaskRows(_split(dataset, rows), len(examples), n_duplicates, n_refused)


def _rank(dataset: str, key: str | None, first: int) -> bytes:
    name = key if key is not None else f"\x00row{first}"
    return hashlib.sha256(f"{SPLIT_SEED}:{dataset}:{name}".encode()).digest()


def report_size(n_rows: int) -> int:
    """The report split's target size for a task of ``n_rows`` rows (whole groups may leave it short)."""
    return min(REPORT_CAP, int(n_rows * REPORT_FRACTION))


def _split(dataset: str, rows: list[tuple[int, dict]]) -> dict[str, list[tuple[int, dict]]]:
    """Groups in hash order fill the report split while they fit; the rest train."""
    raws = [raw for _, raw in rows]
    groups = sorted(group_rows(dataset, raws), key=lambda g: _rank(dataset, raws[g[0]].get("group"), g[0]))
    target = report_size(len(rows))
    report: list[tuple[int, dict]] = []
    train: list[tuple[int, dict]] = []
    for group in groups:
        side = report if len(report) + len(group) <= target else train
        side.extend(rows[i] for i in group)
    return {"train": train, "validation": report}


def read_split(dataset: str, split: str, cache: str | os.PathLike | None = None) -> list[tuple[int, dict]]:
    """``[(example number, row)]`` of one split (``train`` or ``validation``) of a fetched task."""
    if split not in SPLITS:
        raise DataError(f"{dataset} has no split {split!r}; expected one of: {' '.join(SPLITS)}")
    return list(read_task(dataset, cache).splits[split])


# ------------------------------------------------------------------ one row -> Parsed

def _options(row: dict) -> tuple[list[str], int]:
    """(option texts in file order, gold index): RowError for a malformed row or a tie."""
    text = row.get("input") if isinstance(row, dict) else None
    if not isinstance(text, str) or not text.strip():
        raise RowError("field 'input' is not a non-empty string")
    scores = row.get("target_scores")
    if not isinstance(scores, dict) or len(scores) < 2:
        raise RowError("field 'target_scores' is not a mapping of at least two options")
    options, values = [], []
    for option, score in scores.items():
        if not isinstance(option, str) or not option.strip():
            raise RowError("an option in 'target_scores' is empty")
        if isinstance(score, bool) or not isinstance(score, (int, float)):
            raise RowError(f"target score {score!r} of option {option!r} is not a number")
        options.append(_collapse(option))
        values.append(float(score))
    if len(set(options)) != len(options):
        raise RowError("two options of 'target_scores' are the same text")
    best = max(values)
    if values.count(best) > 1:
        raise RowError(f"tie: {values.count(best)} options share the highest target score {best:g}")
    return options, values.index(best)


def shuffle_key(dataset: str, text: str, option: str) -> bytes:
    return hashlib.sha256(f"{SHUFFLE_SEED}\x1f{dataset}\x1f{text}\x1f{option}".encode()).digest()


def convert(dataset: str, row: dict) -> Parsed:
    """One row (BIG-bench's example schema plus the task's prefix fields) as a Parsed record."""
    options, gold = _options(row)
    if len(options) > MAX_OPTIONS:
        raise RowError(f"{len(options)} options; the scorer supports at most {MAX_OPTIONS}")
    text = row["input"]
    order = sorted(range(len(options)), key=lambda i: shuffle_key(dataset, text, options[i]))
    choices = tuple(options[i] for i in order)

    def field(name: str, default):
        value = row.get(name, default)
        if name == "append_choices_to_input":
            if not isinstance(value, bool):
                raise RowError(f"field {name!r} is not true or false")
        elif not isinstance(value, str):
            raise RowError(f"field {name!r} is not a string")
        return value

    task_prefix = field("task_prefix", "")
    input_prefix = field("example_input_prefix", DEFAULT_INPUT_PREFIX)
    own_output_prefix = row.get("example_output_prefix")
    output_prefix = field("example_output_prefix", DEFAULT_OUTPUT_PREFIX)
    choice_prefix = field("choice_prefix", DEFAULT_CHOICE_PREFIX)
    stem = task_prefix + input_prefix + text
    # letter: the task's own output prefix (e.g. "True, False, or Neither?") stays above the letters;
    # BIG-bench's default "\nA: " is the answer cue that "Answer:" replaces.
    question = (stem + (own_output_prefix if own_output_prefix is not None else "")).strip()
    listed = choice_prefix + choice_prefix.join(choices) if field("append_choices_to_input", True) else ""
    cloze = (stem + listed + output_prefix).strip()
    return Parsed(question, choices, order.index(gold), _collapse(text), cloze_prompt=cloze)


def adapter(dataset: str) -> Adapter:
    """The adapter of ``bigbench_<task>[__<subtask>]`` (names checked, files not read)."""
    task, subtask = task_path(dataset)
    config = task + ("/" + subtask if subtask else "")
    return Adapter(dataset, SDIST, config, SPLITS, "train", "validation",
                   functools.partial(convert, dataset))


def provenance(dataset: str, cache: str | os.PathLike | None = None) -> dict:
    """``data_source`` entry of a BIG-bench dataset: the sdist, the task file and its sha256."""
    task, subtask = task_path(dataset)
    path = task_file(dataset, cache)
    digest = None
    if path.is_file():
        from harness.provenance import file_sha256

        digest = file_sha256(path)
    return {"sdist": SDIST, "sdist_sha256": SDIST_SHA256,
            "task_file": f"{task}/{subtask + '/' if subtask else ''}task.json", "task_file_sha256": digest,
            "splits": list(SPLITS), "report_fraction": REPORT_FRACTION, "report_cap": REPORT_CAP,
            "split_seed": SPLIT_SEED, "shuffle_seed": SHUFFLE_SEED}


