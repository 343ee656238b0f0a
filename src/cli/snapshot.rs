//! `symroute snapshot`: this box's routing state as plain command outputs.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use symroute::kernel;

use super::args::NetnsArg;

const SNAPSHOT_BY_HAND: &str = "To make the same files by hand on a box without symroute, run in an empty directory:

  ip rule > ip-rule.txt; ip -6 rule > ip6-rule.txt
  ip route show table all > ip-route.txt; ip -6 route show table all > ip6-route.txt
  nft -j list ruleset > nft.json
  iptables-save > iptables-save.txt; ip6tables-save > ip6tables-save.txt
  ip -j addr > ip-addr.json; ip -j link > ip-link.json
  sysctl -a 2>/dev/null | grep -E '^net\\.ipv[46]\\.(conf\\.|ip_forward|icmp_errors|fwmark)' > sysctl.txt
  cat /etc/iproute2/rt_tables /etc/iproute2/rt_tables.d/*.conf > rt_tables   # the table names, if any

With --netns NAME, table names come from /etc/netns/NAME/iproute2 when it exists (as under
`ip netns exec NAME`), else from the host's /etc/iproute2.";

/// Save this box's routing state as plain command outputs in DIR (for explain --from).
///
/// Files: ip-rule.txt, ip6-rule.txt, ip-route.txt, ip6-route.txt, nft.json,
/// iptables-save.txt, ip6tables-save.txt, ip-addr.json, ip-link.json, sysctl.txt,
/// rt_tables (the routing table names `ip` printed, so the snapshot reads anywhere), and
/// where systemd-networkd is configured, networkd.conf (its settings and drop-ins, which
/// doctor reads). Tools that are missing are reported and skipped.
#[derive(clap::Args, Debug)]
#[command(after_long_help = SNAPSHOT_BY_HAND)]
pub struct Args {
    dir: PathBuf,
    #[command(flatten)]
    netns: NetnsArg,
}

pub fn run(args: Args, out: &mut impl Write) -> anyhow::Result<ExitCode> {
    args.netns.enter_reading()?;
    let report = kernel::snapshot::take(&args.dir)?;
    writeln!(
        out,
        "wrote {} file(s) to {}: {}",
        report.written.len(),
        args.dir.display(),
        report.written.join(", ")
    )?;
    for (file, why) in &report.missing {
        writeln!(out, "missing {file}: {why}")?;
    }
    Ok(ExitCode::SUCCESS)
}
