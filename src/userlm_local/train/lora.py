"""Low-rank adapters on the top layers of a base model, and what a run ships of them.

``apply_lora`` puts ``W x + (alpha / r) * B A x`` on the attention and MLP projections
of the top ``layers`` decoder layers and freezes everything else, except the embedding
rows of the tokens the run added (the Llama-3 headers, ``<|eot_id|>``,
``<|endconversation|>``).  Those rows are trained through the (tied) output head only:
the input side reads the same rows detached, so no gradient has to flow back through
the frozen lower layers, whose forward pass then records nothing for autograd.

The trained part (A, B per projection and the added embedding rows) is small enough to
ship in the package; ``default_model`` merges it into the base without torch.
"""

from __future__ import annotations

import math

PROJECTIONS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
               "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def _modules():
    import torch
    from torch import nn
    import torch.nn.functional as F

    class LoRALinear(nn.Module):
        def __init__(self, base: nn.Linear, rank: int, alpha: float):
            super().__init__()
            self.base = base
            base.weight.requires_grad_(False)
            self.lora_A = nn.Parameter(torch.empty(rank, base.in_features))
            self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank))
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
            self.scale = alpha / rank

        def forward(self, x):
            return self.base(x) + F.linear(F.linear(x, self.lora_A), self.lora_B) * self.scale

    class DetachedEmbedding(nn.Module):
        """The input embedding on the shared weight, without a gradient path."""

        def __init__(self, weight: nn.Parameter):
            super().__init__()
            self.weight = weight

        def forward(self, ids):
            return F.embedding(ids, self.weight.detach())

    return LoRALinear, DetachedEmbedding


def apply_lora(model, *, rank: int, alpha: float, layers: int, first_new_token: int) -> list[str]:
    """Adapt the top ``layers`` layers in place; returns the names of the trainable parameters."""
    import torch

    LoRALinear, DetachedEmbedding = _modules()
    for p in model.parameters():
        p.requires_grad_(False)
    blocks = model.model.layers
    n = len(blocks)
    for i in range(max(0, n - layers), n):
        for path in PROJECTIONS:
            parent_name, leaf = path.split(".")
            parent = getattr(blocks[i], parent_name)
            setattr(parent, leaf, LoRALinear(getattr(parent, leaf), rank, alpha))
    emb = model.get_input_embeddings().weight
    emb.requires_grad_(True)
    mask = torch.zeros(emb.shape[0], 1)
    mask[first_new_token:] = 1.0
    emb.register_hook(lambda g: g * mask)
    model.model.embed_tokens = DetachedEmbedding(emb)
    return [name for name, p in model.named_parameters() if p.requires_grad]


def trainable_state(model) -> dict:
    """The trainable tensors (adapters and the shared embedding) for a checkpoint."""
    return {k: v for k, v in model.state_dict().items() if "lora_" in k or k.endswith("embed_tokens.weight")}


def adapter_arrays(model, first_new_token: int) -> dict:
    """What ships: ``<layer path>.lora_A`` / ``.lora_B`` (float32) and the added embedding rows."""
    out = {}
    for name, p in model.named_parameters():
        if "lora_" in name:
            # model.layers.N.self_attn.q_proj.lora_A -> model.layers.N.self_attn.q_proj.weight.lora_A
            stem, which = name.rsplit(".", 1)
            out[f"{stem}.weight.{which}"] = p.detach().float().numpy().copy()
    emb = model.get_input_embeddings().weight
    out["model.embed_tokens.weight.added_rows"] = emb.detach()[first_new_token:].float().numpy().copy()
    return out
