"""``foresight-lm-eval``: lm-evaluation-harness's own command line, with the ``foresight`` model registered.

lm-eval 0.4 finds models only in its own registry (it has no plugin discovery), so a bare ``lm_eval --model
foresight`` cannot see a model another package provides. This command is ``lm_eval`` with foresight's model
added; every lm-eval option works as documented there::

    foresight-lm-eval --model foresight --model_args pretrained=runs/tiny/top --tasks arc_easy --output_path out
"""

from __future__ import annotations


def main() -> None:
    import lm_eval.models  # noqa: F401  lm-eval's own models first: it fills its registry only while empty
    from lm_eval.__main__ import cli_evaluate

    import foresight.eval.lm_eval_model  # noqa: F401  registers "foresight"

    cli_evaluate()


if __name__ == "__main__":
    main()
