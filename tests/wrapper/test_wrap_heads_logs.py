"""Warm heads, head-only training, and what a wrapped model reports: per-objective losses in the Trainer's logs,
the heads' FLOPs in ``total_flos``, ``print_trainable_parameters`` and the model card of ``save_pretrained``."""

import pytest
import torch

from foresight.errors import ForesightError
from foresight.wrapper import ForesightModel, wrap

from tiny_models import VOCAB, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")

ARCHS = ["llama", "qwen2", "gemma2"]


def _ids(b=2, t=9, seed=0):
    return torch.randint(3, VOCAB, (b, t), generator=torch.Generator().manual_seed(seed))


def _skip_loss(model, ids, k):
    """Cross-entropy of the model's own next-token logits at t against x[t+1+k]: what a head that copies the
    model's prediction scores at depth k (summed, over the next-token count, as MTP and DS-MTP normalise)."""
    logits = model(ids).logits[:, : ids.shape[1] - 1 - k]  # (B, T-1-k, V)
    total = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), ids[:, 1 + k :].reshape(-1), reduction="sum")
    return total / (ids.shape[0] * (ids.shape[1] - 1))


# --- warm heads ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ARCHS)
def test_warm_heads_start_as_the_models_own_prediction(arch):
    model = tiny_model(arch)
    ids = _ids()
    wrapped = wrap(model, [{"name": "ntp"}, {"name": "mtp", "n": 3}, {"name": "dsmtp", "depth": 2},
                           {"name": "top", "window": 4}])
    with torch.no_grad():
        out = wrapped(ids, labels=ids)
        for k in (1, 2):  # every MTP head and DS-MTP depth scores the model's next-token distribution
            want = _skip_loss(model, ids, k)
            torch.testing.assert_close(out.metrics[f"mtp_head{k}"], want, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(out.metrics[f"dsmtp_depth{k}"], want, rtol=1e-4, atol=1e-5)
    assert torch.equal(wrapped.heads["top"].weight, model.get_output_embeddings().weight)
    assert wrapped.heads["top"].weight.data_ptr() != model.get_output_embeddings().weight.data_ptr()  # a copy


def test_warm_dsmtp_with_its_own_norm_after_the_pre_norm_state_is_exact():
    model = tiny_model("qwen2")
    ids = _ids()
    wrapped = wrap(model, [{"name": "dsmtp", "preset": "deepseek_v3", "depth": 1, "h0": "pre_norm", "weight": 1.0}])
    with torch.no_grad():
        got = wrapped(ids, labels=ids).metrics["dsmtp_depth1"]
    torch.testing.assert_close(got, _skip_loss(model, ids, 1), rtol=1e-4, atol=1e-5)


def test_head_init_random_and_bad_values():
    model = tiny_model("llama")
    wrapped = wrap(model, [{"name": "top", "window": 4}], head_init="random")
    assert not torch.equal(wrapped.heads["top"].weight, model.get_output_embeddings().weight)
    with pytest.raises(ForesightError, match="head_init must be one of warm, random"):
        wrap(model, [{"name": "top", "window": 4}], head_init="cold")


# --- freeze_trunk ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("per_head_backward", [False, True])
def test_freeze_trunk_trains_only_the_heads(per_head_backward):
    model = tiny_model("qwen2")
    wrapped = wrap(model, [{"name": "ntp"}, {"name": "top", "window": 4}, {"name": "mtp", "n": 2},
                           {"name": "dsmtp", "depth": 1}], freeze_trunk=True, head_init="random")
    # (random heads: every head weight gets a gradient at the first step; warm DS-MTP layers start with their
    # residual branches at zero, so their q/k/v move from the second step on)
    assert not any(p.requires_grad for p in model.parameters())
    heads = [p for k in ("top", "mtp", "dsmtp") for p in wrapped.objectives[k].parameters()]
    assert heads and all(p.requires_grad for p in heads)
    before = {n: p.detach().clone() for n, p in wrapped.named_parameters()}
    opt = torch.optim.AdamW([p for p in wrapped.parameters() if p.requires_grad], lr=1e-2)
    ids = _ids()
    if per_head_backward:  # (the trunk tensors need no gradient: a frozen trunk has no graph to go back into)
        wrapped.forward_backward(ids, ids)
    else:
        wrapped(ids, labels=ids).loss.backward()
    opt.step()
    after = dict(wrapped.named_parameters())
    for name, p in before.items():
        assert torch.equal(p, after[name]) == name.startswith("model."), name


def test_freeze_trunk_with_nothing_to_train_is_one_line():
    with pytest.raises(ForesightError, match="leaves nothing to train"):
        wrap(tiny_model("llama"), [{"name": "ntp"}], freeze_trunk=True)


# --- print_trainable_parameters, model card ---------------------------------------------------------------------

def test_print_trainable_parameters_names_the_heads_and_their_share(capsys):
    model = tiny_model("llama")
    base = sum(p.numel() for p in model.parameters())
    wrapped = wrap(model, [{"name": "ntp"}, {"name": "top", "window": 4}, {"name": "mtp", "n": 2}])
    wrapped.print_trainable_parameters()
    text = capsys.readouterr().out
    top, mtp = VOCAB * 16, sum(p.numel() for p in model.model.layers[-1].parameters())
    total = base + top + mtp
    assert f"trainable params: {total:,} || all params: {total:,} || trainable%: 100.0000" in text
    assert f"TOP head {top:,} (+{100 * top / base:.1f} %)" in text
    assert f"MTP heads {mtp:,} (+{100 * mtp / base:.1f} %)" in text
    assert "NTP" not in text and "ntp" not in text  # the model's own head is not counted again


def test_save_pretrained_writes_a_model_card_and_keeps_the_users(tmp_path):
    wrapped = wrap(tiny_model("gemma2"), [{"name": "ntp"}, {"name": "top", "window": 4}])
    wrapped.save_pretrained(tmp_path / "a")
    card = (tmp_path / "a" / "README.md").read_text()
    assert "Gemma2ForCausalLM" in card and "`top`" in card and "window: 4" in card and "foresight" in card
    assert f"{VOCAB * 16:,}" in card  # the TOP head's size
    ForesightModel.from_pretrained(tmp_path / "a")  # the card does not disturb loading
    wrapped.save_pretrained(tmp_path / "a")  # ours: rewritten
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "README.md").write_text("my own card\n")
    wrapped.save_pretrained(tmp_path / "b")
    assert (tmp_path / "b" / "README.md").read_text() == "my own card\n"


# --- Trainer logs and FLOPs -------------------------------------------------------------------------------------

def _train(tmp_path, specs, **kw):
    from transformers import TrainingArguments

    from foresight.wrapper import ForesightTrainer

    torch.manual_seed(0)
    wrapped = wrap(tiny_model("llama"), specs)
    data = [{"input_ids": x, "labels": x} for x in _ids(24, 10, seed=1)]
    args = TrainingArguments(str(tmp_path), max_steps=4, per_device_train_batch_size=3, learning_rate=1e-2,
                             report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True, **kw)
    trainer = ForesightTrainer(model=wrapped, args=args, train_dataset=data)
    trainer.train()
    return wrapped, trainer


@pytest.mark.parametrize("accumulation", [1, 2])
def test_trainer_logs_every_objective_averaged_like_the_loss(tmp_path, accumulation):
    specs = [{"name": "ntp"}, {"name": "top", "window": 4, "weight": 0.5}, {"name": "mtp", "n": 3}]
    _, trainer = _train(tmp_path, specs, logging_steps=2, gradient_accumulation_steps=accumulation)
    logs = [h for h in trainer.state.log_history if "loss" in h and "train_runtime" not in h]
    assert len(logs) == 2
    from foresight.wrapper import ForesightCallback

    assert any(isinstance(c, ForesightCallback) for c in trainer.callback_handler.callbacks)  # added by itself
    for h in logs:
        assert {"loss_ntp", "loss_top", "loss_mtp", "loss_mtp_head1", "loss_mtp_head2", "weight_top"} <= set(h)
        # the per-objective values average over the interval as the Trainer's loss does: they add up to it
        weighted = h["loss_ntp"] + 0.5 * h["loss_top"] + h["loss_mtp"]
        assert weighted == pytest.approx(h["loss"], rel=1e-3, abs=1e-3)
        assert h["loss_mtp"] == pytest.approx(h["loss_mtp_head1"] + h["loss_mtp_head2"], rel=1e-3, abs=1e-3)
        assert h["weight_top"] == 0.5 and h["weight_ntp"] == 1.0


def test_evaluation_logs_every_objective(tmp_path):
    from transformers import TrainingArguments

    from foresight.wrapper import ForesightTrainer

    wrapped = wrap(tiny_model("llama"), [{"name": "ntp"}, {"name": "top", "window": 4, "weight": 0.5},
                                         {"name": "mtp", "n": 2}])
    data = [{"input_ids": x, "labels": x} for x in _ids(7, 10, seed=2)]  # batches of 3, 3, 1 samples
    args = TrainingArguments(str(tmp_path), per_device_eval_batch_size=3, report_to=[], use_cpu=True,
                             disable_tqdm=True)
    trainer = ForesightTrainer(model=wrapped, args=args, eval_dataset=data)
    h = trainer.evaluate()
    assert trainer.state.log_history[-1] == {**h, "step": 0}  # what every reporter received
    assert {"eval_loss_ntp", "eval_loss_top", "eval_loss_mtp", "eval_loss_mtp_head1"} <= set(h)
    weighted = h["eval_loss_ntp"] + 0.5 * h["eval_loss_top"] + h["eval_loss_mtp"]
    assert weighted == pytest.approx(h["eval_loss"], rel=1e-3, abs=1e-3)  # averaged as eval_loss is


def test_total_flos_count_the_heads(tmp_path):
    specs = [{"name": "ntp"}, {"name": "top", "window": 4}, {"name": "mtp", "n": 2}]
    wrapped, trainer = _train(tmp_path, specs, logging_steps=4)
    model = wrapped.model
    tokens = 4 * 3 * 10  # steps x batch x length
    block = sum(p.numel() for p in wrapped.objectives["mtp"].parameters())
    heads = VOCAB * 16 + block + VOCAB * 16  # W_top, the MTP head's layer, and its use of the shared output head
    want = 6 * tokens * (model.num_parameters(exclude_embeddings=True) + heads)
    assert trainer.state.total_flos == pytest.approx(want, rel=1e-9)


def test_warm_copies_take_the_base_weights_of_a_lora_layer():
    """Heads built beside a PEFT-injected last layer copy its base weights (LoRA's B starts at zero, so they are
    the layer's weights), not a silent random start."""
    peft = pytest.importorskip("peft")
    model = tiny_model("llama")
    last = {k: v.clone() for k, v in model.model.layers[-1].state_dict().items()}
    pm = peft.get_peft_model(model, peft.LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))  # injects in place
    assert "self_attn.q_proj.base_layer.weight" in model.model.layers[-1].state_dict()
    wrapped = wrap(pm, [{"name": "mtp", "n": 2}])  # the PeftModel itself (its inner model is refused)
    head = wrapped.heads["mtp"][0].state_dict()
    assert set(head) == set(last)
    for k, v in last.items():
        assert torch.equal(head[k], v), k
