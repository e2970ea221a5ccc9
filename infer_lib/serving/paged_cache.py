"""The paged KV cache: one pool of fixed-size blocks, a block table per sequence, an allocator.

A contiguous cache (``infer_lib.model.KVCache``, chapter 6) gives every sequence a row of
``S_max`` positions, reserved up front for the longest it might become. A server does not
know how long a request will run, and its requests come and go: most of that reservation
sits empty, and the batch that fits in memory is set by the worst case. The paged cache
(Kwon et al., PagedAttention, SOSP 2023) borrows the operating system's answer to the same
problem, virtual memory:

* **Blocks.** Keys and values live in one pool per layer, ``k_blocks, v_blocks
  (L, num_blocks, H_kv, BLOCK, D)``: ``BLOCK`` tokens per block (16 by default), the
  layout ``kernels.paged_decode_attention`` reads.
* **A block table per sequence.** Token ``t`` of a sequence sits in block
  ``table[t // BLOCK]`` at row ``t % BLOCK``. A sequence holds ``⌈n / BLOCK⌉`` blocks
  for ``n`` tokens — at most ``BLOCK − 1`` positions wasted, in its last block — and takes
  one more each time it crosses a block boundary. The blocks need not be adjacent, or
  in order.
* **An allocator** hands out free blocks and takes them back (``BlockAllocator``: a free
  list, a reference count per block, and ``check()`` for its invariants: every block is
  either free or held, never both, never lost, never freed twice).

Block ``NULL_BLOCK`` (0) is never handed out: padded rows of a batch (a CUDA graph runs a
fixed batch size) write their keys there and read it, so they never touch a live block.

Each sequence occupies a *slot* (a row of the host-side table ``table_host (max_seqs,
max_blocks)`` int32, padded with ``NULL_BLOCK``); a decoding step copies the rows of the
sequences it runs to the GPU in one transfer.

Reference counts let two sequences hold the same block (prefix sharing: requests that
start with the same system prompt keep one copy of its keys). The allocator supports it
(``share``); the scheduler of this package does not use it yet.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..model.config import ModelConfig

#: The block no sequence owns: padded rows of a batch write to it and read it.
NULL_BLOCK = 0


class OutOfBlocks(RuntimeError):
    """The pool has fewer free blocks than asked for (nothing was allocated)."""


class BlockAllocator:
    """Blocks ``0 … num_blocks − 1`` of a pool, ``reserved`` ones (``NULL_BLOCK``) never handed out.

    ``allocate(n)`` takes ``n`` blocks off the free list (all or none: ``OutOfBlocks``);
    ``free(blocks)`` drops one reference to each and returns those that reach zero to the
    free list; ``share(blocks)`` adds a reference. The free list is a stack: the block freed
    last is handed out first (its lines may still be in L2). ``check()`` raises if an
    invariant is broken; every method keeps them.
    """

    def __init__(self, num_blocks: int, reserved: tuple[int, ...] = (NULL_BLOCK,)):
        if isinstance(num_blocks, bool) or not isinstance(num_blocks, int) or num_blocks <= len(reserved):
            raise ValueError(f"BlockAllocator: num_blocks must be an integer above the {len(reserved)} "
                             f"reserved block(s), got {num_blocks!r}")
        if any(not 0 <= r < num_blocks for r in reserved):
            raise ValueError(f"BlockAllocator: reserved blocks {reserved} must lie in 0..{num_blocks - 1}")
        self.num_blocks = num_blocks
        self.reserved = frozenset(reserved)
        # handed out from the end: block ids come out in increasing order from a fresh pool
        self._free = [b for b in range(num_blocks - 1, -1, -1) if b not in self.reserved]
        self._refs: dict[int, int] = {}          # held block -> references

    @property
    def capacity(self) -> int:
        """Blocks that can be handed out (all but the reserved)."""
        return self.num_blocks - len(self.reserved)

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_used(self) -> int:
        return len(self._refs)

    def allocate(self, n: int) -> list[int]:
        """``n`` free blocks, now held once each; ``OutOfBlocks`` (and nothing taken) if fewer are free."""
        if n < 0:
            raise ValueError(f"BlockAllocator.allocate: n must be ≥ 0, got {n}")
        if n > len(self._free):
            raise OutOfBlocks(f"asked for {n} blocks but {len(self._free)} of {self.capacity} are free")
        blocks = [self._free.pop() for _ in range(n)]
        for b in blocks:
            self._refs[b] = 1
        return blocks

    def share(self, blocks) -> None:
        """One more reference to each of ``blocks`` (each must be held)."""
        for b in blocks:
            if b not in self._refs:
                raise ValueError(f"BlockAllocator.share: block {b} is not held by anyone; only a held "
                                 "block can be shared")
        for b in blocks:
            self._refs[b] += 1

    def free(self, blocks) -> None:
        """Drop one reference to each of ``blocks``; a block nobody holds any more is free again.
        Freeing a block that is not held (a double free) raises and frees nothing."""
        blocks = list(blocks)
        drops: dict[int, int] = {}
        for b in blocks:
            drops[b] = drops.get(b, 0) + 1
        for b, n in drops.items():
            if self._refs.get(b, 0) < n:
                state = "reserved" if b in self.reserved else "free" if b not in self._refs else \
                    f"held {self._refs[b]} time(s)"
                raise ValueError(f"BlockAllocator.free: block {b} is {state} but was freed {n} time(s): "
                                 "a double free")
        for b, n in drops.items():
            self._refs[b] -= n
            if self._refs[b] == 0:
                del self._refs[b]
                self._free.append(b)

    def refs(self, block: int) -> int:
        """How many holders ``block`` has (0: free or reserved)."""
        return self._refs.get(block, 0)

    def check(self) -> None:
        """Raise ``AssertionError`` naming the first broken invariant: the free list without
        duplicates, free and held disjoint, neither holding a reserved block, every block
        accounted for (no leak), every reference count ≥ 1."""
        free = set(self._free)
        if len(free) != len(self._free):
            raise AssertionError("BlockAllocator: a block is on the free list twice")
        if free & self._refs.keys():
            raise AssertionError(f"BlockAllocator: blocks {sorted(free & self._refs.keys())[:8]} are both "
                                 "free and held")
        if (free | self._refs.keys()) & self.reserved:
            raise AssertionError("BlockAllocator: a reserved block was handed out")
        lost = set(range(self.num_blocks)) - free - self._refs.keys() - self.reserved
        if lost:
            raise AssertionError(f"BlockAllocator: {len(lost)} blocks are neither free nor held (leaked), "
                                 f"e.g. {sorted(lost)[:8]}")
        if any(n < 1 for n in self._refs.values()):
            raise AssertionError("BlockAllocator: a held block has a reference count below 1")


def blocks_for(n_tokens: int, block_size: int) -> int:
    """Blocks that hold ``n_tokens`` tokens: ``⌈n_tokens / block_size⌉``."""
    return -(-n_tokens // block_size)


@dataclass
class MemoryUse:
    """A snapshot of the paged cache against a contiguous one for the same sequences.

    ``tokens``: keys and values actually held; ``blocks``: blocks held (``blocks · BLOCK``
    positions); ``contiguous_positions``: what a contiguous cache would reserve for the same
    sequences, ``sequences · S_max``. Bytes count keys and values of every layer."""

    sequences: int
    tokens: int
    blocks: int
    block_size: int
    max_seq_len: int
    bytes_per_token: int

    @property
    def paged_bytes(self) -> int:
        return self.blocks * self.block_size * self.bytes_per_token

    @property
    def used_bytes(self) -> int:
        return self.tokens * self.bytes_per_token

    @property
    def contiguous_bytes(self) -> int:
        return self.sequences * self.max_seq_len * self.bytes_per_token


class PagedKVCache:
    """Keys and values of up to ``max_seqs`` sequences in a pool of ``num_blocks`` blocks of
    ``block_size`` tokens (block 0 reserved, ``NULL_BLOCK``), for a model of ``config``.

    ``k_blocks, v_blocks (L, num_blocks, H_kv, BLOCK, D)``; ``table_host (max_seqs,
    max_blocks)`` int32 on the CPU, row ``slot`` the blocks of the sequence in that slot
    (``NULL_BLOCK`` past its last); ``lengths[slot]`` the tokens it holds. A sequence may
    grow to ``max_seq_len = max_blocks · block_size`` tokens.

    ``add_sequence()`` → a slot; ``grow(slot, n)`` makes room for ``n`` tokens in all (False,
    and nothing allocated, if the pool is short); ``remove_sequence(slot)`` frees its blocks.
    """

    def __init__(self, config: ModelConfig, num_blocks: int, block_size: int = 16, *, max_seqs: int,
                 max_seq_len: int, dtype: torch.dtype = torch.float32, device=None):
        for name, value in (("block_size", block_size), ("max_seqs", max_seqs), ("max_seq_len", max_seq_len)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"PagedKVCache: {name} must be a positive integer, got {value!r}")
        self.config = config
        self.block_size = block_size
        self.allocator = BlockAllocator(num_blocks)
        self.max_blocks = blocks_for(max_seq_len, block_size)
        self.max_seq_len = self.max_blocks * block_size
        shape = (config.n_layers, num_blocks, config.n_kv_heads, block_size, config.head_dim)
        self.k_blocks = torch.zeros(shape, dtype=dtype, device=device)
        self.v_blocks = torch.zeros(shape, dtype=dtype, device=device)
        pin = self.k_blocks.is_cuda          # pinned host memory: the table's copy to the GPU is async
        self.table_host = torch.full((max_seqs, self.max_blocks), NULL_BLOCK, dtype=torch.int32,
                                     pin_memory=pin)
        self.lengths = [0] * max_seqs
        self._blocks: list[list[int] | None] = [None] * max_seqs
        self._free_slots = list(range(max_seqs - 1, -1, -1))

    # -- sizes ------------------------------------------------------------------------------

    @property
    def num_blocks(self) -> int:
        return self.k_blocks.shape[1]

    @property
    def max_seqs(self) -> int:
        return self.table_host.shape[0]

    @property
    def dtype(self) -> torch.dtype:
        return self.k_blocks.dtype

    @property
    def device(self) -> torch.device:
        return self.k_blocks.device

    def bytes_per_token(self) -> int:
        """``2 · L · H_kv · D · bytes``: one key and one value per layer."""
        return self.config.kv_cache_bytes_per_token(self.dtype)

    def nbytes(self) -> int:
        """Bytes of the two pools."""
        return 2 * self.k_blocks.numel() * self.k_blocks.element_size()

    @staticmethod
    def num_blocks_for_memory(config: ModelConfig, memory_bytes: float, block_size: int,
                              dtype: torch.dtype = torch.bfloat16) -> int:
        """How many blocks (the null block included) fit in ``memory_bytes`` of keys and values."""
        return int(memory_bytes // (block_size * config.kv_cache_bytes_per_token(dtype)))

    # -- sequences --------------------------------------------------------------------------

    @property
    def num_sequences(self) -> int:
        return self.max_seqs - len(self._free_slots)

    def add_sequence(self) -> int:
        """A free slot for a new sequence, holding no block yet."""
        if not self._free_slots:
            raise RuntimeError(f"PagedKVCache: all {self.max_seqs} sequence slots are taken")
        slot = self._free_slots.pop()
        self._blocks[slot] = []
        self.lengths[slot] = 0
        return slot

    def blocks(self, slot: int) -> list[int]:
        """The blocks of the sequence in ``slot``, in order."""
        blocks = self._blocks[slot]
        if blocks is None:
            raise ValueError(f"PagedKVCache: slot {slot} holds no sequence")
        return list(blocks)

    def can_grow(self, slot: int, n_tokens: int) -> bool:
        return blocks_for(n_tokens, self.block_size) - len(self._blocks[slot]) <= self.allocator.num_free

    def grow(self, slot: int, n_tokens: int) -> bool:
        """Make the sequence in ``slot`` hold room for ``n_tokens`` tokens in all (its length
        becomes ``n_tokens``). False, and nothing changed, if the pool has too few free blocks."""
        blocks = self._blocks[slot]
        if blocks is None:
            raise ValueError(f"PagedKVCache: slot {slot} holds no sequence")
        if n_tokens > self.max_seq_len:
            raise ValueError(f"PagedKVCache: {n_tokens} tokens exceed the {self.max_seq_len} a block table "
                             f"of {self.max_blocks} blocks of {self.block_size} can address")
        need = blocks_for(n_tokens, self.block_size) - len(blocks)
        if need > self.allocator.num_free:
            return False
        if need > 0:
            new = self.allocator.allocate(need)
            self.table_host[slot, len(blocks):len(blocks) + need] = torch.tensor(new, dtype=torch.int32)
            blocks.extend(new)
        self.lengths[slot] = max(self.lengths[slot], n_tokens)
        return True

    def remove_sequence(self, slot: int) -> None:
        """Free the blocks of the sequence in ``slot`` and the slot itself."""
        blocks = self._blocks[slot]
        if blocks is None:
            raise ValueError(f"PagedKVCache: slot {slot} holds no sequence (removed twice?)")
        self.allocator.free(blocks)
        self.table_host[slot, :len(blocks)] = NULL_BLOCK
        self._blocks[slot] = None
        self.lengths[slot] = 0
        self._free_slots.append(slot)

    def check(self) -> None:
        """The allocator's invariants, and the tables agree with it: every block a sequence holds
        is held (as often as sequences hold it), every other table entry is ``NULL_BLOCK``."""
        self.allocator.check()
        held: dict[int, int] = {}
        for slot, blocks in enumerate(self._blocks):
            row = self.table_host[slot].tolist()
            n = 0 if blocks is None else len(blocks)
            if blocks is not None and row[:n] != blocks:
                raise AssertionError(f"PagedKVCache: the table of slot {slot} does not list its blocks")
            if any(b != NULL_BLOCK for b in row[n:]):
                raise AssertionError(f"PagedKVCache: slot {slot} has table entries past its last block")
            for b in blocks or ():
                held[b] = held.get(b, 0) + 1
        for b, n in held.items():
            if self.allocator.refs(b) != n:
                raise AssertionError(f"PagedKVCache: block {b} is in {n} tables but has "
                                     f"{self.allocator.refs(b)} references")
        if self.allocator.num_used != len(held):
            raise AssertionError(f"PagedKVCache: {self.allocator.num_used - len(held)} held blocks are in no "
                                 "table (leaked)")

    def memory(self) -> MemoryUse:
        """What the live sequences hold against what a contiguous cache would reserve for them."""
        live = [s for s, b in enumerate(self._blocks) if b is not None]
        return MemoryUse(sequences=len(live), tokens=sum(self.lengths[s] for s in live),
                         blocks=sum(len(self._blocks[s]) for s in live), block_size=self.block_size,
                         max_seq_len=self.max_seq_len, bytes_per_token=self.bytes_per_token())

    # -- keys and values --------------------------------------------------------------------

    def slots_of(self, slot_ids: torch.Tensor, positions: torch.Tensor, table: torch.Tensor | None = None):
        """``(block, row)`` of each token: ``table[slot, position // BLOCK]`` and ``position % BLOCK``,
        int64 tensors of ``positions``' shape. ``table``: the host table (default) or a copy of
        some of its rows on the GPU (then ``slot_ids`` index those rows)."""
        table = self.table_host if table is None else table
        block = table[slot_ids, torch.div(positions, self.block_size, rounding_mode="floor")].long()
        return block, positions % self.block_size

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor, block: torch.Tensor, row: torch.Tensor) -> None:
        """Store ``k, v (T, H_kv, D)`` of layer ``layer`` at ``(block, row)`` (each ``(T,)``), in place."""
        # advanced indices split by a slice: the indexed view is (T, H_kv, D), as k
        self.k_blocks[layer][block, :, row] = k
        self.v_blocks[layer][block, :, row] = v

    def gather(self, layer: int, block: torch.Tensor, row: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values at ``(block, row)``, each ``(n, S)``: two contiguous ``(n, H_kv, S, D)``
        tiles, the layout of ``KVCache`` that the model's attention backends read."""
        heads = torch.arange(self.config.n_kv_heads, device=block.device)[None, :, None]
        # three adjacent advanced indices broadcast to (n, H_kv, S), then D: one gather, no transpose
        index = (block[:, None, :], heads, row[:, None, :])
        return self.k_blocks[layer][index], self.v_blocks[layer][index]


def batch_that_fits(config: ModelConfig, memory_bytes: float, lengths, *, max_seq_len: int,
                    block_size: int = 16, dtype: torch.dtype | int = torch.bfloat16) -> dict[str, int]:
    """How many of the sequences of ``lengths`` (tokens each, in order) fit in ``memory_bytes`` of
    keys and values: a contiguous cache reserves ``max_seq_len`` positions for each, a paged
    one ``⌈length / block_size⌉`` blocks. Returns ``{"contiguous": n, "paged": n}``."""
    per_token = config.kv_cache_bytes_per_token(dtype)
    contiguous = min(len(lengths), int(memory_bytes // (max_seq_len * per_token)))
    budget, paged = memory_bytes, 0
    for n in lengths:
        cost = blocks_for(n, block_size) * block_size * per_token
        if cost > budget:
            break
        budget -= cost
        paged += 1
    return {"contiguous": contiguous, "paged": paged}
