"""The decode iteration shared by greedy search, sampling and beam search (blipx.generation.loop):
it reads the current length on the device and no other host value, updates its state in place
(what a CUDA graph needs), the finished-check cadence never changes the ids, and the CUDA-graph
sessions (blipx.generation.graphs) replay other calls' decodes correctly. On the CPU the graph
machinery runs with a stand-in capture that replays the iteration under a no-sync guard; a real
capture is the ``cuda`` test at the end."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from blipx.generation import graphs

from .helpers import PROMPT

CASES = {
    "greedy": dict(max_length=12),
    "greedy-min-rep-ngram": dict(max_length=12, min_length=5, repetition_penalty=1.1, no_repeat_ngram_size=2),
    "beam3": dict(num_beams=3, max_length=12),
    "beam3-min-rep": dict(num_beams=3, max_length=12, min_length=5, repetition_penalty=1.1),
    "beam3-lp-nrs2": dict(num_beams=3, max_length=12, length_penalty=0.5, num_return_sequences=2),
    "beam5-early": dict(num_beams=5, max_length=10, early_stopping=True),
    "beam3-never-ngram": dict(num_beams=3, max_length=10, early_stopping="never", length_penalty=1.5,
                              no_repeat_ngram_size=1),
    "sample-nrs2": dict(do_sample=True, top_p=0.9, top_k=0, max_length=12, num_return_sequences=2),
}


GEN = torch.Generator()  # one object, re-seeded: a graph session is tied to its generator


def _gen(ours, px, kw, **extra):
    if kw.get("do_sample"):
        extra["generator"] = GEN.manual_seed(11)
    return ours.generate(px, **kw, **extra)


def _same(a, b):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), f"\n{a.tolist()}\n{b.tolist()}"
        return
    assert torch.equal(a.sequences, b.sequences)
    for name in ("sequences_scores", "beam_indices"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None) and (x is None or torch.equal(x, y)), name
    assert (a.scores is None) == (b.scores is None)
    if a.scores is not None:
        assert len(a.scores) == len(b.scores) and all(torch.equal(x, y) for x, y in zip(a.scores, b.scores))


@pytest.mark.parametrize("name", list(CASES))
def test_finished_check_cadence_does_not_change_ids(captioners, px, name):
    """Checking "all finished" every 1, 3 or 50 steps: the same ids (and scores), with and
    without compaction; the extra iterations after every row finished change nothing."""
    _, ours = captioners
    kw = CASES[name]
    base = _gen(ours, px, kw, check_every=1, compact=0.0)
    for every in (3, 50):
        _same(base, _gen(ours, px, kw, check_every=every, compact=0.0))
    if not kw.get("do_sample"):  # sampling draws per running row: compaction changes the draws
        for every in (1, 3):
            _same(base, _gen(ours, px, kw, check_every=every, compact=1.0))
    full = dict(return_dict=True, output_scores=True)
    _same(_gen(ours, px, kw, check_every=1, **full), _gen(ours, px, kw, check_every=4, **full))


def test_processors_read_the_length_on_the_device():
    """Every processor, the min-length ban included, gives the same scores for the length as a
    host int and as the device tensor the decode loop passes (the cache position)."""
    from blipx.generation.config import resolve
    from blipx.generation.processors import LogitsProcessors

    s = resolve(1, 64, eos_token_id=6, pad_token_id=0, vocab_size=7, min_length=4, repetition_penalty=1.3,
                no_repeat_ngram_size=2, bad_words_ids=[[5], [1, 2]])
    procs = LogitsProcessors(s, 7, torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    for cur in range(1, 10):
        seqs = torch.randint(0, 7, (3, 12), generator=g)
        scores = torch.randn(3, 7, generator=g)
        want = procs(scores.clone(), seqs, cur)
        got = procs(scores.clone(), seqs, torch.tensor([cur]))
        assert torch.equal(got, want), cur
        assert bool(torch.isinf(want[:, 6]).all()) == (cur < 4), cur


class NoHostSync(TorchDispatchMode):
    """Fails on every aten op that reads a device value on the host or copies host data in: what
    a CUDA-graph capture refuses (on the CPU these would go unnoticed)."""

    BANNED = {"_local_scalar_dense", "nonzero", "is_nonzero", "lift_fresh", "lift_fresh_copy", "masked_select",
              "unique", "_unique2", "item"}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.__name__.split(".")[0]
        if name in self.BANNED:
            raise AssertionError(f"host sync in the decode iteration: {func}")
        if name == "index" and any(isinstance(i, torch.Tensor) and i.dtype == torch.bool
                                   for i in (args[1] if len(args) > 1 else ()) if i is not None):
            raise AssertionError(f"boolean indexing (a sync) in the decode iteration: {func}")
        return func(*args, **(kwargs or {}))


def _addresses(run):
    dec = run.dec
    kv = [t.data_ptr() for pair in dec.cross_kv if pair is not None for t in pair]
    return [t.data_ptr() for t in run.buffers()] + kv + [dec.cache.kv.data_ptr(), dec.cache.pos.data_ptr()]


class FakeCapture:
    """CPU stand-in for a CUDA-graph capture: "capture" records the run's buffer addresses;
    every "replay" runs the iteration under NoHostSync and checks that no buffer was rebound --
    the two properties a real graph's replay depends on."""

    instances: list[FakeCapture] = []

    def __init__(self, device):
        self.captured, self.replays, self.warmups = 0, 0, 0
        FakeCapture.instances.append(self)

    def warmup(self, run):
        self.warmups += 1
        run.iterate()

    def capture(self, run, generator):
        self.captured += 1
        addresses = _addresses(run)

        def replay():
            self.replays += 1
            with NoHostSync():
                run.iterate()
            assert _addresses(run) == addresses, "a state tensor was rebound instead of updated in place"

        return replay


@pytest.fixture
def fake_graphs(monkeypatch):
    FakeCapture.instances.clear()
    monkeypatch.setattr(graphs, "CAPTURE", FakeCapture)
    monkeypatch.setattr(graphs, "supported", lambda device: True)
    graphs.clear()
    yield
    graphs.clear()


@pytest.mark.parametrize("name", list(CASES))
def test_graph_sessions_replay_identical_ids(captioners, px, fake_graphs, name):
    """With the (stand-in) graphs: the ids of the eager loop; the iteration never syncs and only
    updates its buffers in place; a second call replays the first call's session (its state
    copied in) without a new capture; another batch size gets its own session."""
    _, ours = captioners
    kw = CASES[name]
    eager = _gen(ours, px, kw, cuda_graph=False, check_every=1, compact=0.0)
    first = _gen(ours, px, kw, cuda_graph=True, compact=0.0)
    _same(eager, first)
    (cap,) = FakeCapture.instances
    assert cap.captured == 1 and cap.replays > 0
    replays = cap.replays
    _same(eager, _gen(ours, px, kw, cuda_graph=True, compact=0.0))
    assert cap.captured == 1 and cap.replays > replays  # replayed, not captured again
    _same(_gen(ours, px[:2], kw, cuda_graph=False), _gen(ours, px[:2], kw, cuda_graph=True, compact=0.0))
    assert cap.captured == 2
    if not kw.get("do_sample"):  # compaction changes sampling draws; ids of greedy / beam stay
        _same(eager, _gen(ours, px, kw, cuda_graph=True, compact=1.0, check_every=2))


def test_another_generator_recaptures_on_the_same_buffers(captioners, px, fake_graphs):
    """A graph draws from the generator registered at its capture: a call with another generator
    object (CapFilt seeds one per chunk) recaptures, on the session's buffers, with the ids of an
    eager run with that generator."""
    _, ours = captioners
    kw = dict(do_sample=True, top_p=0.9, top_k=0, max_length=12, num_return_sequences=2, compact=0.0)
    for seed in (1, 2):
        eager = ours.generate(px, generator=torch.Generator().manual_seed(seed), cuda_graph=False, **kw)
        graphed = ours.generate(px, generator=torch.Generator().manual_seed(seed), cuda_graph=True, **kw)
        _same(eager, graphed)
    g = graphs.graphs_for(ours.text_decoder, px.device)
    assert len(g.sessions) == 1 and g.captures == 2


def test_graph_key_follows_weights(captioners, px, fake_graphs):
    """A session is tied to where the weights live: replacing a parameter tensor means a new
    capture (a graph would read the old memory)."""
    import copy

    _, ours = captioners
    model = copy.deepcopy(ours)
    kw = dict(max_length=10, compact=0.0)
    a = _gen(model, px, kw, cuda_graph=True)
    model.double().float()  # every parameter moves to new memory, with the same values
    b = _gen(model, px, kw, cuda_graph=True)
    _same(a, b)
    assert sum(c.captured for c in FakeCapture.instances) == 2


def test_graphs_live_and_die_with_their_decoder(captioners, px, fake_graphs):
    """The sessions hang off the decoder module: a deep copy (e.g. a momentum model) starts with
    none, and a dropped model is collected with its graphs (no global registry keeps it)."""
    import copy
    import gc
    import weakref

    _, ours = captioners
    model = copy.deepcopy(ours)
    _gen(model, px, dict(max_length=10, compact=0.0), cuda_graph=True)
    g = graphs.graphs_for(model.text_decoder, px.device)
    assert len(g.sessions) == 1
    twin = copy.deepcopy(model)
    assert len(graphs.graphs_for(twin.text_decoder, px.device).sessions) == 0
    alive = weakref.ref(model.text_decoder)
    del model, g
    gc.collect()
    assert alive() is None


def test_cuda_graph_settings_are_checked(captioners, px):
    _, ours = captioners
    with pytest.raises(ValueError, match="cuda_graph=True needs CUDA tensors"):
        ours.generate(px, cuda_graph=True, max_length=8)
    with pytest.raises(ValueError, match="cuda_graph must be True, False or None"):
        ours.generate(px, cuda_graph="yes", max_length=8)
    with pytest.raises(ValueError, match="check_every must be an integer >= 1"):
        ours.generate(px, check_every=0, max_length=8)
    # The default on the CPU: no capture, the same ids as asking for none.
    assert torch.equal(ours.generate(px, max_length=8), ours.generate(px, cuda_graph=False, max_length=8))


def test_one_step_and_prompt_edge_cases(captioners, px):
    """max_new_tokens=1 (only the last, decoder-free iteration) and a prompt with few steps left
    give the ids of HF-parity runs at other cadences."""
    _, ours = captioners
    for kw in (dict(max_new_tokens=1), dict(num_beams=3, max_new_tokens=1), dict(num_beams=2, max_new_tokens=2)):
        a = ours.generate(px, PROMPT, check_every=1, **kw)
        b = ours.generate(px, PROMPT, check_every=5, **kw)
        assert torch.equal(a, b) and a.shape[1] <= 5 + kw["max_new_tokens"]


@pytest.mark.cuda
def test_cuda_graph_capture_gives_hf_ids(captioners, px):
    """On the GPU: generate with captured iterations equals the eager loop and HF; the second
    call replays without capturing."""
    import copy

    hf, ours = (copy.deepcopy(m).cuda() for m in captioners)
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    graphs.clear()
    try:
        for kw in (dict(max_length=12, min_length=5, repetition_penalty=1.1),
                   dict(num_beams=3, max_length=12, min_length=5, repetition_penalty=1.1),
                   dict(num_beams=3, max_length=12, length_penalty=0.5, num_return_sequences=2)):
            ref = hf.generate(pixel_values=px.cuda(), **kw).cpu()
            eager = ours.generate(px.cuda(), cuda_graph=False, **kw).cpu()
            captured = ours.generate(px.cuda(), cuda_graph=True, **kw).cpu()
            again = ours.generate(px.cuda(), cuda_graph=True, **kw).cpu()
            assert torch.equal(eager, ref) and torch.equal(captured, ref) and torch.equal(again, ref), kw
        g = graphs.graphs_for(ours.text_decoder, torch.device("cuda"))
        assert g.captures >= 3 and g.replays > g.captures
        # Sampling: replays draw fresh numbers (seeded runs repeat, other seeds differ).
        kw = dict(do_sample=True, top_p=0.9, top_k=0, max_length=12, num_return_sequences=2, cuda_graph=True)
        gen = torch.Generator(device="cuda")
        a = ours.generate(px.cuda(), generator=gen.manual_seed(1), **kw)
        b = ours.generate(px.cuda(), generator=gen.manual_seed(1), **kw)
        c = ours.generate(px.cuda(), generator=gen.manual_seed(2), **kw)
        assert torch.equal(a, b) and not torch.equal(a, c)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
        graphs.clear()
