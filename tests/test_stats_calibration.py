"""The comparison's level, proved by simulation: A/A studies scored exactly as --compare scores a real one.

2,000 simulated studies of 14 datasets per setting, over per-run effects with SD 0, 5 and 15 points per
dataset, 16 and 500 report examples per dataset, and 2, 3 and 5 seeds per method (harness.stats.simulate
says how the data are drawn). The bounds are the ones the verdict promises, with simulation slack.
"""

import numpy as np
import pytest

from harness import stats


@pytest.fixture(scope="module")
def table():
    return stats.calibrate(studies=2000, seed=0)


@pytest.mark.slow
def test_the_verdict_holds_its_level_coverage_and_power(table):
    print("\n" + stats.format_calibration(table))
    assert len(table) == 18 and (table.studies >= 2000).all()
    # false positives: at most 7.5% in every setting (nominal 5%)
    assert (table.false_positive <= 0.075).all(), table[table.false_positive > 0.075]
    # the 95% interval covers the true difference at least 92.5% of the time
    assert (table.coverage >= 0.925).all(), table[table.coverage < 0.925]
    # Holm over the 14 datasets flags any at most 7.5% of the time under the null
    assert (table.any_dataset_holm <= 0.075).all()
    # planted at the reported mde, the verdict finds it 80% ± 8% of the time (k >= 3, run effects present)
    power = table[(table.k >= 3) & (table.sigma_run > 0)]
    assert len(power) == 8 and power.power_at_mde.between(0.72, 0.88).all(), power
    # more seeds, smaller mde, in every setting
    for _, group in table.groupby(["sigma_run", "n"]):
        assert np.all(np.diff(group.sort_values("k").mde_rms) < 0)
