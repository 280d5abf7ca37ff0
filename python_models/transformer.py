"""The encoder-decoder Transformer of Vaswani et al., "Attention Is All You Need" (NeurIPS 2017).

Built from blocks the other models reuse (`MultiHeadAttention`, `FeedForward`, `EncoderLayer`,
`LayerNorm`): sinusoidal positional encoding, multi-head self-, cross- and causal attention,
a position-wise feed-forward network, and layer norm in pre-norm or post-norm placement.
The residual add and the following layer norm run as one `add_layer_norm`.

`backend="pyfastattn"` runs attention and layer norm on pyfastattn's kernels, `backend="torch"`
on `torch.nn.functional`; the parameters are identical.

Demo task (`SeqTask`): sort (or reverse) a sequence of digit tokens of random length, with
padding masks in the batch, decoded greedily token by token.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
from torch import nn

from .ops import get_ops

ATTN_OPS = ("sdpa", "layer_norm", "add_layer_norm")


class LayerNorm(nn.Module):
    """Layer norm over the last dim whose kernel comes from the backend's op table."""

    def __init__(self, dim: int, ops, eps: float = 1e-5):
        super().__init__()
        self.ops, self.eps = ops, eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x):
        return self.ops.layer_norm(x, x.shape[-1:], self.weight, self.bias, self.eps)

    def add(self, x, residual):
        """(norm(x + residual), x + residual) in one fused pass."""
        return self.ops.add_layer_norm(x, residual, self.weight, self.bias, self.eps)


class MultiHeadAttention(nn.Module):
    """Multi-head attention (Vaswani et al. 2017, sec. 3.2.2) on the backend's fused SDPA.

    `attn_mask` is bool (True = take part) or float (added to the logits, may require grad),
    broadcastable to (B, heads, Lq, Lk).
    """

    def __init__(self, dim: int, heads: int, ops):
        super().__init__()
        if dim % heads:
            raise ValueError(f"MultiHeadAttention: dim={dim} is not divisible by heads={heads}")
        self.ops, self.heads = ops, heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def _split(self, x):
        B, L, D = x.shape
        return x.view(B, L, self.heads, D // self.heads).transpose(1, 2)

    def forward(self, x, context=None, attn_mask=None, is_causal=False):
        context = x if context is None else context
        q, k, v = self._split(self.q(x)), self._split(self.k(context)), self._split(self.v(context))
        o = self.ops.sdpa(q, k, v, attn_mask=attn_mask, is_causal=is_causal)
        B, H, L, Dh = o.shape
        return self.out(o.transpose(1, 2).reshape(B, L, H * Dh))


class FeedForward(nn.Sequential):
    """Position-wise FFN (sec. 3.3): Linear -> activation -> dropout -> Linear."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0, act=nn.ReLU):
        super().__init__(nn.Linear(dim, hidden), act(), nn.Dropout(dropout), nn.Linear(hidden, dim))


class EncoderLayer(nn.Module):
    """Self-attention + FFN with residuals; `pre_norm` puts the norms before each sublayer."""

    def __init__(self, dim, heads, hidden, ops, dropout=0.0, pre_norm=True, act=nn.ReLU):
        super().__init__()
        self.pre_norm = pre_norm
        self.attn = MultiHeadAttention(dim, heads, ops)
        self.ffn = FeedForward(dim, hidden, dropout, act)
        self.norm1, self.norm2 = LayerNorm(dim, ops), LayerNorm(dim, ops)
        self.drop = nn.Dropout(dropout)

    def forward(self, x, attn_mask=None, is_causal=False):
        if self.pre_norm:
            # x + Attn(LN1 x), then the FFN sees LN2 of that sum: one fused add+norm
            a = self.drop(self.attn(self.norm1(x), attn_mask=attn_mask, is_causal=is_causal))
            h, x = self.norm2.add(a, x)
            return x + self.drop(self.ffn(h))
        a = self.drop(self.attn(x, attn_mask=attn_mask, is_causal=is_causal))
        x, _ = self.norm1.add(a, x)
        x, _ = self.norm2.add(self.drop(self.ffn(x)), x)
        return x


class DecoderLayer(nn.Module):
    """Causal self-attention, cross-attention to the encoder output, FFN (sec. 3.1)."""

    def __init__(self, dim, heads, hidden, ops, dropout=0.0, pre_norm=True):
        super().__init__()
        self.pre_norm = pre_norm
        self.self_attn = MultiHeadAttention(dim, heads, ops)
        self.cross_attn = MultiHeadAttention(dim, heads, ops)
        self.ffn = FeedForward(dim, hidden, dropout)
        self.norms = nn.ModuleList(LayerNorm(dim, ops) for _ in range(3))
        self.drop = nn.Dropout(dropout)

    def forward(self, x, memory, memory_mask=None):
        n1, n2, n3 = self.norms
        if self.pre_norm:
            a = self.drop(self.self_attn(n1(x), is_causal=True))
            h, x = n2.add(a, x)
            a = self.drop(self.cross_attn(h, memory, attn_mask=memory_mask))
            h, x = n3.add(a, x)
            return x + self.drop(self.ffn(h))
        x, _ = n1.add(self.drop(self.self_attn(x, is_causal=True)), x)
        x, _ = n2.add(self.drop(self.cross_attn(x, memory, attn_mask=memory_mask)), x)
        x, _ = n3.add(self.drop(self.ffn(x)), x)
        return x


def sinusoidal_encoding(length: int, dim: int) -> torch.Tensor:
    """PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(...) (sec. 3.5)."""
    pos = torch.arange(length, dtype=torch.float64).unsqueeze(1)
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float64) * (-math.log(10000.0) / dim))
    pe = torch.zeros(length, dim, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq)[:, : dim // 2]
    return pe


class Transformer(nn.Module):
    """Encoder-decoder Transformer for token sequences (shared source/target vocabulary).

    forward(src, tgt_in) -> logits (B, Lt, vocab). Token `pad_id` marks padding in `src`;
    decoder padding needs no mask (pads sit after the tokens a real position can see).
    """

    def __init__(self, vocab: int, dim: int = 64, heads: int = 4, layers: int = 2, hidden: int = 128,
                 dropout: float = 0.0, pre_norm: bool = True, max_len: int = 128, pad_id: int = 0,
                 backend: str = "pyfastattn"):
        super().__init__()
        ops = get_ops(backend, ATTN_OPS, "Transformer")
        self.backend, self.pad_id, self.dim, self.pre_norm = backend, pad_id, dim, pre_norm
        self.embed = nn.Embedding(vocab, dim)
        self.register_buffer("pe", sinusoidal_encoding(max_len, dim).float(), persistent=False)
        self.encoder = nn.ModuleList(EncoderLayer(dim, heads, hidden, ops, dropout, pre_norm)
                                     for _ in range(layers))
        self.decoder = nn.ModuleList(DecoderLayer(dim, heads, hidden, ops, dropout, pre_norm)
                                     for _ in range(layers))
        # pre-norm stacks end with a norm (the sublayer outputs are un-normalised sums)
        self.enc_norm = LayerNorm(dim, ops) if pre_norm else nn.Identity()
        self.dec_norm = LayerNorm(dim, ops) if pre_norm else nn.Identity()
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(dim, vocab)

    def _embed(self, tokens):
        x = self.embed(tokens) * math.sqrt(self.dim) + self.pe[: tokens.shape[1]].to(self.embed.weight.dtype)
        return self.drop(x)

    def encode(self, src):
        mask = (src != self.pad_id)[:, None, None, :]  # (B, 1, 1, Ls) key padding
        x = self._embed(src)
        for layer in self.encoder:
            x = layer(x, attn_mask=mask)
        return self.enc_norm(x), mask

    def decode(self, tgt_in, memory, memory_mask):
        x = self._embed(tgt_in)
        for layer in self.decoder:
            x = layer(x, memory, memory_mask)
        return self.head(self.dec_norm(x))

    def forward(self, src, tgt_in):
        memory, mask = self.encode(src)
        return self.decode(tgt_in, memory, mask)

    @torch.no_grad()
    def greedy_decode(self, src, bos_id: int, eos_id: int, max_len: int):
        """Greedy decoding: feed back the argmax token until every row has emitted EOS."""
        memory, mask = self.encode(src)
        out = torch.full((src.shape[0], 1), bos_id, dtype=torch.long, device=src.device)
        done = torch.zeros(src.shape[0], dtype=torch.bool, device=src.device)
        for _ in range(max_len):
            nxt = self.decode(out, memory, mask)[:, -1].argmax(-1)
            nxt = torch.where(done, torch.full_like(nxt, self.pad_id), nxt)
            out = torch.cat([out, nxt[:, None]], dim=1)
            done |= nxt == eos_id
            if bool(done.all()):
                break
        return out[:, 1:]


class SeqTask:
    """Synthetic seq2seq data: random digit sequences of length 1..max_len, sorted or reversed.

    Tokens: 0 = PAD, 1 = BOS, 2 = EOS, 3.. = digits. Targets end with EOS; batches are padded.
    """

    PAD, BOS, EOS, FIRST = 0, 1, 2, 3

    def __init__(self, task: str = "sort", num_digits: int = 10, min_len: int = 1, max_len: int = 12):
        if task not in ("sort", "reverse"):
            raise ValueError(f"SeqTask: task must be 'sort' or 'reverse', got {task!r}")
        self.task, self.num_digits, self.min_len, self.max_len = task, num_digits, min_len, max_len
        self.vocab = self.FIRST + num_digits

    def sample(self, n: int, seed: int):
        """(src, tgt) LongTensors (n, max_len) and (n, max_len + 1), padded."""
        rng = np.random.default_rng(seed)
        lengths = rng.integers(self.min_len, self.max_len + 1, size=n)
        digits = rng.integers(0, self.num_digits, size=(n, self.max_len))
        valid = np.arange(self.max_len)[None, :] < lengths[:, None]
        src = np.where(valid, digits + self.FIRST, self.PAD)
        if self.task == "sort":
            # pads sort last with a key above every digit
            tgt = np.sort(np.where(valid, src, np.iinfo(np.int64).max), axis=1)
            tgt = np.where(valid, tgt, self.PAD)
        else:
            idx = np.clip(lengths[:, None] - 1 - np.arange(self.max_len)[None, :], 0, None)
            tgt = np.where(valid, np.take_along_axis(src, idx, axis=1), self.PAD)
        tgt = np.concatenate([tgt, np.full((n, 1), self.PAD)], axis=1)
        tgt[np.arange(n), lengths] = self.EOS
        return torch.from_numpy(src), torch.from_numpy(tgt)

    def decoder_input(self, tgt):
        return torch.cat([torch.full_like(tgt[:, :1], self.BOS), tgt[:, :-1]], dim=1)


def exact_match(pred: torch.Tensor, tgt: torch.Tensor, pad_id: int = 0) -> torch.Tensor:
    """Per-row bool: the prediction equals the target up to and including EOS."""
    L = tgt.shape[1]
    if pred.shape[1] < L:
        pred = torch.cat([pred, pred.new_full((pred.shape[0], L - pred.shape[1]), pad_id)], dim=1)
    pred = pred[:, :L]
    keep = tgt != pad_id
    return ((pred == tgt) | ~keep).all(dim=1)
