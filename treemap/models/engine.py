"""Fast inference path of GeoTreeCLIP's location encoder.

The vision tower of GeoTreeCLIP sees a 16 x 16 image cut into one 16 x 16 patch, so every month is a sequence of two
tokens: the class token (CLS) and one patch token. The fast path exploits that structure. Every step computes the
same function as the plain forward (``treemap.models.reference``); only floating-point rounding differs.

* **Folded embedding.** The bilinear resize of the 5 x 5 patch to 16 x 16 (``align_corners=False``) and the bias-free
  16 x 16 patch convolution are both linear, so together they are one matrix ``(hidden, channels * 5 * 5)``. It is
  formed in float64 from the convolution weight and the resize's own coefficients (``F.interpolate`` applied to the
  unit images), once per weight version, input size, device and dtype.
* **Constant class token.** Before the first layer the CLS token is ``pre_layrnorm(class_embedding + position 0)``
  for every month of every sample, so its first-layer LayerNorm and q/k/v are computed once.
* **Two-key attention as elementwise arithmetic.** With two keys, softmax gives key 0 the weight
  ``sigmoid(q . (k0 - k1) / sqrt(d))`` per head and the output is ``v1 + w0 (v0 - v1)``: a few elementwise operations
  on ``(months, hidden)`` arrays instead of tens of thousands of 2 x 2 attention problems.
* **Token differences.** Of the keys only ``k0 - k1`` is needed, and ``k0 - k1 = (y0 - y1) Wk^T`` (the bias cancels),
  so the k projection of both tokens is replaced by one product on the difference: per layer and month 5 instead of
  6 hidden x hidden products for q, k and v.
* **Big GEMMs.** The hidden state is one ``(2, M, hidden)`` array (CLS rows, then patch rows) for the ``M`` present
  months of the batch, so each projection is one matrix product over ``2 M`` (or ``M``) rows; q and v come from one
  product with a packed ``[Wq; Wv]`` (the packed ``[Wq; Wv; Wk]`` is the cache's one large copy).
* **Last layer for CLS only.** Only the CLS output of the last layer is read: the last layer computes the CLS query,
  its attention, output projection and MLP, and nothing else for the patch token than what the CLS query needs.
* **SiLU.** ``quick_gelu(z) = z sigmoid(1.702 z) = silu(1.702 z) / 1.702``: the 1.702 goes into the second
  LayerNorm's affine and fc1's bias, the 1 / 1.702 into fc2's product, and the activation is one in-place ``silu_``.
* **Missing months skipped** (``TemporalEncoder``): only present months enter the tower (their features would be
  multiplied by zero). In the temporal self-attention a missing month is a zero vector, so its q/k/v are the
  projection biases; only present months are projected, and the output projection, which is affine, is applied once
  to the mean over months.

Weights derived from parameters live in a cache outside ``state_dict()``: the packed q/v/k matrices (3 hidden^2 per
layer, 85 MB for the full model in fp32), the folded embedding and a few vectors; in the parameters' own dtype the
other matrices are the parameters themselves. It is rebuilt when a parameter changes (version counter: in-place
updates, ``load_state_dict``), moves (storage address) or when the compute dtype or input size changes.

Under autocast (bf16 on CUDA; CPU in tests) the products run in the autocast dtype on weights cast once, while the
residual stream and LayerNorms stay float32, as autocast does for the plain modules.

The fast path is for inference: when gradients are required, ``MonthEncoder`` uses the plain modules.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

QUICK_GELU = 1.702


def resize_matrix(in_size: tuple[int, int], out_size: tuple[int, int]) -> Tensor:
    """``(out_h * out_w, in_h * in_w)`` float64 matrix of ``F.interpolate(mode="bilinear", align_corners=False)``.

    Obtained by resizing each unit image, so it is the interpolation torch performs, whatever its conventions.
    """
    n = in_size[0] * in_size[1]
    if tuple(in_size) == tuple(out_size):
        return torch.eye(n, dtype=torch.float64)
    basis = torch.eye(n, dtype=torch.float64).view(n, 1, *in_size)
    resized = F.interpolate(basis, size=tuple(out_size), mode="bilinear", align_corners=False)
    return resized.view(n, -1).T.contiguous()


def fold_patch_embedding(conv_weight: Tensor, in_size: tuple[int, int]) -> Tensor:
    """The bilinear resize to the convolution's kernel size followed by the one-patch convolution, as one matrix
    ``(hidden, channels * in_h * in_w)`` (float64) acting on the flattened ``(channels, in_h, in_w)`` input."""
    hidden, channels, kh, kw = conv_weight.shape
    resize = resize_matrix(in_size, (kh, kw)).to(conv_weight.device)
    folded = conv_weight.detach().double().reshape(hidden, channels, kh * kw) @ resize
    return folded.reshape(hidden, channels * in_size[0] * in_size[1])


def _signature(params) -> tuple:
    out = []
    for p in params:
        try:
            version = p._version
        except RuntimeError:  # inference tensors have no version counter; their storage address still counts
            version = None
        out.append((p.data_ptr(), version))
    return tuple(out)


@dataclass
class _Layer:
    ln1: tuple[Tensor, Tensor]
    w3: Tensor  # rows [Wq; Wv; Wk]: [Wq; Wv] and [Wv; Wk] are contiguous blocks
    bqv: Tensor  # [bq; bv] (k's bias cancels in k0 - k1)
    wo: Tensor
    bo: Tensor
    ln2: tuple[Tensor, Tensor]  # x 1.702 ...
    w1: Tensor
    b1: Tensor  # ... x 1.702: fc1 yields 1.702 z, and quick_gelu(z) = silu(1.702 z) / 1.702
    w2: Tensor
    b2: Tensor
    w2_alpha: float  # 1 / 1.702, or 1 where w2 is a copy already divided by 1.702


@dataclass
class _Prepared:
    signature: tuple
    dtype: torch.dtype  # of the matrix products
    acc: torch.dtype  # of the residual stream and LayerNorms: float32 (float64 for a float64 model)
    device: torch.device
    hidden: int
    heads: int
    eps: float
    patch_bias: Tensor  # position embedding of the patch token
    pre_ln: tuple[Tensor, Tensor]
    cls0: Tensor  # (h,) the CLS token entering the first layer
    cls_qkv0: tuple[Tensor, Tensor, Tensor]  # its first-layer q, k, v without biases; compute dtype
    layers: list[_Layer]
    folded: dict[tuple[int, int], Tensor] = field(default_factory=dict)  # by input (h, w)
    conv_weight: Tensor | None = None


def _prepare(vision: nn.Module, heads: int, dtype: torch.dtype, device: torch.device) -> _Prepared:
    """Derived weights: the packed q/v/k matrix (a copy), the rest the parameters themselves where dtype and device
    agree, else cast once."""
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    emb = vision.embeddings
    hidden = emb.class_embedding.shape[0]
    eps = vision.pre_layrnorm.eps

    def to(t: Tensor, dt: torch.dtype = dtype) -> Tensor:
        return t.detach().to(device=device, dtype=dt)

    def scaled(t: Tensor, factor: float, dt: torch.dtype = dtype) -> Tensor:
        return (t.detach().to(device=device, dtype=torch.float64) * factor).to(dt)

    layers = []
    for layer in vision.encoder.layers:
        attn, mlp = layer.self_attn, layer.mlp
        w2_is_param = mlp.fc2.weight.dtype == dtype and mlp.fc2.weight.device == device
        layers.append(_Layer(
            ln1=(to(layer.layer_norm1.weight, acc), to(layer.layer_norm1.bias, acc)),
            w3=torch.cat([to(attn.q_proj.weight), to(attn.v_proj.weight), to(attn.k_proj.weight)]),
            bqv=torch.cat([to(attn.q_proj.bias), to(attn.v_proj.bias)]),
            wo=to(attn.out_proj.weight), bo=to(attn.out_proj.bias),
            ln2=(scaled(layer.layer_norm2.weight, QUICK_GELU, acc), scaled(layer.layer_norm2.bias, QUICK_GELU, acc)),
            w1=to(mlp.fc1.weight), b1=scaled(mlp.fc1.bias, QUICK_GELU),
            w2=to(mlp.fc2.weight) if w2_is_param else scaled(mlp.fc2.weight, 1 / QUICK_GELU),
            b2=to(mlp.fc2.bias), w2_alpha=1 / QUICK_GELU if w2_is_param else 1.0,
        ))
    positions = to(emb.position_embedding.weight, acc)
    pre_ln = (to(vision.pre_layrnorm.weight, acc), to(vision.pre_layrnorm.bias, acc))
    cls0 = F.layer_norm(to(emb.class_embedding, acc) + positions[0], (hidden,), *pre_ln, eps)
    first = layers[0]
    y0 = F.layer_norm(cls0, (hidden,), *first.ln1, eps).to(dtype)
    q, v, k = F.linear(y0, first.w3).split(hidden)
    cls_qkv0 = (q, k, v)
    return _Prepared(
        signature=(), dtype=dtype, acc=acc, device=device, hidden=hidden, heads=heads, eps=eps,
        patch_bias=positions[1].contiguous(), pre_ln=pre_ln, cls0=cls0, cls_qkv0=cls_qkv0, layers=layers,
        conv_weight=emb.patch_embedding.weight,
    )


def _two_key_attention(q: Tensor, dk: Tensor, v1: Tensor, dv: Tensor, heads: int) -> Tensor:
    """Attention over a two-token sequence (token 0 = CLS, 1 = patch) from ``q`` ``(T, M, hidden)`` (T = 2: both
    queries, T = 1: the CLS query only), ``dk = k0 - k1``, ``v1`` and ``dv = v0 - v1``, all ``(M, hidden)``.
    Returns ``(T, M, hidden)``.

    With two keys, softmax gives key 0 the weight sigmoid(s0 - s1) = sigmoid(q . (k0 - k1) / sqrt(head_dim)) per
    head, and the output is w0 v0 + (1 - w0) v1 = v1 + w0 (v0 - v1).
    """
    t, m, hidden = q.shape
    d = hidden // heads
    w0 = (q * dk).view(t, m, heads, d).sum(-1, keepdim=True).mul_(d ** -0.5).sigmoid_()
    return torch.addcmul(v1.view(m, heads, d), w0, dv.view(m, heads, d)).view(t, m, hidden)


def _residual_linear_(x: Tensor, a: Tensor, w: Tensor, b: Tensor, alpha: float = 1.0) -> None:
    """``x += alpha a @ w.T + b`` in place; ``a``/``w``/``b`` in the compute dtype, ``x`` in it or a wider one."""
    if a.dtype == x.dtype:
        x.add_(b)
        x.addmm_(a, w.t(), alpha=alpha)
    elif alpha == 1.0:
        x.add_(F.linear(a, w, b))
    else:  # pragma: no cover (mixed precision always uses pre-scaled copies)
        x.add_(F.linear(a, w), alpha=alpha).add_(b)


def _mlp_(x: Tensor, layer: _Layer, eps: float, dtype: torch.dtype) -> None:
    """``x += fc2(quick_gelu(fc1(layer_norm2(x))))`` in place, with quick_gelu(z) = silu(1.702 z) / 1.702: the
    1.702 is folded into layer_norm2's affine and fc1's bias, the 1 / 1.702 into fc2's product."""
    z = F.linear(F.layer_norm(x, x.shape[-1:], *layer.ln2, eps).to(dtype), layer.w1, layer.b1)
    _residual_linear_(x, F.silu(z, inplace=True), layer.w2, layer.b2, layer.w2_alpha)


def run_tower(prep: _Prepared, folded: Tensor, pixels: Tensor) -> Tensor:
    """CLS output of the last layer ``(M, hidden)`` (dtype ``prep.acc``) for ``M`` flattened normalised patches
    ``(M, C*h*w)``; ``folded`` is the folded resize + patch embedding for that input size."""
    h, heads, eps, dtype = prep.hidden, prep.heads, prep.eps, prep.dtype
    m = pixels.shape[0]
    x = torch.empty(2, m, h, device=pixels.device, dtype=prep.acc)  # residual stream: CLS rows, patch rows
    x[0] = prep.cls0
    if dtype == prep.acc:
        patch = torch.addmm(prep.patch_bias, pixels.to(dtype), folded.t())
    else:
        patch = F.linear(pixels.to(dtype), folded).to(prep.acc).add_(prep.patch_bias)
    x[1] = F.layer_norm(patch, (h,), *prep.pre_ln, eps)
    last = len(prep.layers) - 1
    for i, layer in enumerate(prep.layers):
        w3, bqv = layer.w3, layer.bqv
        if i == 0:
            # The CLS token is the same for every month: its q, k, v were computed once (``cls_qkv0``).
            y1 = F.layer_norm(x[1], (h,), *layer.ln1, eps).to(dtype)
            qvk1 = F.linear(y1, w3)  # patch token, without biases (they cancel in the differences)
            q0, k0, v0 = prep.cls_qkv0
            q = torch.stack([q0.expand(m, h), qvk1[:, :h]]).add_(bqv[:h])
            dk = torch.sub(k0, qvk1[:, 2 * h:])
            dv = torch.sub(v0, qvk1[:, h:2 * h])
            v1 = qvk1[:, h:2 * h].add_(bqv[h:])
        else:
            y = F.layer_norm(x, (h,), *layer.ln1, eps).to(dtype)
            # k0 - k1 = (y0 - y1) Wk^T (the bias cancels): one product on the difference of the two tokens
            # replaces the k products of both.
            dy = y[0] - y[1]
            if i < last:
                qv = F.linear(y, w3[:2 * h], bqv)  # q and v of both tokens, (2, M, 2h)
                q, v1 = qv[..., :h], qv[1, :, h:]
                dk = F.linear(dy, w3[2 * h:])
                dv = qv[0, :, h:] - v1
            else:  # only the CLS query is needed in the last layer; v0 - v1 from the difference too
                q = F.linear(y[0], w3[:h], bqv[:h]).unsqueeze(0)
                dvk = F.linear(dy, w3[h:])
                dv, dk = dvk[:, :h], dvk[:, h:]
                v1 = F.linear(y[1], w3[h:2 * h], bqv[h:])
        if i == last:
            # Only the CLS output of the last layer is used: attention output, projection and MLP for CLS alone.
            cls = x[0]
            _residual_linear_(cls, _two_key_attention(q[:1], dk, v1, dv, heads)[0], layer.wo, layer.bo)
            _mlp_(cls, layer, eps, dtype)
            return cls
        flat = x.view(2 * m, h)
        _residual_linear_(flat, _two_key_attention(q, dk, v1, dv, heads).view(2 * m, h), layer.wo, layer.bo)
        _mlp_(flat, layer, eps, dtype)
    raise ValueError("the vision tower has no layers")


class TwoTokenEngine:
    """Cache of derived weights plus the fast forward for a CLIP vision tower with one patch (two tokens).

    Not an ``nn.Module``: it owns no parameters and adds nothing to ``state_dict()``.
    """

    def __init__(self, vision: nn.Module, heads: int):
        self.vision = vision
        self.heads = heads
        self._prepared: dict[tuple, _Prepared] = {}
        self.compiled = None

    @staticmethod
    def supports(vision: nn.Module) -> bool:
        return vision.embeddings.position_embedding.weight.shape[0] == 2

    def prepared(self, device: torch.device, dtype: torch.dtype, in_size: tuple[int, int]) -> tuple[_Prepared, Tensor]:
        """Derived weights for this device and compute dtype, and the folded embedding for inputs of ``in_size``."""
        params = list(self.vision.parameters())
        signature = _signature(params)
        key = (device, dtype)
        prep = self._prepared.get(key)
        if prep is None or prep.signature != signature:
            with torch.inference_mode(False), torch.no_grad(), torch.autocast(device.type, enabled=False):
                prep = _prepare(self.vision, self.heads, dtype, device)
            prep.signature = signature
            # Stale entries (other weights) are dropped; other devices/dtypes of the same weights are kept.
            self._prepared = {k: v for k, v in self._prepared.items() if v.signature == signature}
            self._prepared[key] = prep
        if in_size not in prep.folded:
            with torch.inference_mode(False), torch.no_grad():
                folded = fold_patch_embedding(prep.conv_weight.to(device), in_size)
                prep.folded[in_size] = folded.to(dtype).contiguous()
        return prep, prep.folded[in_size]

    def __call__(self, patches: Tensor) -> Tensor:
        """CLS features ``(M, hidden)`` of normalised patches ``(M, channels, h, w)`` (any ``h, w``: the tower's
        bilinear resize is folded into the embedding).

        Under autocast the products run in the autocast dtype and the features are float32 (like the residual
        stream of the plain modules under autocast); otherwise everything runs in the parameters' dtype (with a
        float32 residual stream for 16-bit parameters) and the features have that dtype.
        """
        device = patches.device
        param_dtype = self.vision.embeddings.class_embedding.dtype
        autocast = torch.is_autocast_enabled(device.type)
        dtype = torch.get_autocast_dtype(device.type) if autocast else param_dtype
        prep, folded = self.prepared(device, dtype, tuple(patches.shape[-2:]))
        flat = patches.reshape(patches.shape[0], folded.shape[1])
        if flat.shape[0] == 0:
            out = flat.new_zeros(0, prep.hidden, dtype=prep.acc)
        else:
            fn = self.compiled or run_tower
            with torch.autocast(device.type, enabled=False):
                out = fn(prep, folded, flat)
        return out if autocast else out.to(param_dtype)

    def enable_compile(self, enabled: bool = True) -> bool:
        """Route the tower through ``torch.compile`` (dynamic shapes). Returns whether compilation is active."""
        if not enabled:
            self.compiled = None
            return False
        try:
            self.compiled = torch.compile(run_tower, dynamic=True)
        except Exception:  # noqa: BLE001 (no compiler backend on this platform)
            self.compiled = None
        return self.compiled is not None


def tower_flops(hidden: int, mlp: int, layers: int, in_features: int) -> int:
    """FLOPs (2 per multiply-add) that ``run_tower`` executes per present month: the matrix products and the
    two-key attention contractions (``q . dk`` and ``w0 dv``: 2 hidden multiply-adds per query token)."""
    h2 = hidden * hidden
    attn = 2 * 2 * hidden  # per query token
    ffn = 2 * 2 * hidden * mlp  # fc1 + fc2, per token
    flops = 2 * in_features * hidden  # folded resize + patch embedding
    for i in range(layers):
        tokens = 1 if i == layers - 1 else 2  # query tokens: the last layer serves the CLS token only
        if i == 0:
            flops += 3 * 2 * h2  # q, k, v of the patch token (the CLS token's are constant)
        else:
            flops += 2 * 2 * h2 + 2 * h2 + tokens * 2 * h2  # k, v of the token difference; v of the patch; q
        flops += tokens * (attn + 2 * h2 + ffn)  # attention, output projection, MLP
    return flops


def temporal_flops(hidden: int, months: int, present: float, heads: int) -> float:
    """FLOPs per sample of the fast temporal self-attention: q/k/v of the present months, the attention over all
    months, and one output projection of the mean."""
    return present * 2 * hidden * 3 * hidden + 2 * 2 * months * months * hidden + 2 * hidden * hidden


__all__ = ["TwoTokenEngine", "fold_patch_embedding", "resize_matrix", "run_tower", "tower_flops", "temporal_flops"]
