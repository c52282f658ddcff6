"""One CUDA graph per decode iteration, replayed (``generate(..., cuda_graph=True)``, the default
on CUDA).

A :class:`~blipx.generation.loop.DecodeRun`'s iteration reads no host value and updates its
buffers in place, so it can be captured once and replayed for every later step. Graphs are kept
per decoder module, one per *session key*: the run's shapes (rows = images x beams, max length,
vocabulary, image tokens, dtypes), the generation settings (they are baked into the kernels'
arguments), whether a user generator draws the samples, the addresses of the decoder's
parameters (a graph reads the weights where they were at capture), the kernel switch and the
cross-attention dispatch mode. The first run of a key is adopted as the session (its buffers
then live with the graph); later generate calls, and compacted batches that meet a known key
again, copy their state into the session's buffers (:meth:`DecodeRun.load_`) and replay -- no
capture, no per-token launches.

Per session: the first iteration runs eagerly on the capture stream (lazy initialisations, and
the cross-attention backend is timed and chosen there, outside the capture), the next one is
captured and then replayed, and so on; a call with another generator object recaptures on the
session's buffers (a graph draws from the generator it was captured with). At most
:data:`MAX_SESSIONS` graphs per decoder are kept (least recently used first out); :func:`clear`
drops them and the memory they hold.

Nothing here runs on the CPU: there the same iteration runs eagerly (:func:`run_loop` without
graphs). ``CAPTURE`` is the one place that touches ``torch.cuda.CUDAGraph``; the CPU tests
replace it with a recording stand-in to check the session logic.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict

import torch
from torch import nn

from blipx.generation.loop import DecodeRun

MAX_SESSIONS = 8


class _CudaCapture:
    """A real capture: warm-up and capture on one side stream, replay on the current stream."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.stream = torch.cuda.Stream(device)
        self.pool = torch.cuda.graph_pool_handle()  # shared: the graphs of one decoder never overlap

    def warmup(self, run: DecodeRun) -> None:
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.stream):
            run.iterate()
        torch.cuda.current_stream(self.device).wait_stream(self.stream)

    def capture(self, run: DecodeRun, generator: torch.Generator | None):
        graph = torch.cuda.CUDAGraph()
        if generator is not None:
            # A user generator must be registered so that every replay draws fresh numbers from
            # it (the default CUDA generator is registered by the capture itself).
            graph.register_generator_state(generator)
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.graph(graph, pool=self.pool, stream=self.stream):
            run.iterate()
        torch.cuda.current_stream(self.device).wait_stream(self.stream)
        return graph.replay


def CAPTURE(device: torch.device) -> _CudaCapture:  # noqa: N802 (replaced by the CPU tests)
    return _CudaCapture(device)


def supported(device: torch.device) -> bool:
    """Whether decode iterations on ``device`` can be captured (CUDA only; the CPU tests patch it
    together with :func:`CAPTURE`)."""
    return device.type == "cuda"


class _Session:
    __slots__ = ("run", "replay", "warm", "generator")

    def __init__(self, run: DecodeRun, generator) -> None:
        self.run, self.replay, self.warm, self.generator = run, None, False, generator


class StepGraphs:
    """The captured iterations of one decoder module (see the module docstring)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.sessions: OrderedDict[tuple, _Session] = OrderedDict()
        self.capturer = CAPTURE(device)
        self.captures = 0  # graphs captured (for tests and ``blipx bench``)
        self.replays = 0
        _ALL.add(self)

    def __reduce__(self):
        # A copied or pickled decoder (copy.deepcopy for a momentum model, torch.save) starts
        # with no graphs: they belong to this module's memory.
        return (StepGraphs, (self.device,))

    def bind(self, key: tuple, generator: torch.Generator | None) -> _Bound:
        """The graphs of one generate call: ``key`` = everything but the run's shapes."""
        return _Bound(self, key, generator)

    def _session(self, key: tuple, run: DecodeRun, generator) -> _Session:
        sess = self.sessions.get(key)
        if sess is None:
            sess = self.sessions[key] = _Session(run, generator)  # adopt: the run's buffers live on
            while len(self.sessions) > MAX_SESSIONS:
                self.sessions.popitem(last=False)
        else:
            self.sessions.move_to_end(key)
            if sess.run is not run:
                sess.run.load_(run)
            if sess.generator is not generator:
                # A graph draws from the generator registered at its capture: another generator
                # object (CapFilt seeds one per chunk) means a new capture on the same buffers.
                sess.generator, sess.replay = generator, None
        return sess


class _Bound:
    """StepGraphs for one call: :meth:`iterate` is what :func:`run_loop` calls per step."""

    def __init__(self, graphs: StepGraphs, key: tuple, generator) -> None:
        self.graphs, self.key, self.generator = graphs, key, generator
        self._last: _Session | None = None  # the session of the previous step

    def iterate(self, run: DecodeRun) -> DecodeRun:
        g = self.graphs
        sess = self._last
        if sess is None or sess.run is not run:  # a new call, or a compacted run
            sess = self._last = g._session(self.key + (run.shape_key(),), run, self.generator)
        run = sess.run
        if sess.replay is not None:
            sess.replay()
            g.replays += 1
        elif not sess.warm:
            g.capturer.warmup(run)
            sess.warm = True
        else:
            sess.replay = g.capturer.capture(run, self.generator)
            g.captures += 1
            sess.replay()  # the capture recorded the iteration; this runs it
            g.replays += 1
        return run


# Every StepGraphs alive, for clear(). The graphs themselves hang off their decoder module (an
# attribute): the sessions hold the decoder (their runs step it), so a registry outside it would
# keep every decoder alive; as an attribute they die with it.
_ALL: weakref.WeakSet[StepGraphs] = weakref.WeakSet()
_ATTR = "_blipx_step_graphs"


def graphs_for(decoder: nn.Module, device: torch.device) -> StepGraphs:
    """The decoder's graphs on ``device`` (made on first use; they die with the module)."""
    g = decoder.__dict__.get(_ATTR)
    if g is None or g.device != device:
        g = StepGraphs(device)
        g.owner = weakref.ref(decoder)
        object.__setattr__(decoder, _ATTR, g)  # a plain attribute: not a submodule, not in state_dict
    return g


def clear(decoder: nn.Module | None = None) -> None:
    """Drop the captured graphs (and the buffers they hold) of ``decoder``, or of every decoder."""
    owners = [g.owner() for g in list(_ALL) if getattr(g, "owner", None) is not None] if decoder is None else [decoder]
    for module in owners:
        if module is not None:
            g = module.__dict__.pop(_ATTR, None)
            if g is not None:
                g.sessions.clear()


def weights_key(decoder: nn.Module) -> tuple:
    """Where the decoder's weights live: a graph captured on other addresses must not replay."""
    return tuple(p.data_ptr() for p in decoder.parameters()) + tuple(b.data_ptr() for b in decoder.buffers())
