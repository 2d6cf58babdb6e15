"""Option scoring on the real SmolLM2-135M (slow: integration)."""

import tempfile
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from harness.evaluate import encode_pair, option_logprobs, score_examples
from harness.models import load_model

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Ex:
    dataset: str
    prompt: str
    options: tuple
    gold: int


@pytest.fixture(scope="module")
def smollm2():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # a second thread mostly waits on a shared 2-core machine
    yield load_model("smollm2-135m")
    torch.set_num_threads(before)


def test_batched_equals_one_at_a_time_on_smollm2(smollm2):
    from harness.data import load_examples, write_synthetic

    model, tok = smollm2
    contexts, continuations = [], []
    with tempfile.TemporaryDirectory() as tmp:
        write_synthetic(tmp, seed=0, n_train=0, n_validation=1, datasets=("piqa", "hellaswag"))
        for name, fmt in (("piqa", "letter"), ("piqa", "cloze"), ("hellaswag", "cloze")):
            ex = load_examples(name, "report", data_dir=tmp, fmt=fmt, limit=1)[0]
            contexts += [ex.prompt] * len(ex.options)
            continuations += list(ex.options)
    batched = option_logprobs(model, tok, contexts, continuations, batch_size=8)
    singles = [option_logprobs(model, tok, [c], [d], batch_size=1)[0] for c, d in zip(contexts, continuations)]
    np.testing.assert_allclose(batched, singles, atol=1e-4, rtol=0)
    # And the definition, for one multi-token pair: unpadded full logits.
    i = max(range(len(continuations)), key=lambda j: len(continuations[j]))
    ctx, cont = encode_pair(tok, contexts[i], continuations[i])
    assert len(cont) > 1
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ctx + cont])).logits[0], -1)
    expected = sum(logp[len(ctx) - 1 + j, t].item() for j, t in enumerate(cont))
    assert batched[i] == pytest.approx(expected, abs=1e-4)


EASY = [
    Ex("easy", "A dog has four", (" legs", " wheels", " wings"), 0),
    Ex("easy", "Question: How many legs does a dog have?\nAnswer: A dog has", (" three legs", " four legs", " eleven legs"), 1),
    Ex("easy", "The sun rises in the", (" basement", " east", " west"), 1),
    Ex("easy", "One, two, three,", (" nine", " seven", " four"), 2),
    Ex("easy", "To cut paper you use a pair of", (" socks", " scissors"), 1),
    Ex("easy", "Snow is cold and white. Fire is hot and", (" bright", " frozen"), 0),
    Ex("easy", "Question: What do bees make?\nAnswer:", (" cheese", " honey", " steel"), 1),
]


def test_smollm2_zero_shot_prefers_the_obviously_right_option(smollm2):
    model, tok = smollm2
    loglikes = score_examples(model, tok, EASY, batch_size=16, progress=False)
    wrong = [(ex.prompt, ex.options[int(np.argmax(ll))]) for ex, ll in zip(EASY, loglikes) if np.argmax(ll) != ex.gold]
    assert not wrong
