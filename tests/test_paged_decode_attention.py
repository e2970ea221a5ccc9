"""paged_decode_attention against its fp32 reference and against decode_attention on the same
keys laid out contiguously; the same tests run in the interpreter (CPU, 16 keys a step) and
compiled (GPU).

Every cache here is built contiguous first, ``(B, H_kv, S_max, D)`` of fresh random numbers, and
then scattered into a pool of blocks in a random order, with spare blocks of other random numbers
between them and the table entries past each sequence's last block set to garbage: the kernel
must find every key through the table and nothing else. Outputs and the partials are poisoned
with NaN (``poisoned_outputs``).
"""

import importlib
import os

import pytest
import torch

from conftest import DTYPES, GPU_ONLY, TOLERANCES
from infer_lib import device
from infer_lib.kernels import decode_attention, paged_decode_attention

pk = importlib.import_module("infer_lib.kernels.paged_decode_attention_kernel")
DEV = device.DEVICE
#: NaN fed on purpose: the interpreter's numpy warns where a GPU silently computes NaN
IEEE_WARNINGS_EXPECTED = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning",
                                                    "ignore:All-NaN slice encountered:RuntimeWarning",
                                                    "ignore:overflow encountered:RuntimeWarning",
                                                    "ignore:divide by zero encountered:RuntimeWarning")


def _paged(B, H, H_kv, D, page, lengths, dtype=torch.float32, spare=3, width=None, garbage=-7):
    """q, the contiguous caches, and the same keys in a shuffled pool of blocks with its table.

    Returns ``q, k, v, k_blocks, v_blocks, table, lens``: ``k, v (B, H_kv, S, D)`` with
    ``S = width · page``; sequence ``b``'s block ``j`` lands at a random place in the pool;
    ``spare`` blocks of other numbers are mixed in; table entries past each length are ``garbage``."""
    used = [-(-n // page) for n in lengths]
    width = max(used) + 1 if width is None else width
    S = width * page
    q = torch.randn(B, H, D, device=DEV, dtype=dtype)
    k = torch.randn(B, H_kv, S, D, device=DEV, dtype=dtype)
    v = torch.randn(B, H_kv, S, D, device=DEV, dtype=dtype)
    num_blocks = sum(used) + spare
    k_blocks = torch.randn(num_blocks, H_kv, page, D, device=DEV, dtype=dtype)
    v_blocks = torch.randn(num_blocks, H_kv, page, D, device=DEV, dtype=dtype)
    ids = torch.randperm(num_blocks).tolist()
    table = torch.full((B, width), garbage, dtype=torch.int32)
    for b, n in enumerate(used):
        for j in range(n):
            blk = ids.pop()
            table[b, j] = blk
            k_blocks[blk] = k[b, :, j * page:(j + 1) * page]
            v_blocks[blk] = v[b, :, j * page:(j + 1) * page]
    lens = torch.tensor(lengths, dtype=torch.int32, device=DEV)
    return q, k, v, k_blocks, v_blocks, table.to(DEV), lens


def _check(out, q, k_blocks, v_blocks, table, lens, sm_scale=None):
    atol, rtol = TOLERANCES[q.dtype]
    assert out.shape == q.shape and out.dtype == q.dtype
    want = pk.paged_decode_attention_ref(q, k_blocks, v_blocks, table, lens, sm_scale)
    torch.testing.assert_close(out.float(), want.float(), atol=2 * atol, rtol=2 * rtol, equal_nan=True)


# (B, H, H_kv, D, lengths): MHA, GQA (2 and 4 query heads per KV head), MQA; lengths of 1, a
# partly filled block, exactly a whole number of blocks, and ragged batches
SHAPES = [
    (3, 4, 2, 32, [37, 1, 64]),
    (2, 8, 2, 64, [16, 70]),
    (2, 4, 1, 16, [50, 17]),
    (1, 6, 6, 128, [33]),
]


@pytest.mark.parametrize("B, H, H_kv, D, lengths", SHAPES, ids=lambda x: str(x))
@pytest.mark.parametrize("page", [16, 64])
@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_reference_on_shuffled_blocks(B, H, H_kv, D, lengths, page, dtype, poisoned_outputs):
    q, k, v, kb, vb, table, lens = _paged(B, H, H_kv, D, page, lengths, dtype)
    _check(paged_decode_attention(q, kb, vb, table, lens), q, kb, vb, table, lens)


@pytest.mark.parametrize("page", [1, 5, 8, 24])
def test_tiles_that_span_several_blocks(page, poisoned_outputs):
    # blocks smaller than a tile (and of sizes that are not powers of two): one tile reads several
    q, k, v, kb, vb, table, lens = _paged(3, 4, 2, 16, page, [41, 2, 30])
    _check(paged_decode_attention(q, kb, vb, table, lens), q, kb, vb, table, lens)


@pytest.mark.parametrize("page", [16, 64])
@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_the_contiguous_kernel_on_the_same_keys(page, dtype, poisoned_outputs):
    q, k, v, kb, vb, table, lens = _paged(3, 8, 2, 32, page, [100, 7, 64], dtype)
    atol, rtol = TOLERANCES[dtype]
    torch.testing.assert_close(paged_decode_attention(q, kb, vb, table, lens).float(),
                               decode_attention(q, k, v, lens).float(), atol=2 * atol, rtol=2 * rtol)


@pytest.mark.parametrize("splits", [1, 2, 3, 1000])
def test_every_split_count_gives_the_same_answer(splits, poisoned_outputs):
    q, k, v, kb, vb, table, lens = _paged(2, 4, 2, 32, 16, [90, 41])
    _check(paged_decode_attention(q, kb, vb, table, lens, num_splits=splits), q, kb, vb, table, lens)


def test_sequences_may_share_blocks(poisoned_outputs):
    # prefix sharing: both sequences start with the same two blocks, then go their own ways
    q, k, v, kb, vb, table, lens = _paged(2, 4, 2, 16, 16, [40, 20])
    table[1, :2] = table[0, :2]
    _check(paged_decode_attention(q, kb, vb, table, lens), q, kb, vb, table, lens)


def test_only_the_blocks_a_sequence_reads_matter(poisoned_outputs):
    q, k, v, kb, vb, table, lens = _paged(2, 4, 2, 16, 16, [20, 9], spare=4)
    out = paged_decode_attention(q, kb, vb, table, lens)
    # NaN in blocks nobody reads, in the rows of a last block past the length, and garbage in
    # the table past each sequence's blocks change nothing
    read = set(table[0, :2].tolist()) | {int(table[1, 0])}
    for blk in set(range(kb.shape[0])) - read:
        kb[blk] = float("nan")
        vb[blk] = float("nan")
    kb[table[0, 1], :, 4:] = float("nan")              # sequence 0 reads rows 0..3 of its second block
    table[:, 2:] = 10**6
    table[1, 1] = -1
    torch.testing.assert_close(paged_decode_attention(q, kb, vb, table, lens), out)


def test_strided_pool_table_and_query(poisoned_outputs):
    # the pool laid out (num_blocks, BLOCK, H_kv, D) and seen through a transpose; the table a
    # column-major view; q every other element
    q0, k, v, kb, vb, table, lens = _paged(2, 4, 2, 32, 16, [40, 9])
    kb_t = kb.transpose(1, 2).contiguous().transpose(1, 2)
    vb_t = vb.transpose(1, 2).contiguous().transpose(1, 2)
    table_t = table.t().contiguous().t()
    q = torch.randn(2, 4, 64, device=DEV)[..., ::2]
    assert not (kb_t.is_contiguous() or table_t.is_contiguous() or q.is_contiguous())
    _check(paged_decode_attention(q, kb_t, vb_t, table_t, lens.long()), q, kb, vb, table, lens)


def test_sm_scale(poisoned_outputs):
    q, k, v, kb, vb, table, lens = _paged(2, 4, 2, 16, 16, [20, 33])
    _check(paged_decode_attention(q, kb, vb, table, lens, sm_scale=0.3), q, kb, vb, table, lens, 0.3)


@IEEE_WARNINGS_EXPECTED
def test_nan_in_a_key_that_is_read_makes_that_output_nan(poisoned_outputs):
    q, k, v, kb, vb, table, lens = _paged(2, 4, 2, 16, 16, [20, 33])
    kb[table[1, 2], 1, 0, 3] = float("nan")               # sequence 1, KV head 1, position 32
    out = paged_decode_attention(q, kb, vb, table, lens)
    assert out[1, 2:].isnan().all() and not out[1, :2].isnan().any() and not out[0].isnan().any()
    _check(out, q, kb, vb, table, lens)


@IEEE_WARNINGS_EXPECTED
@pytest.mark.parametrize("value", [float("inf"), float("-inf")])
def test_an_infinite_key_or_value_gives_what_the_reference_gives(value, poisoned_outputs):
    q, k, v, kb, vb, table, lens = _paged(2, 4, 2, 16, 16, [20, 33])
    kb[table[1, 2], 1, 0, 3] = value                      # a key of sequence 1, KV head 1
    vb[table[0, 0], 0, 5, 1] = value                      # a value of sequence 0, KV head 0
    out = paged_decode_attention(q, kb, vb, table, lens)
    assert not out[1, :2].isnan().any()                   # KV head 0 of sequence 1 is untouched
    _check(out, q, kb, vb, table, lens)


def test_reference_is_the_contiguous_reference_on_the_same_keys():
    q, k, v, kb, vb, table, lens = _paged(3, 4, 2, 16, 16, [20, 1, 48])
    torch.testing.assert_close(pk.paged_decode_attention_ref(q, kb, vb, table, lens),
                               importlib.import_module("infer_lib.kernels.decode_attention_kernel")
                               .decode_attention_ref(q, k, v, lens))


# ----------------------------------------------------------------------------
# Broken tables: refused where the values can be read, NaN where they cannot
# ----------------------------------------------------------------------------

def _values_read_here():
    """On a GPU the values are read only when asked: it costs a synchronisation."""
    if device.HAS_GPU:
        os.environ["INFER_LIB_CHECKS"] = "1"


@pytest.fixture
def checks_on():
    _values_read_here()
    yield
    os.environ.pop("INFER_LIB_CHECKS", None)


@pytest.mark.parametrize("change, match", [
    (lambda t, l: (t, l.fill_(0)), r"cache_seqlens\[0\] = 0 is below 1"),
    (lambda t, l: (t, l.index_fill_(0, torch.tensor([1], device=l.device), 49)),
     r"cache_seqlens\[1\] = 49 needs 4 blocks of 16 tokens, but block_table has only 3 columns"),
    (lambda t, l: (t.index_fill_(1, torch.tensor([1], device=t.device), -1), l),
     r"block_table\[0, 1\] = -1 is not a block of the pool \(ids 0..7\)"),
    (lambda t, l: (t.index_fill_(1, torch.tensor([0], device=t.device), 8), l),
     r"block_table\[0, 0\] = 8 is not a block of the pool"),
])
def test_broken_tables_are_refused_where_they_can_be_read(change, match, checks_on):
    q, k, v, kb, vb, table, lens = _paged(2, 4, 2, 16, 16, [20, 30], width=3, spare=4)
    table, lens = change(table, lens)
    with pytest.raises(ValueError, match=match):
        paged_decode_attention(q, kb, vb, table, lens)


@IEEE_WARNINGS_EXPECTED
def test_broken_tables_unchecked_give_nan_for_that_sequence_only(monkeypatch, poisoned_outputs):
    # what a GPU does without INFER_LIB_CHECKS: no error (no synchronisation), never a plausible answer
    monkeypatch.setattr(pk, "values_checked", lambda t: False)
    q, k, v, kb, vb, table, lens = _paged(5, 4, 2, 16, 16, [20, 30, 10, 10, 10], width=3)
    table[2, 0] = -1                                  # a block id below the pool
    table[3, 0] = kb.shape[0]                         # and one past it
    lens[1] = 49                                      # longer than the table can address
    lens[4] = 0
    out = paged_decode_attention(q, kb, vb, table, lens)
    assert out[1:].isnan().all() and torch.isfinite(out[0]).all()
    _check(out, q, kb, vb, table, lens)


# ----------------------------------------------------------------------------
# Bad input: a clear error before anything is launched
# ----------------------------------------------------------------------------

def _ok():
    q, k, v, kb, vb, table, lens = _paged(2, 4, 2, 16, 16, [20, 3])
    return q, kb, vb, table, lens


@pytest.mark.parametrize("change, error, match", [
    (lambda q, k, v, t, l: (q[:, :, None], k, v, t, l), ValueError, "q must be 3-D"),
    (lambda q, k, v, t, l: (q, k[0], v, t, l), ValueError, "k_blocks must be 4-D"),
    (lambda q, k, v, t, l: (q, k, v[:, :, :8], t, l), ValueError, "v_blocks has"),
    (lambda q, k, v, t, l: (q, k.half(), v, t, l), TypeError, "cast them to one dtype"),
    (lambda q, k, v, t, l: (q[:, :3], k, v, t, l), ValueError, "not a multiple of H_kv"),
    (lambda q, k, v, t, l: (q, k[..., :8], v[..., :8], t, l), ValueError, "head dim"),
    (lambda q, k, v, t, l: (q, k, v, t.float(), l), ValueError, "block_table must be an int32"),
    (lambda q, k, v, t, l: (q, k, v, t[:1], l), ValueError, r"block_table must .* shape \(B=2"),
    (lambda q, k, v, t, l: (q, k, v, t[:, :0], l), ValueError, "max_blocks ≥ 1"),
    (lambda q, k, v, t, l: (q, k, v, t.tolist(), l), TypeError, "block_table must be a torch.Tensor"),
    (lambda q, k, v, t, l: (q, k, v, t, l.float()), ValueError, "int32 or int64"),
    (lambda q, k, v, t, l: (q, k, v, t, l[:1]), ValueError, r"shape \(2,\)"),
    (lambda q, k, v, t, l: (q.int(), k, v, t, l), TypeError, "dtype"),
    (lambda q, k, v, t, l: (q, k[:0], v[:0], t, l), ValueError, "the pool of blocks is empty"),
])
def test_bad_input_is_refused(change, error, match):
    with pytest.raises(error, match=match):
        paged_decode_attention(*change(*_ok()))


@pytest.mark.skipif(not device.HAS_GPU, reason="needs tensors on two devices: a GPU and the CPU")
def test_a_table_on_another_device_is_refused():
    q, kb, vb, table, lens = _ok()
    with pytest.raises(ValueError, match="block_table is on cpu"):
        paged_decode_attention(q, kb, vb, table.cpu(), lens)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"sm_scale": float("nan")}, ValueError, "finite positive"),
    ({"sm_scale": torch.tensor(0.5)}, TypeError, "sm_scale.item"),
    ({"num_splits": 0}, ValueError, "num_splits"),
    ({"num_splits": True}, ValueError, "num_splits"),
])
def test_bad_options_are_refused(kwargs, error, match):
    with pytest.raises(error, match=match):
        paged_decode_attention(*_ok(), **kwargs)


def test_inputs_that_require_grad_are_refused():
    q, kb, vb, table, lens = _ok()
    with pytest.raises(RuntimeError, match="no backward pass"):
        paged_decode_attention(q, kb.requires_grad_(), vb, table, lens)


def test_an_empty_batch_gives_an_empty_output():
    q, kb, vb, table, lens = _ok()
    assert paged_decode_attention(q[:0], kb, vb, table[:0], lens[:0]).shape == (0, 4, 16)


# ----------------------------------------------------------------------------
# On a GPU: the larger shapes the interpreter is too slow for, and CUDA graphs
# ----------------------------------------------------------------------------

@GPU_ONLY
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B, H, H_kv, D, page, S", [(1, 32, 8, 128, 16, 4096), (16, 32, 8, 64, 16, 1000),
                                                    (4, 16, 16, 64, 64, 2049), (8, 8, 1, 32, 64, 777)])
def test_decode_shapes_on_gpu(B, H, H_kv, D, page, S, dtype, poisoned_outputs):
    lengths = torch.randint(1, S + 1, (B,)).tolist()
    lengths[0] = S
    q, k, v, kb, vb, table, lens = _paged(B, H, H_kv, D, page, lengths, dtype)
    out = paged_decode_attention(q, kb, vb, table, lens)
    _check(out, q, kb, vb, table, lens)
    atol, rtol = TOLERANCES[dtype]
    torch.testing.assert_close(out.float(), decode_attention(q, k, v, lens).float(), atol=2 * atol, rtol=2 * rtol)


@GPU_ONLY
def test_a_captured_step_follows_the_lengths_and_the_table():
    # captured once, replayed as sequences grow and take new blocks: the graph reads neither on the host
    dtype = torch.bfloat16 if device.supports_bf16() else torch.float16
    q, k, v, kb, vb, table, lens = _paged(4, 8, 2, 64, 16, [10, 100, 1, 290], dtype, width=20, spare=40)
    free = sorted(set(range(kb.shape[0])) - set(table[table >= 0].tolist()))
    paged_decode_attention(q, kb, vb, table, lens)             # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = paged_decode_attention(q, kb, vb, table, lens)
    for step in range(3):
        lens.add_(7)
        for b in range(4):                                     # a new block where a sequence needs one
            j = (int(lens[b]) - 1) // 16
            if table[b, j] < 0:
                table[b, j] = free.pop()
        graph.replay()
        _check(out, q, kb, vb, table, lens)
