"""LoRA, DoRA and QLoRA adapters for any entrenar Module, compatible with Hugging Face PEFT.

    from entrenar.lora import LoraConfig, PeftModel, get_peft_model

    config = LoraConfig(r=8, lora_alpha=16, target_modules=["query", "value"], task_type="SEQ_CLS")
    model = get_peft_model(bert, config, generator=0)          # quantize="nf4" for QLoRA
    model.print_trainable_parameters()
    model.save_pretrained("adapter/")                           # loads in peft.PeftModel.from_pretrained
    model = PeftModel.from_pretrained(fresh_bert, "adapter/")   # and PEFT's adapters load here

Layout: config (LoraConfig), layer (LoraLinear), dora (the DoRA math), wrappers (modules_to_save),
inject (matching and replacing modules by name), tuner (LoraModel: model-wide operations), model
(PeftModel, get_peft_model), formats (PEFT and JSON files, the one key mapping), qlora (4-bit base).
"""

from entrenar.lora.config import LoraConfig
from entrenar.lora.dora import DoraLinearLayer
from entrenar.lora.formats import adapter_key_map, checkpoint_key, read_adapter
from entrenar.lora.layer import LoraLinear
from entrenar.lora.model import PeftModel, get_peft_model
from entrenar.lora.qlora import QUANT_KINDS
from entrenar.lora.tuner import LoraModel
from entrenar.lora.wrappers import ModulesToSaveWrapper

__all__ = [
    "QUANT_KINDS",
    "DoraLinearLayer",
    "LoraConfig",
    "LoraLinear",
    "LoraModel",
    "ModulesToSaveWrapper",
    "PeftModel",
    "adapter_key_map",
    "checkpoint_key",
    "get_peft_model",
    "read_adapter",
]
