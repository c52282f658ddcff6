"""generate(return_dict=True, output_scores=True) against HF's
generate(return_dict_in_generate=True, output_scores=True) on the same tiny weights: ids,
per-step ``scores`` (processed logits for greedy, warped logits for sampling, processed
log-probs for beam search), ``sequences_scores`` and ``beam_indices``; and
``no_repeat_ngram_size`` / ``bad_words_ids`` id for id with HF, as whole runs and as processors."""

from __future__ import annotations

import pytest
import torch

from blipx.generation.config import resolve
from blipx.generation.processors import BadWords, LogitsProcessors, ban_repeated_ngrams

from .helpers import PAD, PROMPT, SEP, check_against_hf, hf_prompt

transformers = pytest.importorskip("transformers")

CASES = {
    "greedy": dict(max_length=12),
    "greedy-min-rep-ngram": dict(max_length=12, min_length=5, repetition_penalty=1.1, no_repeat_ngram_size=2),
    "beam3": dict(num_beams=3, max_length=12),
    "beam3-min-rep": dict(num_beams=3, max_length=12, min_length=5, repetition_penalty=1.1),
    "beam3-lp-nrs2": dict(num_beams=3, max_length=12, length_penalty=0.5, num_return_sequences=2),
    "beam5-early": dict(num_beams=5, max_length=10, early_stopping=True),
    "beam3-never-ngram": dict(num_beams=3, max_length=10, early_stopping="never", length_penalty=1.5,
                              no_repeat_ngram_size=1),
}


@pytest.mark.parametrize("name", list(CASES))
def test_scores_match_hf(captioners, px, name):
    hf, ours = captioners
    kw = CASES[name]
    ref = hf.generate(pixel_values=px, return_dict_in_generate=True, output_scores=True, **kw)
    out = ours.generate(px, return_dict=True, output_scores=True, **kw)
    check_against_hf(ref, out, beam=kw.get("num_beams", 1) > 1)
    # The returned ids are those of the default call (which may take the fused beam step).
    assert torch.equal(out.sequences, ours.generate(px, **kw))


def test_scores_match_hf_with_prompt(captioners, px):
    hf, ours = captioners
    kw = dict(num_beams=3, max_new_tokens=8, length_penalty=0.5, num_return_sequences=2, repetition_penalty=1.2)
    ref = hf.generate(pixel_values=px, **hf_prompt(px.shape[0]), return_dict_in_generate=True, output_scores=True, **kw)
    check_against_hf(ref, ours.generate(px, PROMPT, return_dict=True, output_scores=True, **kw), beam=True)


@pytest.mark.parametrize("kw", [dict(top_p=0.9, top_k=0, temperature=0.8, max_length=12, min_length=4),
                                dict(max_length=10, num_return_sequences=2, no_repeat_ngram_size=2)])
def test_sampling_scores_match_hf(captioners, px, reference_ops, kw):
    """Sampling scores are HF's warped logits (temperature, top-k 50 by default, top-p)."""
    hf, ours = captioners
    torch.manual_seed(5)
    ref = hf.generate(pixel_values=px, do_sample=True, return_dict_in_generate=True, output_scores=True, **kw)
    torch.manual_seed(5)
    out = ours.generate(px, do_sample=True, return_dict=True, output_scores=True, **kw)
    check_against_hf(ref, out, beam=False)
    # The filters did remove tokens, so the -inf pattern comparison means something.
    assert all(torch.isinf(t).any() for t in out.scores)


def test_return_dict_without_scores(captioners, px):
    """The default return stays a tensor; return_dict alone gives the ids (and, for beam
    search, sequences_scores / beam_indices, also through image compaction) but no per-step
    scores, and needs no extra decoder work."""
    hf, ours = captioners
    kw = dict(num_beams=3, max_length=12, num_return_sequences=2)
    plain = ours.generate(px, **kw)
    assert isinstance(plain, torch.Tensor)
    full = ours.generate(px, return_dict=True, output_scores=True, **kw)
    for compact in (0.0, 1.0):
        out = ours.generate(px, return_dict=True, compact=compact, **kw)
        assert out.scores is None and torch.equal(out.sequences, plain)
        torch.testing.assert_close(out.sequences_scores, full.sequences_scores)
        assert torch.equal(out.beam_indices, full.beam_indices)
    greedy = ours.generate(px, max_length=12, return_dict=True)
    assert greedy.scores is None and greedy.sequences_scores is None and greedy.beam_indices is None
    with pytest.raises(ValueError, match="output_scores=True needs return_dict=True"):
        ours.generate(px, output_scores=True)


def _bad_words_from(out: torch.Tensor) -> list[list[int]]:
    """A single token and a two-token sequence that the unconstrained run generates (from its
    longest caption, so neither is [SEP] or padding)."""
    row = max(out.tolist(), key=lambda r: sum(t not in (SEP, PAD) for t in r))
    return [[row[1]], [row[2], row[3]]]


@pytest.mark.parametrize("kw", [dict(max_length=12), dict(num_beams=3, max_length=12)])
def test_bad_words_and_ngrams_ids_match_hf(captioners, px, kw):
    hf, ours = captioners
    free = ours.generate(px, **kw)
    for extra in (dict(bad_words_ids=_bad_words_from(free)), dict(no_repeat_ngram_size=2),
                  dict(no_repeat_ngram_size=3, bad_words_ids=_bad_words_from(free) + [[SEP]])):
        ref = hf.generate(pixel_values=px, **kw, **extra)
        out = ours.generate(px, **kw, **extra)
        assert torch.equal(out, ref), f"{extra}\nHF:    {ref.tolist()}\nblipx: {out.tolist()}"
        # The constraint bites on these weights (else the test would pass with it ignored).
        assert out.shape != free.shape or not torch.equal(out, free), extra
    bad = _bad_words_from(free)
    out = ours.generate(px, **kw, bad_words_ids=bad)
    rows = out.tolist()
    assert all(bad[0][0] not in r[1:] for r in rows)
    assert all((r[i], r[i + 1]) != tuple(bad[1]) for r in rows for i in range(len(r) - 1))


# --- the processors alone, against HF's classes, on buffers longer than the history ----------


def _buffer(n: int, cur: int, t_max: int, vocab: int, seed: int) -> torch.Tensor:
    """Random ids [n, t_max] from a small alphabet (so n-grams repeat); slots from ``cur`` on hold
    ids that would change the result if they were read as history."""
    g = torch.Generator().manual_seed(seed)
    seqs = torch.randint(0, 4, (n, t_max), generator=g)
    seqs[:, cur:] = torch.randint(0, vocab, (n, t_max - cur), generator=g)
    return seqs


@pytest.mark.parametrize("size", [1, 2, 3])
def test_no_repeat_ngram_processor_equals_hf(size):
    from transformers.generation.logits_process import NoRepeatNGramLogitsProcessor

    vocab, t_max = 7, 16
    for cur in range(1, t_max):
        seqs = _buffer(5, cur, t_max, vocab, seed=cur)
        scores = torch.randn(5, vocab, generator=torch.Generator().manual_seed(100 + cur))
        ref = NoRepeatNGramLogitsProcessor(size)(seqs[:, :cur], scores.clone())
        assert torch.equal(ban_repeated_ngrams(scores, seqs, cur, size), ref), cur
        # A device-side length (what a captured decode loop uses) gives the same bans.
        assert torch.equal(ban_repeated_ngrams(scores, seqs, torch.tensor([cur]), size), ref), cur
    assert torch.isinf(ref).any()  # the alphabet is small enough for bans to happen


def test_bad_words_processor_equals_hf():
    from transformers.generation.logits_process import NoBadWordsLogitsProcessor

    vocab, t_max, eos = 7, 12, 6
    words = [[5], [1, 2], [2, 2], [0, 1, 3], [3, 3, 3, 3], [eos]]
    s = resolve(1, 64, eos_token_id=eos, pad_token_id=0, vocab_size=vocab, bad_words_ids=words)
    assert (eos,) not in s.bad_words_ids  # HF drops the lone EOS
    ours = BadWords(s.bad_words_ids, vocab, torch.device("cpu"))
    # transformers 5.17 (the GPU machine's) skips a word longer than the context even when its
    # prefix fits (``len(word) > input_ids.shape[1]``); later releases compare the prefix, as
    # blipx does. Where the installed HF has the older rule, compare from the longest word on.
    probe = NoBadWordsLogitsProcessor([[1, 2]], eos_token_id=eos)(torch.tensor([[1]]), torch.zeros(1, 3))
    first = 1 if torch.isinf(probe[0, 2]) else max(map(len, words))
    banned_any = 0
    for cur in range(first, t_max):
        seqs = _buffer(6, cur, t_max, vocab, seed=cur)
        scores = torch.randn(6, vocab, generator=torch.Generator().manual_seed(200 + cur))
        ref = NoBadWordsLogitsProcessor(words, eos_token_id=eos)(seqs[:, :cur], scores.clone())
        # HF's [5] is always banned; what the sequences add depends on the history.
        got = LogitsProcessors(s, vocab, torch.device("cpu"))(scores.clone(), seqs, cur)
        assert torch.equal(got, ref), cur
        assert torch.equal(ours(scores, seqs, torch.tensor([cur])), ref), cur
        banned_any += int(torch.isinf(ref[:, :5]).sum())
    assert banned_any > 0


def test_processors_compile_without_graph_breaks():
    """The processors are tensor ops: torch.compile(fullgraph=True) traces them (a host sync
    such as .item() or .tolist(), or a data-dependent shape, would break the graph)."""
    import torch._dynamo

    s = resolve(1, 64, eos_token_id=6, pad_token_id=0, vocab_size=7, min_length=3, repetition_penalty=1.3,
                no_repeat_ngram_size=2, bad_words_ids=[[5], [1, 2], [0, 1, 3]])
    procs = LogitsProcessors(s, 7, torch.device("cpu"))
    seqs = _buffer(4, 6, 12, 7, seed=0)
    scores = torch.randn(4, 7)
    torch._dynamo.reset()
    compiled = torch.compile(lambda x, q: procs(x, q, 6), fullgraph=True, backend="eager")
    assert torch.equal(compiled(scores.clone(), seqs), procs(scores.clone(), seqs, 6))


@pytest.mark.cuda
def test_scores_match_hf_on_cuda(captioners, px):
    """The unfused beam step, the processors and the score bookkeeping on the GPU (fp32, TF32
    off), against HF on the same device."""
    import copy

    hf, ours = (copy.deepcopy(m).cuda() for m in captioners)
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        free = ours.generate(px.cuda(), max_length=12).cpu()
        for kw in (dict(max_length=12, min_length=5, repetition_penalty=1.1, no_repeat_ngram_size=2),
                   dict(num_beams=3, max_length=12, num_return_sequences=2, bad_words_ids=_bad_words_from(free),
                        no_repeat_ngram_size=2)):
            ref = hf.generate(pixel_values=px.cuda(), return_dict_in_generate=True, output_scores=True, **kw)
            out = ours.generate(px.cuda(), return_dict=True, output_scores=True, **kw)
            assert out.sequences.is_cuda and all(t.is_cuda for t in out.scores)
            check_against_hf(ref, out, beam=kw.get("num_beams", 1) > 1)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
