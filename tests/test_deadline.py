"""run_with_deadline: the per-trial deadline of a study (harness/study/tune.py)."""

import threading
import time

import pytest

from harness.study.tune import TrialTimeout, run_with_deadline


def test_returns_the_result_or_reraises_within_the_deadline():
    assert run_with_deadline(lambda: 42, 5.0) == 42
    assert run_with_deadline(lambda: 42, None) == 42
    with pytest.raises(KeyError, match="boom"):
        run_with_deadline(lambda: {}["boom"], 5.0)


def test_a_call_past_the_deadline_raises_trial_timeout_promptly():
    release = threading.Event()
    started = time.monotonic()
    with pytest.raises(TrialTimeout, match=r"trial_timeout_s=0.2s"):
        run_with_deadline(release.wait, 0.2)
    assert time.monotonic() - started < 5
    release.set()
