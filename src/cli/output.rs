//! What `plan`, `apply` and `apply --confirm` print about a plan and its changes.

use std::io::Write;

use symroute::plan::{self, GatewayState};

/// A line per gateway that is not (fully) up, and per cgroup a policy waits for.
pub fn gateways(out: &mut impl Write, plan: &plan::Outline) -> anyhow::Result<()> {
    for g in &plan.gateways {
        match &g.state {
            GatewayState::Down(why) => writeln!(
                out,
                "gateway {} is down ({why}); its routes will be added when it comes up (apply again)",
                g.name
            )?,
            GatewayState::Partial(why) => writeln!(
                out,
                "gateway {} is partly up ({why}); the other family's routes are installed",
                g.name
            )?,
            GatewayState::Up => {}
        }
    }
    for p in &plan.policies {
        for w in &p.waiting {
            writeln!(
                out,
                "policy {}: cgroup {} {}; waiting: its connections are matched once it exists (symroute run adds it within a second; after apply alone, apply again)",
                p.name, w.cgroup, w.why
            )?;
        }
    }
    Ok(())
}

/// A line per change, then how many were made (`verb`: "would", "applied").
pub fn changes(
    out: &mut impl Write,
    changes: &plan::diff::Changes,
    verb: &str,
) -> anyhow::Result<()> {
    if changes.is_empty() {
        writeln!(out, "no changes: the kernel already matches the config")?;
        return Ok(());
    }
    for l in changes.summary() {
        writeln!(out, "{l}")?;
    }
    writeln!(out, "{verb}: {} change(s)", changes.summary().len())?;
    Ok(())
}
