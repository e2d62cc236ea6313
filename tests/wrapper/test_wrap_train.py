"""A wrapped model trains in a plain loop and with transformers' Trainer, and save/load restores it exactly."""

import json
import os

import pytest
import torch

from foresight.errors import ForesightError
from foresight.hf.heads import HEADS_FILE
from foresight.wrapper import ForesightModel, wrap

from tiny_models import VOCAB, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")

SPECS = [{"name": "ntp"}, {"name": "top", "window": 4, "weight": 0.5}, {"name": "mtp", "n": 2},
         {"name": "dsmtp", "preset": "deepseek_v3", "depth": 1, "weight": 0.3}]


def test_save_pretrained_then_load_restores_model_and_heads(tmp_path):
    from transformers import AutoModelForCausalLM

    wrapped = wrap(tiny_model("qwen3"), SPECS)
    ids = torch.randint(0, VOCAB, (2, 9))
    wrapped.save_pretrained(tmp_path)
    back = ForesightModel.from_pretrained(tmp_path)
    assert back.specs == SPECS
    before = dict(wrapped.named_parameters())
    for name, p in back.named_parameters():
        assert torch.equal(p, before[name]), name
    with torch.no_grad():
        a, b = wrapped(ids, labels=ids), back(ids, labels=ids)
    for k in a.losses:
        assert torch.equal(a.losses[k], b.losses[k])
    # the folder is still a plain model folder for transformers; the heads file says what it holds
    plain = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert torch.equal(plain(ids).logits, b.logits)
    from safetensors import safe_open

    with safe_open(str(tmp_path / HEADS_FILE), "pt") as f:
        assert json.loads(f.metadata()["objectives"]) == SPECS
        assert "top.head.weight" in f.keys() and not any(k.startswith("ntp") for k in f.keys())


def test_loading_a_folder_without_heads_says_what_to_do(tmp_path):
    tiny_model("llama").save_pretrained(tmp_path)
    with pytest.raises(ForesightError, match="no foresight_heads.safetensors"):
        ForesightModel.from_pretrained(tmp_path)
    (tmp_path / HEADS_FILE).write_bytes(b"not safetensors")
    with pytest.raises(ForesightError, match="not a readable safetensors"):
        ForesightModel.from_pretrained(tmp_path)


def test_plain_loop_with_per_head_backward_lowers_every_loss():
    torch.manual_seed(0)
    wrapped = wrap(tiny_model("mistral"), SPECS, return_logits=False)
    opt = torch.optim.AdamW(wrapped.parameters(), lr=1e-2)
    ids = torch.randint(3, VOCAB, (4, 12))  # one fixed batch: every loss must fall when it is fitted
    first = None
    for _ in range(8):
        out = wrapped.forward_backward(ids, ids)
        opt.step()
        opt.zero_grad()
        first = first or {k: v.item() for k, v in out.losses.items()}
    last = {k: v.item() for k, v in wrapped(ids, labels=ids).losses.items()}
    assert all(last[k] < first[k] - 0.05 for k in first), (first, last)


def test_hf_trainer_trains_a_few_steps(tmp_path):
    from transformers import Trainer, TrainingArguments

    from foresight.wrapper import ForesightCallback

    torch.manual_seed(0)
    wrapped = wrap(tiny_model("llama"), [{"name": "ntp"},
                                         {"name": "top", "window": 4,
                                          "weight": [[{"frac": 0}, 1.0], [{"frac": 0.5}, 0.0]]},
                                         {"name": "mtp", "n": 2}])
    before = {n: p.detach().clone() for n, p in wrapped.named_parameters()}
    data = [{"input_ids": x, "labels": x} for x in torch.randint(3, VOCAB, (16, 10))]
    args = TrainingArguments(str(tmp_path), max_steps=4, per_device_train_batch_size=4, gradient_accumulation_steps=2,
                             learning_rate=1e-2, report_to=[], save_strategy="no", use_cpu=True, logging_steps=1,
                             disable_tqdm=True)
    trainer = Trainer(model=wrapped, args=args, train_dataset=data, callbacks=[ForesightCallback()])
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))
    assert wrapped.step == 3 and wrapped.current_weights()["top"] == 0.0  # the schedule followed the Trainer
    for name in ("objectives.top.head.weight", "objectives.mtp.heads.0.mlp.up_proj.weight", "model.lm_head.weight"):
        assert not torch.equal(before[name], dict(wrapped.named_parameters())[name]), name


@pytest.mark.parametrize("arch, fresh_norm", [("llama", 1.0), ("gemma2", 0.0)])  # Gemma's norm scales by 1 + w
def test_new_heads_are_initialised_as_the_model_initialises_its_own(arch, fresh_norm):
    model = tiny_model(arch)
    with torch.no_grad():
        model.base_model.norm.weight.fill_(0.7)  # as if trained: the heads must not copy it
    wrapped = wrap(model, [{"name": "mtp", "n": 2}, {"name": "dsmtp", "preset": "deepseek_v3", "depth": 1}],
                   head_init="random")  # (the default, "warm", starts them from the model: test_wrap_heads_logs.py)
    module = wrapped.heads["dsmtp"][0]
    for norm in (module.hnorm, module.enorm, module.norm):
        assert type(norm) is type(model.base_model.norm) and torch.all(norm.weight == fresh_norm)
    head = wrapped.heads["mtp"][0]
    assert type(head) is type(model.base_model.layers[-1])
    std = head.mlp.up_proj.weight.std().item()  # the config's initializer_range (0.3), not nn.Linear's default
    assert 0.25 < std < 0.35


def test_accelerate_prepares_and_trains_it():
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    wrapped = wrap(tiny_model("phi3"), [{"name": "ntp"}, {"name": "top", "window": 4}, {"name": "dsmtp", "depth": 1}])
    opt = torch.optim.AdamW(wrapped.parameters(), lr=1e-2)
    wrapped, opt = accelerator.prepare(wrapped, opt)
    ids = torch.randint(3, VOCAB, (4, 10))
    losses = []
    for _ in range(5):
        out = wrapped(ids, labels=ids)
        accelerator.backward(out.loss)
        opt.step()
        opt.zero_grad()
        losses.append(out.loss.item())
    assert losses[-1] < losses[0]


def test_foresight_trainer_checkpoints_tied_models_and_resumes_exactly(tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM, TrainingArguments

    from foresight.wrapper import ForesightTrainer

    def fresh(seed):
        torch.manual_seed(seed)
        cfg = AutoConfig.for_model("qwen2", vocab_size=VOCAB, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
        return wrap(AutoModelForCausalLM.from_config(cfg), [{"name": "ntp"}, {"name": "top", "window": 4}])

    data = [{"input_ids": x, "labels": x}
            for x in torch.randint(3, VOCAB, (16, 10), generator=torch.Generator().manual_seed(0))]

    def args(out):
        return TrainingArguments(str(out), max_steps=4, per_device_train_batch_size=4, learning_rate=1e-2, save_steps=2,
                                 report_to=[], use_cpu=True, disable_tqdm=True, seed=0)

    straight = fresh(0)
    ForesightTrainer(model=straight, args=args(tmp_path / "a"), train_dataset=data).train()
    saved = ForesightModel.from_pretrained(tmp_path / "a" / "checkpoint-4")  # a checkpoint is a wrapped folder
    for name, p in saved.named_parameters():
        assert torch.equal(p, dict(straight.named_parameters())[name]), name
    resumed = fresh(1)  # other weights: everything must come from the checkpoint
    ForesightTrainer(model=resumed, args=args(tmp_path / "a"), train_dataset=data).train(
        resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-2"))
    for name, p in resumed.named_parameters():
        torch.testing.assert_close(p, dict(straight.named_parameters())[name], rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("reentrant", [False, True])
def test_gradient_checkpointing_of_the_model_keeps_every_gradient(reentrant):
    """The hooks catch the trunk tensors inside checkpointed layers too (DS-MTP top_paper reads the last layer's
    output before the final norm, MTP its input)."""
    ids = torch.randint(3, VOCAB, (2, 9), generator=torch.Generator().manual_seed(0))
    grads = []
    for checkpointing in (False, True):
        wrapped = wrap(tiny_model("llama").train(),
                       [{"name": "ntp"}, {"name": "mtp", "n": 2}, {"name": "dsmtp", "depth": 1}])
        if checkpointing:
            wrapped.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": reentrant})
        wrapped(ids, labels=ids).loss.backward()
        grads.append({n: p.grad for n, p in wrapped.named_parameters() if p.grad is not None})
    assert set(grads[0]) == set(grads[1])
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-5, atol=1e-6, msg=name)


def test_save_pretrained_is_whole_or_refused(tmp_path):
    """Issue 21: the completion record is written last; a folder with other content keeps it, and a save there
    leaves no file of the previous save behind (a stale shard would make transformers read old weights)."""
    from foresight.io import RECORD

    wrapped = wrap(tiny_model("llama"), [{"name": "ntp"}, {"name": "top", "window": 4}])
    out = tmp_path / "out"
    (out / "checkpoint-1").mkdir(parents=True)
    (out / "notes.txt").write_text("mine")
    wrapped.save_pretrained(out, max_shard_size="20KB")
    assert (out / "model.safetensors.index.json").is_file()
    wrapped.save_pretrained(out)  # one file now: the shards and their index go
    assert not list(out.glob("model-*.safetensors")) and not (out / "model.safetensors.index.json").exists()
    assert (out / "notes.txt").read_text() == "mine" and (out / "checkpoint-1").is_dir()
    assert json.loads((out / RECORD).read_text())["format"] == "foresight-wrapper"
    ForesightModel.from_pretrained(out)
    (out / RECORD).unlink()  # a save killed before its record: refused, never taken for whole
    with pytest.raises(ForesightError, match=f"no {RECORD}"):
        ForesightModel.from_pretrained(out)
    wrapped.save_pretrained(tmp_path / "new")  # a new folder: swapped into place whole
    assert sorted(os.listdir(tmp_path / "new")) == sorted([RECORD, HEADS_FILE, "README.md", "config.json",
                                                           "generation_config.json",
                                                           "model.safetensors"])
