"""The static report of the compiled CUDA kernels (blipx.ops.kernel_report); no GPU needed.

First the arithmetic and the parsers on hand-made inputs (these run everywhere), then the report
of the built extension: it needs a CUDA build of blipx._C and cuobjdump/nvdisasm (the torch CUDA
wheel's triton ships both), and is skipped only when one of those is missing.
"""

from __future__ import annotations

import re
import textwrap
from collections import Counter

import pytest

from blipx.ops import kernel_report as kr

SM80, SM90 = kr.ARCH_LIMITS["sm_80"], kr.ARCH_LIMITS["sm_90"]


# (arch, threads, regs, smem bytes, opt-in) -> (blocks per SM, percent, limiter), worked by hand:
# regs/warp = roundup(regs * 32, 256); warps per sub-partition = 16384 // regs/warp (x 4 per SM);
# smem/block = roundup(smem + 1024 reserved, 128) against 164 KB (sm_80) / 228 KB (sm_90).
OCCUPANCY_CASES = [
    (SM80, 256, 32, 0, False, 8, 100.0, "registers"),  # 1024/warp: 16 warps/sub -> 64 warps, 8 blocks
    (SM80, 256, 40, 0, False, 6, 75.0, "registers"),  # 1280: 12/sub -> 48 warps -> 6 blocks
    (SM80, 256, 56, 0, False, 4, 50.0, "registers"),  # 1792: 9/sub -> 36 warps -> 4 blocks of 8
    (SM80, 256, 88, 0, False, 2, 25.0, "registers"),  # 2816: 5/sub -> 20 warps -> 2 blocks
    (SM80, 32, 88, 0, False, 20, 31.25, "registers"),  # per sub-partition: 20 warps, not 65536 // 2816 = 23
    (SM80, 256, 255, 0, False, 1, 12.5, "registers"),  # 8192: 2/sub -> 8 warps -> 1 block
    (SM80, 1024, 64, 0, False, 1, 50.0, "registers"),  # 2048: 8/sub -> 32 warps -> 1 block of 32
    (SM80, 1024, 65, 0, False, 0, 0.0, "launch fails"),  # 2304 x 32 warps = 73728 > 65536
    (SM80, 1024, 28, 126168, True, 1, 50.0, "shared memory"),  # 127192 -> 127232 B; 167936 // 127232 = 1
    (SM90, 1024, 28, 126168, True, 1, 50.0, "shared memory"),  # 233472 // 127232 = 1
    (SM80, 1024, 28, 126168, False, 0, 0.0, "launch fails"),  # > 48 KB without the opt-in attribute
    (SM80, 256, 32, 40960, False, 4, 50.0, "shared memory"),  # 41984 B/block: 167936 // 41984 = 4
    (SM90, 256, 32, 40960, False, 5, 62.5, "shared memory"),  # 233472 // 41984 = 5 -> 40 warps
    (SM80, 128, 16, 0, False, 16, 100.0, "warps"),  # 4-warp blocks: 64 // 4 = 16 before regs (32)
    (SM80, 32, 16, 0, False, 32, 50.0, "blocks"),  # 1-warp blocks stop at 32 blocks per SM
    (SM80, 1, 22, 0, False, 32, 50.0, "blocks"),  # a 1-thread block still takes a warp slot
    (SM80, 1025, 16, 0, False, 0, 0.0, "launch fails"),
]


@pytest.mark.parametrize("arch,threads,regs,smem,opt_in,blocks,percent,limiter", OCCUPANCY_CASES)
def test_occupancy_arithmetic(arch, threads, regs, smem, opt_in, blocks, percent, limiter):
    occ = kr.theoretical_occupancy(arch, threads, regs, smem, smem_opt_in=opt_in)
    assert occ.blocks_per_sm == blocks
    assert occ.percent == pytest.approx(percent)
    assert occ.limiter.startswith(limiter)


def test_parse_design_reads_every_item_and_rejects_typos():
    d = kr.parse_design(" occupancy >= 50%, sm_90 occupancy >= 62.5%, local <= 256 B, ldg128, mma -- why")
    assert d.errors == []
    assert (d.min_occupancy("sm_80"), d.min_occupancy("sm_90")) == (50.0, 62.5)
    assert (d.local_bytes, d.ldg128, d.mma, d.why) == (256, True, True, "why")
    bad = kr.parse_design(" ocupancy >= 50%, ldg-128 -- typo")
    assert len(bad.errors) == 3  # two unreadable items and no occupancy at all


def test_scan_headers_finds_design_lines_and_launch_bounds(tmp_path):
    (tmp_path / "k.cuh").write_text(textwrap.dedent("""\
        constexpr int kThreads = 128;
        // What the kernel does.
        // blipx-design: occupancy >= 50% -- reason
        template <typename T>
        __global__ void __launch_bounds__(kThreads)
            a_kernel(T* p) {}
        // no design line here
        __global__ void b_kernel(int* p) {}
        """))
    heads = kr.scan_headers(tmp_path)
    assert set(heads) == {"a_kernel", "b_kernel"}
    assert heads["a_kernel"].launch_bounds == 128 and heads["a_kernel"].line == 5
    assert heads["a_kernel"].design.min_occupancy("sm_80") == 50.0
    assert heads["b_kernel"].design is None


def test_parse_sass_counts_widths_local_traffic_and_tensor_cores():
    sass = textwrap.dedent("""\
        \t.section\t.text._Z1kv,"ax",@progbits
                /*0000*/                   LDG.E.128 R4, desc[UR4][R2.64] ;
                /*0010*/              @!P0 LDG.E.U16.CONSTANT R6, [R2.64] ;
                /*0020*/                   LDG.E.64.CONSTANT R8, [R2.64] ;
                /*0030*/                   STG.E.128 [R2.64], R4 ;
                /*0040*/                   STL [R1], R2 ;
                /*0050*/                   HFMA2.MMA R243, -RZ, RZ, 0, 0 ;
                /*0060*/                   HMMA.16816.F32 R0, R4, R8, R0 ;
                /*0070*/              @UP0 HGMMA.64x128x16.F32 gdesc[UR4], RZ, !UPT ;
        \t.section\t.text._Z1jv,"ax",@progbits
                /*0000*/                   LDG.E R4, [R2.64] ;
        """)
    facts = kr.parse_sass(sass)
    k = facts["_Z1kv"]
    assert k.ldg == Counter({128: 1, 16: 1, 64: 1}) and k.stg == Counter({128: 1})
    assert (k.local_ops, k.mma, k.instructions) == (1, 2, 8)  # HFMA2.MMA is no tensor-core op
    assert facts["_Z1jv"].ldg == Counter({32: 1})


def test_parse_sass_counts_ldmatrix_and_cp_async():
    sass = textwrap.dedent("""\
        \t.section\t.text._Z1kv,"ax",@progbits
                /*0000*/                   LDGSTS.E.BYPASS.LTC128B.128 [R3], desc[UR6][R4.64] ;
                /*0010*/              @!P0 LDGSTS.E.BYPASS.LTC128B.128.ZFILL [R3+0x80], desc[UR6][R6.64] ;
                /*0020*/                   LDSM.16.M88.4 R8, [R2] ;
                /*0030*/                   LDSM.16.MT88.4 R12, [R2+0x1000] ;
                /*0040*/                   HMMA.16816.F32.BF16 R16, R8, R12, R16 ;
        """)
    k = kr.parse_sass(sass)["_Z1kv"]
    assert (k.ldgsts, k.ldsm, k.mma, k.ldg) == (2, 2, 1, Counter())  # cp.async is no LDG
    assert "ldmatrix 2" in k.brief() and "cp.async 2" in k.brief()


# MmaFwdConfig<kD, kWm>::kSmemBytes by hand: Q tile kBlockM x (kD + 8) bf16, 2 stages of K and V
# tiles kBlockN x (kD + 8), 2 x kBlockN float biases; or the fp32 epilogue kWn x kBlockM x (kLdAcc + 2).
@pytest.mark.parametrize("d,wm,want", [
    (64, 4, 64 * 72 * 2 + 4 * 64 * 72 * 2 + 2 * 64 * 4),  # 46592: training, 64-key tiles
    (128, 4, 64 * 136 * 2 + 4 * 32 * 136 * 2 + 2 * 32 * 4),  # 52480: 32-key tiles beyond D = 64
    (80, 1, 16 * 88 * 2 + 4 * 64 * 88 * 2 + 2 * 64 * 4),  # 48384: 4 warps x 16 keys
    (128, 1, 16 * 136 * 2 + 4 * 64 * 136 * 2 + 2 * 64 * 4),  # 74496: needs the opt-in
    (80, 4, 64 * 88 * 2 + 4 * 32 * 88 * 2 + 2 * 32 * 4),  # 34048 > epilogue 64 x 106 x 4 = 27136
])
def test_mma_forward_shared_memory(d, wm, want):
    assert kr.mma_fwd_smem(d, wm) == want


def test_mma_backward_shared_memory():
    # dq: Q, dO 64 x (D + 8); K, V 2 x 32 x (D + 8); 2 x 32 biases; 2 x 64 row stats (floats).
    assert kr.mma_bwd_smem(64, "dq") == 2 * 64 * 72 * 2 + 4 * 32 * 72 * 2 + 2 * 32 * 4 + 2 * 64 * 4  # 37632
    # dk/dv: K, V 64 x (D + 8); Q, dO 2 x 32 x (D + 8); 2 x 2 x 32 row stats.
    assert kr.mma_bwd_smem(128, "dkdv") == 2 * 64 * 136 * 2 + 4 * 32 * 136 * 2 + 4 * 32 * 4  # 70144


def test_parse_res_usage_and_names():
    text = " Function _ZN5blipx1kIfEEvv:\n  REG:40 STACK:8 SHARED:1280 LOCAL:0 CONSTANT[0]:400 TEXTURE:0\n"
    r = kr.parse_res_usage(text, "sm_90")[("sm_90", "_ZN5blipx1kIfEEvv")]
    assert (r.regs, r.stack, r.shared, r.local) == (40, 8, 1280, 0)
    assert kr.split_kernel_name("void blipx::k<float, 64>(blipx::P)") == ("k", ("float", "64"))
    assert kr.split_kernel_name("blipx::s2(blipx::P)") == ("s2", ())
    assert kr.split_kernel_name("void ns::k<foo<int, 2>, unsigned char>(x)") == ("k", ("foo<int, 2>", "unsigned char"))


def test_check_flags_spills_low_occupancy_missing_design_and_sass(tmp_path):
    # A synthetic report: the checks themselves must be able to fail.
    (tmp_path / "k.cuh").write_text(textwrap.dedent("""\
        // blipx-design: occupancy >= 75% -- needs many warps
        __global__ void enqueue_rows_kernel(int* p) {}
        // blipx-design: occupancy >= 25%, ldg128 -- vector loads
        __global__ void momentum_update_kernel(int* p) {}
        __global__ void enqueue_advance_kernel(int* p) {}
        """))
    heads = kr.scan_headers(tmp_path)
    scalar = kr.SassFacts(Counter({32: 4}), Counter({32: 4}), 2, 0, 10)

    def row(name, regs, stack):
        occ = kr.theoretical_occupancy(SM80, kr.LAUNCHES[name].threads, regs, 0)
        arch = kr.ArchRow("sm_80", kr.Resources(regs, stack, 0, 0), 0, 0, occ, scalar)
        return kr.KernelRow(name, name, name, (), {"sm_80": arch})

    rep = kr.Report(tmp_path / "x.so", [row("enqueue_rows_kernel", 64, 8), row("momentum_update_kernel", 32, 0),
                                        row("enqueue_advance_kernel", 16, 0)], heads, tmp_path)
    got = {(p.kind, p.kernel) for p in kr.check(rep)}
    assert ("spill", "enqueue_rows_kernel") in got
    assert ("occupancy", "enqueue_rows_kernel") in got  # 64 regs x 256 threads: 50% < 75%
    assert ("sass", "momentum_update_kernel") in got  # no 128-bit load
    assert ("design", "enqueue_advance_kernel") in got  # no design comment
    assert not any(k == "momentum_update_kernel" and kind in ("spill", "occupancy") for kind, k in got)


# ------------------------------------------------------------------------------------------
# The built extension
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def report():
    try:
        return kr.build_report()
    except kr.ReportUnavailable as exc:
        pytest.skip(f"no kernel report here: {exc}")


def _assert_none(report, kind):
    found = [p.text for p in kr.check(report) if p.kind == kind]
    assert not found, f"{len(found)} {kind} problem(s):\n" + "\n".join(found)


def test_report_covers_every_header_kernel_and_arch(report):
    from blipx import _native

    archs = {"sm_" + a.replace(".", "") for a in _native.build_info()["cuda_archs"].split()}
    assert {k.name for k in report.kernels} == set(report.headers)
    assert all(set(k.archs) == archs for k in report.kernels)
    _assert_none(report, "binary")


def test_static_shared_memory_means_the_same_on_every_arch(report):
    # sm_90 cubins count the driver's 1 KB reservation in SHARED; the report takes it off, so the
    # same source must come out with the same static shared memory on sm_80 and sm_90.
    for k in report.kernels:
        assert len({a.user_shared for a in k.archs.values()}) == 1, (k.demangled, k.archs)


def test_every_kernel_has_a_readable_design_comment_and_launch(report):
    _assert_none(report, "design")


def test_no_kernel_spills(report):
    _assert_none(report, "spill")


def test_occupancy_is_at_least_the_design(report):
    _assert_none(report, "occupancy")


def test_sass_has_what_the_design_declares(report):
    # ldg128 / mma items: a tensor-core kernel declares `mma` and is held to it here.
    _assert_none(report, "sass")


def test_ema_global_loads_are_128_bit(report):
    # Asked of the EMA kernel by name, whatever its header comment says.
    ema = [k for k in report.kernels if k.name == "momentum_update_kernel"]
    assert len(ema) == 5  # fp32/fp32, fp32/bf16, fp32/fp16, bf16/bf16, fp16/fp16
    for k in ema:
        for arch, a in k.archs.items():
            assert a.sass is not None and a.sass.ldg[128] > 0, f"{k.demangled} [{arch}]: {a.sass and a.sass.brief()}"


@pytest.mark.parametrize("name,count", [("cross_attn_mma_fwd_kernel", 20), ("cross_attn_mma_bwd_dq_kernel", 10),
                                        ("cross_attn_mma_bwd_dkdv_kernel", 10)])
def test_tensor_core_kernels_use_tensor_cores_ldmatrix_and_cp_async(report, name, count):
    # Asked by name, whatever the design comment says: every instantiation (fp16/bf16 x D in
    # {32, 64, 80, 96, 128}, x 1 or 4 row warps for the forward) has HMMA, LDSM and LDGSTS and no
    # local memory.
    mma = [k for k in report.kernels if k.name == name]
    assert len(mma) == count
    for k in mma:
        for arch, a in k.archs.items():
            assert a.sass is not None and a.sass.mma > 0 and a.sass.ldsm > 0 and a.sass.ldgsts > 0, (k.demangled, arch)
            assert a.res.stack == 0 and a.res.local == 0 and a.sass.local_ops == 0, (k.demangled, arch, a.res)


def test_table_lists_every_kernel(report):
    table = kr.format_report(report)
    for name in report.headers:
        assert name in table
    assert "occ" in table and "design:" in table


def test_check_of_the_real_report_fails_when_a_design_is_raised_or_removed(report, tmp_path):
    # Negative control on real data: the same binary against edited copies of the headers.
    for src in report.include_dir.glob("*.cuh"):
        text = src.read_text()
        if src.name == "momentum_update.cuh":
            text = re.sub(r"(blipx-design: occupancy >= )[\d.]+%", r"\g<1>100%", text)
        if src.name == "enqueue.cuh":
            text = "\n".join(ln for ln in text.splitlines() if "blipx-design:" not in ln)
        (tmp_path / src.name).write_text(text)
    edited = kr.Report(report.binary, report.kernels, kr.scan_headers(tmp_path), tmp_path)
    got = {(p.kind, p.kernel) for p in kr.check(edited)}
    assert ("occupancy", "momentum_update_kernel") in got  # no EMA instantiation reaches 100%
    assert ("design", "enqueue_rows_kernel") in got and ("design", "enqueue_advance_kernel") in got
