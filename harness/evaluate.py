"""Batched option log-likelihood scoring, the one way every dataset is scored.

An example is a context (the prompt) and a list of options (continuations).
Each option gets the summed log-probability of its tokens given the context;
the prediction is the argmax (``accuracy``), or the argmax of the log-likelihood
divided by the option's length in UTF-8 bytes, not counting the delimiter space
(``acc_norm``, as in lm-evaluation-harness).

How the work is shaped:

- Tokenisation goes through :func:`encode_pair`, which handles the
  context/continuation boundary like lm-evaluation-harness. Training uses the
  same function, so the model is trained on exactly the tokens it is scored on.
- A pair's model input is ``(context + continuation)[:-1]``. Pairs that share
  their context (every option of an example) run it once: its last position
  predicts each option's first token, and its key/value cache serves one short
  forward over all the options' remaining tokens (:func:`_prefix_logprobs`).
  Letter options (" A", " B", ...) are one token each, so the context's forward
  alone scores all of them (the "letter fast path"); cloze options of several
  tokens add one short row each instead of a whole sequence each. Models without
  explicit positions, and inputs that must be cut to fit, get one row per input.
- Rows are sorted by length and left-padded with explicit ``position_ids``
  (Llama derives positions from ``arange``, not from the attention mask), so
  the positions that predict the continuation sit at the end of every row and
  ``logits_to_keep`` skips the LM head everywhere else.
"""

from __future__ import annotations

import inspect
import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

# Used when neither the model config nor the tokenizer gives a usable limit.
DEFAULT_MAX_LENGTH = 2048


# ---------------------------------------------------------------- tokenisation


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _bos_prefix(tokenizer) -> list[int]:
    """``[bos]`` if the tokenizer prepends BOS by itself, else ``[]``.

    Only a leading BOS is kept from the tokenizer's special tokens; an appended
    EOS (some tokenizers add one) would sit between context and continuation.
    """
    bos = tokenizer.bos_token_id
    if bos is None:
        return []
    with_special = list(tokenizer("a", add_special_tokens=True)["input_ids"])
    return [bos] if with_special[:1] == [bos] and _encode(tokenizer, "a")[:1] != [bos] else []


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Token ids ``(ctx_ids, cont_ids)`` of a context and its continuation.

    The boundary is handled as lm-evaluation-harness does: trailing whitespace
    of the context moves onto the continuation (so "Answer: " + "A" is scored
    as "Answer:" + " A"), the whole string is encoded once, and the
    continuation's tokens are what the whole has beyond the context's own
    encoding. BOS is prepended only if the tokenizer adds one by itself
    (SmolLM2's does not). An empty context becomes the BOS token, or EOS when
    there is no BOS, so the first continuation token has something to be
    predicted from.
    """
    if not continuation:
        raise ValueError("encode_pair: the continuation is empty")
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    prefix = _bos_prefix(tokenizer)
    ctx = _encode(tokenizer, context) if context else []
    whole = _encode(tokenizer, context + continuation)
    cont = whole[len(ctx):]
    if not cont:
        # The continuation merged into the context's last token; score it on
        # its own rather than score nothing.
        cont = _encode(tokenizer, continuation)
    ctx = prefix + ctx
    if not ctx:
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        if start is None:
            raise ValueError("encode_pair: empty context and the tokenizer has neither BOS nor EOS")
        ctx = [start]
    return ctx, cont


def max_length_of(model, tokenizer) -> int:
    """The longest input the model is scored on: its position limit, else the tokenizer's."""
    config = getattr(_unwrapped(model), "config", None)
    limits = [getattr(config, "max_position_embeddings", None), getattr(tokenizer, "model_max_length", None)]
    limits = [int(x) for x in limits if isinstance(x, int) and 0 < x < 1_000_000]
    return min(limits) if limits else DEFAULT_MAX_LENGTH


# ---------------------------------------------------------------- scoring


@dataclass
class _Row:
    """One model input shared by every pair whose input it is."""

    input_ids: tuple[int, ...]
    score_row: int | None  # index into intuition_scores; pairs with different scores never share a row
    prefix: bool = False  # input_ids is the pairs' shared context (scored by _prefix_logprobs)
    keep: int = 0  # positions at the end whose logits are needed
    pairs: list = field(default_factory=list)  # (pair index, continuation ids)


def _unwrapped(model):
    """The HF model inside a wrapper such as a DeepSpeed engine (whose forward takes ``**kwargs``)."""
    return getattr(model, "module", model)


def forward_options(model) -> dict[str, str | bool]:
    """Which optional arguments the model's forward takes (checked once per call)."""
    params = inspect.signature(_unwrapped(model).forward).parameters
    keep_arg = next((n for n in ("logits_to_keep", "num_logits_to_keep") if n in params), None)
    # transformers 5 names the key/value cache `cache`; earlier releases `past_key_values`.
    cache_arg = next((n for n in ("cache", "past_key_values") if n in params), None)
    return {"keep_arg": keep_arg, "position_ids": "position_ids" in params, "cache_arg": cache_arg}


def _set_intuition(model, scores):
    """Route intuition scores to MoR1E layers; models without intuition layers ignore them."""
    from mor1e import set_intuition

    set_intuition(model, scores)


def _set_token_mask(model, attention_mask):
    """Tell MoR1E and MoLoRA routers which positions are real tokens (load balancing, telemetry)."""
    from mor1e import set_token_mask

    set_token_mask(model, attention_mask)


def _batch_logprobs(model, rows: list[_Row], pad_id: int, opts: dict, device) -> torch.Tensor:
    """Log-softmax over the vocabulary at the last ``keep`` positions of each row: (B, keep, V).

    With ``position_ids`` the rows are left-padded, so the needed positions of
    every row are the batch's last ``keep`` columns. Without it (a model that
    takes positions only from ``arange``) rows are right-padded and the needed
    positions are gathered from full logits.
    """
    keep = max(r.keep for r in rows)
    width = max(len(r.input_ids) for r in rows)
    left = opts["position_ids"]
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for b, r in enumerate(rows):
        n = len(r.input_ids)
        span = slice(width - n, width) if left else slice(0, n)
        ids[b, span] = torch.tensor(r.input_ids)
        mask[b, span] = 1
    kwargs = {"input_ids": ids.to(device), "attention_mask": mask.to(device), "use_cache": False}
    if left:
        kwargs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0).to(device)
        if opts["keep_arg"]:
            kwargs[opts["keep_arg"]] = keep
    _set_token_mask(model, kwargs["attention_mask"])  # every layer sees (B, T): padding is masked there
    logits = model(**kwargs).logits
    if left:
        logits = logits[:, -keep:]
    else:
        # Right padding: row b's needed positions end at its length.
        index = torch.stack(
            [torch.arange(len(r.input_ids) - keep, len(r.input_ids)).clamp(min=0) for r in rows]
        ).to(logits.device)
        logits = logits.gather(1, index[..., None].expand(-1, -1, logits.shape[-1]))
    return torch.log_softmax(logits.float(), dim=-1)


def _prefix_logprobs(model, rows: list[_Row], pad_id: int, opts: dict, device, scores) -> list[tuple[int, float]]:
    """(pair index, summed log-probability) of every pair of ``rows``, each row a shared context.

    Each context runs once: a left-padded forward whose last position predicts every
    continuation's first token, keeping its key/value cache. Then one forward over all the
    continuations (their tokens but the last, right-padded) attends to its context's cache
    and predicts the remaining tokens. The numbers are those of scoring ``context +
    continuation`` whole, up to float rounding; an example with k options costs one context
    and k short continuations instead of k whole sequences.
    """
    width = max(len(r.input_ids) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, width - len(r.input_ids):] = torch.tensor(r.input_ids)
        mask[b, width - len(r.input_ids):] = 1
    ids, mask = ids.to(device), mask.to(device)
    if scores is not None:
        _set_intuition(model, scores)
    _set_token_mask(model, mask)
    first = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                  use_cache=True, **{opts["keep_arg"]: 1})
    first_logprobs = torch.log_softmax(first.logits[:, -1].float(), dim=-1)  # (R, V)
    out = []
    rest = []  # (row, pair index, continuation) for continuations of two tokens or more
    for b, r in enumerate(rows):
        for i, cont in r.pairs:
            out.append([i, float(first_logprobs[b, cont[0]])])
            if len(cont) > 1:
                rest.append((b, len(out) - 1, cont))
    if rest:
        owner = torch.tensor([b for b, _, _ in rest], device=device)
        cache = first[opts["cache_arg"]]
        cache.batch_select_indices(owner)  # one copy of its context's cache per continuation
        span = max(len(cont) - 1 for _, _, cont in rest)
        cont_ids = torch.full((len(rest), span), pad_id, dtype=torch.long)
        cont_mask = torch.zeros((len(rest), span), dtype=torch.long)
        for j, (_, _, cont) in enumerate(rest):
            cont_ids[j, :len(cont) - 1] = torch.tensor(cont[:-1])
            cont_mask[j, :len(cont) - 1] = 1
        cont_ids, cont_mask = cont_ids.to(device), cont_mask.to(device)
        lengths = mask.sum(-1)[owner]
        if scores is not None:
            _set_intuition(model, scores[owner])
        _set_token_mask(model, cont_mask)
        logits = model(input_ids=cont_ids, attention_mask=torch.cat([mask[owner], cont_mask], dim=-1),
                       position_ids=lengths[:, None] + torch.arange(span, device=device), use_cache=True,
                       **{opts["cache_arg"]: cache}).logits
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        for j, (_, k, cont) in enumerate(rest):
            target = torch.tensor(cont[1:], device=logprobs.device)
            out[k][1] += float(logprobs[j, :len(cont) - 1].gather(-1, target[:, None]).sum())
    return [(i, value) for i, value in out]


def option_logprobs(
    model,
    tokenizer,
    contexts: Sequence[str],
    continuations: Sequence[str],
    batch_size: int = 16,
    intuition_scores=None,
    *,
    max_length: int | None = None,
    share_inputs: bool = True,
    progress: bool = False,
) -> list[float]:
    """Summed log-probability of each continuation given its context.

    ``intuition_scores`` (n_pairs, k) are the MoR1E intuition scores of each
    pair's example; each batch's rows are passed with ``mor1e.set_intuition``
    and cleared afterwards. A model wrapped with intuition refuses to be scored
    without them (``mor1e.MissingIntuitionError``). Each batch's padding mask
    goes to the routers (``mor1e.set_token_mask``), so router telemetry
    collected around this call counts real tokens only. Inputs longer than
    ``max_length`` (default: the model's position limit) are cut from the left,
    keeping the continuation.
    ``share_inputs=False`` gives every pair its own row (the general path;
    the numbers are the same, only slower).
    """
    if len(contexts) != len(continuations):
        raise ValueError(f"{len(contexts)} contexts but {len(continuations)} continuations")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if intuition_scores is None:
        from mor1e import MissingIntuitionError, needs_intuition

        if needs_intuition(model):
            raise MissingIntuitionError("option_logprobs: pass intuition_scores, one (k,) row per pair")
    if intuition_scores is not None:
        intuition_scores = torch.as_tensor(np.asarray(intuition_scores, dtype=np.float32))
        if intuition_scores.ndim != 2 or intuition_scores.shape[0] != len(contexts):
            raise ValueError(
                f"intuition_scores must have shape ({len(contexts)}, k), got {tuple(intuition_scores.shape)}"
            )
    max_length = max_length or max_length_of(model, tokenizer)

    device = next(model.parameters()).device
    opts = forward_options(model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    # Pairs that share their context (every option of an example) are scored as one context row
    # plus their continuations (see _prefix_logprobs) when the model takes explicit positions and
    # nothing needs cutting; the others get a row of their own, shared only by identical inputs.
    prefixed = share_inputs and opts["position_ids"] and opts["keep_arg"] is not None and opts["cache_arg"] is not None
    rows: dict[tuple, _Row] = {}
    for i, (context, continuation) in enumerate(zip(contexts, continuations)):
        ctx, cont = encode_pair(tokenizer, context, continuation)
        if len(cont) > max_length:
            raise ValueError(f"pair {i}: continuation has {len(cont)} tokens, over max_length {max_length}")
        score_row = i if intuition_scores is not None else None
        if prefixed and len(ctx) + len(cont) - 1 <= max_length:
            key = ("context", tuple(ctx), _score_key(intuition_scores, i))
            inp = tuple(ctx)
        else:
            # As in lm-evaluation-harness: keep the last max_length + 1 tokens,
            # the model sees all but the last one.
            inp = tuple((ctx + cont)[-(max_length + 1):][:-1])
            key = ("row", inp, _score_key(intuition_scores, i)) if share_inputs else ("pair", i)
        row = rows.get(key)
        if row is None:
            row = rows[key] = _Row(inp, score_row, prefix=key[0] == "context")
        row.keep = max(row.keep, len(cont))
        row.pairs.append((i, cont))

    # Longest first: similar lengths share a batch (less padding), and an
    # out-of-memory error shows up on the first batch, not the last.
    ordered = sorted(rows.values(), key=lambda r: (r.prefix, -len(r.input_ids), -r.keep))
    batches = [ordered[s:s + batch_size] for s in range(0, len(ordered), batch_size)]
    batches = [[r for r in b if r.prefix] for b in batches] + [[r for r in b if not r.prefix] for b in batches]
    batches = [b for b in batches if b]

    from tqdm.auto import tqdm

    out = [0.0] * len(contexts)
    # Restore each submodule's own mode afterwards, not a blanket train().
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            _set_intuition(model, None)
            bar = tqdm(total=len(ordered), desc="scoring", unit="seq", file=sys.stderr,
                       disable=None if progress else True, leave=False)
            for batch in batches:
                scores = None if intuition_scores is None else intuition_scores[[r.score_row for r in batch]].to(device)
                if batch[0].prefix:
                    for i, value in _prefix_logprobs(model, batch, pad_id, opts, device, scores):
                        out[i] = value
                    bar.update(len(batch))
                    continue
                if scores is not None:
                    _set_intuition(model, scores)
                logprobs = _batch_logprobs(model, batch, pad_id, opts, device)
                keep = logprobs.shape[1]
                for b, row in enumerate(batch):
                    for i, cont in row.pairs:
                        target = torch.tensor(cont, device=logprobs.device)
                        picked = logprobs[b, keep - len(cont):].gather(-1, target[:, None])
                        out[i] = float(picked.sum())
                bar.update(len(batch))
            bar.close()
    finally:
        if intuition_scores is not None:
            _set_intuition(model, None)
        _set_token_mask(model, None)
        for module, training in modes:
            module.training = training
    return out


def _score_key(intuition_scores, i):
    """Rows may be shared only between pairs with the same intuition scores."""
    return None if intuition_scores is None else intuition_scores[i].numpy().tobytes()


# ---------------------------------------------------------------- examples and metrics


def score_examples(model, tokenizer, examples, *, batch_size: int = 16, intuition_scores=None,
                   progress: bool = True, **kwargs) -> list[list[float]]:
    """Per-option log-likelihoods of each example (``example.prompt`` + ``example.options[j]``).

    ``intuition_scores`` is (len(examples), k): one row per example, shared by its options.
    """
    contexts, continuations, owner = [], [], []
    for e, ex in enumerate(examples):
        for option in ex.options:
            contexts.append(ex.prompt)
            continuations.append(option)
            owner.append(e)
    pair_scores = None
    if intuition_scores is not None:
        intuition_scores = np.asarray(intuition_scores, dtype=np.float32)
        if intuition_scores.ndim != 2 or intuition_scores.shape[0] != len(examples):
            raise ValueError(
                f"intuition_scores must have shape ({len(examples)}, k), got {intuition_scores.shape}"
            )
        pair_scores = intuition_scores[owner]
    flat = option_logprobs(model, tokenizer, contexts, continuations, batch_size, pair_scores,
                           progress=progress, **kwargs)
    out, pos = [], 0
    for ex in examples:
        out.append(flat[pos:pos + len(ex.options)])
        pos += len(ex.options)
    return out


def option_bytes(option: str) -> int:
    """The length acc_norm divides by: UTF-8 bytes of the option without its leading delimiter space.

    lm-evaluation-harness scores ``" " + choice`` and divides by ``len(choice)``;
    options here carry that space themselves, so it is dropped before counting.
    """
    text = option[1:] if option.startswith(" ") else option
    return max(len(text.encode("utf-8")), 1)


def predictions(examples, loglikes) -> list[tuple[int, int]]:
    """``(acc prediction, acc_norm prediction)`` per example; ties go to the first option."""
    preds = []
    for ex, ll in zip(examples, loglikes, strict=True):
        ll = np.asarray(ll, dtype=np.float64)
        n_bytes = np.array([option_bytes(o) for o in ex.options], dtype=np.float64)
        preds.append((int(np.argmax(ll)), int(np.argmax(ll / n_bytes))))
    return preds


def metrics(examples, loglikes) -> dict[str, dict]:
    """Per dataset: accuracy, acc_norm and n_examples from per-option log-likelihoods."""
    hits: dict[str, list] = defaultdict(list)
    for ex, (pred, pred_norm) in zip(examples, predictions(examples, loglikes)):
        hits[ex.dataset].append((pred == ex.gold, pred_norm == ex.gold))
    return {
        name: {
            "accuracy": float(np.mean([h[0] for h in rows])),
            "acc_norm": float(np.mean([h[1] for h in rows])),
            "n_examples": len(rows),
        }
        for name, rows in hits.items()
    }


def evaluate_examples(model, tokenizer, examples, *, batch_size: int = 16, intuition_scores=None,
                      progress: bool = True) -> dict[str, dict]:
    """Score every option of every example; per dataset ``{"accuracy", "acc_norm", "n_examples"}``."""
    loglikes = score_examples(model, tokenizer, examples, batch_size=batch_size,
                              intuition_scores=intuition_scores, progress=progress)
    return metrics(examples, loglikes)
