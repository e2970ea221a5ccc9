"""Paged decode attention: ``decode_attention`` over a KV cache kept in fixed-size blocks.

Math: the same as ``decode_attention``. ``q (B, H, D)`` is the query of the token each
of ``B`` sequences is generating; sequence ``b`` has ``cache_seqlens[b]`` cached tokens
(the new token's own key and value included), and for each query head ``h`` (reading
key/value head ``h // (H // H_kv)``: GQA, MQA at ``H_kv = 1``)

    out = softmax(q kᵀ · sm_scale) v      over the first cache_seqlens[b] keys,

``sm_scale = 1/√D`` by default. What changes is *where* the keys are.

The paged layout (Kwon et al., PagedAttention, SOSP 2023). A contiguous cache
``(B, H_kv, S_max, D)`` reserves ``S_max`` positions for every sequence, however
short it turns out to be. Here the keys and values of every sequence live in one
shared pool of blocks,

    k_blocks, v_blocks   (num_blocks, H_kv, BLOCK, D)     BLOCK tokens per block
    block_table          (B, max_blocks) int32            sequence b's blocks, in order

so that token ``t`` of sequence ``b`` sits in block ``block_table[b, t // BLOCK]`` at
row ``t % BLOCK``. A sequence takes blocks as it grows and gives them back when it
finishes; its blocks can be anywhere in the pool, in any order, and two sequences
may share one (a common prompt). Entries of the table past a sequence's last block
are never read (a server pads them with anything). The longest sequence the table
can address is ``S_max = max_blocks · BLOCK``.

The kernel is ``decode_attention``'s with one more indirection: the same grid of
``B · H_kv · num_splits`` programs (all ``G = H / H_kv`` query heads of a KV head in
one program, the keys cut into chunks: split-KV, "flash decoding"), the same online
softmax over a chunk, the same partial results and the *same* combine kernel
(``decode_attention_kernel._decode_combine_kernel``). Only the addresses differ: for
each tile of ``BLOCK_N`` key positions the program first loads their block ids
from the table (one small int32 load per key, from L1/L2), then each key's row
``block · stride + (t % BLOCK) · D`` — a row of ``D`` contiguous elements, as
in the contiguous cache. A tile may span several blocks (``BLOCK < BLOCK_N``) or lie
inside one; the code is the same. The number of splits depends only on the shapes
(``B``, ``H_kv``, ``S_max``), never on the lengths or the table, which stay on the GPU:
a decode step captures in a CUDA graph and replays as sequences grow and move.

What the indirection costs is measured, not assumed: the same keys read through a
table against the contiguous kernel on the same cache (``experiments/serving.py``).
The traffic is the same — every key and value a sequence sees, once — plus
``max_blocks`` int32 table entries per sequence and KV head, read through the cache.

NaN and ±inf as in ``decode_attention``. Wrong tables never give a plausible answer:
a length outside ``1..S_max`` (a table too short for it) or a block id outside
``0..num_blocks − 1`` among the blocks a sequence reads is refused with an error where
the launcher can read the values for free — CPU tensors, or with
``INFER_LIB_CHECKS=1`` — and otherwise (reading them on a GPU would cost a host
synchronisation every step and cannot happen inside a CUDA graph) makes that
sequence's output NaN; a bad block id is never dereferenced.

References: W. Kwon et al., "Efficient Memory Management for Large Language Model
Serving with PagedAttention", SOSP 2023, https://arxiv.org/abs/2309.06180; the
split-KV decode of ``decode_attention_kernel.py`` and its references.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .. import device
from ..reference import attention_ref
from . import _tuning
from ._checks import check_bf16_supported, check_heads, check_same, check_sm_scale, check_tensor, values_checked
from .decode_attention_kernel import LOG2E, SUPPORTED_HEAD_DIMS, _decode_combine_kernel, split_layout


def paged_decode_attention_ref(q: torch.Tensor, k_blocks: torch.Tensor, v_blocks: torch.Tensor,
                               block_table: torch.Tensor, cache_seqlens: torch.Tensor,
                               sm_scale: float | None = None) -> torch.Tensor:
    """What ``paged_decode_attention`` computes, in plain PyTorch (fp32 inside, cast back to q's
    dtype): sequence ``b``'s keys gathered from its blocks ``block_table[b, :⌈n/BLOCK⌉]`` into
    one ``(H_kv, n, D)`` run, then ``infer_lib.reference.attention_ref`` of ``q[b]`` over them
    (``n = cache_seqlens[b]``). NaN for a sequence whose length is outside ``1..max_blocks ·
    BLOCK`` or that reads a block id outside ``0..num_blocks − 1``."""
    out = torch.empty_like(q)
    num_blocks, H_kv, page, D = k_blocks.shape
    table = block_table.tolist()
    for b, n in enumerate(cache_seqlens.tolist()):
        used = -(-n // page)                                       # blocks holding the n keys
        ids = table[b][:used]
        if not 1 <= n <= len(table[b]) * page or not all(0 <= i < num_blocks for i in ids):
            out[b] = float("nan")
            continue
        ids = torch.tensor(ids, device=k_blocks.device)
        # (used, H_kv, BLOCK, D) -> (H_kv, used · BLOCK, D), then the first n keys
        k = k_blocks[ids].transpose(0, 1).reshape(H_kv, used * page, D)[:, :n]
        v = v_blocks[ids].transpose(0, 1).reshape(H_kv, used * page, D)[:, :n]
        out[b] = attention_ref(q[b, None, :, None], k[None], v[None], sm_scale=sm_scale)[0, :, 0]
    return out


@triton.jit
def _paged_decode_attention_kernel(
    q_ptr, k_ptr, v_ptr, table_ptr, seqlens_ptr, o_part_ptr, m_part_ptr, l_part_ptr, qk_scale,
    stride_qb, stride_qh, stride_qd,
    stride_kblk, stride_kh, stride_kn, stride_kd,
    stride_vblk, stride_vh, stride_vn, stride_vd,
    stride_tb, stride_tj,
    H_kv, GROUP, S_max, NUM_BLOCKS, CHUNK, NUM_SPLITS,
    PAGE: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_N: tl.constexpr,
    UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    # Grid: (B · H_kv, num_splits), as _decode_attention_kernel. Program (b·H_kv + kv_head, s)
    # owns the GROUP query heads of one KV head and key positions [s·CHUNK, (s+1)·CHUNK) of
    # sequence b, wherever in the pool their blocks are. PAGE is the block size (BLOCK).
    pid_bkv = tl.program_id(0)
    split = tl.program_id(1)
    off_b = (pid_bkv // H_kv).to(tl.int64)
    off_hkv = (pid_bkv % H_kv).to(tl.int64)
    length = tl.load(seqlens_ptr + off_b).to(tl.int32)
    start = split * CHUNK
    end = tl.minimum(start + CHUNK, length)
    if (start < end) & (length <= S_max):       # chunks past the sequence have nothing to do
        offs_g = tl.arange(0, BLOCK_G)             # query heads of this KV head (rows ≥ GROUP: padding)
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, HEAD_DIM)
        heads = off_hkv * GROUP + offs_g           # (BLOCK_G,) query head index
        q_ptrs = q_ptr + off_b * stride_qb + heads[:, None] * stride_qh + offs_d[None, :] * stride_qd
        q = tl.load(q_ptrs, mask=offs_g[:, None] < GROUP, other=0.0)     # (BLOCK_G, D)
        if UPCAST:
            # The interpreter's tl.dot is wrong for bf16 operands (triton 3.7.1,
            # https://github.com/triton-lang/triton/issues/11584): fp32 on the CPU.
            q = q.to(tl.float32)
        table_row = table_ptr + off_b * stride_tb
        k_head = k_ptr + off_hkv * stride_kh
        v_head = v_ptr + off_hkv * stride_vh
        m_i = tl.full([BLOCK_G], -3.4028234663852886e38, tl.float32)   # from -FLT_MAX: see decode_attention
        l_i = tl.zeros([BLOCK_G], tl.float32)
        acc = tl.zeros([BLOCK_G, HEAD_DIM], tl.float32)
        n_bad = tl.zeros([BLOCK_N], tl.int32)      # keys whose block id is outside the pool
        # The indirection: each key's block id (int32, from L1/L2), then its row in the block.
        # The ids of the next tile are loaded one step ahead, so the loads of a tile's keys never
        # wait on a table load issued in the same step.
        pos = start + offs_n
        blk_next = tl.load(table_row + (pos // PAGE) * stride_tj, mask=pos < end, other=0)
        for start_n in range(start, end, BLOCK_N):
            pos = start_n + offs_n                 # (BLOCK_N,) token positions in the sequence
            inside = pos < end
            blk = blk_next
            ok = (blk >= 0) & (blk < NUM_BLOCKS)
            n_bad += (inside & ~ok).to(tl.int32)
            blk = tl.where(ok, blk, 0).to(tl.int64)        # a bad id is never dereferenced
            row = (pos % PAGE).to(tl.int64)
            live = (inside & ok)[:, None]
            k = tl.load(k_head + (blk * stride_kblk + row * stride_kn)[:, None] + offs_d[None, :] * stride_kd,
                        mask=live, other=0.0)                           # (BLOCK_N, D)
            v = tl.load(v_head + (blk * stride_vblk + row * stride_vn)[:, None] + offs_d[None, :] * stride_vd,
                        mask=live, other=0.0)
            pos_next = pos + BLOCK_N
            blk_next = tl.load(table_row + (pos_next // PAGE) * stride_tj, mask=pos_next < end, other=0)
            if UPCAST:
                k = k.to(tl.float32)
                v = v.to(tl.float32)
            s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)      # (BLOCK_G, BLOCK_N)
            s = tl.where(inside[None, :], s * qk_scale, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            p = tl.exp2(s - m_new[:, None])
            alpha = tl.exp2(m_i - m_new)
            l_i = l_i * alpha + tl.sum(p, 1)
            if UPCAST:
                acc = tl.dot(p, v, acc * alpha[:, None], input_precision=DOT_PRECISION)
            else:
                acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=DOT_PRECISION)
            m_i = m_new
        # a chunk that met a bad block id: its sum is NaN, so the combined output is NaN
        l_i = tl.where(tl.sum(n_bad, 0) > 0, float("nan"), l_i)
        # Partials of query head h, split s at [(b·H + h)·NUM_SPLITS + s], as decode_attention's.
        rows = (off_b * H_kv * GROUP + heads) * NUM_SPLITS + split          # (BLOCK_G,)
        keep = offs_g < GROUP
        tl.store(m_part_ptr + rows, m_i, mask=keep)
        tl.store(l_part_ptr + rows, l_i, mask=keep)
        tl.store(o_part_ptr + rows[:, None] * HEAD_DIM + offs_d[None, :], acc, mask=keep[:, None])


def _check_inputs(q, k_blocks, v_blocks, block_table, cache_seqlens, sm_scale, num_splits) -> None:
    op = "paged_decode_attention"
    for name, t in (("q", q), ("k_blocks", k_blocks), ("v_blocks", v_blocks)):
        check_tensor(op, name, t)
        want = 3 if name == "q" else 4
        if t.dim() != want:
            layout = "(B, H, D)" if name == "q" else "(num_blocks, H_kv, BLOCK, D)"
            hint = ("; a contiguous (B, H_kv, S_max, D) cache is read by decode_attention"
                    if name != "q" and t.dim() == 4 else "")
            raise ValueError(f"{op}: {name} must be {want}-D {layout}, got shape {tuple(t.shape)}{hint}")
    check_same(op, q=q, k_blocks=k_blocks, v_blocks=v_blocks)
    B, H, D = q.shape
    if k_blocks.shape != v_blocks.shape:
        raise ValueError(f"{op}: k_blocks has shape {tuple(k_blocks.shape)} but v_blocks has "
                         f"{tuple(v_blocks.shape)}; they must match (num_blocks, H_kv, BLOCK, D)")
    num_blocks, _, page, D_kv = k_blocks.shape
    if D_kv != D:
        raise ValueError(f"{op}: q has head dim D={D} but the blocks have D={D_kv}")
    if num_blocks == 0 or page == 0:
        raise ValueError(f"{op}: the pool of blocks is empty (k_blocks has shape {tuple(k_blocks.shape)}); "
                         "it needs at least one block of at least one token")
    check_heads(op, q, k_blocks, "k_blocks and v_blocks", SUPPORTED_HEAD_DIMS)
    check_bf16_supported(op, q)
    for name, t in (("block_table", block_table), ("cache_seqlens", cache_seqlens)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.device != q.device:
            raise ValueError(f"{op}: q is on {q.device} but {name} is on {t.device}")
    if block_table.dtype not in (torch.int32, torch.int64) or block_table.dim() != 2 \
            or block_table.shape[0] != B or block_table.shape[1] == 0:
        raise ValueError(f"{op}: block_table must be an int32 (or int64) tensor of shape (B={B}, max_blocks) "
                         f"with max_blocks ≥ 1, one row of block ids per sequence; got "
                         f"{block_table.dtype} of shape {tuple(block_table.shape)}")
    if cache_seqlens.dtype not in (torch.int32, torch.int64) or cache_seqlens.shape != (B,):
        raise ValueError(f"{op}: cache_seqlens must be an int32 or int64 tensor of shape ({B},), one "
                         f"length per sequence; got {cache_seqlens.dtype} of shape "
                         f"{tuple(cache_seqlens.shape)}")
    check_sm_scale(op, sm_scale)
    if num_splits is not None and (isinstance(num_splits, bool) or not isinstance(num_splits, int)
                                   or num_splits < 1):
        raise ValueError(f"{op}: num_splits must be an integer ≥ 1 (or None: chosen from the shapes), "
                         f"got {num_splits!r}")
    _check_values(op, block_table, cache_seqlens, num_blocks, page)


def _check_values(op: str, block_table: torch.Tensor, cache_seqlens: torch.Tensor, num_blocks: int,
                  page: int) -> None:
    """Each length in ``1..max_blocks · BLOCK`` and each block id a sequence reads in
    ``0..num_blocks − 1``; only where ``values_checked`` says reading them is allowed (CPU
    tensors, or ``INFER_LIB_CHECKS=1``)."""
    if not (values_checked(cache_seqlens) and values_checked(block_table)):
        return
    max_blocks = block_table.shape[1]
    lens = cache_seqlens.long()
    short = lens < 1
    if bool(short.any()):
        b = int(short.nonzero()[0, 0])
        raise ValueError(f"{op}: cache_seqlens[{b}] = {int(lens[b])} is below 1: each length counts the "
                         "cached tokens of its sequence, the one being decoded included")
    too_long = lens > max_blocks * page
    if bool(too_long.any()):
        b = int(too_long.nonzero()[0, 0])
        n = int(lens[b])
        raise ValueError(f"{op}: cache_seqlens[{b}] = {n} needs {-(-n // page)} blocks of {page} tokens, but "
                         f"block_table has only {max_blocks} columns (at most {max_blocks * page} tokens): "
                         "the table is too short for this length")
    used = torch.arange(max_blocks, device=lens.device)[None, :] < (lens[:, None] + page - 1) // page
    bad = used & ((block_table < 0) | (block_table >= num_blocks))
    if bool(bad.any()):
        b, j = (int(i) for i in bad.nonzero()[0])
        raise ValueError(f"{op}: block_table[{b}, {j}] = {int(block_table[b, j])} is not a block of the pool "
                         f"(ids 0..{num_blocks - 1}); sequence {b} reads its first "
                         f"{-(-int(lens[b]) // page)} entries")


def paged_decode_attention(q: torch.Tensor, k_blocks: torch.Tensor, v_blocks: torch.Tensor,
                           block_table: torch.Tensor, cache_seqlens: torch.Tensor,
                           sm_scale: float | None = None, num_splits: int | None = None) -> torch.Tensor:
    """One decoding step of attention over a paged KV cache: ``q (B, H, D)``; ``k_blocks,
    v_blocks (num_blocks, H_kv, BLOCK, D)`` the pool of blocks; ``block_table (B, max_blocks)``
    int32 (or int64), sequence ``b``'s block ids in order; ``cache_seqlens (B,)`` int32 (or
    int64), each in ``1..max_blocks · BLOCK``, the token being decoded included. H a multiple
    of H_kv; D a power of two from 16 to 128; any BLOCK ≥ 1 (multiples of 16 read best);
    fp16, bf16 or fp32; any strides. Returns ``(B, H, D)`` in q's dtype.

    Shapes, dtypes and devices are always checked; the lengths and the block ids a sequence
    reads where that is free (CPU tensors) or with ``INFER_LIB_CHECKS=1`` — on a GPU otherwise
    a broken length or block id makes that sequence's output NaN. ``num_splits`` pins how
    many chunks the keys are cut into (default: from the shapes and the GPU's SM count).
    Captures in a CUDA graph.
    """
    _check_inputs(q, k_blocks, v_blocks, block_table, cache_seqlens, sm_scale, num_splits)
    if q.is_cuda and q.device.index != torch.cuda.current_device():
        # Triton launches on the current device, not on the tensors' one.
        with torch.cuda.device(q.device):
            return paged_decode_attention(q, k_blocks, v_blocks, block_table, cache_seqlens, sm_scale,
                                          num_splits=num_splits)
    B, H, D = q.shape
    H_kv, page = k_blocks.shape[1], k_blocks.shape[2]
    S_max = block_table.shape[1] * page
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    if B == 0:
        return out
    sm_scale = 1.0 / math.sqrt(D) if sm_scale is None else float(sm_scale)

    def launch(cfg: triton.Config):
        _launch(q, k_blocks, v_blocks, block_table, cache_seqlens, out, sm_scale, num_splits, cfg)

    # Tuned once per (bucketed) shape on a GPU, timing the whole step; lengths and table do not matter.
    key = ("paged_decode", _tuning.bucket(B), H_kv, H // H_kv, _tuning.bucket(S_max), D, page, q.dtype,
           q.device.index)
    cache_bytes = 2 * B * H_kv * S_max * D * q.element_size()
    config = _tuning.PAGED_DECODE_ATTENTION.choose(
        key, launch, tune=cache_bytes >= _tuning.PAGED_DECODE_ATTENTION_TUNE_MIN_BYTES,
        element_size=q.element_size(), shape={"D": D, "BLOCK": page})
    launch(config)
    return out


def _launch(q, k_blocks, v_blocks, block_table, cache_seqlens, out, sm_scale: float,
            num_splits: int | None, cfg: triton.Config) -> None:
    """The split kernel over ``(B · H_kv, splits)`` programs, then ``decode_attention``'s combine
    over ``B · H`` (the partials are scratch, allocated per call)."""
    B, H, D = q.shape
    num_blocks, H_kv, page, _ = k_blocks.shape
    S_max = block_table.shape[1] * page
    group = H // H_kv
    block_n = cfg.kwargs["BLOCK_N"]
    # PROGRAMS_PER_SM: tuned with the tile (_tuning.PAGED_DECODE_ATTENTION); 2 as decode_attention
    programs = cfg.kwargs.get("PROGRAMS_PER_SM", 2) * _tuning.sm_count()
    splits, chunk = split_layout(B, H_kv, S_max, block_n, num_splits, programs=programs)
    o_part = torch.empty((B * H * splits, D), device=q.device, dtype=torch.float32)
    m_part = torch.empty((B * H * splits,), device=q.device, dtype=torch.float32)
    l_part = torch.empty_like(m_part)
    fp32 = q.dtype == torch.float32
    _paged_decode_attention_kernel[(B * H_kv, splits)](
        q, k_blocks, v_blocks, block_table, cache_seqlens, o_part, m_part, l_part, sm_scale * LOG2E,
        q.stride(0), q.stride(1), q.stride(2),
        *k_blocks.stride(), *v_blocks.stride(),
        block_table.stride(0), block_table.stride(1),
        H_kv, group, S_max, num_blocks, chunk, splits,
        PAGE=page, HEAD_DIM=D, BLOCK_G=max(16, _tuning.bucket(group)), BLOCK_N=block_n,
        UPCAST=device.INTERPRET, DOT_PRECISION="ieee" if (fp32 or device.INTERPRET) else "tf32",
        num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    _decode_combine_kernel[(B * H,)](
        o_part, m_part, l_part, cache_seqlens, out,
        out.stride(0), out.stride(1), out.stride(2),
        H, S_max, chunk, splits,
        HEAD_DIM=D, BLOCK_S=_tuning.bucket(splits), num_warps=4)
