//! `symroute status` with no config at the default path (and no daemon to name one):
//! instead of failing on the missing file, what symroute has applied in this namespace,
//! from the kernel (the `inet symroute` table and its policy counters, the rules and
//! routes tagged with symroute's protocol) and from symroute's own record (the sysctls it
//! changed and their values before). Enough to see, on a host where the config was
//! removed or never installed, whether anything is left and what `remove` would undo.

use std::collections::BTreeMap;
use std::io::Write;

use serde::Serialize;

use symroute::kernel;

#[derive(Debug, Serialize)]
pub struct Applied {
    /// Always null here: the config this status is without.
    pub config: Option<String>,
    /// Why there is no config, for people.
    pub note: String,
    /// Whether `table inet symroute` exists.
    pub applied: bool,
    /// The fingerprint in its comment (the config it was built from).
    pub fingerprint: Option<String>,
    /// Tagged `ip rule`s and routes, as `ip` shows them.
    pub rules: Vec<String>,
    pub routes: Vec<String>,
    /// The table's named counters (one per policy): packets and bytes classified.
    pub counters: BTreeMap<String, Counter>,
    /// sysctls symroute changed: the value before it did, and now.
    pub sysctls: BTreeMap<String, Sysctl>,
}

#[derive(Debug, Serialize)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Debug, Serialize)]
pub struct Sysctl {
    pub before: String,
    pub now: Option<String>,
}

/// What symroute has applied in the current namespace.
pub fn read(missing: &std::path::Path) -> anyhow::Result<Applied> {
    let observed = kernel::observe::observe()?;
    let counters = match observed.nft_fingerprint {
        Some(_) => kernel::status::policy_counters()?
            .into_iter()
            .map(|(name, (packets, bytes))| (name, Counter { packets, bytes }))
            .collect(),
        None => BTreeMap::new(),
    };
    let sysctls = kernel::state::load()?
        .sysctls
        .into_iter()
        .map(|(key, before)| {
            let path = format!("/proc/sys/{}", key.replace('.', "/"));
            let now = std::fs::read_to_string(path)
                .ok()
                .map(|v| v.trim().to_string());
            (key, Sysctl { before, now })
        })
        .collect();
    Ok(Applied {
        config: None,
        note: format!(
            "no config at {} (and no `symroute run` here): showing what symroute has applied in this namespace",
            missing.display()
        ),
        applied: observed.nft_fingerprint.is_some(),
        fingerprint: observed.nft_fingerprint.filter(|f| !f.is_empty()),
        rules: observed.rules.iter().map(|r| r.to_string()).collect(),
        routes: observed.routes.iter().map(|r| r.to_string()).collect(),
        counters,
        sysctls,
    })
}

pub fn print(a: &Applied, json: bool, out: &mut dyn Write) -> anyhow::Result<()> {
    if json {
        serde_json::to_writer_pretty(&mut *out, a)?;
        writeln!(out)?;
        return Ok(());
    }
    writeln!(out, "{}", a.note)?;
    let nothing = !a.applied && a.rules.is_empty() && a.routes.is_empty() && a.sysctls.is_empty();
    if nothing {
        writeln!(
            out,
            "not applied: nothing of symroute's is in this namespace"
        )?;
        return Ok(());
    }
    match (&a.applied, &a.fingerprint) {
        (true, Some(fp)) => writeln!(
            out,
            "applied: nftables table inet symroute (fingerprint {fp})"
        )?,
        (true, None) => writeln!(out, "applied: nftables table inet symroute")?,
        (false, _) => writeln!(out, "no nftables table inet symroute; leftovers below")?,
    }
    for (title, lines) in [("rules", &a.rules), ("routes", &a.routes)] {
        writeln!(out, "{title} (protocol {}):", symroute::plan::RT_PROTO)?;
        for l in lines.iter() {
            writeln!(out, "  {l}")?;
        }
    }
    if !a.counters.is_empty() {
        writeln!(out, "policy counters:")?;
        for (name, c) in &a.counters {
            writeln!(
                out,
                "  {name:<24} {} packet(s) {} byte(s) classified",
                c.packets, c.bytes
            )?;
        }
    }
    if !a.sysctls.is_empty() {
        writeln!(out, "sysctls changed (`symroute remove` puts them back):")?;
        for (k, s) in &a.sysctls {
            writeln!(
                out,
                "  {k} = {} (was {})",
                s.now.as_deref().unwrap_or("?"),
                s.before
            )?;
        }
    }
    Ok(())
}
