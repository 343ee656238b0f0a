//! Desired (a `Plan`) against actual (an `Observed`): the `Changes` that would make them
//! equal, and the `Conflict`s that forbid touching anything. Pure functions over values.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::Serialize;

use super::{HostView, Plan, RouteSpec, RuleSpec};
use crate::inert::inert;
use crate::model::{Family, MarkMask, Priority, TableId};

/// What the kernel holds, as far as symroute cares.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Observed {
    pub host: HostView,
    /// Rules and routes carrying symroute's protocol tag.
    pub rules: BTreeSet<RuleSpec>,
    pub routes: BTreeSet<RouteSpec>,
    /// `None`: no `inet symroute` table. `Some(fp)`: the fingerprint in its comment
    /// (empty when the comment is missing or foreign).
    pub nft_fingerprint: Option<String>,
    /// Rules without our tag: (family, priority, how `ip rule` shows it).
    pub foreign_rules: Vec<ForeignRule>,
    /// Tables holding at least one route without our tag.
    pub foreign_route_tables: BTreeMap<TableId, String>,
    /// Firewall rules and ip rules of others that read or write mark bits (found by
    /// `symroute_explain::marks`, the analysis doctor uses too).
    pub mark_users: Vec<MarkUser>,
    /// Why the foreign firewall could not be read, if it could not: then who uses which
    /// mark bits is unknown, and that is a conflict of its own.
    pub mark_users_unread: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ForeignRule {
    pub family: Family,
    pub priority: Priority,
    pub fwmark: Option<(u32, u32)>,
    pub text: String,
}

/// A foreign object that sets mark bits, or tests them under a partial mask.
#[derive(Debug, Clone, Serialize)]
pub struct MarkUser {
    /// Where it lives: `ip rule`, `nft table ip mangle`, `iptables -t mangle`.
    pub place: String,
    pub text: String,
    /// Mark bits it sets (value bits) or tests (mask bits).
    pub bits: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SysctlChange {
    pub key: String,
    pub from: String,
    pub to: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Changes {
    /// The `nft -f` input replacing our table, if it differs.
    pub nft: Option<String>,
    pub rules_del: Vec<RuleSpec>,
    pub rules_add: Vec<RuleSpec>,
    pub routes_del: Vec<RouteSpec>,
    pub routes_add: Vec<RouteSpec>,
    /// Sysctls to set now (their previous values get recorded first).
    pub sysctls: Vec<SysctlChange>,
    /// Sysctls symroute changed earlier and no longer needs: back to the recorded value.
    pub sysctls_restore: Vec<SysctlChange>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.nft.is_none()
            && self.rules_del.is_empty()
            && self.rules_add.is_empty()
            && self.routes_del.is_empty()
            && self.routes_add.is_empty()
            && self.sysctls.is_empty()
            && self.sysctls_restore.is_empty()
    }

    /// Equivalent shell commands, for review (`symroute plan --script`). Every word that
    /// is not a fixed keyword is shell-quoted: interface names come from the host (a
    /// route tagged with our protocol on a link named `x;true>pwned`), and a script
    /// piped to `sh` must run exactly the commands shown.
    pub fn script(&self) -> String {
        let mut s = String::new();
        for c in self.sysctls.iter().chain(&self.sysctls_restore) {
            let set = format!("{}={}", c.key, c.to);
            s += &format!("sysctl -w {}    # was {}\n", sh_word(&set), inert(&c.from));
        }
        if let Some(nft) = &self.nft {
            // A quoted here-document is passed on verbatim; only a line equal to its
            // delimiter would end it early.
            let mut end = "EOF".to_string();
            while nft.lines().any(|l| l == end) {
                end.push('_');
            }
            s += &format!("nft -f - <<'{end}'\n{nft}");
            if !nft.ends_with('\n') {
                s.push('\n');
            }
            s += &format!("{end}\n");
        }
        let ip = |s: &mut String, family: Family, what: &str, words: Vec<String>| {
            let words: Vec<String> = words.iter().map(|w| sh_word(w)).collect();
            *s += &format!("ip {} {what} {}\n", family.ip_flag(), words.join(" "));
        };
        for r in &self.routes_del {
            ip(&mut s, r.family, "route del", r.ip_words());
        }
        for r in &self.rules_del {
            ip(&mut s, r.family, "rule del", r.ip_words());
        }
        for r in &self.routes_add {
            ip(&mut s, r.family, "route add", r.ip_words());
        }
        for r in &self.rules_add {
            ip(&mut s, r.family, "rule add", r.ip_words());
        }
        s
    }

    /// One line per change, for people (`symroute plan`, `apply`).
    pub fn summary(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(script) = &self.nft {
            out.push(if script.contains("table inet symroute {") {
                "~ nftables table inet symroute (replaced atomically)".to_string()
            } else {
                "- nftables table inet symroute".to_string()
            });
        }
        out.extend(self.routes_del.iter().map(|r| format!("- {r}")));
        out.extend(self.rules_del.iter().map(|r| format!("- {r}")));
        out.extend(self.routes_add.iter().map(|r| format!("+ {r}")));
        out.extend(self.rules_add.iter().map(|r| format!("+ {r}")));
        for c in &self.sysctls {
            out.push(format!("~ sysctl {} {} -> {}", c.key, c.from, c.to));
        }
        for c in &self.sysctls_restore {
            out.push(format!(
                "~ sysctl {} {} -> {} (restored)",
                c.key, c.from, c.to
            ));
        }
        out
    }
}

/// The changes that turn `observed` into `plan`. `recorded` holds the values sysctls had
/// before symroute changed them.
pub fn diff(plan: &Plan, observed: &Observed, recorded: &BTreeMap<String, String>) -> Changes {
    let mut c = Changes {
        nft: (observed.nft_fingerprint.as_deref() != Some(plan.nft_fingerprint.as_str()))
            .then(|| super::nft::replace_script(&plan.nft)),
        rules_del: observed.rules.difference(&plan.rules).cloned().collect(),
        rules_add: plan.rules.difference(&observed.rules).cloned().collect(),
        routes_del: observed.routes.difference(&plan.routes).cloned().collect(),
        routes_add: plan.routes.difference(&observed.routes).cloned().collect(),
        ..Changes::default()
    };
    for (key, want) in &plan.sysctls {
        let Some(current) = observed.host.sysctl(key) else {
            continue;
        };
        if let Some(to) = want.fix(current, &observed.host) {
            c.sysctls.push(SysctlChange {
                key: key.clone(),
                from: current.to_string(),
                to,
            });
        }
    }
    for (key, previous) in recorded {
        if plan.sysctls.contains_key(key) {
            continue;
        }
        match observed.host.sysctl(key) {
            Some(current) if current != previous => c.sysctls_restore.push(SysctlChange {
                key: key.clone(),
                from: current.to_string(),
                to: previous.clone(),
            }),
            _ => {}
        }
    }
    c
}

/// One shell word, quoted when it holds anything but safe characters (shlex's POSIX
/// quoting). A NUL cannot be in a shell word at all; the kernel never gives one, and the
/// word is then shown with it spelled out rather than dropped silently.
pub fn sh_word(word: &str) -> String {
    shlex::try_quote(word)
        .map(|w| w.into_owned())
        .unwrap_or_else(|_| sh_word(&word.replace('\0', "\\0")))
}

/// A reason apply must not touch the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Conflict(pub String);

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Foreign objects in the places the plan wants, or foreign users of our mark bits.
pub fn conflicts(plan: &Plan, observed: &Observed) -> Vec<Conflict> {
    let mut out = Vec::new();
    for r in &observed.foreign_rules {
        if plan.priorities.contains(&r.priority) {
            out.push(Conflict(format!(
                "priority {} is taken by a rule symroute does not own: `{}`; set [settings] first_priority to a free range",
                r.priority,
                inert(&r.text)
            )));
        }
    }
    for (table, example) in &observed.foreign_route_tables {
        if plan.tables.contains(table) {
            out.push(Conflict(format!(
                "routing table {table} holds routes symroute does not own (e.g. `{}`); set [settings] first_table to a free range",
                inert(example)
            )));
        }
    }
    if let Some(why) = &observed.mark_users_unread {
        out.push(Conflict(format!(
            "cannot tell which mark bits others use, the firewall could not be read ({}); nothing is changed until it can",
            inert(why)
        )));
    }
    let mask: MarkMask = plan.mark_mask;
    for u in &observed.mark_users {
        if u.bits & mask.bits() != 0 {
            out.push(Conflict(format!(
                "{} uses mark bits {:#010x} inside symroute's mark_mask {mask}: `{}`; set [settings] mark_mask to bits nobody else uses",
                u.place,
                u.bits & mask.bits(),
                inert(&u.text)
            )));
        }
    }
    out
}

#[cfg(test)]
mod conflict_tests {
    use super::*;
    use crate::config::parse_str;

    fn plan() -> Plan {
        let model = parse_str(
            "[[gateway]]\nname = \"isp1\"\ninterface = \"up1\"\nvia = \"203.0.113.1\"\n",
            "t.toml",
        )
        .expect("config");
        super::super::build(&model, &HostView::default())
    }

    #[test]
    fn mark_users_inside_the_mask_and_an_unread_firewall_conflict() {
        let p = plan();
        let user = |bits| MarkUser {
            place: "nft table ip t chain c handle 2".into(),
            text: "meta mark set 0x1".into(),
            bits,
        };
        let mut observed = Observed {
            mark_users: vec![user(0x4000), user(0x0100_0000)],
            ..Observed::default()
        };
        let c = conflicts(&p, &observed);
        assert_eq!(c.len(), 1, "{c:?}");
        assert!(c[0].to_string().contains("0x01000000"), "{}", c[0]);
        observed.mark_users.clear();
        assert!(conflicts(&p, &observed).is_empty());
        observed.mark_users_unread =
            Some("iptables-save, line 3: unterminated quoted string".into());
        let c = conflicts(&p, &observed);
        assert_eq!(c.len(), 1, "{c:?}");
        assert!(c[0].to_string().contains("line 3"), "{}", c[0]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::RouteKind;

    /// The script run by a real `sh`, with `ip`, `nft` and `sysctl` replaced by functions
    /// that print their arguments one per line: what each command would have received.
    fn run_script(script: &str) -> (String, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("symroute-script-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let stubs = "ip() { printf '<%s>' \"$@\"; echo; }\nsysctl() { ip \"$@\"; }\nnft() { ip \"$@\"; cat; }\n";
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("{stubs}{script}"))
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        (String::from_utf8(out.stdout).unwrap(), dir)
    }

    #[test]
    fn script_quotes_host_names() {
        let hostile = "x;true>pwned";
        let route = RouteSpec {
            table: TableId::new(42000).unwrap(),
            family: Family::Inet4,
            kind: RouteKind::Unicast,
            dst: "10.9.9.0/24".parse().unwrap(),
            via: None,
            dev: hostile.into(),
        };
        let changes = Changes {
            nft: Some("table inet symroute {\n}\nEOF\nEOF_\n".into()),
            routes_del: vec![route],
            sysctls: vec![SysctlChange {
                key: "net.ipv4.conf.$(true>pwned).rp_filter".into(),
                from: "1\ntrue>pwned".into(),
                to: "2".into(),
            }],
            ..Changes::default()
        };
        let (out, dir) = run_script(&changes.script());
        let pwned = dir.join("pwned").exists();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            !pwned,
            "the script ran a host name as a command:\n{}",
            changes.script()
        );
        assert_eq!(
            out,
            "<-w><net.ipv4.conf.$(true>pwned).rp_filter=2>\n\
             <-f><->\ntable inet symroute {\n}\nEOF\nEOF_\n\
             <-4><route><del><10.9.9.0/24><dev><x;true>pwned><table><42000><proto><157>\n",
            "{}",
            changes.script()
        );
    }
}
