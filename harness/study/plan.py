"""The plan of a study: a profile turned into everything a study needs, checked before Ray starts.

Owns the ``Plan`` (profile, study name, results and data dirs, parameter band, profile hash),
every input check that ``python harness/search.py`` makes before it starts anything (one
``ConfigError`` line each), how a trial's config is built from the plan and a sampled point,
the provenance every row of the study carries, and writing the twins.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from harness import methods as registry
from harness.searchspace import ConfigError, Profile, Space, expand_params, load_profile
from harness.study.budget import (Band, MethodSizes, counter_for, joint_space, param_matched, resolve_band,
                                  restrict_spaces)

# File names under the results dir (harness.leaderboard, harness.predictions), spelled here so that
# planning -- and ``--show-plan`` -- imports neither pandas nor the statistics.
LEADERBOARD_FILE = "leaderboard.parquet"
PREDICTIONS_FILE = "predictions.parquet"

METRIC = "selection_accuracy"
# What each phase scores (TrialConfig.scored_roles).
PHASE_ROLES = {"search": ("selection",), "final": ("report",), "reference": ("selection", "report")}


@dataclasses.dataclass
class Plan:
    """Everything a study needs, validated before Ray starts."""

    profile: Profile
    study: str
    results_dir: Path
    data_dir: Path | None  # None: the hub (real datasets) -- only for users with network
    synthetic: bool
    address: str | None
    resume: bool
    band: Band | None = None
    """The parameter band of a parameter-matched study (``param_budget``), with every adapter's sizes."""
    profile_override: str | None = None
    """Set when --resume accepted a changed profile: the profile hash the study ran under before."""
    storage_uri: str | None = None
    """Ray's storage for trials and checkpoints (--storage, or the profile's ``storage:``); None: in the results dir."""
    mlflow_uri: str | None = None
    """MLflow tracking URI (``--mlflow`` or the profile's ``tracking: mlflow``): one MLflow run per trial."""
    _memo: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)

    @property
    def storage(self):
        """The study's checkpoint storage (harness.study.storage.Storage); trials go under ``<study>/train``."""
        if "storage" not in self._memo:
            from harness.study.storage import resolve_storage

            self._memo["storage"] = resolve_storage(self.storage_uri, self.results_dir / "ray")
        return self._memo["storage"]

    @property
    def train_storage_path(self) -> str:
        """Where the study's Train runs (one per trial, named by trial id) keep their checkpoints."""
        return self.storage.join(self.study, "train")

    @property
    def leaderboard_path(self) -> Path:
        return self.results_dir / LEADERBOARD_FILE

    @property
    def ray_dir(self) -> Path:
        return (self.results_dir / "ray" / self.study).resolve()

    @property
    def optuna_path(self) -> Path:
        return (self.results_dir / "optuna" / f"{self.study}.sqlite").resolve()

    @property
    def predictions_path(self) -> Path:
        return self.results_dir / PREDICTIONS_FILE

    def base_trial(self, method: str, phase: str) -> dict[str, Any]:
        """TrialConfig kwargs every trial of ``method`` in ``phase`` shares (the per-trial budget).

        The budget is the same in every phase; what is scored differs. Search trials score the
        selection split only (they choose); final runs train without intermediate evaluations and
        score the report split only (they publish); the reference scores both.
        """
        p = self.profile
        kwargs = dict(p.training)
        kwargs.update(
            method=method,
            plugins=list(p.raw.get("plugins") or []),
            model=p.model,
            datasets=list(p.datasets),
            data_dir=None if self.data_dir is None else str(self.data_dir),
            num_workers=p.resources["num_workers"],
            use_gpu=p.resources["use_gpu"],
            zero_stage=p.resources["zero_stage"],
            scored_roles=PHASE_ROLES[phase],
        )
        # Once a run ends nothing trains on from it: its last checkpoint keeps what the phase needs
        # (harness.study.disk): a final run its trained tensors, an adapter's always, dense's if final.keep says.
        keep = "none"
        if phase == "final":
            kwargs.update(eval_every=0)
            keep = "final" if registry.get(method).role == "adapter" else p.final.get("keep", "none")
        kwargs["keep"] = keep
        return kwargs

    def resolved_profile(self) -> dict:
        """The profile as the study runs it: every default filled in, each method's space after the
        profile's overrides and the parameter band, and the band itself. What the profile hash covers."""
        # Where checkpoints go (storage) and trackers change no number, so they are not part of the hash.
        raw = {k: v for k, v in self.profile.raw.items() if k not in ("description", "storage", "tracking")}
        spaces = {m: {name: dataclasses.asdict(p) for name, p in sorted(space.params.items())}
                  for m, space in sorted(self.profile.spaces.items())}
        return {"profile": raw, "spaces": spaces, "param_band": self.band.to_json() if self.band else None}

    def profile_sha256(self) -> str:
        """sha256 of ``resolved_profile()`` as canonical JSON: the same for the same profile whatever its
        key order or comments; a changed value, range, space file or band changes it."""
        text = json.dumps(self.resolved_profile(), sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(text.encode()).hexdigest()

    def data_source(self) -> str:
        """``data_source`` of every row (JSON), computed once, when the first row is recorded (the twins
        are written after planning)."""
        if "data_source" not in self._memo:
            from harness.provenance import data_source, to_json

            synthetic = self.profile.data if self.synthetic else None
            self._memo["data_source"] = to_json(data_source(self.profile.datasets, data_dir=self.data_dir,
                                                            synthetic=synthetic))
        return self._memo["data_source"]

    def budget_json(self, method: str, phase: str, total_steps: int | None = None) -> str:
        """``budget_json`` of a row of ``method`` in ``phase``: the shared training budget and the parameter band."""
        from harness.provenance import to_json, trial_budget
        from harness.trial import TrialConfig

        # The budget reads no hparams, but the config must construct: a corner of the space gives a method
        # that has no defaults (peft: peft_type) what it needs.
        space = self.profile.spaces.get(method)
        hparams = expand_params(method, space_corner(space, "low"), space)[1] if space is not None else {}
        cfg = TrialConfig(**self.base_trial(method, phase), hparams=hparams)
        band = (self.band.low, self.band.high) if self.band else None
        return to_json(trial_budget(cfg, total_steps=total_steps, band=band, param_matched=param_matched(method)))


def trial_counts(plan: Plan) -> dict[str, dict[str, int]]:
    """{phase: {method: trials}} of the study, in the order the phases run."""
    p = plan.profile
    return {"reference": {m: 1 for m in p.reference},
            "search": {m: p.trials_per_method for m in p.methods},
            "final": {m: len(p.final["seeds"]) for m in p.methods}}


def make_trial_config(base: dict, *, learning_rate: float | None, hparams: dict, seed: int):
    from harness.trial import TrialConfig

    kwargs = dict(base, hparams=dict(hparams), seed=seed)
    if learning_rate is not None:
        kwargs["learning_rate"] = learning_rate
    return TrialConfig(**kwargs)


def _synthetic_dir(results_dir: Path, data: dict) -> Path:
    seed, n_train, n_val = data.get("seed", 0), data.get("n_train", 64), data.get("n_validation", 16)
    return results_dir / "data" / f"synthetic-s{seed}-t{n_train}-v{n_val}"


def _count_train_examples(raw: dict, data_dir: Path | None, synthetic: bool) -> int | None:
    """Training examples k-means will cluster (train role, after the per-dataset cap), or None if unknown."""
    from harness.data.loading import min_train_size
    from harness.data.adapters import get_adapter

    cap = raw["training"].get("train_limit", _default_field("train_limit"))
    total = 0
    for d in raw["datasets"]:
        if synthetic and data_dir is None:
            n = raw["data"].get("n_train", 64)
        else:
            if data_dir is None:
                return None
            split = get_adapter(d).train_split
            n = _count_rows(data_dir, d, split)
            if n is None:
                return None
        n = min_train_size(n)  # the grouped carve may leave a little more
        total += min(n, cap) if cap else n
    return total


def _default_field(name: str):
    from harness.trial import TrialConfig

    f = {f.name: f for f in dataclasses.fields(TrialConfig)}.get(name)
    return None if f is None or f.default is dataclasses.MISSING else f.default


def _count_rows(data_dir: Path, dataset: str, split: str) -> int | None:
    jsonl = data_dir / dataset / f"{split}.jsonl"
    if jsonl.exists():
        with open(jsonl, "rb") as fh:
            return sum(1 for line in fh if line.strip())
    pq_path = data_dir / dataset / f"{split}.parquet"
    if pq_path.exists():
        import pyarrow.parquet as pq

        return pq.ParquetFile(pq_path).metadata.num_rows
    return None


def _check_results_dir(results_dir: Path) -> None:
    """The results dir must be creatable/writable; an existing leaderboard must be readable."""
    probe = results_dir
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise ConfigError(f"results dir {results_dir}: {probe} is not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"results dir {results_dir} is not writable")
    # os.access says yes to root and on read-only mounts; try a real write (nothing is left behind).
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as exc:
        raise ConfigError(f"results dir {results_dir} is not writable ({exc.strerror or exc})") from None
    if results_dir.exists():
        lb = results_dir / LEADERBOARD_FILE
        if lb.exists():
            from harness.records import read_rows

            try:
                read_rows(lb)
            except Exception as exc:
                raise ConfigError(f"{lb} is not a readable leaderboard: {str(exc).splitlines()[0]}") from None


def build_plan(args: argparse.Namespace) -> Plan:
    """Validate the profile, spaces, data and results dir; raise ConfigError with one line."""
    results_dir = Path(args.results_dir)
    data_dir = Path(args.data_dir).resolve() if args.data_dir else None
    if data_dir is not None and not data_dir.is_dir():
        raise ConfigError(f"data dir {args.data_dir} does not exist")

    from harness.trial import TrialConfig

    training_keys = {f.name for f in dataclasses.fields(TrialConfig)}

    # The profile decides whether data is synthetic; --data-dir always wins.
    state = {}

    def count(raw):
        synthetic = bool(raw["data"].get("synthetic")) and data_dir is None
        state["synthetic"] = synthetic
        return _count_train_examples(raw, data_dir, synthetic)

    profile = load_profile(args.config, training_keys=training_keys, count_train_examples=count)
    study = args.study or profile.study
    if not study or not all(c.isalnum() or c in "-_." for c in study):
        raise ConfigError(f"study name {study!r} may use only letters, digits, '-', '_', '.'")

    if data_dir is not None:
        for d in profile.datasets:
            from harness.data.adapters import get_adapter

            a = get_adapter(d)
            for split in (a.train_split, a.report_split):
                if _count_rows(data_dir, d, split) is None:
                    raise ConfigError(f"data dir {data_dir}: missing {d}/{split}.jsonl (or .parquet)")

    _check_results_dir(results_dir)
    synthetic = state.get("synthetic", False)
    if synthetic:
        data_dir = _synthetic_dir(results_dir, profile.data).resolve()
    plan = Plan(profile, study, results_dir.resolve(), data_dir, synthetic, args.address, args.resume,
                storage_uri=getattr(args, "storage", None) or profile.raw.get("storage"))
    if plan.storage_uri is not None and not getattr(args, "show_plan", False):
        plan.storage.check_writable()
    plan.mlflow_uri = getattr(args, "mlflow", None) or profile.raw.get("tracking", {}).get("mlflow")
    if plan.mlflow_uri is not None:
        try:
            import mlflow  # noqa: F401
        except ImportError:
            raise ConfigError(f"MLflow tracking ({plan.mlflow_uri}) needs the mlflow client: "
                              "pip install '.[mlflow]'") from None

    existing = None
    if plan.leaderboard_path.exists():
        from harness import leaderboard

        existing = leaderboard.load(results_dir)
    study_recorded = existing is not None and (existing.study == study).any()
    accept_changed = bool(getattr(args, "accept_changed_profile", False))
    if accept_changed and not args.resume:
        raise ConfigError("--accept-changed-profile only applies with --resume")
    if args.resume:
        if not plan.ray_dir.exists() and not study_recorded:
            raise ConfigError(f"nothing to resume: no study {study!r} in {results_dir}")
    elif study_recorded or plan.ray_dir.exists():
        raise ConfigError(
            f"study {study!r} already exists in {results_dir}; pass --resume to continue it or --study NEW"
        )

    _check_methods(plan)

    if args.resume and study_recorded:
        _check_profile_unchanged(plan, existing[existing.study == study], accept_changed)
    return plan


def _check_methods(plan: Plan) -> None:
    """Restrict every adapter's sizes to the parameter band (counted on the meta device) and build
    every method's trial config at both ends of its space.

    Both need torch, transformers and peft (seconds of imports, and the counts take longer). Their
    outcome is a function of the profile, its spaces, the code and the installed packages alone,
    so it is kept in the harness's cache under a key of all of these (``check_key``): an unchanged
    profile is checked once per machine, and ``--show-plan`` answers in about two seconds after that.
    """
    profile = plan.profile
    key = check_key(plan)
    cached = _read_checked(key)
    if cached is not None:
        plan.band = _band_from_json(cached["band"]) if cached["band"] is not None else None
        if plan.band is not None:
            for method, sizes in plan.band.methods.items():
                if sizes.size_params:
                    profile.spaces[method] = joint_space(profile.spaces[method], sizes)
        plan._memo["checked"] = "cached"
        plan._memo["trainable"] = cached.get("trainable", {})
        return

    # Parameter-matched search: restrict every adapter's sizes to the band, counting on the meta device.
    if profile.budget is not None:
        counter = counter_for(profile)
        plan.band = resolve_band(profile, counter)
        restrict_spaces(profile, plan.band, counter)

    # Every method's trial config must construct: catches bad training keys and values now.
    for method, space in profile.spaces.items():
        for corner in (space_corner(space, "low"), space_corner(space, "high")):
            lr, hp = expand_params(method, corner, space)
            try:
                make_trial_config(plan.base_trial(method, "search"), learning_rate=lr, hparams=hp, seed=0)
            except (ValueError, TypeError) as exc:
                raise ConfigError(f"{profile.source}: {method}: {one_line(exc)}") from None
    for method in profile.reference:
        try:
            make_trial_config(plan.base_trial(method, "reference"), learning_rate=None, hparams={}, seed=0)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{profile.source}: {method}: {one_line(exc)}") from None
    plan._memo["trainable"] = _trainable_counts(plan)
    _write_checked(key, {"band": dataclasses.asdict(plan.band) if plan.band is not None else None,
                         "trainable": plan._memo["trainable"]})
    plan._memo["checked"] = "now"


def _trainable_counts(plan: Plan) -> dict[str, int | None]:
    """{method: the most trainable parameters a trial of it may have}, for the disk estimate: the
    largest admitted size of a parameter-matched adapter, else a count at the space's high end (meta
    device); None where the model's config cannot be read here (a hub model offline)."""
    from harness.methods import count_trainable_params
    from harness.models import load_model_config

    out: dict[str, int | None] = {m: 0 for m in plan.profile.reference}
    budget = plan.profile.budget
    source = str(budget.model_config) if budget is not None and budget.model_config is not None else plan.profile.model
    try:
        config = load_model_config(source)
    except (ValueError, OSError):
        config = None
    for method, space in plan.profile.spaces.items():
        sizes = plan.band.methods.get(method) if plan.band is not None else None
        if sizes is not None and sizes.admitted:
            out[method] = max(max(counts) for _, counts in sizes.admitted)
            continue
        if config is None:
            out[method] = None
            continue
        _, hparams = expand_params(method, space_corner(space, "high"), space)
        try:
            out[method] = count_trainable_params(config, method, hparams)
        except (ValueError, TypeError):
            out[method] = None
    return out


# The packages whose behaviour the checks depend on (parameter counts, config validation).
CHECKED_PACKAGES = ("torch", "transformers", "peft")


def check_key(plan: Plan) -> str:
    """sha256 of everything the checks of ``_check_methods`` read: the profile and its spaces as
    loaded, the parameter budget (with the bytes of its ``model_config``), the trials' data dir,
    every source file of ``harness`` and ``mor1e``, and the versions of torch, transformers and peft."""
    import importlib.metadata

    profile = plan.profile
    h = hashlib.sha256()
    budget = profile.budget
    model_config = None
    if budget is not None and budget.model_config is not None:
        path = budget.model_config
        path = path / "config.json" if path.is_dir() else path
        model_config = hashlib.sha256(path.read_bytes()).hexdigest()
    model_path = Path(profile.model)
    if (model_path / "config.json").is_file():  # a local model: its config decides the counts
        model_config = (model_config or "") + hashlib.sha256((model_path / "config.json").read_bytes()).hexdigest()
    inputs = {
        "profile": profile.raw,
        "spaces": {m: {n: dataclasses.asdict(p) for n, p in sorted(sp.params.items())}
                   for m, sp in sorted(profile.spaces.items())},
        "budget": None if budget is None else {"match": budget.match, "params": budget.params, "at": budget.at,
                                               "tolerance": budget.tolerance},
        "model_config": model_config,
        "data_dir": None if plan.data_dir is None else str(plan.data_dir),
        "versions": {name: _version(importlib.metadata, name) for name in CHECKED_PACKAGES},
    }
    h.update(json.dumps(inputs, sort_keys=True, default=str).encode())
    root = Path(__file__).resolve().parents[2]
    for package in ("harness", "mor1e"):
        for source in sorted((root / package).rglob("*.py")):
            h.update(str(source.relative_to(root)).encode())
            h.update(source.read_bytes())
    return h.hexdigest()


def _version(metadata, name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _checks_dir() -> Path:
    """``<harness cache>/checks``: the folder of harness.models.cache_dir ($MOR1E_CACHE, else
    $XDG_CACHE_HOME/mor1e, else ~/.cache/mor1e), spelled here to keep torch out of planning."""
    if os.environ.get("MOR1E_CACHE"):
        base = Path(os.environ["MOR1E_CACHE"])
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mor1e"
    return base / "checks"


def _read_checked(key: str) -> dict | None:
    try:
        return json.loads((_checks_dir() / f"{key}.json").read_text())
    except (OSError, ValueError):
        return None


def _write_checked(key: str, record: dict) -> None:
    """Atomically; a cache that cannot be written is skipped (the checks run again next time)."""
    folder = _checks_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{key[:12]}.", suffix=".tmp", dir=folder)
    except OSError:
        return
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(record, fh, default=str)
        os.replace(tmp, folder / f"{key}.json")
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def _band_from_json(d: dict) -> Band:
    methods = {m: MethodSizes(size_params=list(ms["size_params"]), range_params=list(ms["range_params"]),
                              admitted=[(dict(s), list(c)) for s, c in ms["admitted"]],
                              excluded=[(dict(s), c if isinstance(c, str) else list(c)) for s, c in ms["excluded"]])
               for m, ms in d["methods"].items()}
    return Band(**{**d, "methods": methods})


def _check_profile_unchanged(plan: Plan, rows, accept_changed: bool) -> None:
    """--resume continues the profile the study ran under; a changed one needs --accept-changed-profile.

    The study's newest row that records a hash is the reference. A study that already accepted a
    change keeps recording the hash it first replaced.
    """
    rows = rows[rows.profile_sha256.notna()].sort_values("created_at")
    if rows.empty:
        return  # recorded before rows carried a profile hash: nothing to compare with
    last = rows.iloc[-1]
    current = plan.profile_sha256()
    if last.profile_sha256 == current:
        plan.profile_override = last.profile_override if isinstance(last.profile_override, str) else None
        return
    if not accept_changed:
        raise ConfigError(
            f"study {plan.study!r} ran under profile sha256 {last.profile_sha256[:12]}, but "
            f"{plan.profile.source} (with its spaces and parameter band) now hashes to {current[:12]}; "
            "resume it unchanged, or pass --accept-changed-profile to continue under the new profile"
        )
    plan.profile_override = last.profile_sha256


def space_corner(space: Space, end: str) -> dict:
    """Every searched parameter at its low (first choice) or high (last choice) end."""
    out = {}
    for name, p in space.searched().items():
        if p.type == "categorical":
            out[name] = p.choices[0 if end == "low" else -1]
        else:
            out[name] = p.low if end == "low" else p.high
    return out


def one_line(exc: BaseException) -> str:
    """``Type: message`` of an exception, on one line."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def trial_point(method: str, space_params: dict | None, seed: int, config: dict) -> tuple[float | None, dict, int]:
    """(learning_rate, hparams, seed) of a Tune trial's config.

    Search trials carry the sampled point (e.g. expert_shape "4x8"); fixed runs
    (reference, final) carry ``learning_rate`` + expanded ``hparams`` + ``seed``.
    """
    if "hparams" in config:
        return config.get("learning_rate"), dict(config["hparams"]), int(config.get("seed", seed))
    space = Space(method, space_params, "trial") if space_params else None
    sampled = {k: config[k] for k in (space_params or {}) if k in config}
    learning_rate, hparams = expand_params(method, sampled, space)
    return learning_rate, hparams, int(config.get("seed", seed))


def write_twins(plan: Plan) -> None:
    """Synthetic twins, written to a temp dir beside the target and renamed into place."""
    from harness.data import write_synthetic

    d = plan.profile.data
    target = plan.data_dir
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        write_synthetic(tmp, seed=d.get("seed", 0), n_train=d.get("n_train", 64),
                        n_validation=d.get("n_validation", 16))
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)

