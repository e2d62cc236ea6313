"""``import foresight`` is fast and exposes the documented API, every name with a docstring."""

import subprocess
import sys

import foresight


def test_every_public_name_resolves_and_has_a_docstring():
    for name in foresight.__all__:
        if name == "__version__":
            continue
        obj = getattr(foresight, name)
        assert (obj.__doc__ or "").strip(), f"foresight.{name} has no docstring"
    assert callable(foresight.wrap) and foresight.wrap.__module__ == "foresight.wrapper"


def test_import_foresight_does_not_import_torch():
    code = "import sys, foresight; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
