"""A wrapped model is still a transformers model to the ecosystem: generate gives the plain model's tokens, the
attributes tools read are the model's, TRL's SFTTrainer trains the objectives (ForesightSFTTrainer), and TRL
trainers that would drop the objectives are refused with one line."""

import pytest
import torch

from foresight.errors import ForesightError
from foresight.wrapper import wrap

from tiny_models import VOCAB, tiny_model, tiny_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")

ARCHS = ["llama", "qwen2", "gemma2"]
SPECS = [{"name": "ntp"}, {"name": "top", "window": 4, "weight": 0.5}, {"name": "mtp", "n": 2}]


@pytest.mark.parametrize("arch", ARCHS)
def test_generate_and_attributes_are_the_plain_models(arch):
    model = tiny_model(arch)
    wrapped = wrap(model, SPECS)
    ids = torch.randint(3, VOCAB, (2, 5), generator=torch.Generator().manual_seed(0))
    greedy = wrapped.generate(ids, max_new_tokens=6, do_sample=False)
    assert greedy.shape == (2, 11) and torch.equal(greedy, model.generate(ids, max_new_tokens=6, do_sample=False))
    torch.manual_seed(3)
    sampled = wrapped.generate(ids, max_new_tokens=6, do_sample=True, top_k=0)
    torch.manual_seed(3)
    assert torch.equal(sampled, model.generate(ids, max_new_tokens=6, do_sample=True, top_k=0))
    assert wrapped.generation_config is model.generation_config and wrapped.config is model.config
    assert wrapped.device == model.device and wrapped.dtype == model.dtype == torch.float32
    assert wrapped.can_generate() and wrapped.unwrap() is model
    assert wrapped.get_output_embeddings() is model.lm_head


def test_a_wrapped_peft_model_generates_with_its_adapter():
    peft = pytest.importorskip("peft")
    cfg = peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    pm = peft.get_peft_model(tiny_model("llama"), cfg)
    wrapped = wrap(pm, SPECS)
    ids = torch.randint(3, VOCAB, (1, 5), generator=torch.Generator().manual_seed(0))
    out = wrapped.generate(input_ids=ids, max_new_tokens=5, do_sample=False)
    assert torch.equal(out, pm.generate(input_ids=ids, max_new_tokens=5, do_sample=False))
    assert wrapped.unwrap() is pm and wrapped.merge_and_unload().unwrap() is not pm


def _sft(tmp_path, **kw):
    trl = pytest.importorskip("trl")
    from datasets import Dataset

    data = Dataset.from_dict({"input_ids": [list(range(3, 13 + i)) for i in range(8)]})
    args = trl.SFTConfig(str(tmp_path), max_steps=2, per_device_train_batch_size=4, learning_rate=1e-2,
                         logging_steps=1, report_to=[], save_strategy="no", use_cpu=True, bf16=False, **kw)
    return dict(args=args, train_dataset=data, processing_class=tiny_tokenizer())


@pytest.mark.parametrize("arch", ARCHS)
def test_sft_trainer_trains_the_objectives_and_logs_each(arch, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from foresight.wrapper import ForesightSFTTrainer

    wrapped = wrap(tiny_model(arch), SPECS)
    top = wrapped.heads["top"].weight.detach().clone()
    trainer = ForesightSFTTrainer(model=wrapped, **_sft(tmp_path))
    trainer.train()
    assert not torch.equal(top, wrapped.heads["top"].weight)  # the TOP head learned
    logs = [e for e in trainer.state.log_history if "loss" in e]
    assert len(logs) == 2
    for e in logs:  # the logged loss is the weighted sum of the logged objectives
        assert e["loss"] == pytest.approx(e["loss_ntp"] + 0.5 * e["loss_top"] + e["loss_mtp"], rel=1e-4)
        assert "mtp_head1" in e
    assert "forward" not in vars(wrapped)  # TRL's fused forward is gone: the objectives' loss is what trains


def test_sft_trainer_trains_lora_and_heads_of_a_wrapped_peft_model(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    peft = pytest.importorskip("peft")
    from foresight.wrapper import ForesightSFTTrainer

    cfg = peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"])
    wrapped = wrap(peft.get_peft_model(tiny_model("qwen2"), cfg), SPECS)
    before = {n: p.detach().clone() for n, p in wrapped.named_parameters() if p.requires_grad}
    ForesightSFTTrainer(model=wrapped, **_sft(tmp_path)).train()
    changed = {n for n, p in wrapped.named_parameters() if n in before and not torch.equal(before[n], p)}
    assert any("lora_B" in n for n in changed) and any(n.startswith("objectives.top") for n in changed)
    assert all("lora_" in n or n.startswith("objectives.") for n in before)  # nothing else was trainable


def test_trl_trainers_that_would_drop_the_objectives_are_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    trl = pytest.importorskip("trl")
    from datasets import Dataset

    wrapped = wrap(tiny_model("llama"), SPECS)
    with pytest.raises(ForesightError, match="use foresight.ForesightSFTTrainer"):
        trl.SFTTrainer(model=wrapped, **_sft(tmp_path))
    pairs = Dataset.from_dict({"prompt": ["w3 w4", "w5"], "chosen": [" w7", " w9"], "rejected": [" w10", " w11"]})
    args = trl.DPOConfig(str(tmp_path), max_steps=1, report_to=[], use_cpu=True, bf16=False)
    with pytest.raises(ForesightError, match=r"DPO/GRPO score completions .* wrapped\.unwrap\(\)"):
        trl.DPOTrainer(model=wrapped, ref_model=tiny_model("llama"), args=args, train_dataset=pairs,
                       processing_class=tiny_tokenizer())
    assert "forward" not in vars(wrapped)


def test_sft_logs_under_gradient_accumulation_are_those_of_one_batch(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from foresight.wrapper import ForesightSFTTrainer

    def first_log(batch, accumulate):
        wrapped = wrap(tiny_model("llama"), SPECS)
        kw = _sft(tmp_path)
        kw["args"].per_device_train_batch_size, kw["args"].gradient_accumulation_steps = batch, accumulate
        trainer = ForesightSFTTrainer(model=wrapped, **kw)
        trainer.train()
        return trainer.state.log_history[0]

    one, four = first_log(8, 1), first_log(2, 4)
    for key in ("loss", "loss_ntp", "loss_top", "loss_mtp", "grad_norm"):
        assert four[key] == pytest.approx(one[key], rel=1e-5), key


def test_other_patches_of_forward_are_kept_bf16_trainer_on_cpu(tmp_path):
    # accelerate wraps forward in autocast for bf16/fp16 (it calls ours): only TRL's replacement is refused
    from transformers import TrainingArguments

    from foresight.wrapper import ForesightTrainer

    wrapped = wrap(tiny_model("llama"), SPECS)
    data = [{"input_ids": x, "labels": x} for x in torch.randint(3, VOCAB, (4, 10))]
    args = TrainingArguments(str(tmp_path), max_steps=1, per_device_train_batch_size=4, report_to=[], use_cpu=True,
                             bf16=True, save_strategy="no")
    ForesightTrainer(model=wrapped, args=args, train_dataset=data).train()
