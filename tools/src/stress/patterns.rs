//! Random write patterns for `cohmem-stress` and how they are split among
//! writer threads.
//!
//! A round's pattern is a list of [`Op`]s applied in order. The worker keeps a
//! shadow copy of each BO and applies the ops to it too, so the expected
//! content is known exactly. To write from several threads at once without
//! making the result depend on scheduling, every page of a round has one
//! owning thread ([`split_among_threads`]): the pieces of all ops that fall
//! into a page are written by its owner in op order, so the BO ends up equal
//! to the shadow whatever the interleaving, while neighbouring pages are
//! written concurrently.

use crate::SplitMix64;

/// What an [`Op`] writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpData {
    /// These bytes.
    Bytes(Vec<u8>),
    /// `len` copies of one byte.
    Fill {
        /// Length in bytes.
        len: u64,
        /// The byte.
        byte: u8,
    },
}

/// One write into a BO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    /// Byte offset in the BO.
    pub offset: u64,
    /// What to write.
    pub data: OpData,
}

impl Op {
    /// Length in bytes.
    pub fn len(&self) -> u64 {
        match &self.data {
            OpData::Bytes(b) => b.len() as u64,
            OpData::Fill { len, .. } => *len,
        }
    }

    /// True for a zero-length op (never generated).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Applies the op to a plain buffer (the shadow copy).
    pub fn apply(&self, shadow: &mut [u8]) {
        let start = self.offset as usize;
        match &self.data {
            OpData::Bytes(b) => shadow[start..start + b.len()].copy_from_slice(b),
            OpData::Fill { len, byte } => shadow[start..start + *len as usize].fill(*byte),
        }
    }

    /// The part of the op in `[from, to)` (BO byte offsets), if any.
    pub fn slice(&self, from: u64, to: u64) -> Option<Op> {
        let start = self.offset.max(from);
        let end = (self.offset + self.len()).min(to);
        if start >= end {
            return None;
        }
        let data = match &self.data {
            OpData::Bytes(b) => OpData::Bytes(b[(start - self.offset) as usize..(end - self.offset) as usize].to_vec()),
            OpData::Fill { byte, .. } => OpData::Fill {
                len: end - start,
                byte: *byte,
            },
        };
        Some(Op { offset: start, data })
    }
}

/// The kinds of pattern a round can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PatternKind {
    /// A few random pages, whole or in part.
    Sparse,
    /// Every page of a contiguous range, whole.
    Dense,
    /// A few bytes every `stride` pages.
    Strided,
    /// Single bytes at random offsets.
    SingleBytes,
    /// One large unaligned copy (up to the whole BO).
    LargeCopy,
    /// Two or three of the above in one round.
    Mixed,
    /// No write at all (the sync must still leave the GPU copy exact).
    Idle,
}

impl PatternKind {
    /// Short name for reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sparse => "sparse",
            Self::Dense => "dense",
            Self::Strided => "strided",
            Self::SingleBytes => "single-bytes",
            Self::LargeCopy => "large-copy",
            Self::Mixed => "mixed",
            Self::Idle => "idle",
        }
    }
}

/// Random bytes of length `len`.
fn random_bytes(rng: &mut SplitMix64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rng.fill(&mut v);
    v
}

/// Picks a pattern kind (idle rarely).
pub fn pick_kind(rng: &mut SplitMix64) -> PatternKind {
    match rng.below(20) {
        0..=3 => PatternKind::Sparse,
        4..=6 => PatternKind::Dense,
        7..=9 => PatternKind::Strided,
        10..=12 => PatternKind::SingleBytes,
        13..=15 => PatternKind::LargeCopy,
        16..=18 => PatternKind::Mixed,
        _ => PatternKind::Idle,
    }
}

/// Generates the ops of one pattern of `kind` for a BO of `size` bytes
/// (`ps`-byte pages). `shadow` is the BO's current expected content: single
/// bytes are chosen to differ from it, so that a lost one is visible.
pub fn generate(rng: &mut SplitMix64, kind: PatternKind, size: u64, ps: u64, shadow: &[u8]) -> Vec<Op> {
    let pages = (size / ps).max(1);
    let mut ops = Vec::new();
    match kind {
        PatternKind::Idle => {}
        PatternKind::Sparse => {
            let count = 1 + rng.below(pages.min(32)) as usize;
            for p in rng.distinct(pages, count) {
                let (off, len) = if rng.below(2) == 0 {
                    (0, ps)
                } else {
                    let off = rng.below(ps);
                    (off, 1 + rng.below(ps - off))
                };
                ops.push(Op {
                    offset: p * ps + off,
                    data: OpData::Bytes(random_bytes(rng, len as usize)),
                });
            }
        }
        PatternKind::Dense => {
            let run = 1 + rng.below(pages.div_ceil(2).max(1));
            let first = rng.below(pages - run + 1);
            for p in first..first + run {
                let data = if rng.below(4) == 0 {
                    OpData::Fill {
                        len: ps,
                        byte: rng.next_u64() as u8,
                    }
                } else {
                    OpData::Bytes(random_bytes(rng, ps as usize))
                };
                ops.push(Op { offset: p * ps, data });
            }
        }
        PatternKind::Strided => {
            let stride = 2 + rng.below(15);
            let mut p = rng.below(stride.min(pages));
            while p < pages {
                let len = 1 + rng.below(64);
                let off = rng.below(ps - len + 1);
                ops.push(Op {
                    offset: p * ps + off,
                    data: OpData::Bytes(random_bytes(rng, len as usize)),
                });
                p += stride;
            }
        }
        PatternKind::SingleBytes => {
            let count = 1 + rng.below(256);
            for _ in 0..count {
                let at = rng.below(size);
                // A different byte than the one there (the shadow already
                // holds this round's earlier ops; a later op on the same
                // byte is applied after it, so it differs from its
                // predecessor too).
                let old = shadow_byte(shadow, &ops, at);
                let byte = old ^ (1 + rng.below(255) as u8);
                ops.push(Op {
                    offset: at,
                    data: OpData::Bytes(vec![byte]),
                });
            }
        }
        PatternKind::LargeCopy => {
            let len = 1 + rng.below(size);
            let offset = rng.below(size - len + 1);
            ops.push(Op {
                offset,
                data: OpData::Bytes(random_bytes(rng, len as usize)),
            });
        }
        PatternKind::Mixed => {
            let parts = 2 + rng.below(2);
            for _ in 0..parts {
                let sub = match rng.below(5) {
                    0 => PatternKind::Sparse,
                    1 => PatternKind::Dense,
                    2 => PatternKind::Strided,
                    3 => PatternKind::SingleBytes,
                    _ => PatternKind::LargeCopy,
                };
                let mut overlay = shadow.to_vec();
                for op in &ops {
                    op.apply(&mut overlay);
                }
                ops.extend(generate(rng, sub, size, ps, &overlay));
            }
        }
    }
    ops
}

/// The byte at `at` after applying `ops` to `shadow`.
fn shadow_byte(shadow: &[u8], ops: &[Op], at: u64) -> u8 {
    let mut byte = shadow.get(at as usize).copied().unwrap_or(0);
    for op in ops {
        if let Some(piece) = op.slice(at, at + 1) {
            byte = match piece.data {
                OpData::Bytes(b) => b[0],
                OpData::Fill { byte, .. } => byte,
            };
        }
    }
    byte
}

/// Splits `ops` among `threads` writers: every page has one owner, chosen
/// from `seed`; each op is cut into runs of consecutive pages with the same
/// owner. Returns, per thread, its pieces in op order.
pub fn split_among_threads(ops: &[Op], threads: usize, ps: u64, seed: u64) -> Vec<Vec<Op>> {
    let threads = threads.max(1);
    let owner = |page: u64| -> usize {
        if threads == 1 {
            0
        } else {
            (SplitMix64::new(seed ^ page.wrapping_mul(0x9e37_79b9_7f4a_7c15)).next_u64() % threads as u64) as usize
        }
    };
    let mut out = vec![Vec::new(); threads];
    for op in ops {
        let end = op.offset + op.len();
        let mut start = op.offset;
        while start < end {
            let who = owner(start / ps);
            let mut stop = (start / ps + 1) * ps;
            while stop < end && owner(stop / ps) == who {
                stop += ps;
            }
            let stop = stop.min(end);
            if let Some(piece) = op.slice(start, stop) {
                out[who].push(piece);
            }
            start = stop;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_pieces_reassemble_to_the_same_content() {
        let ps = 4096;
        let size = 64 * ps;
        let mut rng = SplitMix64::new(7);
        for round in 0..200 {
            let kind = pick_kind(&mut rng);
            let base = vec![0u8; size as usize];
            let ops = generate(&mut rng, kind, size, ps, &base);
            let mut want = base.clone();
            for op in &ops {
                assert!(!op.is_empty());
                assert!(op.offset + op.len() <= size);
                op.apply(&mut want);
            }
            let threads = 1 + round % 5;
            let parts = split_among_threads(&ops, threads, ps, round as u64);
            // Any interleaving of the threads gives the same bytes, since a
            // page's pieces all belong to one thread: apply thread by thread.
            let mut got = base.clone();
            for part in parts.iter().rev() {
                for piece in part {
                    piece.apply(&mut got);
                }
            }
            assert_eq!(want, got, "round {round} kind {kind:?} threads {threads}");
        }
    }

    #[test]
    fn single_bytes_change_every_byte_they_write() {
        let ps = 4096;
        let size = 4 * ps;
        let mut rng = SplitMix64::new(3);
        let shadow = vec![0x5au8; size as usize];
        let ops = generate(&mut rng, PatternKind::SingleBytes, size, ps, &shadow);
        let mut cur = shadow.clone();
        for op in &ops {
            let before = cur[op.offset as usize];
            op.apply(&mut cur);
            assert_ne!(before, cur[op.offset as usize]);
        }
    }
}
