"""CLIP transformer towers in plain torch, with the module names of Hugging Face ``transformers`` 4.x CLIP.

The official GeoTreeCLIP checkpoint was written from ``transformers.CLIPVisionModel`` / ``CLIPTextModel`` modules
(transformers 4.24), so its tensor names are those of that library: ``embeddings.patch_embedding``,
``pre_layrnorm`` (sic), ``encoder.layers.N.self_attn.q_proj``, ``mlp.fc1``, ``final_layer_norm``, ... The classes
here reproduce those names and the computation (pre-LayerNorm blocks, quick-GELU MLP, causal text attention, pooling
at the first end-of-text token), and run attention through ``scaled_dot_product_attention``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def quick_gelu(x: Tensor) -> Tensor:
    return x * torch.sigmoid(1.702 * x)


class CLIPSelfAttention(nn.Module):
    """Multi-head self-attention with separate q/k/v/out projections (names as in transformers' CLIPAttention)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.k_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.q_proj = nn.Linear(width, width)
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: Tensor, causal: bool = False) -> Tensor:
        b, n, width = x.shape

        def split(t: Tensor) -> Tensor:
            return t.view(b, n, self.heads, width // self.heads).transpose(1, 2)

        # Default SDPA scale is 1/sqrt(head_dim), the scale CLIP applies to the queries.
        out = F.scaled_dot_product_attention(split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x)),
                                             is_causal=causal)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, width))


class CLIPMLP(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(quick_gelu(self.fc1(x)))


class CLIPEncoderLayer(nn.Module):
    """Pre-LayerNorm transformer block."""

    def __init__(self, width: int, heads: int, mlp: int, eps: float):
        super().__init__()
        self.self_attn = CLIPSelfAttention(width, heads)
        self.layer_norm1 = nn.LayerNorm(width, eps=eps)
        self.mlp = CLIPMLP(width, mlp)
        self.layer_norm2 = nn.LayerNorm(width, eps=eps)

    def forward(self, x: Tensor, causal: bool = False) -> Tensor:
        x = x + self.self_attn(self.layer_norm1(x), causal=causal)
        return x + self.mlp(self.layer_norm2(x))


class CLIPEncoder(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, mlp: int, eps: float):
        super().__init__()
        self.layers = nn.ModuleList(CLIPEncoderLayer(width, heads, mlp, eps) for _ in range(layers))

    def forward(self, x: Tensor, causal: bool = False) -> Tensor:
        for layer in self.layers:
            x = layer(x, causal=causal)
        return x


class CLIPVisionEmbeddings(nn.Module):
    """Class token + bias-free patch convolution + learned positions."""

    def __init__(self, width: int, channels: int, image_size: int, patch_size: int):
        super().__init__()
        self.class_embedding = nn.Parameter(torch.zeros(width))
        self.patch_embedding = nn.Conv2d(channels, width, kernel_size=patch_size, stride=patch_size, bias=False)
        positions = (image_size // patch_size) ** 2 + 1
        self.position_embedding = nn.Embedding(positions, width)
        # Saved in the official checkpoint (the GeoTreeCLIP code registers it as a persistent buffer).
        self.register_buffer("position_ids", torch.arange(positions).unsqueeze(0))

    def forward(self, pixels: Tensor) -> Tensor:
        patches = self.patch_embedding(pixels).flatten(2).transpose(1, 2)  # (N, patches, width)
        cls = self.class_embedding.to(patches.dtype).expand(patches.shape[0], 1, -1)
        return torch.cat([cls, patches], dim=1) + self.position_embedding(self.position_ids)


class CLIPVisionTransformer(nn.Module):
    """Vision tower; ``forward`` returns the last hidden state of the class token (before ``post_layernorm``)."""

    def __init__(self, width, layers, heads, mlp, channels, image_size, patch_size, eps):
        super().__init__()
        self.embeddings = CLIPVisionEmbeddings(width, channels, image_size, patch_size)
        self.pre_layrnorm = nn.LayerNorm(width, eps=eps)
        self.encoder = CLIPEncoder(width, layers, heads, mlp, eps)
        # Present in the official model and checkpoint, unused by GeoTreeCLIP (it reads the hidden state before it).
        self.post_layernorm = nn.LayerNorm(width, eps=eps)

    def forward(self, pixels: Tensor) -> Tensor:
        hidden = self.encoder(self.pre_layrnorm(self.embeddings(pixels)))
        return hidden[:, 0]


class CLIPTextEmbeddings(nn.Module):
    def __init__(self, vocab_size: int, width: int, context_length: int):
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.position_embedding = nn.Embedding(context_length, width)
        # Persistent in transformers 4.24 (the official environment), hence part of the official checkpoint.
        self.register_buffer("position_ids", torch.arange(context_length).unsqueeze(0))

    def forward(self, token_ids: Tensor) -> Tensor:
        positions = self.position_ids[:, : token_ids.shape[1]]
        return self.token_embedding(token_ids) + self.position_embedding(positions)


class CLIPTextTransformer(nn.Module):
    """Text tower; ``forward`` returns the final-LayerNorm output at each sequence's first end-of-text token.

    The end-of-text id (49407) is the largest id of the vocabulary, so ``argmax`` finds it, as transformers 4.24
    does; with causal attention the padding after it has no influence on that position.
    """

    def __init__(self, vocab_size, width, layers, heads, mlp, context_length, eps):
        super().__init__()
        self.embeddings = CLIPTextEmbeddings(vocab_size, width, context_length)
        self.encoder = CLIPEncoder(width, layers, heads, mlp, eps)
        self.final_layer_norm = nn.LayerNorm(width, eps=eps)

    def forward(self, token_ids: Tensor) -> Tensor:
        hidden = self.encoder(self.embeddings(token_ids), causal=True)
        eot = token_ids.argmax(dim=-1)
        # LayerNorm acts per token, so normalising only the pooled tokens gives the same values.
        return self.final_layer_norm(hidden[torch.arange(hidden.shape[0], device=hidden.device), eot])
