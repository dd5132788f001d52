"""mLSTM, the matrix-memory LSTM of xLSTM (Beck et al. 2024, arXiv:2405.04517), parallel form.

The pretraining encoders' context networks (design document: an mLSTM U-Net for the contrastive
encoder, a bidirectional mLSTM stack for the masked-reconstruction one) are built from
:class:`MLSTMBlock`. Per head, the recurrence ``C_t = f_t C_{t-1} + i_t v_t k_t^T``,
``n_t = f_t n_{t-1} + i_t k_t``, ``h_t = C_t q_t / max(|n_t^T q_t|, 1)`` is evaluated for all
steps at once: with ``F_t`` the cumulative log forget gate, step ``s`` reaches step ``t >= s``
with log weight ``D_ts = F_t - F_s + i_s``; rows are stabilised by their maximum ``m_t`` (the
paper's eq. 20-27), so no exponential overflows. The cost is O(T^2) per head, fine for the few
hundred tokens of a 30 s window after 4x subsampling, and it exports to ONNX as plain
MatMul/CumSum/Exp nodes.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


def mlstm_parallel(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, i_pre: torch.Tensor, f_pre: torch.Tensor
) -> torch.Tensor:
    """Causal mLSTM over (B, H, T, Dh) queries/keys/values and (B, H, T) gate pre-activations."""
    t = q.shape[-2]
    log_f = F.logsigmoid(f_pre)
    cum = torch.cumsum(log_f, dim=-1)
    log_d = cum.unsqueeze(-1) - cum.unsqueeze(-2) + i_pre.unsqueeze(-2)  # (B, H, T, T)
    causal = torch.ones(t, t, dtype=torch.bool, device=q.device).tril()
    log_d = log_d.masked_fill(~causal, float("-inf"))
    m = log_d.amax(dim=-1, keepdim=True)
    weights = torch.exp(log_d - m)
    scores = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(q.shape[-1])) * weights
    norm = torch.maximum(scores.sum(dim=-1, keepdim=True).abs(), torch.exp(-m))
    return (scores / (norm + 1e-6)) @ v


def mlstm_chunkwise(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    i_pre: torch.Tensor,
    f_pre: torch.Tensor,
    chunk: int = 64,
) -> torch.Tensor:
    """The same values as :func:`mlstm_parallel` in O(T x chunk) memory and time.

    Steps are cut into chunks: inside a chunk the parallel form; between chunks the matrix memory
    ``C`` (Dh x Dh per head), the normaliser ``n`` and their log scale ``m`` are carried by a scan
    over the chunks (a few dozen iterations), each chunk's contribution computed for all chunks at
    once. Every exponent is taken relative to a running maximum, as in the parallel form.
    """
    b_, h_, t, dh = q.shape
    pad = (-t) % chunk
    if pad:  # trailing steps never influence earlier ones: pad at the end, crop afterwards
        q, k, v = (F.pad(z, (0, 0, 0, pad)) for z in (q, k, v))
        i_pre = F.pad(i_pre, (0, pad), value=-30.0)
        f_pre = F.pad(f_pre, (0, pad), value=30.0)
    nc = (t + pad) // chunk
    q = q.reshape(b_, h_, nc, chunk, dh) * (1.0 / math.sqrt(dh))
    k = k.reshape(b_, h_, nc, chunk, dh)
    v = v.reshape(b_, h_, nc, chunk, dh)
    i_pre = i_pre.reshape(b_, h_, nc, chunk)
    cum = torch.cumsum(F.logsigmoid(f_pre).reshape(b_, h_, nc, chunk), dim=-1)
    total = cum[..., -1]  # (B, H, NC): log forget over a whole chunk
    # Each step's log weight at its chunk's end, and the chunk's state increment at that scale.
    to_end = total.unsqueeze(-1) - cum + i_pre
    m_step = to_end.amax(dim=-1)
    w = torch.exp(to_end - m_step.unsqueeze(-1)).unsqueeze(-1)
    c_step = (k * w).transpose(-1, -2) @ v  # (B, H, NC, Dh_k, Dh_v)
    n_step = (k * w).sum(dim=-2)  # (B, H, NC, Dh)
    c_state = q.new_zeros(b_, h_, dh, dh)
    n_state = q.new_zeros(b_, h_, dh)
    m_state = q.new_full((b_, h_), -1e30)
    c_in, n_in, m_in = [], [], []
    for c in range(nc):  # the state entering chunk c
        c_in.append(c_state)
        n_in.append(n_state)
        m_in.append(m_state)
        m_new = torch.maximum(total[..., c] + m_state, m_step[..., c])
        old = torch.exp(total[..., c] + m_state - m_new)
        new = torch.exp(m_step[..., c] - m_new)
        c_state = old[..., None, None] * c_state + new[..., None, None] * c_step[:, :, c]
        n_state = old[..., None] * n_state + new[..., None] * n_step[:, :, c]
        m_state = m_new
    c_in_t = torch.stack(c_in, dim=2)  # (B, H, NC, Dh, Dh)
    n_in_t = torch.stack(n_in, dim=2)
    m_in_t = torch.stack(m_in, dim=2)  # (B, H, NC)
    log_d = cum.unsqueeze(-1) - cum.unsqueeze(-2) + i_pre.unsqueeze(-2)  # (B, H, NC, L, L)
    causal = torch.ones(chunk, chunk, dtype=torch.bool, device=q.device).tril()
    log_d = log_d.masked_fill(~causal, float("-inf"))
    inter = cum + m_in_t.unsqueeze(-1)  # (B, H, NC, L)
    m = torch.maximum(inter, log_d.amax(dim=-1))
    scores = (q @ k.transpose(-1, -2)) * torch.exp(log_d - m.unsqueeze(-1))
    scale = torch.exp(inter - m).unsqueeze(-1)
    num = scores @ v + scale * (q @ c_in_t)
    den = scores.sum(dim=-1, keepdim=True) + scale * (q * n_in_t.unsqueeze(-2)).sum(
        dim=-1, keepdim=True
    )
    h = num / (torch.maximum(den.abs(), torch.exp(-m).unsqueeze(-1)) + 1e-6)
    return h.reshape(b_, h_, nc * chunk, dh)[:, :, :t]


class MLSTMBlock(nn.Module):
    """Pre-norm residual mLSTM layer plus a GELU feed-forward, on (B, T, D).

    ``bidirectional``: a second mLSTM reads the sequence backwards and both are summed before the
    output projection, so every step sees its whole context (masked prediction needs both sides).
    """

    def __init__(self, dim: int, heads: int = 4, bidirectional: bool = True, ff_mult: int = 2):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} must be divisible by heads {heads}")
        self.heads = heads
        self.bidirectional = bidirectional
        self.norm = nn.LayerNorm(dim)
        directions = 2 if bidirectional else 1
        self.qkv = nn.Linear(dim, 3 * dim * directions)
        self.gates = nn.Linear(dim, 2 * heads * directions)
        self.out_gate = nn.Linear(dim, dim)
        self.head_norm = nn.GroupNorm(heads, dim)
        self.proj = nn.Linear(dim, dim)
        self.ff = nn.Sequential(
            nn.LayerNorm(dim),
            nn.Linear(dim, ff_mult * dim),
            nn.GELU(),
            nn.Linear(ff_mult * dim, dim),
        )
        with torch.no_grad():  # forget gates start open (long memory), as in xLSTM
            self.gates.bias.zero_()
            self.gates.bias.view(directions, 2, heads)[:, 1].fill_(3.0)

    def _direction(self, x: torch.Tensor, qkv: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        h = self.heads
        q, k, v = (z.reshape(b, t, h, d // h).transpose(1, 2) for z in qkv.chunk(3, dim=-1))
        i_pre, f_pre = (z.transpose(1, 2) for z in gates.chunk(2, dim=-1))
        out = mlstm_chunkwise(q, k, v, i_pre, f_pre)  # (B, H, T, Dh)
        return out.transpose(1, 2).reshape(b, t, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(x)
        qkv = self.qkv(y)
        gates = self.gates(y)
        if self.bidirectional:
            qkv_f, qkv_b = qkv.chunk(2, dim=-1)
            g_f, g_b = gates.chunk(2, dim=-1)
            h = self._direction(y, qkv_f, g_f)
            h = h + self._direction(y, qkv_b.flip(1), g_b.flip(1)).flip(1)
        else:
            h = self._direction(y, qkv, gates)
        h = self.head_norm(h.transpose(1, 2)).transpose(1, 2) * torch.sigmoid(self.out_gate(y))
        x = x + self.proj(h)
        return x + self.ff(x)


class MLSTMStack(nn.Module):
    """Sequential context network: ``depth`` bidirectional mLSTM blocks and a final LayerNorm."""

    def __init__(self, dim: int, depth: int = 2, heads: int = 4):
        super().__init__()
        self.blocks = nn.ModuleList(MLSTMBlock(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


class MLSTMUNet(nn.Module):
    """U-Net context network: mLSTM blocks at ``levels`` resolutions, halving the steps on the way
    down (strided conv), doubling them on the way up (transposed conv) with skip connections,
    so long-range context is cheap at the coarse levels and detail survives at the fine ones."""

    def __init__(self, dim: int, levels: int = 3, heads: int = 4):
        super().__init__()
        self.levels = levels
        self.down_blocks = nn.ModuleList(MLSTMBlock(dim, heads) for _ in range(levels - 1))
        self.downs = nn.ModuleList(
            nn.Conv1d(dim, dim, kernel_size=2, stride=2) for _ in range(levels - 1)
        )
        self.bottleneck = MLSTMBlock(dim, heads)
        self.ups = nn.ModuleList(
            nn.ConvTranspose1d(dim, dim, kernel_size=2, stride=2) for _ in range(levels - 1)
        )
        self.merges = nn.ModuleList(nn.Linear(2 * dim, dim) for _ in range(levels - 1))
        self.up_blocks = nn.ModuleList(MLSTMBlock(dim, heads) for _ in range(levels - 1))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.shape[1]
        factor = 2 ** (self.levels - 1)
        pad = (-t) % factor
        if pad:
            x = F.pad(x, (0, 0, 0, pad))
        skips = []
        for block, down in zip(self.down_blocks, self.downs, strict=True):
            x = block(x)
            skips.append(x)
            x = down(x.transpose(1, 2)).transpose(1, 2)
        x = self.bottleneck(x)
        for up, merge, block, skip in zip(
            self.ups, self.merges, self.up_blocks, reversed(skips), strict=True
        ):
            x = up(x.transpose(1, 2)).transpose(1, 2)
            x = block(merge(torch.cat([x, skip], dim=-1)))
        return self.norm(x[:, :t])
