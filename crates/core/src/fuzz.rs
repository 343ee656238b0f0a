//! Deterministic input mutation for the "no input may panic" tests of every parser:
//! a tiny xorshift generator and a mutator that cuts ranges and splices in pieces.
//! Written here rather than taken from proptest because it is 30 lines, needs no
//! dependency, and a failure reproduces from the printed seed alone.

/// xorshift64: fast, reproducible, not for anything secret.
pub struct Rng(u64);

impl Rng {
    /// Any seed works (0 is nudged, xorshift would stay at 0).
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
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
