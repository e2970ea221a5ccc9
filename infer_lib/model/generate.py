"""Autoregressive generation with a KV cache: prefill, then one token at a time.

* **Prefill**: the prompt goes through the model in one forward pass; its keys
  and values fill the cache, and the logits of its last token give the first new
  token. Compute-bound: ``S`` tokens share every weight read.
* **Decode**: each step feeds one token per sequence, ``(B, 1)``, attends over
  the cache and appends to it. Memory-bound at small ``B``: every weight is read
  for ``B`` tokens only.

A batch of prompts of different lengths is prefilled one prompt at a time into
its own cache rows (``KVCache.select``; no padding, so no position or mask is
shifted), then decoded together: sequence ``b`` sits at position
``cache.seqlens[b]``, which differs between rows.

Sampling: greedy (argmax) at ``temperature=0``; otherwise softmax of
``logits / temperature`` over the ``top_k`` largest logits (all when None).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .kv_cache import KVCache
from .layers import Transformer


def sample(logits: torch.Tensor, temperature: float = 0.0, top_k: int | None = None,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row of ``logits`` (B, V): argmax at ``temperature=0``, else a draw from
    ``softmax(logits / temperature)`` restricted to the ``top_k`` largest. Returns (B,) int64."""
    if temperature < 0:
        raise ValueError(f"temperature must be ≥ 0, got {temperature}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be None or a positive integer, got {top_k!r}")
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]          # (B, 1) the k-th largest
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)                              # (B, V)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


def _as_prompts(tokens, lengths=None) -> list[torch.Tensor]:
    """A list of 1-D prompts from a list, a (B, S) tensor, or a padded (B, S) with lengths (B,)."""
    if isinstance(tokens, torch.Tensor):
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be (B, S) or a list of 1-D prompts, got shape {tuple(tokens.shape)}")
        if lengths is None:
            return list(tokens)
        lengths = torch.as_tensor(lengths).tolist()
        if len(lengths) != tokens.shape[0]:
            raise ValueError(f"lengths has {len(lengths)} entries for a batch of {tokens.shape[0]} prompts")
        for b, n in enumerate(lengths):
            if not 1 <= n <= tokens.shape[1]:
                raise ValueError(f"lengths[{b}]={n} must be between 1 and S={tokens.shape[1]}")
        return [row[:n] for row, n in zip(tokens, lengths)]
    if lengths is not None:
        raise ValueError("lengths goes with a padded (B, S) tensor, not a list of prompts")
    if not isinstance(tokens, Sequence) or len(tokens) == 0:
        raise ValueError("tokens must be a (B, S) tensor or a non-empty list of 1-D prompts")
    for b, p in enumerate(tokens):
        if not isinstance(p, torch.Tensor) or p.dim() != 1 or p.numel() == 0:
            raise ValueError(f"prompt {b} must be a non-empty 1-D tensor of token ids")
    return list(tokens)


@torch.no_grad()
def prefill(model: Transformer, tokens, cache: KVCache, lengths=None) -> torch.Tensor:
    """Append prompts to ``cache`` and return the logits of each one's last token, (B, V).

    ``tokens``: a (B, S) tensor (one forward pass for the batch), or prompts of
    different lengths — a list of 1-D tensors, or a right-padded (B, S) tensor
    with ``lengths`` (B,) — each prefilled alone into its cache row."""
    if isinstance(tokens, torch.Tensor) and lengths is None:
        return model(tokens, cache, last_only=True)[:, -1]          # (B, V)
    prompts = _as_prompts(tokens, lengths)
    if len(prompts) != cache.batch_size:
        raise ValueError(f"{len(prompts)} prompts for a cache of {cache.batch_size} sequences")
    return torch.cat([model(p[None], cache.select(b), last_only=True)[:, -1]
                      for b, p in enumerate(prompts)])


@torch.no_grad()
def decode_one_token(model: Transformer, token: torch.Tensor, cache: KVCache) -> torch.Tensor:
    """Feed one token per sequence, ``token`` (B,), at each sequence's next position;
    return the logits of the next one, (B, V)."""
    return model(token[:, None], cache)[:, -1]


@torch.no_grad()
def generate_uncached(model: Transformer, tokens: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
    """Greedy decoding the slow way, with no KV cache: the whole sequence so far goes through
    the model for every new token. ``tokens`` (B, S); returns (B, S + max_new_tokens).

    The baseline ``generate`` must equal token for token (in fp32; in 16-bit the two paths
    round differently and a near-tie can flip). Step ``i`` pushes ``S + i`` positions through
    the model, ``generate`` pushes the prompt once and then one position a step."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be a non-negative integer, got {max_new_tokens!r}")
    for _ in range(max_new_tokens):
        logits = model(tokens, last_only=True)[:, -1]                 # (B, V): no cache at all
        tokens = torch.cat([tokens, logits.argmax(-1, keepdim=True)], dim=1)
    return tokens


@torch.no_grad()
def generate(model: Transformer, tokens, max_new_tokens: int, temperature: float = 0.0,
             top_k: int | None = None, stop_token: int | None = None, *, lengths=None,
             pad_token: int | None = None, cache: KVCache | None = None,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """Generate ``max_new_tokens`` tokens after each prompt; greedy at ``temperature=0``.

    ``tokens``: a (B, S) tensor, a list of 1-D prompts, or a padded (B, S) tensor
    with ``lengths``. Returns (B, S + max_new_tokens) int64, with ``S`` the longest
    prompt: row ``b`` is its prompt, then its ``max_new_tokens`` new tokens, then
    ``pad_token`` to the common length (only prompts shorter than ``S`` get any).

    A sequence that produces ``stop_token`` keeps emitting ``stop_token`` until the
    end (its row stays in the batch, so shapes never change); generation ends early
    once every sequence has stopped, the rest filled with ``stop_token``.
    ``pad_token`` defaults to ``stop_token``, or 0 without one.

    ``cache``: an empty ``KVCache`` to use (by default one of exactly
    ``S + max_new_tokens`` positions is allocated in the model's dtype).
    """
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be a non-negative integer, got {max_new_tokens!r}")
    prompts = _as_prompts(tokens, lengths)
    B = len(prompts)
    prompt_lens = [p.numel() for p in prompts]
    S = max(prompt_lens)
    ragged = min(prompt_lens) != S
    weight = model.embed_tokens.weight
    if cache is None:
        cache = KVCache(model.config, B, S + max_new_tokens, dtype=weight.dtype, device=weight.device)
    elif cache.batch_size != B:
        raise ValueError(f"the cache holds {cache.batch_size} sequences but there are {B} prompts")
    # fail before any work, not halfway through: the last new token is never fed back
    cache.check_room(S + max(max_new_tokens - 1, 0))
    prompts = [p.to(weight.device) for p in prompts]
    pad = pad_token if pad_token is not None else (stop_token if stop_token is not None else 0)

    out = torch.full((B, S + max_new_tokens), pad, dtype=torch.int64, device=weight.device)
    for b, p in enumerate(prompts):
        out[b, :p.numel()] = p
    if max_new_tokens == 0:
        return out
    if ragged:
        logits = prefill(model, prompts, cache)
    else:
        logits = prefill(model, torch.stack(prompts), cache)
    next_pos = torch.tensor(prompt_lens, device=weight.device)           # (B,) where new tokens go
    done = torch.zeros(B, dtype=torch.bool, device=weight.device)
    for step in range(max_new_tokens):
        token = sample(logits, temperature, top_k, generator)            # (B,)
        if stop_token is not None:
            token = torch.where(done, stop_token, token)                 # stopped rows repeat it
            done |= token == stop_token
        out.scatter_(1, (next_pos + step)[:, None], token[:, None])
        if step == max_new_tokens - 1:
            break
        if stop_token is not None and bool(done.all()):
            for b, n in enumerate(prompt_lens):
                out[b, n + step + 1:n + max_new_tokens] = stop_token
            break
        logits = decode_one_token(model, token, cache)
    return out
