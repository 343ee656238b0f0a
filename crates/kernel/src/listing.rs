//! The foreign half of the ruleset listing, kept between the daemon's passes while
//! nothing but our own table changes.
//!
//! A full observe lists the whole ruleset with `nft -j -t list ruleset` for the foreign
//! tables (mark users, conflicts) and our table's fingerprint chain. When our table is
//! deleted, that `nft` child is the slowest part of the repair before the new table can
//! be written: its exit waits for the kernel to free the deleted table (an RCU grace
//! period, 5–30 ms here), and it parses a listing that says nothing new about the
//! other tables. The daemon's monitor reads every nftables notification, so it knows
//! whether a commit touched anything but table inet symroute: while none did, the
//! foreign tables are still as listed, and our table's part is read over nfnetlink
//! (`nft_rules::table_chains`, well under a millisecond) instead.
//!
//! Soundness rests on two facts the monitor records in an [`NftLedger`]: how many commits
//! touched a foreign object (or were lost with a socket overrun), and the generation of
//! the last commit it read. A kept listing is used for generation G only if the monitor
//! has read G's commit (so every commit up to G is counted) and the count is the one read
//! before the listing was taken (so none of them touched a foreign table since). A
//! commit the monitor has not read yet makes the next pass list again.

use std::cell::RefCell;
use std::sync::{Arc, Mutex};

use serde_json::Value;

/// What the daemon's monitor thread has read of the nftables commits.
#[derive(Debug, Default)]
pub struct NftLedger(Mutex<Ledger>);

#[derive(Debug, Default, Clone, Copy)]
struct Ledger {
    /// The generation of the last commit read (`None` after lost notifications, until
    /// the next commit).
    seen: Option<u32>,
    /// Commits that touched anything but table inet symroute, plus overruns.
    foreign: u64,
}

impl NftLedger {
    fn read(&self) -> Ledger {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A commit ended (its NFT_MSG_NEWGEN was read): its generation (`None` if
    /// unreadable), and whether any of its notifications was about another table.
    pub fn committed(&self, generation: Option<u32>, foreign: bool) {
        let mut l = self.0.lock().unwrap_or_else(|e| e.into_inner());
        l.seen = generation;
        if foreign || generation.is_none() {
            l.foreign += 1;
        }
    }

    /// Notifications were lost: anything may have changed.
    pub fn lost(&self) {
        let mut l = self.0.lock().unwrap_or_else(|e| e.into_inner());
        l.seen = None;
        l.foreign += 1;
    }
}

/// The last listing's foreign tables, with the ledger's count of foreign commits read
/// just before it was taken.
#[derive(Debug)]
pub struct ListingMemo {
    ledger: Arc<NftLedger>,
    kept: RefCell<Option<(Value, u64)>>,
}

/// Taken just before a listing: what it is kept with.
#[derive(Debug, Clone, Copy)]
pub struct Mark(u64);

impl ListingMemo {
    pub fn new(ledger: Arc<NftLedger>) -> ListingMemo {
        ListingMemo {
            ledger,
            kept: RefCell::new(None),
        }
    }

    /// Call right before starting a listing.
    pub fn mark(&self) -> Mark {
        Mark(self.ledger.read().foreign)
    }

    /// Keep `listing` (as `observe::nft_listing` returns it), taken after `mark`.
    pub fn keep(&self, listing: &Value, mark: Mark) {
        *self.kept.borrow_mut() = Some((super::observe::without_ours(listing), mark.0));
    }

    /// [`keep`](Self::keep) a listing that was read, where there is a memo (the daemon's).
    pub(crate) fn keep_if<E>(memo: Option<&Self>, mark: Option<Mark>, listed: &Result<Value, E>) {
        if let (Some(memo), Some(mark), Ok(listed)) = (memo, mark, listed) {
            memo.keep(listed, mark);
        }
    }

    /// The kept foreign tables, if they still hold at `generation` (the ruleset's, read
    /// now): the monitor has read that generation's commit and no commit it read since
    /// the listing touched anything but our table.
    pub fn foreign_at(&self, generation: u32) -> Option<Value> {
        let now = self.ledger.read();
        let kept = self.kept.borrow();
        let (listing, foreign) = kept.as_ref()?;
        (now.seen == Some(generation) && now.foreign == *foreign).then(|| listing.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listing() -> Value {
        serde_json::json!({"nftables": [
            {"table": {"family": "inet", "name": "symroute", "handle": 1}},
            {"chain": {"family": "inet", "table": "symroute", "name": "fingerprint_ab", "handle": 2}},
            {"table": {"family": "ip", "name": "filter", "handle": 3}},
            {"chain": {"family": "ip", "table": "filter", "name": "input", "handle": 1}},
        ]})
    }

    #[test]
    fn a_kept_listing_holds_only_while_nothing_foreign_was_committed() {
        let ledger = Arc::new(NftLedger::default());
        let memo = ListingMemo::new(ledger.clone());
        ledger.committed(Some(7), false);
        // Nothing kept yet.
        assert_eq!(memo.foreign_at(7), None);
        let mark = memo.mark();
        memo.keep(&listing(), mark);
        // Our own table is never part of what is kept.
        let kept = memo
            .foreign_at(7)
            .expect("kept at the generation it was read");
        assert_eq!(kept["nftables"].as_array().map(Vec::len), Some(2));
        assert!(!kept.to_string().contains("symroute"), "{kept}");
        // Commits on our table only: still good, at the generation the monitor read.
        ledger.committed(Some(8), false);
        assert!(memo.foreign_at(8).is_some());
        // A generation the monitor has not read (a commit it has not seen yet): list.
        assert_eq!(memo.foreign_at(9), None);
        // A foreign commit: never again, whatever the generation.
        ledger.committed(Some(9), true);
        assert_eq!(memo.foreign_at(9), None);
        // A fresh listing holds again.
        memo.keep(&listing(), memo.mark());
        assert!(memo.foreign_at(9).is_some());
        // Lost notifications: anything may have changed.
        ledger.lost();
        assert_eq!(memo.foreign_at(9), None);
        ledger.committed(Some(10), false);
        assert_eq!(memo.foreign_at(10), None);
        // A commit whose generation could not be read counts as foreign.
        memo.keep(&listing(), memo.mark());
        ledger.committed(None, false);
        assert_eq!(memo.foreign_at(10), None);
    }

    #[test]
    fn a_foreign_commit_read_while_listing_discards_that_listing() {
        // The mark is taken before the listing: a foreign commit the monitor counts
        // while the listing runs (it may or may not be in it) makes it unusable.
        let ledger = Arc::new(NftLedger::default());
        let memo = ListingMemo::new(ledger.clone());
        ledger.committed(Some(3), false);
        let mark = memo.mark();
        ledger.committed(Some(4), true);
        memo.keep(&listing(), mark);
        assert_eq!(memo.foreign_at(4), None);
    }
}
