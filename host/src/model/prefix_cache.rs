//! The prefix cache: keys and values of prompt prefixes already computed, in blocks of
//! [`BLOCK`] tokens, for later requests that start with the same tokens (every request of a
//! pipeline starts with its persona's system prompt; a conversation's next turn starts with
//! the earlier ones).
//!
//! A block is identified by its parent block and its own tokens, so a hit is exact: two
//! prompts share a block only if every token up to its end is the same (no hashing that could
//! collide). Blocks are reference-free copies; a sequence that hits copies them into its own
//! cache, so eviction never pulls memory from under a running sequence. Least recently used
//! leaves go first (a block is only evicted after the blocks that extend it).

use std::collections::HashMap;

use candle_core::Tensor;

use super::error::Result;
use super::qwen3::SeqCache;

/// Tokens per cached block. Small enough that most of a system prompt is covered, large enough
/// that the per-block bookkeeping and copies stay cheap.
pub(crate) const BLOCK: usize = 16;

type BlockId = u64;
/// The root's id: the parent of every first block.
const ROOT: BlockId = 0;

struct Block {
    parent: BlockId,
    tokens: [u32; BLOCK],
    /// One (K, V) pair per layer, `(BLOCK, kv_heads, head_dim)` each.
    kv: Vec<(Tensor, Tensor)>,
    children: usize,
    last_used: u64,
}

/// Blocks by (parent, tokens), with an LRU clock and a byte count.
pub(crate) struct PrefixCache {
    blocks: HashMap<BlockId, Block>,
    index: HashMap<(BlockId, [u32; BLOCK]), BlockId>,
    next_id: BlockId,
    clock: u64,
    block_bytes: usize,
    /// Lookups and the prompt tokens they covered, for the hit rate.
    pub lookups: u64,
    pub looked_up_tokens: u64,
    pub hit_tokens: u64,
}

impl PrefixCache {
    /// `block_bytes`: the memory of one block (K and V of [`BLOCK`] tokens in every layer).
    pub fn new(block_bytes: usize) -> Self {
        PrefixCache {
            blocks: HashMap::new(),
            index: HashMap::new(),
            next_id: ROOT + 1,
            clock: 0,
            block_bytes,
            lookups: 0,
            looked_up_tokens: 0,
            hit_tokens: 0,
        }
    }

    pub fn bytes(&self) -> usize {
        self.blocks.len() * self.block_bytes
    }

    fn key(parent: BlockId, tokens: &[u32]) -> (BlockId, [u32; BLOCK]) {
        let mut key = [0u32; BLOCK];
        key.copy_from_slice(tokens);
        (parent, key)
    }

    /// The chain of cached blocks that `ids` starts with, leaving at least one token of `ids`
    /// uncovered (the step after the prefix must produce the logits of the last token).
    fn chain(&self, ids: &[u32]) -> Vec<BlockId> {
        let usable = ids.len().saturating_sub(1) / BLOCK;
        let mut chain = Vec::new();
        let mut parent = ROOT;
        for tokens in ids.chunks_exact(BLOCK).take(usable) {
            match self.index.get(&Self::key(parent, tokens)) {
                Some(&id) => {
                    chain.push(id);
                    parent = id;
                }
                None => break,
            }
        }
        chain
    }

    /// Fills `cache` (empty) with the longest cached prefix of `ids`; returns the tokens covered.
    pub fn restore(&mut self, ids: &[u32], cache: &mut SeqCache) -> Result<usize> {
        debug_assert_eq!(cache.len(), 0);
        self.clock += 1;
        self.lookups += 1;
        self.looked_up_tokens += ids.len() as u64;
        let chain = self.chain(ids);
        for id in &chain {
            let block = self.blocks.get_mut(id).expect("indexed blocks exist");
            block.last_used = self.clock;
            cache.append_block(&block.kv)?;
        }
        let covered = chain.len() * BLOCK;
        self.hit_tokens += covered as u64;
        Ok(covered)
    }

    /// Adds the full blocks of `ids` (whose keys and values are the first `ids.len()` tokens of
    /// `cache`) that are not cached yet, as long as `room` bytes allow; returns the bytes added.
    pub fn insert(&mut self, ids: &[u32], cache: &SeqCache, mut room: usize) -> Result<usize> {
        self.clock += 1;
        let mut parent = ROOT;
        let mut added = 0;
        for (i, tokens) in ids.chunks_exact(BLOCK).enumerate() {
            if (i + 1) * BLOCK > cache.len() {
                break;
            }
            let key = Self::key(parent, tokens);
            if let Some(&id) = self.index.get(&key) {
                self.blocks.get_mut(&id).expect("indexed blocks exist").last_used = self.clock;
                parent = id;
                continue;
            }
            if room < self.block_bytes {
                break;
            }
            let id = self.next_id;
            self.next_id += 1;
            let kv = cache.read_block(i * BLOCK, BLOCK)?;
            self.blocks.insert(id, Block { parent, tokens: key.1, kv, children: 0, last_used: self.clock });
            self.index.insert(key, id);
            if let Some(p) = self.blocks.get_mut(&parent) {
                p.children += 1;
            }
            room -= self.block_bytes;
            added += self.block_bytes;
            parent = id;
        }
        Ok(added)
    }

    /// Evicts the least recently used leaf block; returns the bytes freed (0 when empty).
    pub fn evict_one(&mut self) -> usize {
        let Some((&id, _)) =
            self.blocks.iter().filter(|(_, b)| b.children == 0).min_by_key(|(_, b)| b.last_used)
        else {
            return 0;
        };
        let block = self.blocks.remove(&id).expect("found above");
        self.index.remove(&(block.parent, block.tokens));
        if let Some(p) = self.blocks.get_mut(&block.parent) {
            p.children -= 1;
        }
        self.block_bytes
    }
}
