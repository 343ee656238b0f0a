//! `symroute remove`: delete all that carries our tag and restore recorded sysctls,
//! carrying on past errors; a pending `apply --confirm` is forgotten with it.

use std::collections::BTreeMap;

use super::apply::{execute, Faults};
use super::{confirm, noop, observe, rundir, state, KernelError};
use symroute_core::plan::diff::{Changes, SysctlChange};
use symroute_core::plan::nft;

/// Delete everything symroute owns and restore recorded sysctls. Returns what it did;
/// errors are collected, not fatal, so one stuck object doesn't strand the rest.
pub fn remove() -> Result<Changes, KernelError> {
    let lock = rundir::lock(rundir::WAIT_COMMAND)?;
    let observed = observe::observe()?;
    let recorded = state::load()?.sysctls;
    let changes = Changes {
        nft: observed.nft_fingerprint.is_some().then(nft::delete_script),
        rules_del: observed.rules.iter().cloned().collect(),
        routes_del: observed.routes.iter().cloned().collect(),
        sysctls_restore: restore_list(&recorded, &observed.host.sysctls),
        ..Changes::default()
    };
    execute(&changes, Faults::default(), true)?;
    state::save(&state::State::default())?;
    let _ = noop::forget();
    super::apply::record_table(None)?;
    // A pending `apply --confirm` (by hand or a stopped daemon's) would put back what
    // was there before it: after a remove, nothing is left to confirm or roll back.
    let _ = confirm::forget();
    let _ = state::daemon_pending_path().and_then(|p| rundir::remove(&p));
    // The HA role keepalived last reported: it would outlive the policy it was for.
    let _ = state::forget_ha();
    // Namespaces come and go: leave no lock file behind. Unlinked while held, so a
    // waiter finds it gone and locks a new one (`rundir`).
    lock.unlink();
    Ok(changes)
}

fn restore_list(
    recorded: &BTreeMap<String, String>,
    current: &BTreeMap<String, String>,
) -> Vec<SysctlChange> {
    recorded
        .iter()
        .filter_map(|(k, prev)| {
            let cur = current.get(k)?;
            (cur != prev).then(|| SysctlChange {
                key: k.clone(),
                from: cur.clone(),
                to: prev.clone(),
            })
        })
        .collect()
}
