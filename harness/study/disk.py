"""A study's disk: what its checkpoints take while it runs, what is left at its end, and the pruning.

Ray Train saves a checkpoint at every evaluation of a trial (``harness.trial.worker``): the DeepSpeed
state (fp32 weights of the trained tensors and Adam's two moments: 12 bytes a trained parameter)
and the evaluation's predictions (only the predictions with ``resumable: false``). ``keep_checkpoints`` (1) of them stay while the run goes on; a
run's last checkpoint holds no state (``TrialConfig.keep``: nothing, or the trained tensors alone).
Once a trial is recorded, ``prune_trial`` removes its Train run from the storage, except the last
checkpoint of a final run that keeps its trained tensors (an adapter; dense weights with
``final.keep: final``). ``expected_disk(plan)`` estimates the storage's peak and end from the plan.
"""

from __future__ import annotations

import math
import posixpath

from harness import methods as registry

# Bytes a trained parameter takes in resumable state: fp32 weight + Adam's first and second moments.
STATE_BYTES_PER_PARAM = 12
# Bytes a parameter takes in kept trained tensors (fp32 safetensors).
KEPT_BYTES_PER_PARAM = 4


def run_path(plan, trial_id: str) -> str:
    """The Train run of a trial in the study's storage (its checkpoints, its Train state)."""
    return posixpath.join(plan.train_storage_path, trial_id)


def prune_trial(plan, trial_id: str, *, phase: str, method: str, checkpoint_path: str | None) -> int:
    """Remove a recorded trial's checkpoints from the storage; return the bytes removed.

    A final run whose phase keeps trained tensors (``Plan.base_trial(...)["keep"] == "final"``) keeps
    its last checkpoint (the tensors and the predictions, no optimizer state); everything else goes.
    """
    storage = plan.storage
    root = run_path(plan, trial_id)
    keeps = phase == "final" and plan.base_trial(method, phase).get("keep") == "final" and checkpoint_path
    before = storage.size(root)
    if not keeps:
        storage.delete(root)
        return before
    from pyarrow.fs import FileSelector

    for info in storage.filesystem.get_file_info(FileSelector(root, allow_not_found=True)):
        if posixpath.normpath(info.path) != posixpath.normpath(checkpoint_path):
            storage.delete(info.path)
    return before - storage.size(root)


def _max_trainable(plan, counter) -> dict[str, int]:
    """The largest trainable-parameter count each method's space can sample (its size corners)."""
    from harness.searchspace import expand_params
    from harness.study.plan import space_corner

    out = {}
    for method, space in plan.profile.spaces.items():
        counts = []
        for end in ("low", "high"):
            _, hparams = expand_params(method, space_corner(space, end), space)
            counts.append(counter(method, hparams))
        out[method] = max(counts)
    return out


def expected_disk(plan, *, trainable: dict[str, int | None] | None = None) -> dict:
    """Expected bytes the study's storage holds at its peak and at its end.

    ``trainable``: {method: trained parameters of its largest sampled size} (a full-finetuning
    method's is the whole model), counted on the meta device from the plan when not given; a
    method counted as None makes the totals None (unknown). Returns ``{"peak_bytes", "end_bytes",
    "per_method": {method: {"trained_params", "state_bytes", "trial_peak_bytes", "kept_bytes"}}}``.

    Peak: ``max_concurrent_trials`` search trials of the largest methods at once, each holding
    ``keep_checkpoints`` states, and one more while the next is written, if it evaluates more than
    once before its end (a final run evaluates only at its end and holds no state), plus what the
    final runs recorded before them keep. End: the kept tensors of every final run (an adapter's
    always, full finetuning's when ``final.keep: final``; the reference run keeps none).
    Predictions, leaderboard and Tune's records (kilobytes a trial) are left out.
    """
    p = plan.profile
    if trainable is None:
        from harness.models import load_model_config
        from harness.study.budget import Counter, counter_for

        counter = counter_for(p) if p.budget is not None else Counter(load_model_config(p.model), p.model)
        trainable = _max_trainable(plan, counter)
    t = p.training
    steps, every = t.get("steps"), t.get("eval_every") or 0
    # Evaluations before the last one: each saves resumable state.
    intermediate = max(0, math.ceil(steps / every) - 1) if steps and every else (1 if every else 0)
    if not t.get("resumable", True):
        intermediate = 0  # they save their predictions only
    keep = t.get("keep_checkpoints", 1)
    held = intermediate if intermediate <= keep else keep + 1  # a new state is complete before the older goes
    per_method = {}
    for method, n in trainable.items():
        role = registry.get(method).role
        if role == "reference":
            continue  # scores the base model: no state, nothing kept
        if n is None:
            return {"peak_bytes": None, "end_bytes": None, "per_method": per_method}
        state = STATE_BYTES_PER_PARAM * n
        kept = KEPT_BYTES_PER_PARAM * n if role == "adapter" or p.final.get("keep", "none") == "final" else 0
        per_method[method] = dict(trained_params=n, state_bytes=state, trial_peak_bytes=state * held,
                                  kept_bytes=kept)
    seeds = len(p.final["seeds"])
    end = sum(m["kept_bytes"] for m in per_method.values()) * seeds
    trials = sorted((m["trial_peak_bytes"] for m in per_method.values() for _ in range(p.trials_per_method)),
                    reverse=True)
    peak_running = sum(trials[:max(1, int(p.max_concurrent_trials or 1))])
    # Search trials may still run while final runs of other methods are already kept.
    return dict(peak_bytes=peak_running + end, end_bytes=end, per_method=per_method)
