"""PEFT both ways: wrap(get_peft_model(model)) and get_peft_model(wrap(model)) train LoRA and heads, save and load
back exactly (adapter + heads, and merged), and a load that does not fit is an error naming the weights."""

import pytest
import torch

from foresight.errors import ForesightError
from foresight.hf.heads import HEADS_FILE
from foresight.wrapper import ForesightModel, wrap

from tiny_models import VOCAB, tiny_model

peft = pytest.importorskip("peft")
pytestmark = pytest.mark.usefixtures("one_thread")

ARCHS = ["llama", "qwen2", "gemma2"]
SPECS = [{"name": "ntp"}, {"name": "top", "window": 4, "weight": 0.5}, {"name": "mtp", "n": 2},
         {"name": "dsmtp", "depth": 1, "weight": 0.3}]
IDS = torch.randint(3, VOCAB, (2, 9), generator=torch.Generator().manual_seed(0))


def _lora(**kw):
    # init_lora_weights=False: B is random too, so a LoRA that were lost on the way would change the logits
    return peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False, **kw)


def _train(model, steps=2):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(steps):
        model(IDS, labels=IDS).loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()


def _outputs(model):
    with torch.no_grad():
        out = model(IDS, labels=IDS)
    return out.logits, out.losses


def _max_diff(a, b) -> float:
    (la, ha), (lb, hb) = _outputs(a), _outputs(b)
    assert ha.keys() == hb.keys()
    return max([(la - lb).abs().max().item()] + [(ha[k] - hb[k]).abs().item() for k in ha])


def _snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _changed(before, model, word):
    return {n for n, p in model.named_parameters() if word in n and not torch.equal(before[n], p)}


@pytest.mark.parametrize("arch", ARCHS)
def test_peft_then_wrap_trains_lora_and_heads_and_round_trips(arch, tmp_path):
    wrapped = wrap(peft.get_peft_model(tiny_model(arch), _lora()), SPECS)
    before = _snapshot(wrapped)
    _train(wrapped)
    assert _changed(before, wrapped, "lora_") and _changed(before, wrapped, "objectives.top")
    assert _changed(before, wrapped, "objectives.mtp") and _changed(before, wrapped, "objectives.dsmtp")
    assert not _changed(before, wrapped, "base_layer")  # the base weights stay frozen
    wrapped.save_pretrained(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    assert (tmp_path / "adapter" / HEADS_FILE).is_file()
    back = ForesightModel.from_pretrained(tmp_path / "adapter", base_model=tiny_model(arch))
    assert _max_diff(wrapped, back) == 0.0
    # merged: PEFT folds B·A into the weights (float rounding, ~1e-6), and that model round-trips exactly
    wrapped.merge_and_unload()
    assert type(wrapped.unwrap()).__name__.endswith("ForCausalLM")
    assert _max_diff(wrapped, back) <= 1e-5
    wrapped.save_pretrained(tmp_path / "merged")
    assert _max_diff(wrapped, ForesightModel.from_pretrained(tmp_path / "merged")) == 0.0


@pytest.mark.parametrize("arch", ARCHS)
def test_wrap_then_peft_trains_heads_listed_in_modules_to_save_and_round_trips(arch, tmp_path):
    wrapped = wrap(tiny_model(arch), SPECS)
    assert wrapped.head_module_names == ["objectives.top.head", "objectives.mtp.heads.0",
                                         "objectives.dsmtp.layers.0"]
    pm = peft.get_peft_model(wrapped, _lora(modules_to_save=wrapped.head_module_names))
    before = _snapshot(pm)
    _train(pm)
    assert _changed(before, pm, "lora_") and _changed(before, pm, "top.head.modules_to_save")
    assert _changed(before, pm, "mtp.heads.0.modules_to_save") and _changed(before, pm, "dsmtp.layers.0.modules_")
    pm.save_pretrained(tmp_path / "adapter")
    back = peft.PeftModel.from_pretrained(wrap(tiny_model(arch), SPECS), tmp_path / "adapter")  # fresh heads
    assert _max_diff(pm, back) == 0.0
    merged = pm.merge_and_unload()  # the ForesightModel, adapters merged, trained heads in place
    assert isinstance(merged, ForesightModel) and _max_diff(merged, back) <= 1e-5
    merged.save_pretrained(tmp_path / "merged")
    assert _max_diff(merged, ForesightModel.from_pretrained(tmp_path / "merged")) == 0.0


def test_heads_frozen_by_peft_are_reported():
    wrapped = wrap(tiny_model("llama"), SPECS[:2])
    pm = peft.get_peft_model(wrapped, _lora())  # no modules_to_save: PEFT freezes the TOP head
    pm.train()
    with pytest.warns(UserWarning, match="top head has no trainable parameters.*head_module_names"):
        pm(IDS, labels=IDS)


def test_the_inner_model_of_a_peft_model_is_refused_and_its_save_is_an_error(tmp_path):
    pm = peft.get_peft_model(tiny_model("llama"), _lora())
    with pytest.raises(ForesightError, match="holds PEFT adapter layers but is not the PeftModel"):
        wrap(pm.base_model.model, SPECS[:2])
    wrapped = wrap(tiny_model("llama"), SPECS[:2])
    peft.get_peft_model(wrapped, _lora())
    with pytest.raises(ForesightError, match="holds PEFT adapter layers; save the PeftModel"):
        wrapped.save_pretrained(tmp_path)
    assert not any(tmp_path.iterdir())


def test_a_folder_with_adapter_injected_weights_is_an_error_naming_them(tmp_path):
    # what the workaround wrote: a model's own save_pretrained with LoRA layers inside it. Before, the
    # load re-initialised q_proj / v_proj at random and the logits moved by 53, without a word.
    wrapped = wrap(tiny_model("llama"), SPECS[:2])
    wrapped.save_pretrained(tmp_path)
    pm = peft.get_peft_model(tiny_model("llama"), _lora())
    pm.base_model.model.save_pretrained(tmp_path)  # adapter-injected keys over the plain model's file
    with pytest.raises(ForesightError, match=r"missing model\.layers\.0\.self_attn\.q_proj\.weight.*unexpected "
                                             r"model\.layers\.0\.self_attn\.q_proj\.base_layer\.weight"):
        ForesightModel.from_pretrained(tmp_path)


def test_an_adapter_folder_names_what_it_lacks(tmp_path):
    from safetensors.torch import load_file, save_file

    wrapped = wrap(peft.get_peft_model(tiny_model("llama"), _lora()), SPECS[:2])
    wrapped.save_pretrained(tmp_path)
    with pytest.raises(ForesightError, match="names no base model; pass base_model="):
        ForesightModel.from_pretrained(tmp_path)  # a model built from a config has no path to name
    path = tmp_path / "adapter_model.safetensors"
    tensors = load_file(str(path))
    dropped = sorted(tensors)[0]
    save_file({k: v for k, v in tensors.items() if k != dropped}, str(path))
    with pytest.raises(ForesightError, match="missing " + dropped.replace(".", r"\.")):
        ForesightModel.from_pretrained(tmp_path, base_model=tiny_model("llama"))


@pytest.mark.parametrize("order", ["peft_then_wrap", "wrap_then_peft"])
def test_causal_lm_task_type_trains_generates_and_round_trips(order, tmp_path):
    # task_type="CAUSAL_LM" gives PEFT's PeftModelForCausalLM, which asks its base model for generation hooks
    if order == "peft_then_wrap":
        model = wrap(peft.get_peft_model(tiny_model("qwen2"), _lora(task_type="CAUSAL_LM")), SPECS[:2])
    else:
        wrapped = wrap(tiny_model("qwen2"), SPECS[:2])
        model = peft.get_peft_model(wrapped, _lora(task_type="CAUSAL_LM", modules_to_save=wrapped.head_module_names))
    _train(model)
    assert model.generate(input_ids=IDS[:, :4], max_new_tokens=3, do_sample=False).shape == (2, 7)
    model.save_pretrained(tmp_path)
    if order == "peft_then_wrap":
        back = ForesightModel.from_pretrained(tmp_path, base_model=tiny_model("qwen2"))
    else:
        back = peft.PeftModel.from_pretrained(wrap(tiny_model("qwen2"), SPECS[:2]), tmp_path)
    assert _max_diff(model, back) == 0.0


def test_a_checkpoint_of_a_wrapped_peft_model_loads_into_the_model_being_trained(tmp_path):
    # what ForesightTrainer's resume_from_checkpoint does (foresight.wrapper.io.load_into)
    from foresight.wrapper.io import load_into

    trained = wrap(peft.get_peft_model(tiny_model("gemma2"), _lora()), SPECS)
    _train(trained)
    trained.save_pretrained(tmp_path)
    fresh = wrap(peft.get_peft_model(tiny_model("gemma2"), _lora()), SPECS)
    assert _max_diff(trained, fresh) > 0
    load_into(fresh, tmp_path)
    assert _max_diff(trained, fresh) == 0.0


@pytest.mark.parametrize("kw", [dict(target_modules=["q_proj", "lm_head"]),
                                dict(target_modules=["q_proj"], modules_to_save=["embed_tokens"])],
                         ids=["lora_lm_head", "saved_embed_tokens"])
def test_a_peft_config_that_adapts_head_or_embedding_is_refused_in_one_line(kw):
    pm = peft.get_peft_model(tiny_model("llama"), peft.LoraConfig(r=4, **kw))
    with pytest.raises(ForesightError, match="the PeftModel adapts the model's (output head|input embedding)"):
        wrap(pm, SPECS[:2])


def test_a_checkpoint_of_a_peft_model_around_the_wrapper_loads_back_with_its_heads(tmp_path):
    from foresight.wrapper.io import load_into

    def fresh():
        wrapped = wrap(tiny_model("qwen2"), SPECS)
        return peft.get_peft_model(wrapped, _lora(modules_to_save=wrapped.head_module_names))

    trained = fresh()
    _train(trained)
    trained.save_pretrained(tmp_path)  # what ForesightTrainer's checkpoint holds for this order
    other = fresh()
    assert _max_diff(trained, other) > 0
    load_into(other, tmp_path)
    assert _max_diff(trained, other) == 0.0


def test_loading_a_wrap_first_adapter_with_from_pretrained_says_how(tmp_path):
    wrapped = wrap(tiny_model("llama"), SPECS[:2])
    peft.get_peft_model(wrapped, _lora(modules_to_save=wrapped.head_module_names)).save_pretrained(tmp_path)
    with pytest.raises(ForesightError, match=r"load it with PeftModel\.from_pretrained\(foresight\.wrap"):
        ForesightModel.from_pretrained(tmp_path)
