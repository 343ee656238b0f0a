//! The symbolic names iproute2 prints instead of numbers: routing tables
//! (`/etc/iproute2/rt_tables`), DS field values
//! (`/etc/iproute2/rt_dsfield`) and interface groups (`/etc/iproute2/group`). IP protocols
//! (`/etc/protocols`) are core's table, `symroute_core::model::IpProto`.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

/// The main table (routes printed without `table`).
pub const TABLE_MAIN: u32 = 254;
/// The local table (`local`, `broadcast`, `anycast` routes the kernel makes for addresses).
pub const TABLE_LOCAL: u32 = 255;
/// The default table (`lookup default`, priority 32767).
pub const TABLE_DEFAULT: u32 = 253;

/// Table names beyond the kernel's own (`main`, `local`, `default`, `unspec`), as iproute2
/// reads them from `rt_tables` files (see [`TableNames::parse`]). `ip rule` and `ip route`
/// print a table by name when such a file names it, so their output is read back with
/// the same names; a snapshot carries them in its `rt_tables` file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TableNames {
    /// Name → the tables the files give it (more than one: `ip` prints all of them with
    /// that name, so the name alone does not say which).
    ids: BTreeMap<String, BTreeSet<u32>>,
    /// Table → the name `ip` prints for it (the last one the files give).
    printed: BTreeMap<u32, String>,
}

impl TableNames {
    /// At most this many names are kept (a real file has a handful; the bound keeps a
    /// hostile one from growing memory without end).
    pub const MAX_NAMES: usize = 65_536;
    /// iproute2 reads a line into 512 bytes, so no longer name ever reaches `ip`'s output.
    pub const MAX_NAME_LEN: usize = 511;

    /// Reads `rt_tables` syntax, as iproute2 does: `ID NAME` per line (ID decimal or
    /// `0x` hex, anything after NAME ignored), lines starting with `#` are comments. Lines
    /// iproute2 would call corrupted, negative IDs and over-long names are skipped.
    /// Several files read in iproute2's order can simply be concatenated: a later name
    /// for the same table is the one `ip` prints.
    pub fn parse(text: &str) -> Self {
        let mut names = TableNames::default();
        for line in text.lines() {
            if names.printed.len() >= Self::MAX_NAMES {
                break;
            }
            let line = line.trim_start_matches([' ', '\t']);
            if line.starts_with('#') {
                continue;
            }
            let mut words = line.split_ascii_whitespace();
            let (Some(id), Some(name)) = (words.next(), words.next()) else {
                continue;
            };
            // `0x%x` or `%d` into an int: what does not fit a non-negative int is dropped.
            let id = match id.strip_prefix("0x") {
                Some(hex) => u32::from_str_radix(hex, 16).ok(),
                None => id.parse::<i64>().ok().and_then(|n| u32::try_from(n).ok()),
            };
            let Some(id) = id.filter(|&n| n <= i32::MAX as u32) else {
                continue;
            };
            if name.len() > Self::MAX_NAME_LEN {
                continue;
            }
            names.ids.entry(name.to_string()).or_default().insert(id);
            names.printed.insert(id, name.to_string());
        }
        // A name `ip` prints stands for the tables it prints it for; a table renamed by a
        // later line no longer answers to its old name in `ip`'s output (but a name never
        // printed still means what the files say, for output typed by hand).
        let mut shown: BTreeMap<&str, BTreeSet<u32>> = BTreeMap::new();
        for (id, name) in &names.printed {
            shown.entry(name).or_default().insert(*id);
        }
        for (name, ids) in names.ids.iter_mut() {
            if let Some(s) = shown.get(name.as_str()) {
                *ids = s.clone();
            }
        }
        names
    }

    /// A table by name or number; `None` for unknown names and for a name the files give
    /// to several tables (see [`Self::ambiguous`]).
    pub fn id(&self, word: &str) -> Option<u32> {
        match word {
            "main" => Some(TABLE_MAIN),
            "local" => Some(TABLE_LOCAL),
            "default" => Some(TABLE_DEFAULT),
            "unspec" => Some(0),
            _ => parse_u32(word).or_else(|| match self.ids.get(word) {
                Some(ids) if ids.len() == 1 => ids.first().copied(),
                _ => None,
            }),
        }
    }

    /// The tables a name given to more than one of them stands for.
    pub fn ambiguous(&self, word: &str) -> Option<&BTreeSet<u32>> {
        self.ids.get(word).filter(|ids| ids.len() > 1)
    }

    /// The name `ip` prints for a table the files name (not the kernel's own names).
    pub fn name(&self, id: u32) -> Option<&str> {
        self.printed.get(&id).map(String::as_str)
    }

    pub fn is_empty(&self) -> bool {
        self.printed.is_empty()
    }
}

/// Decimal or `0x` hex, as iproute2's `get_u32(…, 0)` reads it.
pub fn parse_u32(s: &str) -> Option<u32> {
    if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        u32::from_str_radix(hex, 16).ok()
    } else if s.len() > 1 && s.starts_with('0') && s.bytes().all(|b| b.is_ascii_digit()) {
        u32::from_str_radix(&s[1..], 8).ok()
    } else {
        s.parse().ok()
    }
}

/// `/etc/iproute2/rt_dsfield` on Debian.
const DSFIELD: &[(&str, u8)] = &[
    ("default", 0x00),
    ("af11", 0x28),
    ("af12", 0x30),
    ("af13", 0x38),
    ("af21", 0x48),
    ("af22", 0x50),
    ("af23", 0x58),
    ("af31", 0x68),
    ("af32", 0x70),
    ("af33", 0x78),
    ("af41", 0x88),
    ("af42", 0x90),
    ("af43", 0x98),
    ("cs1", 0x20),
    ("cs2", 0x40),
    ("cs3", 0x60),
    ("cs4", 0x80),
    ("cs5", 0xa0),
    ("cs6", 0xc0),
    ("cs7", 0xe0),
    ("ef", 0xb8),
];

/// A `tos`/`dsfield` word: hex/decimal or a DSCP class name.
pub fn dsfield(word: &str) -> Option<u8> {
    let lower = word.to_ascii_lowercase();
    if let Some(n) = parse_u32(&lower) {
        return u8::try_from(n).ok();
    }
    DSFIELD
        .iter()
        .find(|(name, _)| *name == lower)
        .map(|(_, n)| *n)
}

/// An interface group: `default` (0) or a number.
pub fn group(word: &str) -> Option<u32> {
    match word {
        "default" => Some(0),
        _ => parse_u32(word),
    }
}
