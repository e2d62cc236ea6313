"""``foresight``: the command line. Every user error ends as one line on stderr and exit status 2.

Each command lives in its own module under ``foresight.cli`` with a ``register(subparsers)`` function that
adds its parser and sets ``func`` (called with the parsed arguments). Modules import heavy dependencies
inside ``func``, so ``foresight --help`` stays fast.
"""

from __future__ import annotations

import argparse
import os
import sys

from foresight import __version__
from foresight.cli import bench, compare, generate, hf, prepare, stargraph, tokenizer, train
from foresight.cli import eval as evaluate
from foresight.cli.common import Parser
from foresight.errors import ForesightError, os_error_line

# order of appearance in --help
COMMANDS = [stargraph, bench, train, tokenizer, prepare, compare, hf, evaluate, generate]


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="foresight", description="Train language models with future-aware objectives "
                    "(TOP, MTP, DS-MTP) beside next-token prediction.")
    parser.add_argument("--version", action="version", version=f"foresight {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for module in COMMANDS:
        module.register(sub)
    return parser


def _printable(line: str) -> str:
    """``line`` with what stderr cannot encode escaped: a name from a file may hold a lone surrogate (JSON's
    ``"\\ud800"``), which would make printing the error fail with a traceback (issue 21)."""
    encoding = getattr(sys.stderr, "encoding", None) or "utf-8"
    return line.encode(encoding, "backslashreplace").decode(encoding, "replace")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 0
    try:
        args.func(args)
        return 0
    except ForesightError as e:
        if os.environ.get("RANK", "0") == "0":  # under torchrun every rank meets the same error: rank 0 says it
            print(_printable(f"foresight: error: {e}"), file=sys.stderr)
        return getattr(e, "exit_code", 2)  # 2: fix the input; 1: the run itself failed (diverged)
    except OSError as e:  # disk full, read-only, permissions, a file where a folder should be: one line
        if os.environ.get("RANK", "0") == "0":
            print(_printable(f"foresight: error: {os_error_line(e)}"), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("foresight: interrupted (checkpoints written so far are complete; continue with --resume)",
              file=sys.stderr)
        return 130
    finally:
        if "torch.distributed" in sys.modules:  # leave a torchrun job cleanly (a no-op otherwise)
            from foresight.train.distributed import shutdown

            shutdown()


if __name__ == "__main__":
    sys.exit(main())
