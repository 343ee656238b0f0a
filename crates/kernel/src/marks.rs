//! Finding foreign users of mark bits: nft rules that set mark bits or test them under a
//! partial mask, the same in `iptables-save` output (iptables-nft's rules are opaque `xt`
//! expressions in nft's JSON), and `ip rule fwmark V/M` with a partial mask.
//!
//! An exact test of all 32 bits (wg-quick's `fwmark 0xca6c`) only recognises its own
//! packets and is not a conflict; setting or partially testing our bits is.

use serde_json::Value;

use symroute_core::plan::diff::{ForeignRule, MarkUser};

/// `iptables-save -t mangle` and `ip6tables-save -t mangle` outputs (absent tools or
/// tables are simply not there).
/// The mangle tables' save outputs (`-t mangle`), only where there is one to read: an
/// iptables-nft table (nft table `ip mangle` / `ip6 mangle`, in `nft_tables`) is read by
/// `iptables-nft-save`, an iptables-legacy one (the kernel lists it in
/// `/proc/net/ip_tables_names`) by `iptables-legacy-save` (plain `iptables-save` where
/// the variant is not installed: it is whichever Debian's alternatives chose). Most hosts
/// have neither, and then no process runs: they were most of what a no-op apply spent.
pub fn iptables_texts(nft_tables: &[(String, String)]) -> Vec<(&'static str, String)> {
    let installed = |tool: &str| {
        ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
            .iter()
            .any(|d| std::path::Path::new(d).join(tool).exists())
    };
    let mut tools: Vec<&'static str> = Vec::new();
    for (family, legacy_names, nft_tool, legacy_tool, plain) in [
        (
            "ip",
            "/proc/net/ip_tables_names",
            "iptables-nft-save",
            "iptables-legacy-save",
            "iptables-save",
        ),
        (
            "ip6",
            "/proc/net/ip6_tables_names",
            "ip6tables-nft-save",
            "ip6tables-legacy-save",
            "ip6tables-save",
        ),
    ] {
        let pick = |tool: &'static str| if installed(tool) { tool } else { plain };
        if nft_tables.iter().any(|(f, t)| f == family && t == "mangle") {
            tools.push(pick(nft_tool));
        }
        let legacy = std::fs::read_to_string(legacy_names)
            .is_ok_and(|t| t.lines().any(|l| l.trim() == "mangle"));
        if legacy && !tools.contains(&pick(legacy_tool)) {
            tools.push(pick(legacy_tool));
        }
    }
    tools
        .into_iter()
        .filter_map(|tool| {
            super::cmd::run(tool, &["-t", "mangle"], None)
                .ok()
                .map(|t| (tool, t))
        })
        .collect()
}

/// (family, name) of every table in an `nft -j` listing.
pub fn nft_tables(ruleset: &Value) -> Vec<(String, String)> {
    ruleset["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| {
            let t = i.get("table")?;
            Some((
                t["family"].as_str()?.to_string(),
                t["name"].as_str()?.to_string(),
            ))
        })
        .collect()
}

pub fn foreign_mark_users(
    ruleset: &Value,
    rules: &[ForeignRule],
    iptables: &[(&'static str, String)],
) -> Vec<MarkUser> {
    let mut out = Vec::new();
    for r in rules {
        if let Some((_, mask)) = r.fwmark {
            if mask != u32::MAX {
                out.push(MarkUser {
                    place: format!("ip {} rule", r.family.ip_flag()),
                    text: r.text.clone(),
                    bits: mask,
                });
            }
        }
    }
    out.extend(nft_users(ruleset));
    for (tool, text) in iptables {
        out.extend(iptables_users(tool, text));
    }
    out
}

fn is_mark(v: &Value) -> Option<&'static str> {
    if v["meta"]["key"] == "mark" {
        Some("meta")
    } else if v["ct"]["key"] == "mark" {
        Some("ct")
    } else {
        None
    }
}

fn number(v: &Value) -> Option<u32> {
    v.as_u64().and_then(|n| u32::try_from(n).ok())
}

/// What the rule is known to hold in each mark register at this point: an earlier exact
/// test (`meta mark 0xca6c`) pins the value.
#[derive(Default, Clone, Copy)]
struct Known {
    meta: Option<u32>,
    ct: Option<u32>,
}

/// Bits an expression assigned to `key mark` can turn on. Unknown shapes: all bits.
///
/// Copies between the registers are judged by direction. Copying the conntrack mark into
/// the packet mark (`meta mark set ct mark`, wg-quick's premangle) only carries values
/// someone stored, ours included, and sets none of its own: not a conflict. Copying the
/// packet mark into the conntrack mark overwrites stored decisions, unless an exact test
/// before it pins the value (wg-quick's `meta mark 0xca6c ct mark set meta mark`).
fn bits_set(v: &Value, key: &str, known: Known) -> u32 {
    if let Some(n) = number(v) {
        return n;
    }
    if let Some(k) = is_mark(v) {
        return match (key, k) {
            (a, b) if a == b => 0,
            ("meta", _) => 0,
            _ => known.meta.unwrap_or(u32::MAX),
        };
    }
    if let Some([a, b]) = v.get("|").and_then(Value::as_array).map(Vec::as_slice) {
        return bits_set(a, key, known) | bits_set(b, key, known);
    }
    if let Some([a, m]) = v.get("&").and_then(Value::as_array).map(Vec::as_slice) {
        return bits_set(a, key, known) & number(m).unwrap_or(u32::MAX);
    }
    u32::MAX
}

fn nft_users(ruleset: &Value) -> Vec<MarkUser> {
    let mut out = Vec::new();
    for item in ruleset["nftables"].as_array().into_iter().flatten() {
        let Some(rule) = item.get("rule") else {
            continue;
        };
        if rule["family"] == "inet" && rule["table"] == symroute_core::plan::nft::TABLE {
            continue;
        }
        let place = format!(
            "nft table {} {} chain {}",
            rule["family"].as_str().unwrap_or("?"),
            rule["table"].as_str().unwrap_or("?"),
            rule["chain"].as_str().unwrap_or("?")
        );
        let text = format!("handle {}", rule["handle"]);
        let mut known = Known::default();
        for e in rule["expr"].as_array().into_iter().flatten() {
            if let Some(m) = e.get("match") {
                if m["op"] == "==" {
                    if let (Some(k), Some(v)) = (is_mark(&m["left"]), number(&m["right"])) {
                        match k {
                            "meta" => known.meta = Some(v),
                            _ => known.ct = Some(v),
                        }
                    }
                }
            }
            let bits = if let Some(m) = e.get("mangle") {
                is_mark(&m["key"]).map(|k| bits_set(&m["value"], k, known))
            } else if let Some(m) = e.get("match") {
                match m["left"]
                    .get("&")
                    .and_then(Value::as_array)
                    .map(Vec::as_slice)
                {
                    Some([l, mask]) if is_mark(l).is_some() => {
                        number(mask).filter(|&b| b != u32::MAX)
                    }
                    _ => None,
                }
            } else {
                None
            };
            if let Some(bits) = bits.filter(|&b| b != 0) {
                out.push(MarkUser {
                    place: place.clone(),
                    text: format!("{text}: {}", compact(e)),
                    bits,
                });
            }
        }
    }
    out
}

fn compact(e: &Value) -> String {
    let s = e.to_string();
    if s.len() > 160 {
        format!(
            "{}…",
            &s[..s.char_indices().nth(160).map_or(s.len(), |(i, _)| i)]
        )
    } else {
        s
    }
}

fn parse_vm(s: &str) -> Option<(u32, u32)> {
    let (v, m) = s.split_once('/').unwrap_or((s, "0xffffffff"));
    let p = |x: &str| match x.strip_prefix("0x") {
        Some(h) => u32::from_str_radix(h, 16).ok(),
        None => x.parse().ok(),
    };
    Some((p(v)?, p(m)?))
}

/// `iptables-save` lines: MARK/CONNMARK targets that set bits, `-m mark/connmark --mark V/M`
/// tests under a partial mask, and CONNMARK save/restore (which copy every bit by default).
pub fn iptables_users(tool: &str, text: &str) -> Vec<MarkUser> {
    let mut out = Vec::new();
    let mut table = "mangle";
    for line in text.lines() {
        if let Some(t) = line.strip_prefix('*') {
            table = if t == "mangle" { "mangle" } else { "other" };
            continue;
        }
        if !line.starts_with("-A ") {
            continue;
        }
        // Words as iptables-save quotes them (`--comment "a b"`, with `\"` inside): a
        // comment saying "--set-xmark 0xff" is one word, not an option. A line that does
        // not split is not a rule we can read.
        let Some(words) = shlex::split(line) else {
            continue;
        };
        let words: Vec<&str> = words.iter().map(String::as_str).collect();
        let mut bits = 0u32;
        // `-m mark --mark V` (all 32 bits) pins the packet mark for the rest of the line.
        let exact_mark = words
            .windows(4)
            .find(|w| w[0] == "-m" && w[1] == "mark" && w[2] == "--mark")
            .and_then(|w| parse_vm(w[3]))
            .filter(|(_, m)| *m == u32::MAX)
            .map(|(v, _)| v);
        for (i, w) in words.iter().enumerate() {
            let next = words.get(i + 1).copied().unwrap_or("");
            match *w {
                "--set-xmark" | "--set-mark" | "--or-mark" => {
                    bits |= parse_vm(next).map_or(u32::MAX, |(v, _)| v);
                }
                "--mark" if i > 0 => {
                    if let Some((_, m)) = parse_vm(next) {
                        if m != u32::MAX {
                            bits |= m;
                        }
                    }
                }
                // Restoring copies stored values into the packet mark: sets nothing of
                // its own (see `bits_set`).
                "--restore-mark" => {}
                "--save-mark" if exact_mark.is_some() => bits |= exact_mark.unwrap_or(0),
                "--save-mark" => {
                    // Saving copies the packet mark over the stored one: every bit the
                    // masks let through.
                    let mask_after = |key: &str| {
                        words
                            .iter()
                            .position(|x| *x == key)
                            .and_then(|j| words.get(j + 1))
                            .and_then(|m| parse_vm(m))
                            .map_or(u32::MAX, |(v, _)| v)
                    };
                    bits |= mask_after("--nfmask") & mask_after("--ctmask") & mask_after("--mask");
                }
                _ => {}
            }
        }
        if bits != 0 {
            out.push(MarkUser {
                place: format!("{tool} -t {table}"),
                text: line.to_string(),
                bits,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iptables_lines_are_classified() {
        let text = "*mangle\n-A PREROUTING -i eth2 -p tcp -m tcp --dport 25 -j MARK --set-xmark 0x0/0xffffffff\n-A PREROUTING -m mark --mark 0x1/0xff -j RETURN\n-A PREROUTING -j MARK --set-xmark 0x1000000/0xffffffff\n-A OUTPUT -j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff\n-A PREROUTING -m mark --mark 0xca6c -j RETURN\n-A POSTROUTING -j CONNMARK --save-mark --nfmask 0xffffffff --ctmask 0xffffffff\n-A POSTROUTING -m mark --mark 0xca6c -j CONNMARK --save-mark --nfmask 0xffffffff --ctmask 0xffffffff\n-A PREROUTING -m comment --comment \"not --set-xmark 0xff000000 --mark 0/0xff\" -j ACCEPT\nCOMMIT\n";
        let users = iptables_users("iptables-save", text);
        let bits: Vec<u32> = users.iter().map(|u| u.bits).collect();
        // restore: carries stored values (none of its own); unguarded save: all bits;
        // save guarded by an exact mark: just that value.
        assert_eq!(bits, vec![0xff, 0x0100_0000, u32::MAX, 0xca6c]);
    }

    #[test]
    fn nft_expressions_are_classified() {
        let rs: Value = serde_json::from_str(r#"{"nftables":[
          {"rule":{"family":"ip","table":"mangle","chain":"p","handle":2,"expr":[{"mangle":{"key":{"meta":{"key":"mark"}},"value":{"|":[{"meta":{"key":"mark"}},16384]}}}]}},
          {"rule":{"family":"ip","table":"mangle","chain":"p","handle":3,"expr":[{"match":{"op":"==","left":{"&":[{"meta":{"key":"mark"}},251658240]},"right":16777216}}]}},
          {"rule":{"family":"ip","table":"mangle","chain":"p","handle":4,"expr":[{"match":{"op":"==","left":{"meta":{"key":"mark"}},"right":51820}}]}},
          {"rule":{"family":"ip","table":"mangle","chain":"p","handle":5,"expr":[{"mangle":{"key":{"ct":{"key":"mark"}},"value":{"meta":{"key":"mark"}}}}]}},
          {"rule":{"family":"ip","table":"wg-quick-wg0","chain":"premangle","handle":7,"expr":[{"mangle":{"key":{"meta":{"key":"mark"}},"value":{"ct":{"key":"mark"}}}}]}},
          {"rule":{"family":"ip","table":"wg-quick-wg0","chain":"postmangle","handle":8,"expr":[{"match":{"op":"==","left":{"meta":{"key":"mark"}},"right":51820}},{"mangle":{"key":{"ct":{"key":"mark"}},"value":{"meta":{"key":"mark"}}}}]}},
          {"rule":{"family":"inet","table":"symroute","chain":"p","handle":6,"expr":[{"mangle":{"key":{"ct":{"key":"mark"}},"value":1}}]}}
        ]}"#).unwrap();
        let bits: Vec<u32> = nft_users(&rs).iter().map(|u| u.bits).collect();
        // wg-quick's premangle copy sets nothing; its guarded postmangle copy sets 0xca6c.
        assert_eq!(bits, vec![0x4000, 0x0f00_0000, u32::MAX, 51820]);
    }
}
