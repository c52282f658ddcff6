"""Negative control for the emulated kernel tests: plant known bugs in COPIES of the kernel
headers, build the emulated library from each copy, run that op's emulated tests, and report
which plants were caught. Every plant must be caught (the slow test test_plants.py asserts it).

    python -m tests.simt.plants            # all plants
    python -m tests.simt.plants -k philox  # plants whose name contains "philox"

The planted copies live in a temporary directory; csrc/ is never modified.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tests.simt.build import ROOT, build

KERNELS = ROOT / "csrc" / "include"


@dataclass(frozen=True)
class Plant:
    name: str
    header: str  # under csrc/include/blipx
    old: str  # replaced once: its first occurrence
    new: str
    tests: str  # the test file whose emulated cases must catch it


PLANTS = [
    Plant("removed barrier (read after write): cross-attention K/V tile used before all of it is loaded",
          "cross_attention.cuh", "      __syncthreads();\n      float s[kTileK];", "      float s[kTileK];",
          "tests/ops/test_cross_attention.py"),
    Plant("removed barrier (write after read): next K/V tile loaded while warps still read the last one",
          "cross_attention.cuh", "      __syncthreads();  // the previous tile is no longer read\n", "",
          "tests/ops/test_cross_attention.py"),
    Plant("removed barrier (write after read): block_sum partials overwritten by the next reduction",
          "sample_tokens.cuh",
          "  for (int d = 16; d > 0; d >>= 1) v += __shfl_xor_sync(kFull, v, d);\n  __syncthreads();\n",
          "  for (int d = 16; d > 0; d >>= 1) v += __shfl_xor_sync(kFull, v, d);\n",
          "tests/ops/test_sample_tokens.py"),
    Plant("off-by-one tile bound: the padding key k_len counted as a real key",
          "cross_attention.cuh", "const bool keep = key < p.k_len && !(p.mask", "const bool keep = key <= p.k_len && !(p.mask",
          "tests/ops/test_cross_attention.py"),
    Plant("shuffle in a divergent branch: lanes without a candidate skip the argmax shuffles",
          "sample_tokens.cuh",
          "    ArgBest o{__shfl_xor_sync(kFull, a.v, d), __shfl_xor_sync(kFull, a.idx, d)};",
          "    ArgBest o = a;\n    if (a.idx >= 0) o = ArgBest{__shfl_xor_sync(kFull, a.v, d), __shfl_xor_sync(kFull, a.idx, d)};",
          "tests/ops/test_sample_tokens.py"),
    Plant("unguarded shared-memory read: every lane reads a per-warp winner, beyond the warps that wrote one",
          "sample_hard_negatives.cuh",
          "    fin = lane < n_warps ? s_fin[lane] : RaceEntry<Acc>{Acc(0), -1};", "    fin = s_fin[lane];",
          "tests/ops/test_sample_hard_negatives.py"),
    Plant("dropped scale factor: dq not multiplied by the softmax scale",
          "cross_attention.cuh", "from_float<T>(dq[i] * p.scale)", "from_float<T>(dq[i])",
          "tests/ops/test_cross_attention.py"),
    Plant("off-by-one loop bound: the dq kernel's (not unrolled) key loop skips the last key of each tile",
          "cross_attention.cuh", "#pragma unroll 1\n      for (int j = 0; j < kTileK; ++j) {",
          "#pragma unroll 1\n      for (int j = 0; j < kTileK - 1; ++j) {", "tests/ops/test_cross_attention.py"),
    Plant("fragment layout: two lanes' ldmatrix.trans row addresses swapped (lanes 8-15 <-> 16-23)",
          "mma.cuh", "ldmatrix_x4_trans(b, tile + (lane % 16) * ld + (lane / 16) * 8);",
          "ldmatrix_x4_trans(b, tile + (lane % 8 + (lane / 16) * 8) * ld + ((lane / 8) % 2) * 8);",
          "tests/simt/test_mma.py"),
    Plant("fragment layout: an accumulator re-packed as an A operand with registers 1 and 2 swapped",
          "mma.cuh", "  a[1] = pack2<T>(c0[2], c0[3]);  // row g + 8, k 2t\n  a[2] = pack2<T>(c1[0], c1[1]);",
          "  a[1] = pack2<T>(c1[0], c1[1]);\n  a[2] = pack2<T>(c0[2], c0[3]);", "tests/simt/test_mma.py"),
    Plant("fragment layout: the mma emulation's callers hand over B's two registers swapped",
          "mma.cuh", "const uint32_t b[2] = {b0, b1};", "const uint32_t b[2] = {b1, b0};", "tests/simt/test_mma.py"),
    Plant("missing cp.async wait: the forward uses a K/V tile while its copies may still be in flight",
          "cross_attention_mma.cuh", "mma::cp_async_wait<1>();", "mma::cp_async_wait<2>();", "tests/simt/test_mma.py"),
    Plant("dropped scale factor: the tensor-core dk not multiplied by the softmax scale",
          "cross_attention_mma.cuh", "store_c_tile<T>(dk[j], warp * 16, 8 * j, p.head_dim, p.scale, lane, dk_row);",
          "store_c_tile<T>(dk[j], warp * 16, 8 * j, p.head_dim, 1.0f, lane, dk_row);", "tests/simt/test_mma.py"),
    Plant("wrong Philox offset: the sampler ignores the generator's offset (every call draws the same numbers)",
          "sample_tokens.cuh", "curand_init(seed, static_cast<uint64_t>(row) * nt + tid, offset, &st);",
          "curand_init(seed, static_cast<uint64_t>(row) * nt + tid, 0, &st);", "tests/ops/test_sample_tokens.py"),
]


def planted_copy(plant: Plant, into: Path) -> Path:
    """A copy of csrc/include with `plant` applied; returns the include root."""
    root = into / "include"
    shutil.copytree(KERNELS, root)
    path = root / "blipx" / plant.header
    text = path.read_text()
    if plant.old not in text:
        raise ValueError(f"plant {plant.name!r}: the text to replace is not in {plant.header} (kernel changed?)")
    path.write_text(text.replace(plant.old, plant.new, 1))
    return root


def run_plant(plant: Plant, timeout: float = 900) -> tuple[bool, str]:
    """(caught, evidence): builds the planted library, runs the op's emulated tests on it."""
    with tempfile.TemporaryDirectory(prefix="blipx-plant-") as tmp:
        lib = build(planted_copy(plant, Path(tmp)))
        env = dict(os.environ, BLIPX_SIMT_LIB=str(lib))
        cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-m", "simt", "-p", "no:cacheprovider", plant.tests]
        try:
            r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return False, f"timed out after {timeout:.0f} s"
    out = r.stdout + r.stderr
    # Caught = a test failed (rc 1). Anything else (collection error, usage) is not evidence.
    failed = [ln for ln in out.splitlines() if ln.startswith("FAILED ")]
    if r.returncode == 1 and failed:
        reason = next((ln for ln in out.splitlines() if ln.startswith("E ")), "")
        return True, failed[0][len("FAILED "):] + (f" -- {reason[1:].strip()[:300]}" if reason else "")
    return False, f"pytest exit {r.returncode}: " + out.strip().splitlines()[-1] if out.strip() else "no output"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-k", default="", help="only plants whose name contains this text")
    args = ap.parse_args(argv)
    chosen = [p for p in PLANTS if args.k.lower() in p.name.lower()]
    missed = 0
    for p in chosen:
        t0 = time.time()
        caught, why = run_plant(p)
        missed += not caught
        print(f"{'CAUGHT' if caught else 'MISSED'}  {p.name}  ({time.time() - t0:.0f} s)\n        {why}", flush=True)
    print(f"{len(chosen) - missed} of {len(chosen)} planted bugs caught")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
