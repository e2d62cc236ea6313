"""`python -m build` gives an sdist and a wheel (built from the sdist) that installs into a fresh virtual
environment and runs `foresight stargraph run smoke` from outside the repository.

Nothing is downloaded: the wheel is installed with the venv's own pip, --no-deps --no-index, and the fresh
environment sees this environment's packages (torch, numpy, ...) through a .pth file, so only the wheel's own
files are under test.
"""

import os
import shutil
import site
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "setup.py", "README.md", "LICENSE", "src", "configs")


def _run(cmd, **kw):
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kw)
    assert out.returncode == 0, f"{cmd} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout


@pytest.mark.slow
def test_built_wheel_installs_in_a_fresh_venv_and_runs_the_smoke_recipe(tmp_path):
    pytest.importorskip("build")
    tree = tmp_path / "tree"  # a clean copy: building in place would leave build/ and egg-info in the checkout
    for name in SOURCES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, tree / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            tree.mkdir(exist_ok=True)
            shutil.copy2(src, tree / name)
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(tree)])
    wheel, = dist.glob("*.whl")
    sdist, = dist.glob("*.tar.gz")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
    assert "foresight/configs/stargraph/smoke.yaml" in names and "foresight/wrapper/model.py" in names
    with tarfile.open(sdist) as t:
        assert any(n.endswith("configs/stargraph/smoke.yaml") for n in t.getnames())

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)])  # with the pip Python bundles (ensurepip: offline)
    py = venv / "bin" / "python"
    purelib = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).strip())
    # This environment's site-packages, appended after the venv's own: its .pth files (an editable foresight)
    # are not processed from there, so `foresight` can only come from the wheel.
    (purelib / "zz_base_env.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    _run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)])

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "FORESIGHT_CONFIGS")}
    env["OMP_NUM_THREADS"] = "1"
    where = _run([str(py), "-c", "import foresight; print(foresight.__file__)"], cwd=elsewhere, env=env)
    assert Path(where.strip()).is_relative_to(venv), where
    _run([str(venv / "bin" / "foresight"), "stargraph", "run", "smoke", "--out", "run"], cwd=elsewhere, env=env)
    assert (elsewhere / "run" / "results.md").is_file()
