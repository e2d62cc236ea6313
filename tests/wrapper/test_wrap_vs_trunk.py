"""foresight.wrap on a transformers Llama equals foresight's own trunk and objectives on the same weights.

The trunk (``foresight.model``) is an independent implementation of Llama, so agreement on every objective
(NTP, TOP, MTP heads, DS-MTP modules in both presets) checks the wrapper's plumbing end to end: which tensors
the heads read, the RoPE/mask they get, the embeddings DS-MTP reads, normalisation.
"""

import pytest
import torch

from foresight.batch import Batch
from foresight.hf.config import to_hf_config
from foresight.model import ModelConfig
from foresight.train.lm import TrainableLM
from foresight.wrapper import wrap

pytestmark = pytest.mark.usefixtures("one_thread")

SPECS = [{"name": "ntp"}, {"name": "top", "window": 6}, {"name": "mtp", "n": 3},
         {"name": "dsmtp", "depth": 2}, {"name": "dsmtp", "preset": "deepseek_v3", "depth": 1, "weight": 0.3}]


def _pair():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=41, hidden_size=24, n_layers=2, n_heads=4, n_kv_heads=2, intermediate_size=40,
                      init_std=0.2)
    lm = TrainableLM(cfg, SPECS).eval()
    for p in lm.parameters():  # norms away from 1, so that mixing up a norm would show
        if p.dim() == 1:
            p.data.uniform_(0.5, 1.5)
    hf_cfg = LlamaConfig(**{k: v for k, v in to_hf_config(cfg).items() if k not in ("architectures", "model_type")})
    model = LlamaForCausalLM(hf_cfg).eval()
    trunk = {("lm_head.weight" if k == "lm_head.weight" else "model." + k): v for k, v in lm.model.state_dict().items()}
    model.load_state_dict(trunk)
    wrapped = wrap(model, SPECS)
    ours = {}
    for key, obj in lm.objectives.items():
        for name, t in obj.state_dict().items():
            ours[f"{key}.{name.replace('.block.', '.layer.')}"] = t
    wrapped.objectives.load_state_dict(ours)
    return lm, wrapped


def test_every_objective_equals_foresight_trunk():
    lm, wrapped = _pair()
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 41, (2, 13), generator=g)
    with torch.no_grad():
        out = wrapped(ids, labels=ids)
        # foresight's batch: the stream is the tokens, nothing is known past the sequence
        batch = Batch(torch.cat([ids, torch.full((2, 1), -100)], 1), seq_len=13)
        ref = lm(batch)
    assert set(out.losses) == set(ref) == {"ntp", "top", "mtp", "dsmtp", "dsmtp_4"}
    for key, r in ref.items():
        torch.testing.assert_close(out.losses[key], r.loss_sum / r.count, rtol=1e-5, atol=1e-6, msg=key)
    torch.testing.assert_close(out.metrics["mtp_head2"], ref["mtp"].metrics["mtp_head2"], rtol=1e-5, atol=1e-6)
