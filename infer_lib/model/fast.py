"""The model's non-attention work on the course's Triton kernels, one switch per rung.

A decoding step spends little in attention at short context: the rest is norms, the
SwiGLU product, residual adds and, above all, the projections, which stream every weight
of the model once per step. Each function below switches an existing ``Transformer`` **in
place**, without copying a weight, so that the ladder of a chapter on fast decoding is one
call per rung::

    model = Transformer(config)            # rung 0: PyTorch (cuBLAS, eager elementwise ops)
    fuse(model)                            # rung 1: fused norms, adds, SwiGLU, RoPE; merged q/k/v
    use_matmul(model)                      # rung 2: projections on kernels.matmul
    quantize(model)                        # rung 3: int8 weights on kernels.int8_matmul
    reset(model)                           # back to rung 0 (not after quantize: one-way)

The three switches are independent (any subset, in any order); ``describe(model)`` says
which are on, and ``weight_bytes(model)`` counts the bytes of the weights.

**Rung 1, ``fuse``**: the model's class becomes ``FusedTransformer`` (a subclass of
``Transformer``: same modules, same parameters, same ``state_dict``; only ``forward``
differs). A pre-norm block is ``h = x + Attention(RMSNorm(x)); out = h + MLP(RMSNorm(h))``:
every RMSNorm reads a row just written by a residual add. ``kernels.add_rms_norm(y, x, w)``
returns both ``x + y`` and its norm in one pass, so every add and the norm after it fuse:

* the embedding's output: ``kernels.rms_norm`` with layer 0's ``input_layernorm``;
* in block ``i``: ``h = x + attn`` with block ``i``'s ``post_attention_layernorm``
  (``add_rms_norm``); ``out = h + mlp`` with block ``i + 1``'s ``input_layernorm`` — or,
  after the last block, with the final ``norm`` (``add_rms_norm``);
* the MLP: ``down(kernels.swiglu(gate(x), up(x)))``: ``silu(g) · u`` in one pass.

Two more kinds of launch go in the same rung, because at decode time a launch, not its
bytes, is what a small kernel costs (chapter 2):

* **Merged projections.** ``q, k, v`` read the same input, and so do ``gate`` and ``up``:
  each group runs as one matmul over its weights concatenated along ``d_out`` (a
  ``(H + 2·H_kv)·D × d`` and a ``2F × d`` matrix), whose output is split by views. The
  merge copies each group's weights once into one storage and makes the projections'
  own ``Parameter`` objects views of it (same objects, same values, same
  ``state_dict``; the memory does not grow). The merged modules are plain attributes
  (``_fused_qkv``, ``_fused_gate_up``), rebuilt by every switch below.
* **RoPE and the cache writes.** With a cache, ``kernels.rope_cache`` rotates the query
  and key heads and writes keys and values into the cache in one launch, where the
  plain model runs about a dozen small kernels (casts, ``cat``, products, scatters).

Per block that is 2 launches where PyTorch runs two adds and two norms of 5–7 elementwise
kernels each (square, mean, add ``eps``, rsqrt, multiply, the casts and the weight), 1 for
SwiGLU instead of 2 (``silu``, ``*``), 2 matmuls instead of 5, and 1 launch for RoPE and
the cache; every activation is read once and written once per fused op. The projections
are whatever the other rungs make them (``nn.Linear`` by default). Attention itself is
``model.backend``'s. With ``last_only`` the final norm runs over all ``S`` rows (fused into
the last add) and only the last row goes through the head: the same values, a few ``S·d``
extra bytes. Switch a model *after* ``model.to(device, dtype)``: ``Module.to`` makes new
tensors and the merged weights would be left behind.

**Rung 2, ``use_matmul``**: each projection ``nn.Linear`` (``q, k, v, o`` of attention,
``gate, up, down`` of the MLP; the output head with ``head=True``) becomes a
``MatmulLinear`` holding the *same* ``Parameter``: ``x (B, S, d_in)`` is viewed as
``(B·S, d_in)`` and multiplied by ``weight.t()``, a ``(d_in, d_out)`` *view* of the
``(d_out, d_in)`` weight — ``kernels.matmul`` takes any strides, so nothing is copied,
ever. ``matmul`` runs its split-K kernel for ``B·S ≤ 64`` rows (decode) and the tiled one
above (prefill). ``layout="kn"`` instead stores each weight ``(d_in, d_out)``-contiguous:
the ``Parameter``'s storage is replaced in place (one matrix is copied at a time, once, so
the memory does not double; the parameter keeps its shape, ``(d_out, d_in)`` with strides
``(1, d_out)``, and ``F.linear`` still works on it) — for a GPU on which the kernels read
the transposed view more slowly; whether they do is measured there, not here. A tied head
(``config.tie_embeddings``) is always used as a view: relaid, the embedding's rows would be
strided.

**Rung 3, ``quantize``**: each projection (and the head with ``head=True``) becomes an
``Int8Linear`` holding ``w_q (d_in, d_out)`` int8 and ``scales (d_out,)`` fp32 from
``kernels.quantize_int8(weight.t())`` (symmetric, per output channel); its forward is
``kernels.int8_matmul``. The module replaces the ``nn.Linear``: the 16-bit weight is
released (unless something else holds it), so the projections take about half the bytes
of bf16 (``K·N + 4·N`` instead of ``2·K·N``). One-way: quantise a copy to compare. With
tied embeddings the head *is* the embedding matrix (525 MB in bf16 for Llama-3.2-1B,
128256 × 2048), which the embedding lookup still needs in 16 bits: ``head=True`` keeps an
int8 copy beside it (``weight_bytes`` counts it), reading half the bytes per step at the
price of 263 MB more memory. Quantise after ``model.to(device, dtype)``: ``Module.to(dtype)``
would cast the fp32 scales too (``int8_matmul`` then refuses them).

**What runs where.** All kernels run on the device of the model: compiled Triton on a GPU,
Triton's CPU interpreter without one (CPU tensors, tiny models: ``INFER_LIB_PROFILE`` tiny).
fp32 everywhere; fp16 and bf16 where the kernels support them (bf16 on compute capability
8.0 and newer, and in the interpreter). Inference only: call under ``torch.no_grad()`` (the
kernels refuse inputs that require grad while grad mode is on; ``generate`` does this).

**CUDA graphs.** Nothing in these paths reads a value on the host or allocates a
data-dependent shape: the launchers check shapes, dtypes and devices only (the int8
scales' values only on CPU tensors or with ``INFER_LIB_CHECKS=1``), outputs are allocated
with the input's shape, and reshapes are views. A decode step of any rung therefore
captures in a CUDA graph (``experiments/decode.py: _graphed_step``) once it has been run
eagerly (on a GPU the first call of a shape tunes ``matmul`` and ``int8_matmul``, which
times candidates and synchronises: the warm-up step does it).

References: the fused residual-add + RMSNorm of vLLM (``fused_add_rms_norm``) and of
Liger-Kernel; PyTorch gpt-fast's ``WeightOnlyInt8Linear`` (https://github.com/pytorch-labs/gpt-fast)
for rung 3.
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import BACKENDS, MLP, Attention, Block, RMSNorm, Transformer, apply_rope

#: the projections of a block, (submodule, attribute)
PROJECTIONS = (("self_attn", "q_proj"), ("self_attn", "k_proj"), ("self_attn", "v_proj"),
               ("self_attn", "o_proj"), ("mlp", "gate_proj"), ("mlp", "up_proj"), ("mlp", "down_proj"))


# -- the modules ------------------------------------------------------------------------------


class _Kernels:
    """``infer_lib.kernels``, imported on first use (as ``layers`` does): importing the model
    does not import Triton."""

    def __getattr__(self, name):
        from .. import kernels as module

        return getattr(module, name)


kernels = _Kernels()


def _rows(x: torch.Tensor, k: int) -> torch.Tensor:
    """``x (..., k)`` as ``(M, k)`` rows: a view when the leading dims merge (they do for
    every activation of the model), else one copy."""
    return x.reshape(-1, k)


class MatmulLinear(nn.Module):
    """``y = x @ weight.t() (+ bias)`` on ``kernels.matmul``; ``weight`` is an ``nn.Linear``'s
    ``(d_out, d_in)`` ``Parameter``, shared, not copied. ``x (..., d_in)`` → ``(..., d_out)``
    in x's dtype (the weight's). Made by ``use_matmul``; ``to_linear()`` gives the
    ``nn.Linear`` back, holding the same parameters."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight                    # the same Parameter: no copy
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:   # (..., d_in)
        # (M, d_in) @ (d_in, d_out): weight.t() is a view, (1, d_in) strides, or contiguous
        # after use_matmul(layout="kn"); matmul reads either.
        y = kernels.matmul(_rows(x, self.in_features), self.weight.t())   # (M, d_out)
        if self.bias is not None:
            y = y + self.bias
        return y.view(*x.shape[:-1], self.out_features)

    def to_linear(self) -> nn.Linear:
        # built on "meta" without initialising (nothing allocated), then handed our parameters
        linear = nn.utils.skip_init(nn.Linear, self.in_features, self.out_features,
                                    bias=self.bias is not None, device="meta")
        linear.weight = self.weight
        linear.bias = self.bias
        return linear

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Int8Linear(nn.Module):
    """``y = x @ (w_q · scales) (+ bias)`` on ``kernels.int8_matmul``: buffers ``w_q (d_in, d_out)``
    int8 and ``scales (d_out,)`` fp32 (``kernels.quantize_int8`` of the transposed weight,
    symmetric per output channel). ``x (..., d_in)`` fp32, fp16 or bf16 → ``(..., d_out)`` in
    x's dtype. Build it with ``Int8Linear.from_linear`` (``quantize`` does)."""

    def __init__(self, w_q: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__()
        self.in_features, self.out_features = w_q.shape
        self.register_buffer("w_q", w_q)               # (d_in, d_out) int8
        self.register_buffer("scales", scales)         # (d_out,) fp32
        self.bias = bias

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Module) -> Int8Linear:
        """Quantise an ``nn.Linear`` (or ``MatmulLinear``): ``quantize_int8(weight.t())``, on the
        weight's device (plain PyTorch; an fp32 copy of the one matrix exists meanwhile)."""
        w_q, scales = kernels.quantize_int8(linear.weight.detach().t())   # (d_in, d_out), (d_out,)
        return cls(w_q.contiguous(), scales, linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:   # (..., d_in)
        y = kernels.int8_matmul(_rows(x, self.in_features), self.w_q, self.scales)   # (M, d_out)
        if self.bias is not None:
            y = y + self.bias
        return y.view(*x.shape[:-1], self.out_features)

    def dequantized(self) -> torch.Tensor:
        """The weight it multiplies by, ``(w_q · scales).t()``: ``(d_out, d_in)`` fp32, as an
        ``nn.Linear`` stores it (for tests and for measuring the quantisation error)."""
        return (self.w_q.float() * self.scales).t()

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class FusedTransformer(Transformer):
    """``Transformer`` whose norms, residual adds, SwiGLU, RoPE and cache writes run on the fused
    Triton kernels and whose projections run merged (module docstring, rung 1). Never
    constructed: ``fuse(model)`` switches an existing model's class to it and ``reset(model)``
    back; the modules and parameters are the same.

    ``model(tokens, cache=None, last_only=False)``: tokens (B, S) → logits (B, S, V), or
    (B, 1, V) with ``last_only``, exactly as ``Transformer.forward``."""

    def forward(self, tokens: torch.Tensor, cache=None, last_only: bool = False) -> torch.Tensor:
        positions, cos, sin, cache_seqlens = self._inputs(tokens, cache)
        # norms[i] is the norm that follows residual add i: block i's input_layernorm, then the final one
        norms = [block.input_layernorm for block in self.layers] + [self.norm]
        x = self.embed_tokens(tokens)                                           # (B, S, d)
        normed = kernels.rms_norm(x, norms[0].weight, norms[0].eps)             # RMSNorm(x) of block 0
        for block, next_norm in zip(self.layers, norms[1:]):
            post, mlp = block.post_attention_layernorm, block.mlp
            a = _attention(block.self_attn, normed, cos, sin, positions, cache, cache_seqlens)
            h, normed = kernels.add_rms_norm(a, x, post.weight, post.eps)       # h = x + a; RMSNorm(h)
            gate_up = mlp._fused_gate_up(normed)                                # (B, S, 2F): [gate | up]
            F_ = gate_up.shape[-1] // 2
            m = mlp.down_proj(kernels.swiglu(gate_up[..., :F_], gate_up[..., F_:]))
            x, normed = kernels.add_rms_norm(m, h, next_norm.weight, next_norm.eps)   # next block's norm
        if cache is not None:
            cache.seqlens.copy_(cache_seqlens)                                  # in place: rows advance
        if last_only:
            normed = normed[:, -1:]                                             # row-wise norm: same values
        return self.lm_head(normed)                                             # (B, S, V)


def _attention(attn: Attention, x: torch.Tensor, cos, sin, positions, cache, cache_seqlens):
    """``Attention.forward`` with one merged q/k/v projection and, with a cache, RoPE and the
    cache writes in one ``kernels.rope_cache`` launch. x (B, S, d) → (B, S, d)."""
    B, S, _ = x.shape
    H, H_kv, D = attn.n_heads, attn.n_kv_heads, attn.head_dim
    qkv = attn._fused_qkv(x)                                    # (B, S, (H + 2·H_kv)·D): views below
    q = qkv[..., :H * D].view(B, S, H, D)
    k = qkv[..., H * D:(H + H_kv) * D].view(B, S, H_kv, D)
    v = qkv[..., (H + H_kv) * D:].view(B, S, H_kv, D)
    backend = BACKENDS[attn.backend]
    if cache is None:                                           # a whole sequence, no cache
        q, k = apply_rope(q.transpose(1, 2), cos, sin), apply_rope(k.transpose(1, 2), cos, sin)
        out = backend.prefill(q, k, v.transpose(1, 2))
    else:
        k_cache, v_cache = cache.k_cache[attn.layer], cache.v_cache[attn.layer]   # (B, H_kv, S_max, D)
        q = kernels.rope_cache(q, k, v, cos, sin, k_cache, v_cache, positions)   # (B, H, S, D)
        step = backend.decode if S == 1 else backend.extend
        out = step(q, k_cache, v_cache, cache_seqlens)
    return attn.o_proj(out.transpose(1, 2).reshape(B, S, H * D))


# -- checks -----------------------------------------------------------------------------------


def _check_model(op: str, model) -> None:
    """A ``Transformer`` (or a fused one) built of the course's layers: the switches know them."""
    if not isinstance(model, Transformer):
        raise TypeError(f"{op}: model must be an infer_lib.model.Transformer, got {type(model).__name__}")
    if type(model) not in (Transformer, FusedTransformer):
        raise TypeError(f"{op}: model is a {type(model).__name__}, a subclass of Transformer; the switches "
                        "change the class of a plain Transformer only (a subclass's own forward would be lost)")
    for i, block in enumerate(model.layers):
        parts = (("", block, Block), ("input_layernorm", block.input_layernorm, RMSNorm),
                 ("post_attention_layernorm", block.post_attention_layernorm, RMSNorm),
                 ("self_attn", block.self_attn, Attention), ("mlp", block.mlp, MLP))
        for name, module, kind in parts:
            if type(module) is not kind:
                raise TypeError(f"{op}: layers.{i}{'.' + name if name else ''} is a {type(module).__name__}, "
                                f"not the course's {kind.__name__}; the switches know only the course's layers")
    if type(model.norm) is not RMSNorm:
        raise TypeError(f"{op}: model.norm is a {type(model.norm).__name__}, not the course's RMSNorm")


def _projections(model: Transformer, head: bool):
    """``(name, parent, attribute, module)`` of every projection, then the head if ``head``."""
    for i, block in enumerate(model.layers):
        for part, attr in PROJECTIONS:
            parent = getattr(block, part)
            yield f"layers.{i}.{part}.{attr}", parent, attr, getattr(parent, attr)
    if head:
        yield "lm_head", model, "lm_head", model.lm_head


def _check_linear(op: str, name: str, module) -> None:
    if not isinstance(module, (nn.Linear, MatmulLinear, Int8Linear)):
        raise TypeError(f"{op}: {name} is a {type(module).__name__}; expected an nn.Linear "
                        "(or a module these switches made)")


def _is_tied(model: Transformer, weight) -> bool:
    return weight is model.embed_tokens.weight


# -- merged projections ----------------------------------------------------------------------

#: What a fused model runs as one matmul: (submodule of a block, attribute, the projections merged).
MERGED = (("self_attn", "_fused_qkv", ("q_proj", "k_proj", "v_proj")),
          ("mlp", "_fused_gate_up", ("gate_proj", "up_proj")))


def _row_major(w: torch.Tensor) -> bool:
    """A ``(d_out, d_in)`` weight laid out by rows (``nn.Linear``'s), not ``(d_in, d_out)``-contiguous."""
    return w.stride(-1) == 1


@torch.no_grad()
def _merge(parts: list) -> nn.Module:
    """One module of the parts' kind (``nn.Linear``, ``MatmulLinear`` or ``Int8Linear``) whose
    output is the parts' outputs side by side. Its weight is the parts' concatenated along
    ``d_out`` (in their layout); the parts' weights become views of it, so the old storages
    are freed and one copy of the weights remains. Its own attribute, not a submodule: the
    ``state_dict`` keeps the parts' names."""
    kinds = {type(m) for m in parts}
    if len(kinds) != 1:
        raise TypeError(f"fuse: cannot merge projections of different kinds ({sorted(k.__name__ for k in kinds)}); "
                        "switch all projections of a model the same way")
    kind = kinds.pop()
    has_bias = {m.bias is not None for m in parts}
    if len(has_bias) != 1:
        raise ValueError("fuse: some of the projections to merge have a bias and some do not")
    bias = torch.cat([m.bias for m in parts]) if True in has_bias else None
    sizes = [m.out_features for m in parts]
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    if kind is Int8Linear:
        w_q = torch.cat([m.w_q for m in parts], dim=1)                 # (d_in, ΣN)
        scales = torch.cat([m.scales for m in parts])
        for m, a, n in zip(parts, starts, sizes):
            m.w_q, m.scales = w_q[:, a:a + n], scales[a:a + n]
            m.bias = None if bias is None else bias[a:a + n]
        return Int8Linear(w_q, scales, bias)
    weights = [m.weight for m in parts]
    if all(_row_major(w) for w in weights):
        W = torch.cat(weights, dim=0)                                  # (ΣN, d_in)
    else:                                                              # use_matmul(layout="kn")
        W = torch.cat([w.t() for w in weights], dim=1).t()             # (ΣN, d_in), strides (1, ΣN)
    linear = nn.utils.skip_init(nn.Linear, W.shape[1], W.shape[0], bias=False, device="meta")
    linear.weight = nn.Parameter(W, requires_grad=weights[0].requires_grad)
    if bias is not None:
        linear.bias = nn.Parameter(bias, requires_grad=False)
    for m, a, n in zip(parts, starts, sizes):
        m.weight.data = W[a:a + n]                  # the same Parameter, now a view of the merged weight
        if bias is not None:
            m.bias.data = linear.bias[a:a + n]
    return linear if kind is nn.Linear else MatmulLinear(linear)


def _remerge(model: Transformer) -> None:
    """(Re)build the merged projections of a fused model from its projections' current modules."""
    if type(model) is not FusedTransformer:
        return
    for block in model.layers:
        for part, attr, names in MERGED:
            parent = getattr(block, part)
            object.__setattr__(parent, attr, _merge([getattr(parent, name) for name in names]))


def _unmerge(model: Transformer) -> None:
    for block in model.layers:
        for part, attr, _ in MERGED:
            parent = getattr(block, part)
            if attr in parent.__dict__:
                object.__delattr__(parent, attr)


# -- the switches -----------------------------------------------------------------------------


def fuse(model: Transformer) -> Transformer:
    """Rung 1: run ``model``'s norms, residual adds and SwiGLU on ``kernels.rms_norm``,
    ``kernels.add_rms_norm`` and ``kernels.swiglu``, RoPE and the cache writes on
    ``kernels.rope_cache``, and ``q, k, v`` and ``gate, up`` as one matmul each (module
    docstring: what is fused).

    In place: the class becomes ``FusedTransformer``; no module or ``Parameter`` object
    changes and no value (the merge makes the projections' weights views of one storage per
    group; ``reset`` switches back, and the plain forward then gives what it gave before).
    Idempotent. Returns ``model``. Raises ``TypeError`` for anything but a course
    ``Transformer`` of the course's layers."""
    _check_model("fuse", model)
    model.__class__ = FusedTransformer
    _remerge(model)
    return model


def use_matmul(model: Transformer, *, head: bool = False, layout: str = "view") -> Transformer:
    """Rung 2: every projection (``q, k, v, o, gate, up, down``; the head with ``head=True``)
    that is an ``nn.Linear`` becomes a ``MatmulLinear`` on ``kernels.matmul``, holding the same
    ``Parameter``. Projections already int8 stay int8. Returns ``model``; idempotent.

    ``layout="view"`` (default) multiplies by the transposed view of each ``(d_out, d_in)``
    weight: nothing copied, the model's parameters untouched. ``layout="kn"`` replaces each
    weight's storage, in place and once, by a ``(d_in, d_out)``-contiguous copy (the old
    storage is freed: one matrix at a time is doubled, never the model); the values, shapes
    and ``state_dict`` are the same, the strides differ; ``reset`` restores them. A tied head
    stays a view (the embedding needs its rows)."""
    _check_model("use_matmul", model)
    if layout not in ("view", "kn"):
        raise ValueError(f"use_matmul: layout must be 'view' (the transposed weight, no copy) or 'kn' "
                         f"((d_in, d_out)-contiguous storage, replaced in place), got {layout!r}")
    for name, parent, attr, module in list(_projections(model, head)):
        _check_linear("use_matmul", name, module)
        if isinstance(module, Int8Linear):
            continue
        if layout == "kn" and not _is_tied(model, module.weight) and _row_major(module.weight):
            with torch.no_grad():
                module.weight.data = module.weight.data.t().contiguous().t()   # (d_out, d_in), strides (1, d_out)
        if isinstance(module, nn.Linear):
            setattr(parent, attr, MatmulLinear(module))
    _remerge(model)
    return model


def quantize(model: Transformer, *, head: bool = False) -> Transformer:
    """Rung 3: every projection (the head too with ``head=True``) becomes an ``Int8Linear``:
    ``w_q (d_in, d_out)`` int8 and ``scales (d_out,)`` fp32 from ``kernels.quantize_int8``,
    run by ``kernels.int8_matmul``. In place and one-way: the 16-bit weights are dropped from
    the model (freed unless held elsewhere; a tied head's matrix stays, it is the embedding).
    Returns ``model``.

    Raises ``ValueError`` if any of them is int8 already (quantise once, choosing ``head``
    then), ``TypeError`` for anything but a course ``Transformer``, and ``ValueError`` (from
    ``quantize_int8``) for NaN or ±inf weights, naming the first — before anything changes."""
    _check_model("quantize", model)
    targets = list(_projections(model, head))
    for name, _, _, module in targets:
        _check_linear("quantize", name, module)
        if isinstance(module, Int8Linear):
            raise ValueError(f"quantize: {name} is int8 already; a model is quantised once (choose head= "
                             "then): quantising int8 weights again would only add error")
    quantized = [Int8Linear.from_linear(module) for _, _, _, module in targets]   # all, then swap
    for (_, parent, attr, _), q in zip(targets, quantized):
        setattr(parent, attr, q)
    _remerge(model)
    return model


def reset(model: Transformer) -> Transformer:
    """Undo ``fuse`` and ``use_matmul``: the class back to ``Transformer``, every
    ``MatmulLinear`` back to an ``nn.Linear`` holding the same parameters (contiguous again
    after ``layout="kn"``). Raises ``ValueError`` on a quantised model (its 16-bit weights are
    gone: rebuild or reload it). Returns ``model``."""
    _check_model("reset", model)
    modules = list(_projections(model, head=True))
    for name, _, _, module in modules:
        if isinstance(module, Int8Linear):
            raise ValueError(f"reset: {name} is int8 — quantize() is one-way (the 16-bit weights were "
                             "dropped); reload or rebuild the model for the plain path")
    _unmerge(model)
    for _, parent, attr, module in modules:
        if isinstance(module, MatmulLinear):
            if not module.weight.is_contiguous() and not _is_tied(model, module.weight):
                with torch.no_grad():
                    module.weight.data = module.weight.data.contiguous()
            setattr(parent, attr, module.to_linear())
    model.__class__ = Transformer
    return model


# -- reports ----------------------------------------------------------------------------------


def _kind(module) -> str:
    return {MatmulLinear: "matmul", Int8Linear: "int8"}.get(type(module), "torch")


def describe(model: Transformer) -> dict:
    """What runs where: ``{"fused": bool, "projections": {"torch": n, "matmul": n, "int8": n},
    "head": "torch" | "matmul" | "int8"}`` (``n`` counts of the ``7·L`` projections)."""
    _check_model("describe", model)
    counts = {"torch": 0, "matmul": 0, "int8": 0}
    for _, _, _, module in _projections(model, head=False):
        counts[_kind(module)] += 1
    return {"fused": type(model) is FusedTransformer, "projections": counts, "head": _kind(model.lm_head)}


def _nbytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        if t is None:
            continue
        key = (t.untyped_storage().data_ptr(), t.device)
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
    return total


def weight_bytes(model: Transformer) -> dict:
    """Bytes of the model's weights in memory, each storage counted once:

    * ``projections``: the ``7·L`` projections (16-bit: ``2·K·N`` each; int8: ``K·N + 4·N``);
    * ``head``: what the output head holds beyond the embedding (0 when tied and not
      quantised: it *is* the embedding; its int8 copy when quantised);
    * ``embedding``, ``norms`` (every RMSNorm's weight), and ``total``, their sum.

    Call it before and after ``quantize`` to see what int8 saves. The RoPE tables
    (buffers, not weights) are not counted."""
    _check_model("weight_bytes", model)

    def module_bytes(module: nn.Module, exclude=()) -> int:
        tensors = list(module.parameters()) + [b for n, b in module.named_buffers()
                                               if not n.endswith(("rope_cos", "rope_sin"))]
        excluded = {(t.untyped_storage().data_ptr(), t.device) for t in exclude}
        return _nbytes(t for t in tensors if (t.untyped_storage().data_ptr(), t.device) not in excluded)

    # one storage may hold several projections (a fused model's merged weights): count it once
    projections = _nbytes(t for _, _, _, m in _projections(model, head=False)
                          for t in list(m.parameters()) + list(m.buffers()))
    embedding = module_bytes(model.embed_tokens)
    head = module_bytes(model.lm_head, exclude=[model.embed_tokens.weight])
    norms = sum(module_bytes(m) for m in model.modules() if isinstance(m, RMSNorm))
    return {"projections": projections, "head": head, "embedding": embedding, "norms": norms,
            "total": projections + head + embedding + norms}


__all__ = ["FusedTransformer", "Int8Linear", "MatmulLinear", "describe", "fuse", "quantize", "reset",
           "use_matmul", "weight_bytes"]
