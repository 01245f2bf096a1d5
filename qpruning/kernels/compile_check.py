"""Compile the decode kernels for NVIDIA GPUs on a machine without one, and report their resource usage.

Triton's wheel ships ``ptxas`` and ``cuobjdump``, so every kernel variant can be compiled ahead of time down to a
cubin for a given architecture (``sm_80`` A100, ``sm_90`` H100) with no GPU and no CUDA driver. This catches what
Triton's interpreter does not: code that the interpreter runs but the GPU compiler rejects (``tl.dot`` shapes,
dtypes, layouts), register spills (local memory) and shared-memory use above the device limit.

    python -m qpruning.kernels.compile_check            # every variant, sm_80 and sm_90, as a table

Must run *without* ``TRITON_INTERPRET`` (the interpreter replaces the kernels by Python functions).
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import subprocess
import sys
from dataclasses import dataclass

SHARED_LIMIT = {80: 163 * 1024, 86: 99 * 1024, 89: 99 * 1024, 90: 227 * 1024}


@dataclass(frozen=True)
class Variant:
    """One specialization of the segment kernel (what changes its constexprs)."""

    bits: int
    k_axis: int
    v_axis: int
    k_group: int = 64
    v_group: int = 64
    uniform: bool = True
    k_outliers: bool = False
    v_outliers: bool = False
    head_dim: int = 128
    group: int = 4  # query heads per KV head
    dot: str = "bf16"  # the dot= option of attend_segments
    storage: str = "bf16"
    fold_k: bool = False

    @property
    def name(self) -> str:
        axes = {0: "plain", 1: "chan", 2: "tok"}
        parts = [f"{self.bits}bit", f"k{axes[self.k_axis]}{self.k_group}", f"v{axes[self.v_axis]}{self.v_group}"]
        if not self.uniform:
            parts.append("ragged")
        if self.k_outliers or self.v_outliers:
            parts.append("outliers")
        if self.fold_k:
            parts.append("foldk")
        if self.dot != "bf16":
            parts.append(self.dot)
        if self.storage != "bf16":
            parts.append(self.storage)
        parts.append(f"d{self.head_dim}g{self.group}")
        return "-".join(parts)


def default_variants() -> list[Variant]:
    out = []
    for bits in (2, 4, 8):
        for k_axis, group in itertools.product((2, 1), (32, 64, 128)):
            out.append(Variant(bits, k_axis, 1, group, group))
    out.append(Variant(16, 0, 0, 1, 1))
    out.append(Variant(16, 0, 0, 1, 1, uniform=False))
    out.append(Variant(4, 2, 1, 64, 64, uniform=False))
    out.append(Variant(4, 2, 1, 64, 64, k_outliers=True, v_outliers=True))
    out.append(Variant(2, 1, 1, 32, 32, k_outliers=True, v_outliers=True))
    out.append(Variant(4, 2, 1, 64, 64, group=8))
    out.append(Variant(4, 2, 1, 64, 64, head_dim=64))
    out.append(Variant(4, 2, 1, 64, 64, dot="fp32"))
    out.append(Variant(4, 2, 1, 64, 64, dot="tf32"))
    out.append(Variant(4, 2, 1, 64, 64, fold_k=True))
    out.append(Variant(4, 2, 1, 64, 64, storage="fp16"))
    return out


def _tool(name: str) -> str:
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def compile_variant(v: Variant, arch: int, block_n: int | None = None, num_warps: int | None = None):
    """Compile one variant of the segment kernel for ``sm_<arch>``, with the launch heuristics' constexprs."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from qpruning.kernels import decode_attention as da

    layout = da.Layout(v.bits, v.k_axis, v.v_axis, v.k_group, v.v_group, v.head_dim)
    dot, precision = da.DOT_MODES[v.dot]
    constexprs, warps = da.kernel_config(
        layout, v.group, uniform=v.uniform, k_outliers=v.k_outliers, v_outliers=v.v_outliers, dot=dot,
        precision=precision, fold_k=v.fold_k, block_n=block_n or da.BLOCK_N, num_warps=num_warps,
    )
    store = "*" + v.storage
    code = "*u8" if v.bits < 16 else store
    signature = {
        "q_ptr": store, "k_ptr": code, "v_ptr": code,
        "ks_ptr": store, "kz_ptr": store, "vs_ptr": store, "vz_ptr": store,
        "len_ptr": "*i32", "off_ptr": "*i64",
        "ko_ptr_ptr": "*i32", "ko_tok_ptr": "*i32", "ko_ch_ptr": "*i32", "ko_val_ptr": store,
        "vo_ptr_ptr": "*i32", "vo_tok_ptr": "*i32", "vo_ch_ptr": "*i32", "vo_val_ptr": store,
        "m_ptr": "*fp32", "l_ptr": "*fp32", "acc_ptr": "*fp32",
        "G": "i32", "uniform_len": "i32", "split_tokens": "i32", "split_base": "i32", "S_total": "i32",
        "qk_scale": "fp32",
    }
    for name in constexprs:
        signature[name] = "constexpr"
    # As Triton's launcher specializes them: torch allocations are 16-byte aligned.
    attrs = {(i,): [["tt.divisibility", 16]] for i, t in enumerate(signature.values()) if t.startswith("*")}
    src = ASTSource(fn=da._decode_segment_kernel, signature=signature, constexprs=constexprs, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": warps})


def compile_merge(arch: int, head_dim: int = 128, out: str = "bf16"):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from qpruning.kernels import decode_attention as da

    signature = {"m_ptr": "*fp32", "l_ptr": "*fp32", "acc_ptr": "*fp32", "out_ptr": "*" + out, "S_total": "i32",
                 "D": "constexpr", "BLOCK_D": "constexpr", "BLOCK_S": "constexpr"}
    constexprs = {"D": head_dim, "BLOCK_D": triton.next_power_of_2(head_dim), "BLOCK_S": da.MERGE_BLOCK_S}
    attrs = {(i,): [["tt.divisibility", 16]] for i, t in enumerate(signature.values()) if t.startswith("*")}
    src = ASTSource(fn=da._merge_kernel, signature=signature, constexprs=constexprs, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": da.MERGE_WARPS})


def resource_usage(kernel) -> dict[str, int]:
    """Registers, spill (local memory), stack and shared memory of a compiled kernel, from its cubin."""
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(kernel.asm["cubin"])
        f.flush()
        text = subprocess.run(
            [_tool("cuobjdump"), "--dump-resource-usage", f.name], capture_output=True, text=True, check=True
        ).stdout
    usage = {k.lower(): int(v) for k, v in re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", text)}
    # Dynamic shared memory (what Triton allocates for layout conversions and dot operands) is in the metadata.
    usage["shared"] = max(usage.get("shared", 0), int(kernel.metadata.shared))
    return usage


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, nargs="+", default=[80, 90])
    parser.add_argument("--num-warps", type=int, default=None, help="override the launch heuristic")
    parser.add_argument("--block-n", type=int, default=None, help="override the launch heuristic")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("unset TRITON_INTERPRET: the interpreter cannot compile kernels", file=sys.stderr)
        return 2
    failures = 0
    print(f"{'variant':44s} {'arch':>5s} {'regs':>5s} {'spill':>6s} {'stack':>6s} {'shared':>7s}")
    for arch in args.arch:
        for v in default_variants():
            try:
                u = resource_usage(compile_variant(v, arch, args.block_n, args.num_warps))
            except Exception as exc:  # noqa: BLE001 - report every failing variant
                failures += 1
                print(f"{v.name:44s} sm_{arch:<3d} FAILED: {type(exc).__name__}: {str(exc)[:300]}")
                continue
            bad = u.get("local", 0) > 0 or u["shared"] > SHARED_LIMIT.get(arch, 99 * 1024)
            failures += bad
            print(
                f"{v.name:44s} sm_{arch:<3d} {u.get('reg', 0):5d} {u.get('local', 0):6d} {u.get('stack', 0):6d} "
                f"{u['shared']:7d}{'  <- check' if bad else ''}"
            )
        u = resource_usage(compile_merge(arch))
        print(f"{'merge-d128':44s} sm_{arch:<3d} {u.get('reg', 0):5d} {u.get('local', 0):6d} {u.get('stack', 0):6d} {u['shared']:7d}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
