"""Running the Triton kernels on a CPU through Triton's interpreter (``TRITON_INTERPRET=1``): for tests in CI
and for debugging a kernel without a GPU.

The interpreter is chosen when ``triton.language`` is first imported, so the variable must be set before
that; a process that imported Triton earlier compiles instead and cannot interpret (then re-run in a fresh
process with the variable set).
"""

from __future__ import annotations

import os
import subprocess
import sys
from types import ModuleType


def import_triton(interpret: bool) -> tuple[ModuleType | None, bool]:
    """Import Triton, in interpreter mode when ``interpret`` and Triton is not imported yet.

    Returns (the module or None when it is not installed, whether its kernels run here: compiled when not
    ``interpret``, else only if the interpreter really was chosen). The variable is restored afterwards:
    kernels read it again at launch, so callers set it around their runs.
    """
    if interpret and "triton" not in sys.modules:
        previous = os.environ.get("TRITON_INTERPRET")
        os.environ["TRITON_INTERPRET"] = "1"
        try:
            import triton  # noqa: F401
        except ImportError:
            pass
        finally:
            if previous is None:
                del os.environ["TRITON_INTERPRET"]
            else:
                os.environ["TRITON_INTERPRET"] = previous
    try:
        import triton
        from triton.runtime.interpreter import InterpretedFunction
    except ImportError:
        return None, False
    return triton, (not interpret) or isinstance(triton.language.max, InterpretedFunction)


def run_interpreted(path: str, *pytest_args: str) -> None:
    """Run the pytest file ``path`` in a fresh interpreter process with ``TRITON_INTERPRET=1`` (raises on failure)."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", path, *pytest_args],
                   env=env, check=True)
