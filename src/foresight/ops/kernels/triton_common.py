"""What the two Triton kernels share: decorating in the right mode, tile sizes, ahead-of-time compiling.

Imports Triton: only the kernel modules import this (``foresight.ops.kernels`` itself must not).

The kernels are written as plain functions and decorated with ``triton.jit`` when first launched, because
the decorator fixes interpreter or compiled mode when it runs (``TRITON_INTERPRET``), and a test process may
set the variable after another module imported Triton. ``jit`` keeps one decorated function per (kernel,
mode): a memo of a pure function, so nothing can make it stale, and Triton's own compile cache lives in that
decorated object (decorating again on every launch would recompile).
"""

from __future__ import annotations

import functools
import inspect

import triton

from foresight.ops.kernels import interpreting


@functools.cache
def _decorated(fn, interpret: bool):
    return triton.jit(fn)  # the mode comes from TRITON_INTERPRET, which ``interpret`` mirrors


def jit(fn):
    """``triton.jit(fn)`` for the current mode (interpreter or compiled), decorated once per mode."""
    return _decorated(fn, interpreting())


def block_k(k: int) -> int:
    """Tile holding K target slots: the next power of two, at least 16 (Triton's smallest useful tile)."""
    return max(16, triton.next_power_of_2(max(k, 1)))


def compile_ptx(fn, arg_types: dict[str, str], constexprs: dict[str, object], *, arch: int, num_warps: int) -> str:
    """Compile kernel ``fn`` ahead of time for ``sm_<arch>`` with no GPU (Triton's bundled CUDA toolchain); its PTX.

    ``arg_types``: Triton types of the runtime arguments (``"*bf16"``, ``"i32"``, ...); every other argument
    is a constexpr, its value taken from ``constexprs``. Pointers are declared 16-byte aligned, as the
    launchers' buffers are, so the PTX shows the real vectorisation. Needs a process where
    ``triton.language`` was not imported under TRITON_INTERPRET=1.
    """
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    names = list(inspect.signature(fn).parameters)
    source = ASTSource(
        fn=triton.jit(fn),
        signature={name: arg_types.get(name, "constexpr") for name in names},
        constexprs={name: constexprs[name] for name in names if name in constexprs},
        attrs={(i,): [["tt.divisibility", 16]] for i, name in enumerate(names) if name.endswith("_ptr")},
    )
    compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32), options={"num_warps": num_warps})
    return compiled.asm["ptx"]
