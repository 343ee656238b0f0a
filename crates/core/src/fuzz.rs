//! Deterministic input mutation for the "no input may panic" tests of every parser:
//! a tiny xorshift generator and a mutator that cuts ranges and splices in pieces.
//! Written here rather than taken from proptest because it is 30 lines, needs no
//! dependency, and a failure reproduces from the printed seed alone. The generator is
//! the one every randomized test uses (random configs, packets, routing setups, kill
//! moments).

/// xorshift64: fast, reproducible, not for anything secret.
pub struct Rng(u64);

impl Rng {
    /// Any seed works (0 is nudged, xorshift would stay at 0).
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    /// For one of many consecutive seeds (`seed + i`): the seed is mixed first
    /// (splitmix64), so nearby seeds give unrelated streams.
    pub fn mixed(seed: u64) -> Rng {
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Rng::new(z ^ (z >> 31))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    /// A number in `lo..=hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }

    /// True with probability `pct` percent.
    pub fn pct(&mut self, pct: usize) -> bool {
        self.below(100) < pct
    }

    /// One of `items` (not empty).
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    /// A number in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// `seed` with 1..=`max_edits` random edits: a cut of up to `max_cut` characters, or one
/// of `pieces` spliced in. Works on characters, so the result is valid UTF-8.
pub fn mutate(
    rng: &mut Rng,
    seed: &str,
    pieces: &[&str],
    max_edits: usize,
    max_cut: usize,
) -> String {
    let mut text: Vec<char> = seed.chars().collect();
    for _ in 0..1 + rng.below(max_edits) {
        let pos = rng.below(text.len() + 1).min(text.len());
        if rng.below(3) == 0 && !text.is_empty() {
            let end = (pos + 1 + rng.below(max_cut)).min(text.len());
            text.drain(pos..end.max(pos));
        } else if !pieces.is_empty() {
            let piece = pieces[rng.below(pieces.len())];
            text.splice(pos..pos, piece.chars());
        }
    }
    text.into_iter().collect()
}
