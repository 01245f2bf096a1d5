"""Compile the decode kernels for NVIDIA GPUs on a machine without one, and report their resource usage.

Triton's wheel ships ``ptxas`` and ``cuobjdump``, so every kernel variant can be compiled ahead of time down to a
cubin for a given architecture (``sm_80`` A100, ``sm_90`` H100) with no GPU and no CUDA driver. This catches what
Triton's interpreter does not: code that the interpreter runs but the GPU compiler rejects (``tl.dot`` shapes,
dtypes, layouts), register spills (local memory) and shared-memory use above the device limit.

    python -m qpruning.backends.triton.compile_check   # every variant, sm_80 and sm_90, as a table

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


def compile_variant(
    v: Variant, arch: int, block_n: int | None = None, num_warps: int | None = None, maxnreg: int | None = None
):
    """Compile one variant of the segment kernel for ``sm_<arch>``, with the launch heuristics' constexprs."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from qpruning.backends.triton import heuristics as hx
    from qpruning.backends.triton import kernel as kn

    layout = hx.Layout(v.bits, v.k_axis, v.v_axis, v.k_group, v.v_group, v.head_dim)
    dot, precision = hx.DOT_MODES[v.dot]
    constexprs, launch = hx.kernel_config(
        layout, v.group, uniform=v.uniform, k_outliers=v.k_outliers, v_outliers=v.v_outliers, dot=dot,
        precision=precision, fold_k=v.fold_k, block_n=block_n or hx.BLOCK_N, num_warps=num_warps,
        maxnreg=maxnreg,
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
    src = ASTSource(fn=kn._decode_segment_kernel, signature=signature, constexprs=constexprs, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options=launch)


def compile_merge(arch: int, head_dim: int = 128, out: str = "bf16"):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from qpruning.backends.triton import heuristics as hx
    from qpruning.backends.triton import kernel as kn

    signature = {"m_ptr": "*fp32", "l_ptr": "*fp32", "acc_ptr": "*fp32", "out_ptr": "*" + out, "S_total": "i32",
                 "D": "constexpr", "BLOCK_D": "constexpr", "BLOCK_S": "constexpr"}
    constexprs = {"D": head_dim, "BLOCK_D": triton.next_power_of_2(head_dim), "BLOCK_S": hx.MERGE_BLOCK_S}
    attrs = {(i,): [["tt.divisibility", 16]] for i, t in enumerate(signature.values()) if t.startswith("*")}
    src = ASTSource(fn=kn._merge_kernel, signature=signature, constexprs=constexprs, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": hx.MERGE_WARPS})


def resource_usage(kernel) -> dict[str, int]:
    """Registers, spills, stack and shared memory of a compiled kernel.

    Registers, stack and spill bytes come from running ``ptxas -v`` on the kernel's PTX with the options Triton
    uses (Triton discards that log); shared memory from Triton's metadata (dynamic shared memory for layout
    conversions and dot operands).
    """
    import tempfile

    arch = kernel.metadata.target.arch
    with tempfile.TemporaryDirectory() as tmp:
        ptx = os.path.join(tmp, "kernel.ptx")
        with open(ptx, "w") as f:
            f.write(kernel.asm["ptx"])
        suffix = "a" if arch >= 90 else ""
        from triton.backends.nvidia.compiler import get_ptxas  # the ptxas Triton itself runs for this arch

        text = subprocess.run(
            # The options Triton's make_cubin passes (Triton 3.9), so that the numbers are those of its cubin.
            [get_ptxas(arch).path, "-lineinfo", "-v", "--regAllocOptLevel=2", f"--gpu-name=sm_{arch}{suffix}", ptx,
             "-o", os.path.join(tmp, "k.cubin")],
            capture_output=True, text=True, check=True,
        ).stderr
    def number(pattern: str) -> int:
        match = re.search(pattern, text)
        assert match is not None, f"ptxas -v printed no {pattern!r}"
        return int(match.group(1))

    usage = {
        "reg": number(r"Used (\d+) registers"),
        "stack": number(r"(\d+) bytes stack frame"),
        "spill_stores": number(r"(\d+) bytes spill stores"),
        "spill_loads": number(r"(\d+) bytes spill loads"),
    }
    usage["spill"] = usage["spill_stores"] + usage["spill_loads"]
    usage["shared"] = int(kernel.metadata.shared)
    return usage


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, nargs="+", default=[80, 90])
    parser.add_argument("--num-warps", type=int, default=None, help="override the launch heuristic")
    parser.add_argument("--block-n", type=int, default=None, help="override the launch heuristic")
    parser.add_argument("--maxnreg", type=int, default=None, help="override the register cap (0: none)")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("unset TRITON_INTERPRET: the interpreter cannot compile kernels", file=sys.stderr)
        return 2
    failures = spilled = 0
    print(f"{'variant':44s} {'arch':>5s} {'regs':>5s} {'spill':>6s} {'stack':>6s} {'shared':>7s}")
    for arch in args.arch:
        for v in default_variants():
            try:
                u = resource_usage(compile_variant(v, arch, args.block_n, args.num_warps, args.maxnreg))
            except Exception as exc:  # noqa: BLE001 - report every failing variant
                failures += 1
                print(f"{v.name:44s} sm_{arch:<3d} FAILED: {type(exc).__name__}: {str(exc)[:300]}")
                continue
            bad = u["shared"] > SHARED_LIMIT.get(arch, 99 * 1024)
            spilled += u["spill"] > 0
            failures += bad
            print(
                f"{v.name:44s} sm_{arch:<3d} {u['reg']:5d} {u['spill']:6d} {u['stack']:6d} "
                f"{u['shared']:7d}{'  <- over the shared-memory limit' if bad else ''}"
            )
        u = resource_usage(compile_merge(arch))
        print(f"{'merge-d128':44s} sm_{arch:<3d} {u['reg']:5d} {u['spill']:6d} {u['stack']:6d} {u['shared']:7d}")
    print(f"{spilled} variant(s) spill registers (spill = bytes of spill stores + loads, from ptxas -v)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
