"""The weight generator: frozen student embedding -> LayerNorm -> one self-attention layer -> MLP -> sigmoid.

Paper Eq. 2-3: ``e = Att(Emb(r))``, ``w_j = sigmoid(f_w(e_j))``. ``w_j`` is the probability that
rationale token j is kept; it is the token's keypoint weight. Only the rationale is an input.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import bad_input


def _default_heads(dim: int) -> int:
    for h in (8, 4, 2, 1):
        if dim % h == 0 and (dim // h) % 2 == 0:
            return h
    return 1


def _rotate(x: torch.Tensor, positions: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Rotary position embedding of ``x [B, H, L, D]`` (D even) at integer ``positions [L]``."""
    half = x.shape[-1] // 2
    freq = base ** (-torch.arange(half, device=x.device, dtype=torch.float32) / half)
    ang = positions.to(torch.float32)[:, None] * freq[None, :]
    cos, sin = ang.cos().to(x.dtype), ang.sin().to(x.dtype)
    x1, x2 = x[..., :half], x[..., half : 2 * half]
    out = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return out if x.shape[-1] == 2 * half else torch.cat([out, x[..., 2 * half :]], dim=-1)


POSITIONS = ("relative", "rotary", "none")


def local_bias_init(max_distance: int, num_heads: int) -> torch.Tensor:
    """Initial relative-position biases ``[2 * max_distance + 1, num_heads]``: ``-slope_h * |offset|``.

    ALiBi-style distance penalties with geometric slopes ``2 ** (1 - 8 h / H)`` (2 down to about
    1/64): head 0 looks mostly at a token's immediate neighbours, the last heads almost uniformly.
    A zero start makes every head attend uniformly, so the neighbour's identity reaches a token
    diluted by 1/L; on the planted task the weights then learned token identity (keep every
    number) long before they learned context (keep the number after the marker) and saturated
    there. Starting local, "the token before me" is a strong feature from the first step.
    """
    offsets = torch.arange(-max_distance, max_distance + 1, dtype=torch.float32).abs()
    slopes = 2.0 ** (1.0 - 8.0 * torch.arange(num_heads, dtype=torch.float32) / num_heads)
    return -offsets[:, None] * slopes[None, :]


class SelfAttention(nn.Module):
    """One multi-head self-attention layer with residual + LayerNorm; padded keys are ignored.

    ``position="relative"`` adds a learned per-head bias for each clipped offset ``j - i`` in
    ``[-max_distance, max_distance]`` (T5-style; "the token before me is X" is one scalar to
    learn), initialised to local ALiBi-style penalties (see :func:`local_bias_init`); ``"rotary"``
    rotates queries and keys (RoPE), ``"none"`` sees a bag of tokens.
    """

    def __init__(self, dim: int, num_heads: int, position: str = "relative", max_distance: int = 8) -> None:
        super().__init__()
        if dim % num_heads:
            raise bad_input("num_heads", f"a divisor of the embedding size {dim}", num_heads)
        if position not in POSITIONS:
            raise bad_input("position", f"one of {POSITIONS}", repr(position))
        self.num_heads, self.position, self.max_distance = num_heads, position, max_distance
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.relative = nn.Embedding(2 * max_distance + 1, num_heads) if position == "relative" else None
        if self.relative is not None:
            with torch.no_grad():
                self.relative.weight.copy_(local_bias_init(max_distance, num_heads))

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        pos = torch.arange(n, device=x.device)
        if self.position == "rotary":
            q, k = _rotate(q, pos), _rotate(k, pos)
        keep = attention_mask.bool()
        keep = keep | ~keep.any(-1, keepdim=True)  # an all-padding row attends to itself: no NaN
        mask = torch.zeros(b, 1, 1, n, dtype=q.dtype, device=x.device).masked_fill(~keep[:, None, None, :], float("-inf"))
        if self.relative is not None:
            offset = (pos[None, :] - pos[:, None]).clamp(-self.max_distance, self.max_distance) + self.max_distance
            mask = mask + self.relative(offset).permute(2, 0, 1).unsqueeze(0).to(q.dtype)  # [1,H,L,L]
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        att = att.transpose(1, 2).reshape(b, n, d)
        return self.norm(x + self.out(att))


class TokenWeighter(nn.Module):
    """Keypoint weights of rationale tokens: ``w = sigmoid(MLP(SelfAttention(Emb(ids))))``.

    ``embedding`` is the student's input embedding matrix ``[V, d]``; it is copied and frozen so
    the weights live on the student's tokens (paper App. A). ``forward`` returns the pre-sigmoid
    logits (``-inf`` at padding, so ``w = 0`` there) and the raw token embeddings that the mask
    is applied to.
    """

    def __init__(
        self,
        embedding: torch.Tensor,
        *,
        num_heads: int | None = None,
        mlp_hidden: int = 256,
        position: str = "relative",
        init_keep_logit: float = 0.0,
    ) -> None:
        super().__init__()
        if not isinstance(embedding, torch.Tensor) or embedding.dim() != 2:
            raise bad_input("embedding", "a 2-D tensor [vocab, dim]", getattr(embedding, "shape", type(embedding)))
        vocab, dim = embedding.shape
        self.embedding = nn.Embedding(vocab, dim)
        self.embedding.weight.data.copy_(embedding.detach().float())
        self.embedding.weight.requires_grad_(False)
        # Student embeddings come at any scale (a random Llama's at std 0.02, T5's at 1): a
        # parameter-free LayerNorm gives the attention and MLP unit-scale token features, so the
        # token's identity is not drowned by the layers' biases. The mask still acts on the raw
        # embeddings (what the predictor reads).
        self.input_norm = nn.LayerNorm(dim, elementwise_affine=False)
        self.attention = SelfAttention(dim, num_heads or _default_heads(dim), position)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_hidden), nn.GELU(), nn.Linear(mlp_hidden, 1))
        nn.init.normal_(self.mlp[2].weight, std=1.0 / math.sqrt(mlp_hidden))
        nn.init.constant_(self.mlp[2].bias, init_keep_logit)

    @property
    def vocab_size(self) -> int:
        return self.embedding.num_embeddings

    @property
    def dim(self) -> int:
        return self.embedding.embedding_dim

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Frozen student embeddings of ``ids`` (no gradient to the table)."""
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.vocab_size):
            raise bad_input("token ids", f"values in [0, {self.vocab_size})", f"range [{int(ids.min())}, {int(ids.max())}]")
        return self.embedding(ids)

    def forward(self, ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``ids, attention_mask [B, L]`` -> ``(logits [B, L], embeddings [B, L, d])``."""
        emb = self.embed(ids)
        h = self.attention(self.input_norm(emb), attention_mask)
        logits = self.mlp(h).squeeze(-1)
        logits = logits.masked_fill(~attention_mask.bool(), float("-inf"))
        return logits, emb

    def weights(self, ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Deterministic keep probabilities ``w in (0,1)``, exactly 0 at padding."""
        return torch.sigmoid(self.forward(ids, attention_mask)[0])
