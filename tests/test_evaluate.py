"""Option scoring: tokenisation boundary, batching, the letter fast path, metrics."""

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from harness.evaluate import (
    encode_pair,
    evaluate_examples,
    metrics,
    option_bytes,
    option_logprobs,
    predictions,
    score_examples,
)
from harness.models import load_model, load_tokenizer


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread: on a shared 2-core machine a second one mostly waits for the first."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@dataclass(frozen=True)
class Ex:
    """The fields of harness.data.Example that scoring reads."""

    dataset: str
    prompt: str
    options: tuple
    gold: int


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-random-llama", seed=0)


@pytest.fixture(scope="module")
def tiny_gpt2():
    """A causal LM with absolute positions: left padding is wrong there without position_ids."""
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = load_tokenizer("tiny-random-llama")
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tok), n_positions=256, n_embd=32, n_layer=2, n_head=2,
                        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    return GPT2LMHeadModel(config).eval(), tok


def reference_logprob(model, ctx, cont):
    """Unbatched, unpadded, full-logits log P(cont | ctx): the definition, computed plainly."""
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0].float(), -1)
    return sum(logp[len(ctx) - 1 + j, tok].item() for j, tok in enumerate(cont))


CONTEXTS = [
    "Question: is the sky blue?\nAnswer:",
    "Hi",
    "The quick brown fox jumps over the lazy dog. " * 6,
    "Answer: ",
    "",
    "Question: is the sky blue?\nAnswer:",
    "Passage: cats purr.\nQuestion: do cats purr?\nA. no\nB. yes\nAnswer:",
]
CONTINUATIONS = [" yes", " there and beyond", "It was", "B", " hello world", " no, it is green", " B"]


# ---------------------------------------------------------------- encode_pair


def test_trailing_context_space_moves_onto_the_continuation():
    tok = load_tokenizer("tiny-random-llama")
    assert encode_pair(tok, "Answer: ", "A") == encode_pair(tok, "Answer:", " A")
    ctx, cont = encode_pair(tok, "Answer:", " A")
    assert ctx == tok("Answer:", add_special_tokens=False).input_ids
    assert cont == tok(" A", add_special_tokens=False).input_ids and len(cont) == 1
    # Both spaces move, so no token is a bare trailing space in the context.
    ctx2, cont2 = encode_pair(tok, "Answer:  ", "A")
    assert ctx2 == ctx and tok.decode(cont2) == "  A"


def test_pair_tokens_are_the_whole_string_tokens():
    tok = load_tokenizer("tiny-random-llama")
    for context, continuation in zip(CONTEXTS, CONTINUATIONS):
        if not context:
            continue
        ctx, cont = encode_pair(tok, context, continuation)
        whole = tok((context + continuation), add_special_tokens=False).input_ids
        assert ctx + cont == whole, (context, continuation)
        assert tok.decode(cont).lstrip() == continuation.lstrip()


def test_bos_only_when_the_tokenizer_adds_it_and_for_empty_contexts():
    tok = load_tokenizer("tiny-random-llama")
    # SmolLM2's tokenizer adds no BOS of its own.
    assert tok("hi").input_ids == tok("hi", add_special_tokens=False).input_ids
    assert encode_pair(tok, "Hi", " there")[0] == tok("Hi", add_special_tokens=False).input_ids
    assert encode_pair(tok, "", " there")[0] == [tok.bos_token_id]
    tok.add_bos_token = True
    assert tok("hi").input_ids[0] == tok.bos_token_id
    ctx, cont = encode_pair(tok, "Hi", " there")
    assert ctx == [tok.bos_token_id] + tok("Hi", add_special_tokens=False).input_ids
    assert cont == tok(" there", add_special_tokens=False).input_ids
    assert encode_pair(tok, "", " there")[0] == [tok.bos_token_id]


def test_empty_continuation_is_rejected():
    tok = load_tokenizer("tiny-random-llama")
    with pytest.raises(ValueError, match="empty"):
        encode_pair(tok, "Hi", "")


# ---------------------------------------------------------------- option_logprobs


@pytest.mark.parametrize("which", ["tiny", "tiny_gpt2"])
def test_batched_equals_one_at_a_time_and_the_reference(which, request):
    model, tok = request.getfixturevalue(which)
    expected = [reference_logprob(model, *encode_pair(tok, c, d)) for c, d in zip(CONTEXTS, CONTINUATIONS)]
    singles = [option_logprobs(model, tok, [c], [d], batch_size=1)[0] for c, d in zip(CONTEXTS, CONTINUATIONS)]
    for batch_size in (3, 16):
        batched = option_logprobs(model, tok, CONTEXTS, CONTINUATIONS, batch_size=batch_size)
        np.testing.assert_allclose(batched, expected, atol=1e-4, rtol=0)
        np.testing.assert_allclose(batched, singles, atol=1e-4, rtol=0)
    assert all(x < 0 for x in expected)


def test_right_padding_without_position_ids_gives_the_same_numbers(tiny):
    """Models whose forward takes no position_ids are right-padded and read full logits."""
    model, tok = tiny

    class NoPositions(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner, self.config = inner, inner.config

        def forward(self, input_ids, attention_mask=None, use_cache=None):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask, use_cache=use_cache)

    left = option_logprobs(model, tok, CONTEXTS, CONTINUATIONS, batch_size=4)
    right = option_logprobs(NoPositions(model), tok, CONTEXTS, CONTINUATIONS, batch_size=4)
    np.testing.assert_allclose(right, left, atol=1e-4, rtol=0)


def test_a_wrapper_with_module_uses_the_inner_models_arguments(tiny):
    """An engine-style wrapper (forward(**kwargs), model at .module) still gets logits_to_keep."""
    model, tok = tiny

    class Engine(torch.nn.Module):
        def __init__(self, module):
            super().__init__()
            self.module = module

        def forward(self, *args, **kwargs):
            return self.module(*args, **kwargs)

    widths = []
    handle = model.register_forward_hook(lambda m, args, out: widths.append(out.logits.shape[1]))
    try:
        wrapped = option_logprobs(Engine(model), tok, ["Hi", "The quick brown fox"], [" there", " jumps"])
    finally:
        handle.remove()
    assert widths == [1]
    np.testing.assert_allclose(wrapped, option_logprobs(model, tok, ["Hi", "The quick brown fox"],
                                                         [" there", " jumps"]), atol=1e-5, rtol=0)


def test_long_inputs_are_cut_from_the_left_keeping_the_continuation(tiny):
    model, tok = tiny
    context, continuation = "one two three four five six seven eight nine ten", " eleven twelve"
    ctx, cont = encode_pair(tok, context, continuation)
    max_length = len(cont) + 3
    kept = (ctx + cont)[-(max_length + 1):]
    expected = reference_logprob(model, kept[: -len(cont)], cont)
    got = option_logprobs(model, tok, [context, "Hi"], [continuation, " there"], max_length=max_length)[0]
    assert got == pytest.approx(expected, abs=1e-4)
    with pytest.raises(ValueError, match="over max_length"):
        option_logprobs(model, tok, [context], [continuation], max_length=len(cont) - 1)


def test_bad_arguments_fail_before_any_work(tiny):
    model, tok = tiny
    with pytest.raises(ValueError, match="2 contexts but 1"):
        option_logprobs(model, tok, ["a", "b"], [" c"])
    with pytest.raises(ValueError, match="intuition_scores must have shape"):
        option_logprobs(model, tok, ["a"], [" c"], intuition_scores=np.zeros((2, 4)))
    with pytest.raises(ValueError, match="batch_size"):
        option_logprobs(model, tok, ["a"], [" c"], batch_size=0)


def test_training_mode_is_restored_and_no_graph_is_built(tiny):
    model, tok = tiny
    seen = []
    handle = model.register_forward_pre_hook(lambda m, a: seen.append((torch.is_grad_enabled(), m.training)))
    model.train()
    model.model.layers[0].eval()  # a mixed state must come back exactly
    try:
        out = option_logprobs(model, tok, ["Hi"], [" there"])
        assert seen == [(False, False)]
        assert model.training and model.model.layers[1].training and not model.model.layers[0].training
        assert isinstance(out[0], float)
    finally:
        handle.remove()
        model.eval()
    option_logprobs(model, tok, ["Hi"], [" there"])
    assert not model.training


# ---------------------------------------------------------------- letter fast path


LETTER_EXAMPLES = [
    Ex("boolq", "Passage: the sea is salty.\nQuestion: is the sea salty?\nA. no\nB. yes\nAnswer:", (" A", " B"), 1),
    Ex("copa", "Premise: it rained.\nWhat happened as a result?\nA. the ground got wet\nB. the sun rose\nAnswer:",
       (" A", " B"), 0),
    Ex("mmlu", "What is 2 + 2?\nA. 3\nB. 4\nC. 5\nD. 22\nAnswer:", (" A", " B", " C", " D"), 1),
    Ex("mmlu", "Which is a colour?\nA. red\nB. dog\nC. run\nD. seven\nAnswer:", (" A", " B", " C", " D"), 0),
]


def count_forward_rows(model):
    rows = []
    handle = model.register_forward_pre_hook(lambda m, args, kwargs: rows.append(kwargs["input_ids"].shape[0]),
                                             with_kwargs=True)
    return rows, handle


def test_letter_options_take_one_row_per_example_and_match_the_general_path(tiny):
    model, tok = tiny
    rows, handle = count_forward_rows(model)
    try:
        fast = score_examples(model, tok, LETTER_EXAMPLES, batch_size=16, progress=False)
        assert rows == [len(LETTER_EXAMPLES)]  # one forward, one row per example
        rows.clear()
        general = score_examples(model, tok, LETTER_EXAMPLES, batch_size=16, progress=False, share_inputs=False)
        assert sum(rows) == sum(len(ex.options) for ex in LETTER_EXAMPLES)
    finally:
        handle.remove()
    for ex, f, g in zip(LETTER_EXAMPLES, fast, general):
        np.testing.assert_allclose(f, g, atol=1e-4, rtol=0)
        # The definition of the fast path: next-token log-probs at the last context position.
        ids = torch.tensor([tok(ex.prompt, add_special_tokens=False).input_ids])
        with torch.no_grad():
            last = torch.log_softmax(model(ids).logits[0, -1], -1)
        letters = [tok(o, add_special_tokens=False).input_ids[0] for o in ex.options]
        np.testing.assert_allclose(f, last[letters].numpy(), atol=1e-4, rtol=0)


def test_cloze_options_sharing_a_context_mix_with_letter_rows(tiny):
    """Options sharing a context run it once; a batch may hold letter and cloze examples."""
    model, tok = tiny
    examples = LETTER_EXAMPLES + [
        Ex("piqa", "Goal: dry wet hands.\nSolution:", (" use a towel", " use a bucket of water"), 0),
        Ex("hellaswag", "A man lifts a heavy box. He", (" puts it down.", " sings it.", " eats the box whole."), 0),
    ]
    shared = score_examples(model, tok, examples, batch_size=3, progress=False)
    alone = [score_examples(model, tok, [ex], batch_size=1, progress=False, share_inputs=False)[0] for ex in examples]
    for s, a in zip(shared, alone):
        np.testing.assert_allclose(s, a, atol=1e-4, rtol=0)


def test_a_context_runs_once_and_its_cache_serves_every_cloze_option(tiny):
    """One forward over the contexts (only their last logits), one over every option's remaining tokens."""
    model, tok = tiny
    examples = [Ex("hellaswag", "A man lifts a heavy box. He", (" puts it down.", " sings it.", " eats the box."), 0),
                Ex("piqa", "Goal: dry wet hands.\nSolution:", (" use a towel", " use a bucket of water"), 0)]
    widths = []
    handle = model.register_forward_hook(lambda m, args, out: widths.append(tuple(out.logits.shape[:2])))
    try:
        shared = score_examples(model, tok, examples, batch_size=16, progress=False)
    finally:
        handle.remove()
    lengths = [len(encode_pair(tok, ex.prompt, o)[1]) for ex in examples for o in ex.options]
    assert widths == [(2, 1), (5, max(lengths) - 1)]
    general = score_examples(model, tok, examples, batch_size=16, progress=False, share_inputs=False)
    for s, g in zip(shared, general):
        np.testing.assert_allclose(s, g, atol=1e-4, rtol=0)


# ---------------------------------------------------------------- metrics


def test_accuracy_and_acc_norm_from_known_loglikes():
    examples = [
        # Summed: " a" wins (-2 > -3). Per byte (delimiter space not counted):
        # -2/1 = -2.0 vs -3/11 = -0.27, the long option wins.
        Ex("d1", "p", (" a", " much longer"), 1),
        # Both agree on option 0.
        Ex("d1", "p", (" yes", " no"), 0),
        # Both agree on option 1, which is wrong.
        Ex("d2", "p", (" x", " y", " z"), 0),
        # "é" is 2 bytes but 1 character: -3/2 = -1.5 beats -2.5/1 per byte (per character it would not).
        Ex("d2", "p", (" é", " e"), 0),
    ]
    loglikes = [[-2.0, -3.0], [-1.0, -5.0], [-4.0, -1.0, -3.0], [-3.0, -2.5]]
    assert [option_bytes(o) for o in (" a", " much longer", " é", "é", " ")] == [1, 11, 2, 2, 1]
    assert predictions(examples, loglikes) == [(0, 1), (0, 0), (1, 1), (1, 0)]
    assert metrics(examples, loglikes) == {
        "d1": {"accuracy": 0.5, "acc_norm": 1.0, "n_examples": 2},
        "d2": {"accuracy": 0.0, "acc_norm": 0.5, "n_examples": 2},
    }


def test_evaluate_examples_reports_per_dataset_metrics_of_the_scores(tiny):
    model, tok = tiny
    result = evaluate_examples(model, tok, LETTER_EXAMPLES, batch_size=2, progress=False)
    loglikes = score_examples(model, tok, LETTER_EXAMPLES, batch_size=16, progress=False)
    assert result == metrics(LETTER_EXAMPLES, loglikes)
    assert {k: v["n_examples"] for k, v in result.items()} == {"boolq": 1, "copa": 1, "mmlu": 2}
    with pytest.raises(ValueError, match="intuition_scores must have shape"):
        evaluate_examples(model, tok, LETTER_EXAMPLES, intuition_scores=np.zeros((3, 8)), progress=False)


# ---------------------------------------------------------------- intuition scores


def test_intuition_scores_reach_the_mor1e_layers_per_row():
    import mor1e

    model, tok = load_model("tiny-random-llama", seed=1)
    k = 4
    mor1e.wrap(model, mor1e.MoR1EConfig(r1=2, r2=2, num_clusters=k))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("mor1e_B"):
                p.normal_(0, 0.5)  # B starts at 0, which would make the adapter (and scores) invisible
    examples = LETTER_EXAMPLES[:2] + [LETTER_EXAMPLES[0]]  # the third shares the first's prompt
    scores = np.eye(k, dtype=np.float32)[[0, 1, 3]]
    batched = score_examples(model, tok, examples, intuition_scores=scores, progress=False)
    one_by_one = [score_examples(model, tok, [ex], intuition_scores=s[None], progress=False)[0]
                  for ex, s in zip(examples, scores)]
    for b, o in zip(batched, one_by_one):
        np.testing.assert_allclose(b, o, atol=1e-4, rtol=0)
    # Same prompt, different intuition: different numbers, so those rows were not shared.
    assert np.abs(np.subtract(batched[0], batched[2])).max() > 1e-3
    # Cloze options of several tokens: each context's cache serves its options, under its own scores.
    cloze = [Ex("hellaswag", "A man lifts a heavy box. He", (" puts it down.", " sings it."), 0),
             Ex("piqa", "Goal: dry wet hands.\nSolution:", (" use a towel", " use a bucket of water"), 1),
             Ex("hellaswag", "A man lifts a heavy box. He", (" puts it down.", " sings it."), 0)]
    shared = score_examples(model, tok, cloze, intuition_scores=scores, progress=False)
    general = score_examples(model, tok, cloze, intuition_scores=scores, progress=False, share_inputs=False)
    for s_, g in zip(shared, general):
        np.testing.assert_allclose(s_, g, atol=1e-4, rtol=0)
    assert np.abs(np.subtract(shared[0], shared[2])).max() > 1e-3
    # Scores and masks are cleared afterwards, and a MoR1E model with intuition is never scored
    # without scores: no silent token-only routing.
    routers = [m for m in model.modules() if isinstance(m, mor1e.MoR1ERouter)]
    assert routers and all(r.intuition_scores is None and r.token_mask is None for r in routers)
    with pytest.raises(mor1e.MissingIntuitionError, match="intuition_scores"):
        score_examples(model, tok, examples, progress=False)


def test_the_token_only_ablation_is_scored_without_scores():
    import mor1e

    model, tok = load_model("tiny-random-llama", seed=1)
    mor1e.wrap(model, mor1e.MoR1EConfig(r1=2, r2=2, use_intuition=False, router_init="random"))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("mor1e_B"):
                p.normal_(0, 0.5)
    examples = LETTER_EXAMPLES[:2] + [LETTER_EXAMPLES[0]]
    plain = score_examples(model, tok, examples, progress=False)
    np.testing.assert_allclose(plain[0], plain[2], atol=1e-5, rtol=0)


def test_intuition_scores_on_an_unwrapped_model_change_nothing(tiny):
    model, tok = tiny
    with_scores = score_examples(model, tok, LETTER_EXAMPLES, intuition_scores=np.ones((4, 3)), progress=False)
    without = score_examples(model, tok, LETTER_EXAMPLES, progress=False)
    for a, b in zip(with_scores, without):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)


# ---------------------------------------------------------------- benchmark


@pytest.mark.parametrize("argv, message", [
    (["--examples", "0"], "--examples must be >= 1"),
    (["--datasets", "boolq", "nope"], "unknown dataset 'nope'"),
    (["--model", "smollm"], "unknown model"),
    (["--telemetry-methods", "mor1e,lora"], "unknown --telemetry-methods 'lora'"),
    (["--train-examples", "0"], "--train-examples must be >= 1"),
])
def test_scoring_benchmark_rejects_bad_arguments_in_one_line(argv, message, capsys):
    from harness.bench import scoring

    assert scoring.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_scoring_benchmark_prints_its_table_on_the_tiny_model(capsys):
    from harness.bench import scoring

    assert scoring.main(["--model", "tiny-random-llama", "--examples", "6", "--datasets", "boolq", "mmlu",
                         "--threads", "1"]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("| ") and "---" not in line]
    cut = next(i for i, line in enumerate(lines) if line.startswith("| method | config |"))
    table, telemetry = lines[:cut], lines[cut:]
    assert table[0].startswith("| method | format | examples | seconds | examples/s | speed-up |")
    assert len(table) == 1 + 4  # generation, batch-1 scoring, batched letter, batched cloze
    assert all("| 6 |" in row for row in table[1:])
    assert "Agreement of generation and batched letter scoring" in out
    # MoR1E (scored with real intuition scores) and MoLoRA, with and without router telemetry
    assert "Router telemetry cost: batched letter scoring of 6 examples" in out
    assert [row.split("|")[1].strip() for row in telemetry[1:]] == ["mor1e", "molora"]
    gate = {row.split("|")[1].strip(): row.split("|")[8].strip() for row in telemetry[1:]}
    assert gate["molora"] == "-" and 0.0 < float(gate["mor1e"]) < 1.0
    for row in telemetry[1:]:
        observed = float(row.split("|")[7].strip().rstrip("%"))
        assert 0.0 < observed < 100.0, row  # the observers ran, inside the timed pass
        stats = [float(v) for v in row.split("|")[9:13]]
        assert all(0.0 <= v <= 1.0 for v in stats), row
