"""Hugging Face interchange: export a foresight checkpoint as a plain ``LlamaForCausalLM`` folder, import a local
Llama / Qwen2 folder as a foresight model, and load pretrained weights into a model a recipe builds."""

from foresight.hf.config import SUPPORTED, from_hf_config, to_hf_config
from foresight.hf.export import export_checkpoint, export_lm, max_logit_difference
from foresight.hf.import_ import LoadReport, import_hf, load_pretrained_into, pretrained_model_config, save_imported

__all__ = ["LoadReport", "SUPPORTED", "export_checkpoint", "export_lm", "from_hf_config", "import_hf",
           "load_pretrained_into", "max_logit_difference", "pretrained_model_config", "save_imported", "to_hf_config"]
