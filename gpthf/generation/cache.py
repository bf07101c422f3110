"""Preallocated, growable per-layer key/value buffers with a length per batch row.

Rows advance independently: row b's next entry goes to index `lengths[b]`. A write past a row's
length is invisible until the length moves over it, so every row can be written at once and only
the lengths decide what counts. Capacity doubles when needed: an amortised O(1) copy, never a
per-step concatenation of the whole cache.

An eager step attends over the longest row's filled part, a size the host must know. Reading it back
from the device is a host sync; the generation loop instead reads it with the one sync it makes per
step anyway (`host_query` / `host_answer`), and the cache reads it itself only when not told.
"""

from __future__ import annotations

import torch


class KVCache:
    def __init__(self, n_layers: int, batch: int, heads: int, head_dim: int, capacity: int, device, dtype):
        shape = (batch, heads, max(capacity, 1), head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layers)]
        self.lengths = torch.zeros(batch, dtype=torch.long, device=device)
        self.static = False  # True: the capacity is fixed and every step attends over all of it
        self.told_longest: int | None = None  # the longest row's length, when the loop read it for us

    @property
    def capacity(self) -> int:
        return self.k[0].shape[2]

    def reserve(self, needed: int) -> None:
        """Make room for index `needed - 1`."""
        if needed <= self.capacity:
            return
        if self.static:  # a compiled step holds these buffers' addresses: they never move
            raise RuntimeError(f"a fixed-capacity cache ({self.capacity} entries) cannot grow to {needed}")
        new_capacity = max(needed, 2 * self.capacity)
        for buffers in (self.k, self.v):
            for i, old in enumerate(buffers):
                grown = old.new_zeros(old.shape[0], old.shape[1], new_capacity, old.shape[3])
                grown[:, :, : old.shape[2]] = old
                buffers[i] = grown

    def fix_capacity(self, capacity: int) -> None:
        """Exactly `capacity` entries from now on, in these buffers: what a compiled decode step
        needs. Exactly, not at least: the prefill of a longer prompt allocates more headroom, and
        its rows must fit the batch's buffers when continuous batching copies them in. `capacity`
        holds every row's entries (the generation's horizon)."""
        if capacity > self.capacity:
            self.reserve(capacity)
        if capacity != self.capacity:
            for buffers in (self.k, self.v):
                for i, old in enumerate(buffers):
                    buffers[i] = old[:, :, :capacity].contiguous()
        self.static = True

    def host_query(self) -> torch.Tensor:
        """(0,) or (1,) long on the cache's device: what the next eager step needs on the host (the
        longest row's length); nothing for a static cache, which attends over all of it."""
        if self.static:
            return self.lengths.new_zeros(0)
        return self.lengths.max()[None]

    def host_answer(self, values: list[int]) -> None:
        """The values of `host_query`, read on the host, for the next step."""
        if values:
            (self.told_longest,) = values

    def next_window(self) -> int:
        """Entries the next decode step attends over, with room for every row's next write: each
        row's filled part (eager), or the whole fixed buffer (static, masked beyond each length)."""
        if self.static:
            return self.capacity
        longest = self.told_longest if self.told_longest is not None else int(self.lengths.max())
        self.told_longest = None  # this step moves the lengths
        self.reserve(longest + 1)
        return longest + 1

    def visible_through_lengths(self, size: int) -> torch.Tensor:
        """(B, 1, 1, size) mask of the entries 0..lengths[b] of each row: what the token being
        written at lengths[b] attends over."""
        index = torch.arange(size, device=self.lengths.device)
        return (index[None, :] <= self.lengths[:, None])[:, None, None, :]

    def write_prefix(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store (B, H, T, hd) at indices 0..T-1 of every row."""
        self.reserve(k.shape[2])
        self.k[layer][:, :, : k.shape[2]] = k
        self.v[layer][:, :, : v.shape[2]] = v

    def write_at_lengths(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store one entry (B, H, 1, hd) per row at index lengths[b]."""
        # Indexed assignment, not scatter_: on CPU, scatter_ of bf16 copies the whole buffer.
        rows = torch.arange(k.shape[0], device=k.device)
        self.k[layer][rows, :, self.lengths] = k[:, :, 0]
        self.v[layer][rows, :, self.lengths] = v[:, :, 0]

    def window(self, layer: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The first `size` entries of every row: (B, H, size, hd) views."""
        return self.k[layer][:, :, :size], self.v[layer][:, :, :size]

    def nbytes(self) -> int:
        """Bytes of the filled part (the longest row), all layers, keys and values."""
        used = int(self.lengths.max()) if self.lengths.numel() else 0
        per_entry = self.k[0].shape[0] * self.k[0].shape[1] * self.k[0].shape[3] * self.k[0].element_size()
        return 2 * len(self.k) * used * per_entry
