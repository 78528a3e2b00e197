"""transformers' reading of the SmolLM2 GGUF file, the oracle of the SmolLM2 tests, converted once per
machine and kept in the temp folder.

transformers takes about 40 s to read the 135M-parameter GGUF file (model and tokenizer), and three test
modules need it. The first one to ask converts it and saves what transformers made (the float32 state
dict as safetensors, the config without its GGUF quantization entry, the tokenizer's files); the others
load that in about 3 s. The cache is keyed by a SHA-256 of the GGUF file and the transformers and torch
versions, and written to a private folder renamed into place, so a reader never sees half of one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
import transformers


def _key(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    h.update(f"{transformers.__version__} {torch.__version__}".encode())
    return h.hexdigest()[:20]


def _convert(path: Path, folder: Path) -> tuple[Any, Any]:
    kw = {"gguf_file": path.name}
    model = transformers.AutoModelForCausalLM.from_pretrained(path.parent, dtype=torch.float32, **kw).eval()
    tok = transformers.AutoTokenizer.from_pretrained(path.parent, **kw)
    config = model.config.to_dict()
    config.pop("quantization_config", None)  # the weights saved here are float32, not GGUF blocks
    (folder / "config.json").write_text(json.dumps(config))
    # tied embeddings share one tensor: safetensors wants each saved once, so each is cloned
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    safetensors.torch.save_file(state, str(folder / "model.safetensors"))
    tok.save_pretrained(folder)
    return model, tok


def transformers_smollm2(path: Path) -> tuple[Any, Any]:
    """(model in eval mode, tokenizer) as transformers loads them from the GGUF file at `path`."""
    cache = Path(tempfile.gettempdir()) / f"entrenar-tests-smollm2-{_key(path)}"
    if not (cache / "model.safetensors").is_file():
        work = Path(tempfile.mkdtemp(prefix=f"{cache.name}.", dir=cache.parent))
        try:
            model, tok = _convert(path, work)
            try:
                os.rename(work, cache)
            except OSError:  # another test process put its conversion there first
                shutil.rmtree(work, ignore_errors=True)
            return model, tok
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
    config = transformers.AutoConfig.from_pretrained(cache)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(safetensors.torch.load_file(str(cache / "model.safetensors")), strict=True)
    return model.eval(), transformers.AutoTokenizer.from_pretrained(cache)
