"""Paged KV cache bookkeeping: which cache block holds which tokens, and who uses it.

Pure Python (no torch): the model runner owns the tensors, this owns the ids.

    block:        0     1     2     3     4 ...
    ref_count:    2     1     0     0     1
    hash:         h0    h1    h2    -     -      (h_i chains the tokens of blocks 0..i)
    free queue:  [3, 2]  (ref_count 0, least recently freed first; 2 is still in the
                          prefix cache and is reused by a later prompt that hashes to h2
                          unless it is evicted first)

Invariants (checked by `check()`): a block is in the free queue iff its ref_count
is 0; a block with a hash is the one `cached[hash]` points to; a sequence's
block_table lists blocks it holds a reference on, in token order.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from .sequence import Sequence


@dataclass(slots=True)
class Block:
    block_id: int
    ref_count: int = 0  # number of sequences holding this block
    hash: int | None = None  # prefix-chain hash when full and registered in the prefix cache
    tokens: tuple[int, ...] = ()  # the tokens the hash covers (guards against hash collisions)


@dataclass(slots=True)
class PrefixCacheStats:
    queried_tokens: int = 0  # prompt tokens looked up at admission
    hit_tokens: int = 0  # of those, tokens found cached

    @property
    def hit_rate(self) -> float:
        return self.hit_tokens / self.queried_tokens if self.queried_tokens else 0.0


@dataclass
class BlockManager:
    num_blocks: int
    block_size: int  # tokens per block
    enable_prefix_caching: bool = False
    blocks: list[Block] = field(init=False)
    free_queue: OrderedDict[int, None] = field(init=False)  # ref_count-0 blocks, eviction order
    cached: dict[int, int] = field(init=False)  # hash -> block id
    stats: PrefixCacheStats = field(init=False)

    def __post_init__(self) -> None:
        self.blocks = [Block(i) for i in range(self.num_blocks)]
        self.free_queue = OrderedDict.fromkeys(range(self.num_blocks))
        self.cached = {}
        self.stats = PrefixCacheStats()

    # ---- queries -------------------------------------------------------------------------

    @property
    def num_free_blocks(self) -> int:
        """Blocks allocatable now (free or evictable from the prefix cache)."""
        return len(self.free_queue)

    @property
    def num_used_blocks(self) -> int:
        return self.num_blocks - len(self.free_queue)

    @property
    def num_cached_free_blocks(self) -> int:
        return sum(1 for b in self.free_queue if self.blocks[b].hash is not None)

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    # ---- prefix cache --------------------------------------------------------------------

    def _chain_hash(self, prev: int | None, tokens: tuple[int, ...]) -> int:
        return hash((prev, tokens))

    def match_prefix(self, seq: Sequence) -> list[int]:
        """Cached blocks holding a prefix of a sequence that holds no blocks yet.

        At least one token is always left uncomputed so the step yields logits.
        """
        if not self.enable_prefix_caching or seq.block_table:
            return []
        bs = self.block_size
        max_full = (len(seq.token_ids) - 1) // bs
        matched: list[int] = []
        prev: int | None = None
        for i in range(max_full):
            tokens = seq.block_key(i * bs, (i + 1) * bs)
            h = self._chain_hash(prev, tokens)
            block_id = self.cached.get(h)
            if block_id is None or self.blocks[block_id].tokens != tokens:
                break
            matched.append(block_id)
            prev = h
        return matched

    def register_full_blocks(self, seq: Sequence) -> None:
        """Publish the sequence's fully computed blocks in the prefix cache."""
        if not self.enable_prefix_caching:
            return
        bs = self.block_size
        num_full = min(seq.num_computed_tokens // bs, len(seq.block_table))
        prev = seq.block_hashes[-1] if seq.block_hashes else None
        for i in range(len(seq.block_hashes), num_full):
            tokens = seq.block_key(i * bs, (i + 1) * bs)
            h = self._chain_hash(prev, tokens)
            block = self.blocks[seq.block_table[i]]
            if block.hash is None and h not in self.cached:
                block.hash, block.tokens = h, tokens
                self.cached[h] = block.block_id
            seq.block_hashes.append(h)
            prev = h

    # ---- allocation ----------------------------------------------------------------------

    def allocate_slots(self, seq: Sequence, num_new_tokens: int, computed_blocks: list[int] | None = None) -> bool:
        """Make room for `num_new_tokens` more tokens after the computed ones.

        `computed_blocks` (from match_prefix, for a sequence holding no blocks) are taken
        first and the sequence's computed count advanced past them. Returns False and
        changes nothing when the free blocks do not suffice.
        """
        computed_blocks = computed_blocks or []
        num_computed = seq.num_computed_tokens + len(computed_blocks) * self.block_size
        total = self.blocks_needed(num_computed + num_new_tokens)
        new = total - len(seq.block_table) - len(computed_blocks)
        revived = sum(1 for b in computed_blocks if self.blocks[b].ref_count == 0)
        if new + revived > len(self.free_queue):
            return False
        for block_id in computed_blocks:
            self._take(block_id)
            seq.block_table.append(block_id)
            seq.block_hashes.append(self.blocks[block_id].hash)  # type: ignore[arg-type]
        if computed_blocks:
            seq.num_computed_tokens = num_computed
            seq.num_cached_tokens = len(computed_blocks) * self.block_size
        for _ in range(max(new, 0)):
            block_id = next(iter(self.free_queue))
            self._evict(block_id)
            self._take(block_id)
            seq.block_table.append(block_id)
        return True

    def record_lookup(self, num_prompt_tokens: int, num_hit_tokens: int) -> None:
        self.stats.queried_tokens += num_prompt_tokens
        self.stats.hit_tokens += num_hit_tokens

    def free(self, seq: Sequence) -> None:
        """Drop the sequence's references; its last blocks become the first evicted."""
        for block_id in reversed(seq.block_table):
            block = self.blocks[block_id]
            block.ref_count -= 1
            assert block.ref_count >= 0, f"block {block_id} freed twice"
            if block.ref_count == 0:
                self.free_queue[block_id] = None
        seq.block_table = []
        seq.block_hashes = []
        seq.num_computed_tokens = 0

    def reset_prefix_cache(self) -> None:
        for _h, block_id in list(self.cached.items()):
            if self.blocks[block_id].ref_count == 0:
                self._evict(block_id)

    def _take(self, block_id: int) -> None:
        block = self.blocks[block_id]
        if block.ref_count == 0:
            del self.free_queue[block_id]
        block.ref_count += 1

    def _evict(self, block_id: int) -> None:
        block = self.blocks[block_id]
        if block.hash is not None:
            del self.cached[block.hash]
            block.hash, block.tokens = None, ()

    # ---- invariants ----------------------------------------------------------------------

    def check(self, live: list[Sequence] = ()) -> None:
        """Assert the bookkeeping is consistent with the given live sequences."""
        refs = [0] * self.num_blocks
        for seq in live:
            for block_id in seq.block_table:
                refs[block_id] += 1
        for block in self.blocks:
            assert block.ref_count == refs[block.block_id], f"block {block.block_id} ref {block.ref_count}"
            assert (block.ref_count == 0) == (block.block_id in self.free_queue), f"block {block.block_id} queue"
            if block.hash is not None:
                assert self.cached.get(block.hash) == block.block_id, f"block {block.block_id} hash"
        assert len(self.cached) == sum(1 for b in self.blocks if b.hash is not None)
