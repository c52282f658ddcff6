"""The SIMT emulator itself: each check fires on a kernel that commits its error, under every
schedule, and the CUDA semantics it implements (shuffle widths and clamping, ballot) hold.
Kernels: tests/simt/selftest.cpp."""

from __future__ import annotations

import pytest
import torch

from tests.simt import backend
from tests.simt.build import SimtUnavailable

SCHEDULES = list(backend.SCHEDULES)


@pytest.fixture(scope="module", autouse=True)
def _lib():
    try:
        backend.load()
    except SimtUnavailable as e:
        pytest.skip(f"SIMT emulator unavailable: {e}")


def run(case: str, schedule: str = "inorder", poison: int = 0xFF) -> str:
    torch.ops.blipx_simt.configure(backend.SCHEDULES[schedule], 7, poison, 16, 166912)
    return torch.ops.blipx_simt.selftest(case)


# case -> text the error must contain (each names kernel, block and thread too; checked below)
ERRORS = {
    "barrier_divergence": "barrier divergence: __syncthreads at selftest.cpp",
    "barrier_after_exit": ("reached after 1 thread(s) exited, first thread (5,0,0)", "thread (5,0,0) (warp 0 lane 5) [schedule"),
    "shfl_divergent": ("waits for it at __shfl_xor_sync", "__shfl_xor_sync (selftest.cpp:31:49, mask 0xffffffff): the mask names lane 16, which has exited"),
    "shfl_mismatch": "lanes of one mask meet at different warp collectives",
    "shfl_outside_mask": "which is not in the mask (undefined value)",
    "shfl_partial_warp": "the mask names lanes that do not exist (this warp has 16 threads)",
    # whichever comes first under the schedule: the exit or the wait
    "exit_before_barrier": ("thread(s) wait at __syncthreads (selftest.cpp", "reached after 32 thread(s) exited"),
    "dyn_smem_oob": "bytes from its start, beyond the 256 bytes the launch requested",
    "global_oob": "bytes past the end of a 256-byte device buffer (guard page)",
}


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("case", sorted(ERRORS))
def test_each_check_fires_and_names_the_thread(case, schedule):
    msg = run(case, schedule)
    want = ERRORS[case] if isinstance(ERRORS[case], tuple) else (ERRORS[case],)
    assert any(w in msg for w in want), msg
    assert "simt: kernel " in msg and "block (0,0,0)" in msg and "thread (" in msg, msg
    assert f"[schedule {schedule}]" in msg, msg


def test_fault_handler_leaves_the_process_usable():
    for _ in range(3):
        assert "guard page" in run("global_oob")
    assert run("shfl_semantics") == ""


def test_shuffle_and_ballot_semantics():
    for s in SCHEDULES:
        assert run("shfl_semantics", s) == "", s


def test_launch_limits():
    assert "cudaFuncSetAttribute(MaxDynamicSharedMemorySize) was not called" in run("smem_over_48k")
    assert run("smem_over_48k_with_attribute") == ""
    assert "40000 bytes of static plus 140000 of dynamic shared memory exceed the device's 166912" in run(
        "static_plus_dynamic_smem")
    assert "exceeds 1024 threads" in run("too_many_threads")
    assert "kernel parameters take 40008 bytes, more than 32764" in run("param_too_big")


def test_shared_memory_is_poisoned_before_each_block():
    assert run("shared_poison", poison=0xFF) == str(0xFFFFFFFF)
    assert run("shared_poison", poison=0x7F) == str(0x7F7F7F7F)


def test_schedules_differ_on_a_shared_memory_race():
    # Thread t reads its neighbour's slot without a barrier: which reads see poison depends on
    # who ran first, so the schedules disagree (and the op-level double run would flag it).
    seen = {s: run("shared_race", s) for s in SCHEDULES}
    assert len(set(seen.values())) >= 3, seen
    assert all(str(0xFFFFFFFF - 2**32) in v for v in seen.values()), seen  # poison read somewhere
