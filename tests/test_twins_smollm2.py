"""The twins against the real model: zero-shot SmolLM2-135M sits near chance on every twin, in both
formats, and the sentence embedder's clusters tell each conflicting pair apart."""

import pytest

from harness.data import CONFLICTS, KNOWN_DATASETS, load_examples, write_synthetic

N_REPORT = 64  # report rows per twin: chance +- 15 points is about 2.4 standard errors for a 2-way twin


@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    out = tmp_path_factory.mktemp("twins")
    write_synthetic(out, seed=0, n_train=64, n_validation=N_REPORT, datasets=KNOWN_DATASETS)
    return out


@pytest.fixture(scope="module")
def smollm2():
    """SmolLM2-135M loaded once for both formats, on 2 threads (the machine's cores)."""
    import torch

    from harness.models import load_model

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        yield load_model("smollm2-135m")
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["letter", "cloze"])
def test_smollm2_zero_shot_sits_within_15_points_of_chance_on_every_twin(twins, smollm2, fmt):
    from harness.data.probe import probe

    model, tokenizer = smollm2
    results = probe(model, tokenizer, twins, KNOWN_DATASETS, fmt=fmt, n=N_REPORT)
    table = {d: (round(100 * r["chance"], 1), round(100 * r["accuracy"], 1)) for d, r in results.items()}
    print(fmt, table)
    assert all(r["n"] == N_REPORT for r in results.values())
    far = {d: v for d, v in table.items() if abs(v[1] - v[0]) > 15}
    assert not far, far


def test_intuition_clusters_separate_each_conflicting_pair(twins):
    from harness.data.audit import conflict_separation

    for a, b, _ in CONFLICTS:
        rows = load_examples(a, "train", data_dir=twins) + load_examples(b, "train", data_dir=twins)
        purity = conflict_separation(rows, [(a, b)], ks=[2])[(a, b, 2)]
        assert purity >= 0.95, (a, b, purity)
