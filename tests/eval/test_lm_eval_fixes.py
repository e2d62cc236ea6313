"""lm-eval: continuations that merge with the context are split at a token boundary; a document that still
cannot be scored fails its task (named, with the document) and not the others; lm-eval's own output files."""

from __future__ import annotations

import json

import pytest
import torch

from foresight.errors import ForesightError
from foresight.eval.lm_eval_runner import build_model, run_lm_eval

pytest.importorskip("lm_eval")
import test_lm_eval_runner  # noqa: E402

MC = test_lm_eval_runner.MC
setup = test_lm_eval_runner.setup  # the module fixture (tokenizer, checkpoint, tasks), requested by name below


class _Req:
    def __init__(self, context, continuation):
        self.args, self.task_name, self.doc_id = (context, continuation), "t", 5


def test_a_continuation_merging_with_the_context_is_scored_from_the_shared_boundary(setup):
    root, lm = setup
    model = build_model(root / "run", "foresight")
    tok = model.tok
    # WordLevel on whitespace: "the cat" + "s" encodes as [the, <unk>]: the context's last token merges away,
    # so lm-eval's default split (whole[len(context):]) would leave nothing to score.
    ctx, cont = model._encode_pair("the cat", "s")
    assert ctx == tok.encode("the") and cont == tok.encode("cats")
    assert model._encode_pair("the cat", " sat") == (tok.encode("the cat"), tok.encode("sat"))  # the usual case
    (ll, _), = model.loglikelihood([_Req("the cat", "s")], disable_tqdm=True)
    with torch.no_grad():
        ids = tok.encode("the cats")
        want = torch.log_softmax(lm.model(torch.tensor([ids[:-1]]))[0, -1], -1)[ids[-1]].item()
    assert ll == pytest.approx(want, abs=1e-5)
    with pytest.raises(ForesightError, match=r"task 't', document 5: the continuation ' ' .* no tokens"):
        model.loglikelihood([_Req("the cat", " ")], disable_tqdm=True)


def test_a_bad_document_fails_its_task_only_and_lm_eval_files_are_written(setup, tmp_path):
    root, _ = setup
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "bad.jsonl").write_text(json.dumps({"question": "the cat", "choices": [" ", "dog"], "answer": 1}) + "\n")
    (tasks / "tiny_bad.yaml").write_text(
        f"task: tiny_bad\ndataset_path: json\ntest_split: test\ndataset_kwargs:\n  data_files:\n"
        f"    test: {tasks / 'bad.jsonl'}\noutput_type: multiple_choice\ndoc_to_text: '{{{{question}}}}'\n"
        "doc_to_choice: '{{choices}}'\ndoc_to_target: '{{answer}}'\nmetric_list:\n  - metric: acc\n")
    for f in (root / "tasks").iterdir():  # the good tasks beside it
        (tasks / f.name).write_bytes(f.read_bytes())
    out = tmp_path / "lm_eval_out"
    results = run_lm_eval(build_model(root / "run", "foresight"), ["tiny_bad", "tiny_mc"], include_path=tasks,
                          offline=True, log_samples=True, output_path=out)
    assert set(results["results"]) == {"tiny_mc"}
    assert "tiny_bad" in results["failed"] and "document 0" in results["failed"]["tiny_bad"]
    written = {p.name.split("_20")[0] for p in out.rglob("*") if p.is_file()}
    assert {"results", "samples_tiny_mc"} <= written, written
    aggregated = json.loads(next(out.rglob("results_*.json")).read_text())
    assert "tiny_mc" in aggregated["results"] and len(MC) == aggregated["n-samples"]["tiny_mc"]["effective"]


def test_foresight_lm_eval_command_is_lm_evals_cli_with_the_foresight_model(monkeypatch):
    """The command hands over to lm-eval's own CLI with both foresight's and lm-eval's models registered (a full
    CLI run scans lm-eval's whole task index, about a minute; ``run_lm_eval`` above runs the same evaluator)."""
    import lm_eval.__main__
    from lm_eval.api.registry import get_model

    from foresight.eval.lm_eval_cli import main
    from foresight.eval.lm_eval_model import ForesightLM

    seen = []
    monkeypatch.setattr(lm_eval.__main__, "cli_evaluate",
                        lambda: seen.append((get_model("foresight"), get_model("hf"))))
    main()
    assert seen and seen[0][0] is ForesightLM and seen[0][1].__name__ == "HFLM"


def test_batched_generate_until_equals_one_prompt_at_a_time(setup):
    from foresight.generate import generate

    root, lm = setup
    model = build_model(root / "run", "foresight", batch_size=3)
    contexts = ["the cat sat on", "where is the big red dog ?", "a", "the dog ran under the", "what is blue ?"]

    class Gen:
        def __init__(self, context, until):
            self.args = (context, {"until": until, "max_gen_toks": 5, "do_sample": False})

    requests = [Gen(c, ["."] if i % 2 else ["mat"]) for i, c in enumerate(contexts)]
    batched = model.generate_until(requests, disable_tqdm=True)
    tok = model.tok
    for req, got in zip(requests, batched):
        context, kw = req.args
        ids = torch.tensor([tok.encode(context)])
        new = generate(lm.model, ids, 5, eos_id=tok.eos_id)[0, ids.shape[1]:].tolist()
        new = new[: new.index(tok.eos_id)] if tok.eos_id in new else new
        text = ""
        for n in range(1, len(new) + 1):  # stop as soon as a stop string appears, then cut there
            text = tok.decode(new[:n])
            if kw["until"][0] in text:
                break
        assert got == text.split(kw["until"][0])[0], context
