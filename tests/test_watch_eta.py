"""The study's ETA: remaining work per method and phase, timed from finished trials (a prior before)."""

import argparse

import pytest
from profiles import tiny_profile, write_profile

from harness.study.plan import build_plan
from harness.study.progress import Progress, clock
from harness.study.timing import (DEFAULT_UNIT_S, PRIOR_UNITS, Eta, Finished, Work, estimate_remaining_s,
                                  previous_trials)

LORA = Work("lora", "search", steps=40, examples=100, batch=8)
DENSE = Work("dense", "search", steps=40, examples=100, batch=8)


def test_clock_is_hours_minutes_seconds():
    assert clock(0) == "0:00:00"
    assert clock(59.6) == "0:01:00"
    assert clock(3 * 3600 + 7 * 60 + 5) == "3:07:05"
    assert clock(48 * 3600) == "48:00:00"


def test_the_prior_alone_prices_steps_examples_and_the_trial():
    expected = PRIOR_UNITS["trial"] + 40 * PRIOR_UNITS["step"] + 100 * PRIOR_UNITS["example"]
    assert LORA.units() == pytest.approx(expected)
    assert estimate_remaining_s([(LORA, 1.0)], [], unit_s=2.0, slots=1) == pytest.approx(2.0 * expected)
    assert estimate_remaining_s([(LORA, 1.0)], [], unit_s=None, slots=1) == pytest.approx(DEFAULT_UNIT_S * expected)
    assert DENSE.units() > LORA.units()  # full finetuning steps cost more
    # half the steps left of a running trial: half its training and scoring, no start-up
    assert LORA.units(0.5) == pytest.approx((expected - PRIOR_UNITS["trial"]) / 2)
    assert estimate_remaining_s([], [], unit_s=1.0, slots=2) == 0.0


def test_a_methods_finished_trials_time_its_remaining_ones():
    # a finished LoRA trial took 3x the prior: LoRA's remaining trials are timed at 3x
    finished = [Finished(LORA, 3 * LORA.units() * 2.0)]
    assert estimate_remaining_s([(LORA, 1.0)], finished, unit_s=2.0, slots=1) == pytest.approx(3 * LORA.units() * 2.0)
    # dense has no finished trial yet: it takes the ratio of all finished trials
    assert estimate_remaining_s([(DENSE, 1.0)], finished, unit_s=2.0, slots=1) == pytest.approx(
        3 * DENSE.units() * 2.0)
    # once dense has its own trial, its own ratio counts, whatever LoRA's
    both = finished + [Finished(DENSE, 0.5 * DENSE.units() * 2.0)]
    assert estimate_remaining_s([(DENSE, 1.0)], both, unit_s=2.0, slots=1) == pytest.approx(0.5 * DENSE.units() * 2.0)
    # a pruned trial did half the steps and is predicted so: its ratio is not halved
    pruned = Work("lora", "search", steps=20, examples=50, batch=8)
    ratio = estimate_remaining_s([(LORA, 1.0)], [Finished(pruned, pruned.units() * 2.0)], unit_s=2.0, slots=1)
    assert ratio == pytest.approx(LORA.units() * 2.0)


def test_work_is_spread_over_slots_but_never_below_the_longest_trial():
    one = estimate_remaining_s([(LORA, 1.0)], [], unit_s=1.0, slots=1)
    assert estimate_remaining_s([(LORA, 1.0)] * 4, [], unit_s=1.0, slots=2) == pytest.approx(2 * one)
    assert estimate_remaining_s([(LORA, 1.0)] * 4, [], unit_s=1.0, slots=4) == pytest.approx(one)
    assert estimate_remaining_s([(LORA, 1.0)], [], unit_s=1.0, slots=8) == pytest.approx(one)


@pytest.fixture
def plan(tmp_path, monkeypatch):
    monkeypatch.setenv("MOR1E_CACHE", str(tmp_path / "cache"))
    config = write_profile(tmp_path / "p.yaml", tiny_profile(methods=["lora", "dense"], max_concurrent_trials=2))
    return build_plan(argparse.Namespace(config=config, results_dir=str(tmp_path / "r"), data_dir=None, study=None,
                                         address=None, resume=False))


def test_the_study_eta_counts_down_as_trials_start_report_and_end(plan):
    eta = Eta(plan, unit_s=1.0)
    # zeroshot + 2x2 search + 2x1 final, none started: every trial's prior over 2 slots
    full = sum(w.units() * n for w, n in ((eta.work[k], eta.left[k]) for k in eta.left)) / 2
    assert eta() == pytest.approx(full)
    eta.started("t1", "lora", "search")
    assert eta() == pytest.approx(full)  # started, nothing done yet
    lora = eta.work[("search", "lora")]
    eta.progressed("t1", lora.steps)  # its training done: no start-up or steps left
    assert eta() == pytest.approx(full - lora.units() / 2)
    # it ended, having taken 4x the prior: the remaining LoRA trials are timed at 4x, others too
    eta.ended("t1", lora.steps, 4 * lora.units())
    left = [(eta.work[k], n) for k, n in eta.left.items()]
    assert eta() == pytest.approx(sum(4 * w.units() * n for w, n in left) / 2)
    # a second progress line after 30 s while a trial runs
    progress = Progress(total_trials=7)
    progress.eta = eta
    assert not progress.status_due()
    progress.running.add("t2")
    assert progress.status_due()
    line = progress.status()
    assert f"ETA {clock(eta())}" in line and not progress.status_due()


def test_a_resumed_eta_starts_from_the_trials_already_recorded(plan):
    from harness.records import append_rows, row_template

    rows = [row_template(study="tiny", method="lora", trial_id=tid, status="completed", status_reason=None,
                         phase="search", dataset="boolq", split="train[selection]", role="selection",
                         accuracy=0.5, acc_norm=None, n_examples=8, steps=4, wall_s=30.0,
                         budget_json='{"eval_every": 2, "batch_size": 4, "grad_accum": 1, "num_workers": 1}')
            for tid in ("a", "b")]
    append_rows(plan.leaderboard_path, rows)
    done = previous_trials(plan.results_dir, study="tiny")
    assert [(f.work.method, f.work.phase, f.work.steps, f.work.examples, f.work.batch, f.wall_s) for f in done] == [
        ("lora", "search", 4, 16, 4, 30.0)] * 2
    eta = Eta(plan, unit_s=1.0)
    eta.seed(done)
    assert eta.left[("search", "lora")] == 0 and eta.left[("search", "dense")] == 2
    ratio = 30.0 / done[0].work.units()
    left = [(eta.work[k], n) for k, n in eta.left.items()]
    assert eta() == pytest.approx(sum(ratio * w.units() * n for w, n in left) / 2)
