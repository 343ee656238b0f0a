//! Subcommands. Each one is a thin layer over the library: load the config, call
//! `plan`/`kernel`, print for people or as JSON.

mod confirm;
mod daemon;
mod exec;
mod lab;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use symroute::config;
use symroute::kernel::{self, apply::Faults, apply::Step};
use symroute::model::Model;
use symroute::plan;

const ABOUT: &str = "Symmetric policy routing for multi-homed Linux hosts.

Every reply leaves by the path its connection came in on, and chosen classes of new
traffic leave by a chosen gateway. You describe gateways and policies in one TOML file
(default /etc/symroute/symroute.toml); symroute programs the kernel (one nftables table,
`inet symroute`, plus tagged ip rules and routes) atomically, idempotently, and without
touching anything it does not own.

Typical use:
  symroute check              validate the config (no root needed)
  symroute plan --script      see exactly what apply would do
  symroute apply              make it so (again: a no-op)
  symroute status             gateways, policy counters, live connections
  symroute remove             put the host back as it was
  symroute lab two-isps       watch it fix seed 1 in a private network-namespace lab";

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

#[derive(Parser, Debug)]
#[command(name = "symroute", version, about = "Symmetric policy routing for multi-homed Linux hosts", long_about = ABOUT)]
pub struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args, Debug, Clone)]
struct ConfigArg {
    /// Config file [default: /etc/symroute/symroute.toml]
    #[arg(
        short = 'c',
        long = "config",
        env = "SYMROUTE_CONFIG",
        value_name = "FILE"
    )]
    config: Option<PathBuf>,
}

impl ConfigArg {
    fn load(&self) -> anyhow::Result<Model> {
        Ok(symroute::config_file::load(&self.path())?)
    }

    /// `load`, refusing `on_change` hooks others could rewrite (`run`, `check`).
    fn load_trusted(&self) -> anyhow::Result<Model> {
        Ok(symroute::config_file::load_trusted(&self.path())?)
    }

    fn path(&self) -> PathBuf {
        self.config
            .clone()
            .unwrap_or_else(|| PathBuf::from(config::DEFAULT_PATH))
    }
}

#[derive(clap::Args, Debug, Clone)]
struct NetnsArg {
    /// Act inside this network namespace (a name from `ip netns list`)
    #[arg(long, value_name = "NAME")]
    netns: Option<String>,
}

impl NetnsArg {
    fn enter(&self) -> anyhow::Result<()> {
        if let Some(ns) = &self.netns {
            kernel::netns::enter(ns)?;
        }
        Ok(())
    }

    /// [`Self::enter`] for the commands that read the host's state: table names come
    /// from the namespace's own `/etc/netns/NAME/iproute2` when it has one, as under
    /// `ip netns exec NAME`.
    fn enter_reading(&self) -> anyhow::Result<()> {
        if let Some(ns) = &self.netns {
            if let Some(note) = kernel::netns::enter_with_etc(ns)? {
                eprintln!("symroute: note: {note}");
            }
        }
        Ok(())
    }
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Validate the config file; errors print as FILE:LINE:COL and exit 2. Needs no root.
    Check {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Show what `apply` would change on this host (nothing is changed).
    Plan {
        #[command(flatten)]
        config: ConfigArg,
        #[command(flatten)]
        netns: NetnsArg,
        /// Print the plan and changes as JSON
        #[arg(long)]
        json: bool,
        /// Print equivalent `sysctl`/`nft`/`ip` commands for review
        #[arg(long, conflicts_with = "json")]
        script: bool,
    },
    /// Make the kernel match the config. Idempotent; rolls back if any step fails.
    ///
    /// While `symroute run` runs in the namespace, the daemon switches to this config
    /// instead (and with --confirm, goes back to its previous one unless confirmed).
    Apply {
        #[command(flatten)]
        config: ConfigArg,
        #[command(flatten)]
        netns: NetnsArg,
        /// Test only: fail right after STEP, so the rollback runs
        #[arg(long, value_name = "STEP", hide = true)]
        inject_failure: Option<Step>,
        /// Test only: die right after STEP without cleaning up, like `kill -9`
        #[arg(long, value_name = "STEP", hide = true)]
        abort_after: Option<Step>,
        /// Test only: the rollback's first N reads of the kernel fail
        #[arg(
            long,
            value_name = "N",
            hide = true,
            requires = "inject_failure",
            default_value = "0"
        )]
        fail_rollback_reads: u32,
        /// Roll the change back SECS seconds (1 to 86400) after this command started unless
        /// `symroute confirm` runs first. A guard process in its own session is armed before
        /// the first change, so a dropped SSH session still gets its rollback.
        #[arg(
            long,
            value_name = "SECS",
            conflicts_with_all = ["inject_failure", "abort_after"],
            value_parser = clap::value_parser!(u64).range(kernel::confirm::SECS)
        )]
        confirm: Option<u64>,
    },
    /// Keep the change of a pending `apply --confirm` (so it is not rolled back).
    Confirm {
        #[command(flatten)]
        netns: NetnsArg,
    },
    /// Internal: the guard of an `apply --confirm`, started by it (stdin is its socket).
    #[command(hide = true)]
    ConfirmWatch {
        #[command(flatten)]
        netns: NetnsArg,
        #[arg(long)]
        token: String,
        /// CLOCK_BOOTTIME nanoseconds
        #[arg(long)]
        deadline: u64,
    },
    /// Delete everything symroute made and restore the sysctls it changed.
    Remove {
        #[command(flatten)]
        netns: NetnsArg,
    },
    /// Keep the policy applied: apply, then re-apply whenever the kernel changes.
    ///
    /// Applies like `apply` (a gateway that is down is logged, not fatal; a bad config
    /// exits 2, conflicts exit 1), then watches links, addresses, routes, rules, rp_filter
    /// and nftables and re-applies symroute's own difference within ~100 ms of a change.
    /// Foreign objects are never touched: a conflict is logged and retried on the next
    /// change. SIGHUP reloads the config (an invalid one is logged and the old one kept);
    /// SIGTERM/SIGINT exit 0, leaving the policy applied unless --remove-on-exit.
    /// `symroute status`, `apply` and `confirm` talk to it over a unix socket in
    /// /run/symroute; `[settings] on_change` commands run on gateway up/down changes.
    /// Speaks systemd's notify protocol and watchdog: see contrib/symroute.service.
    ///
    /// Gateways with `[gateway.check]` are probed (ICMP echo or tcp:HOST:PORT, bound to
    /// the gateway's interface and mark): by default one probe every 150 ms, lost after
    /// 450 ms, down after 7 of the last 10 lost (~1.5 s), up after 5 good in a row. A
    /// gateway that is down loses its routes (reply_via falls back to the main table),
    /// `route_via` lists move new connections to the next usable gateway, and the dead
    /// gateway's route_via connections are flushed from conntrack so they re-establish.
    /// `[settings] metrics = "127.0.0.1:9469"` serves Prometheus metrics.
    ///
    /// Try it: `symroute lab failover`.
    Run {
        #[command(flatten)]
        config: ConfigArg,
        #[command(flatten)]
        netns: NetnsArg,
        /// On SIGTERM/SIGINT, remove everything symroute made before exiting
        #[arg(long)]
        remove_on_exit: bool,
        /// What to log to stderr: a level (error, warn, info, debug, trace) or
        /// RUST_LOG-style TARGET=LEVEL pairs, e.g. symroute=debug,info
        #[arg(
            long,
            env = "SYMROUTE_LOG",
            value_name = "FILTER",
            default_value = "info",
            value_parser = symroute::daemon::log::parse_filter
        )]
        log_level: tracing_subscriber::filter::Targets,
    },
    /// Run a command whose new connections leave via one gateway (root only).
    ///
    /// CMD runs in a cgroup of symroute's own for the gateway
    /// (`symroute.exec/netns-<id>/NAME` under the cgroup2 root), which the table always
    /// matches before any policy: the new connections of every socket CMD (or a child)
    /// makes, IPv4 and IPv6, leave via gateway NAME, masqueraded to its interface's
    /// address, and keep that path for their whole life. No policy is needed in the config. Specific routes (the LAN, a
    /// VPN) still win, as for route_via. A running `symroute run` adds the cgroup to the
    /// table within milliseconds; without one, exec applies the config first. The exit
    /// status is CMD's (127: not found). Fails (exit 1) when NAME is down, exit 2 when the
    /// config has no gateway NAME. Needs root: it moves itself into the cgroup.
    ///
    /// Examples:
    ///   symroute exec --gateway isp2 -- curl -sS https://example.org/
    ///   symroute exec --gateway isp1 --netns fw -- dig @192.0.2.53 example.org
    #[command(verbatim_doc_comment)]
    Exec(exec::ExecArgs),
    /// Gateways, policy counters and live connections per gateway; with a running
    /// `symroute run`, its live health (since, loss, round trip). Without -c, the
    /// daemon's config.
    Status {
        #[command(flatten)]
        config: ConfigArg,
        #[command(flatten)]
        netns: NetnsArg,
        /// Print as JSON (daemon.pid/.config/.started, gateways[].name/.state/.since/.loss/
        /// .rtt_ms/.connections, policies[].name/.gateways[]/.packets/.bytes)
        #[arg(long)]
        json: bool,
    },
    /// Trace a connection's first packet and its reply through marks, conntrack, NAT,
    /// ip rules, routing tables and rp_filter: which way will it leave, and why?
    ///
    /// The state is the live kernel (default, or --netns), or a snapshot (--from DIR).
    /// With -c FILE, that config's plan is laid over it: what happens after `apply`.
    ///
    /// Examples:
    ///   symroute explain --in-interface up1 --source 192.0.2.10 --destination 203.0.113.2 --destination-port 25
    ///   symroute explain --local --destination 192.0.2.10 --destination-port 25 --json
    ///   symroute explain --from ./snap -c new.toml --in-interface eth0 --source-mac 02:03:04:05:06:07 --source 192.0.2.10 --destination 198.51.100.20 --destination-port 25
    #[command(verbatim_doc_comment)]
    Explain {
        #[command(flatten)]
        packet: PacketArgs,
        /// Read the state from a snapshot directory (see `symroute snapshot`)
        #[arg(long, value_name = "DIR", conflicts_with = "netns")]
        from: Option<PathBuf>,
        #[command(flatten)]
        netns: NetnsArg,
        /// Overlay this config's plan: explain the host as it would be after `apply`
        #[arg(short = 'c', long = "config", value_name = "FILE")]
        config: Option<PathBuf>,
        /// Print as JSON (verdict.type/interface/via/table/mark, steps[], reply.verdict.*)
        #[arg(long)]
        json: bool,
        /// Show every rule considered, not only those that matched
        #[arg(short, long)]
        verbose: bool,
    },
    /// Find the mistakes in a hand-made (or any) policy-routing setup.
    ///
    /// Reads the live kernel (or --netns, or a snapshot with --from) and reports each
    /// finding with a severity, a stable code (listed in the README), the offending rule
    /// quoted as written, why it breaks, and the fix. Exits 1 when an error-level finding
    /// exists, 0 otherwise.
    ///
    /// With --peer, also compares the meaning of symroute's marks with the other box of an
    /// HA pair (keepalived + conntrackd copy connections and their marks between the two):
    /// give it the peer's `symroute status --json` output, or a snapshot directory of the
    /// peer. A mark value that means another path or decision there is an error.
    ///
    /// Example (on the backup, with the master's status copied over):
    ///   ssh master symroute status --json > master.json
    ///   symroute doctor --peer master.json
    #[command(verbatim_doc_comment)]
    Doctor {
        /// Read the state from a snapshot directory (see `symroute snapshot`)
        #[arg(long, value_name = "DIR", conflicts_with = "netns")]
        from: Option<PathBuf>,
        #[command(flatten)]
        netns: NetnsArg,
        /// The other box of an HA pair: its `symroute status --json` output, or a
        /// snapshot directory of it
        #[arg(long, value_name = "FILE|DIR")]
        peer: Option<PathBuf>,
        /// Print as JSON: {"findings": [{severity, code, rule, why, fix, place}]}
        #[arg(long)]
        json: bool,
    },
    /// Print a symroute.toml for a hand-made setup (iptables/nft marks, CONNMARK,
    /// `ip rule fwmark`, extra tables, DIVERT), where it can be expressed.
    ///
    /// Everything it could not express is listed precisely, as comments at the top of the
    /// file and on stderr. Review the file, then `symroute plan -c FILE` and remove the
    /// hand-made rules it replaces (listed under "Replaces") before `symroute apply`.
    Import {
        /// Read the state from a snapshot directory (see `symroute snapshot`)
        #[arg(long, value_name = "DIR", conflicts_with = "netns")]
        from: Option<PathBuf>,
        #[command(flatten)]
        netns: NetnsArg,
    },
    /// Save this box's routing state as plain command outputs in DIR (for explain --from).
    ///
    /// Files: ip-rule.txt, ip6-rule.txt, ip-route.txt, ip6-route.txt, nft.json,
    /// iptables-save.txt, ip6tables-save.txt, ip-addr.json, ip-link.json, sysctl.txt, and
    /// rt_tables (the routing table names `ip` printed, so the snapshot reads anywhere).
    /// Tools that are missing are reported and skipped.
    #[command(after_long_help = SNAPSHOT_BY_HAND)]
    Snapshot {
        dir: PathBuf,
        #[command(flatten)]
        netns: NetnsArg,
    },
    /// This box's role in an HA pair: for keepalived's notify scripts.
    ///
    /// keepalived (contrib/ha/keepalived.conf) runs `symroute ha master`, `backup` or
    /// `fault` when its VRRP state changes. conntrackd copies every connection to the
    /// peer, so the conntrack table of a backup holds the master's connections: a running
    /// `symroute run` flushes a dead gateway's route_via connections only while this box
    /// is the master (and a second later still is), never on a backup, and a box that
    /// becomes master flushes then what it held back. With `[settings] ha_pair = true` it
    /// holds back until told it is master.
    ///
    /// The role is kept in /run/symroute (a daemon started later reads it) until reboot or
    /// `symroute remove`; it is recorded, exit 0, even when no daemon runs.
    Ha {
        role: HaRoleArg,
        #[command(flatten)]
        netns: NetnsArg,
    },
    /// Build a seed scenario in private network namespaces and show symroute fixing it.
    ///
    /// Shows the connection failing without symroute, applies, shows it working with the
    /// conntrack view, then removes everything it made. `failover` runs `symroute run`
    /// instead and cuts ISP1's upstream: the LAN's new connections move to ISP2 within
    /// about 1.5 s, and back when ISP1 answers again. `ha-pair` runs seed 1's firewall as
    /// a keepalived + conntrackd pair and kills the master under a live session. Needs
    /// root, nft, conntrack and (for proxy-relay) haproxy, (for ha-pair) keepalived and
    /// conntrackd.
    Lab {
        #[arg(value_enum, default_value = "two-isps")]
        scenario: lab::Scenario,
    },
}

/// `symroute ha ROLE`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum HaRoleArg {
    /// This box holds the virtual addresses
    Master,
    /// The peer does
    Backup,
    /// keepalived found a tracked link down
    Fault,
}

impl From<HaRoleArg> for kernel::state::HaRole {
    fn from(r: HaRoleArg) -> Self {
        match r {
            HaRoleArg::Master => Self::Master,
            HaRoleArg::Backup => Self::Backup,
            HaRoleArg::Fault => Self::Fault,
        }
    }
}

/// The packet `explain` traces.
#[derive(clap::Args, Debug, Clone)]
struct PacketArgs {
    /// The interface the packet arrives on
    #[arg(
        long,
        value_name = "IF",
        required_unless_present = "local",
        conflicts_with = "local"
    )]
    in_interface: Option<String>,
    /// The packet is generated by the host itself (a local socket)
    #[arg(long)]
    local: bool,
    /// Ethernet source address of the arriving packet
    #[arg(long, value_name = "MAC")]
    source_mac: Option<String>,
    /// Source address (required for arriving packets; chosen like the kernel for --local)
    #[arg(long, value_name = "IP", required_unless_present = "local")]
    source: Option<std::net::IpAddr>,
    #[arg(long, value_name = "IP")]
    destination: std::net::IpAddr,
    /// A protocol name as in /etc/protocols (tcp, udp, sctp, dccp, icmp, icmpv6, gre, …) or number
    #[arg(long, default_value = "tcp")]
    protocol: String,
    #[arg(long, value_name = "PORT")]
    source_port: Option<u16>,
    #[arg(long, value_name = "PORT")]
    destination_port: Option<u16>,
    /// Initial packet mark (e.g. a socket's SO_MARK), decimal or 0x hex
    #[arg(long, value_name = "MARK", default_value = "0", value_parser = parse_mark)]
    mark: u32,
    /// With --local: the sending socket's owner, a uid or a user name [default: root]
    #[arg(long, value_name = "UID|NAME", requires = "local", value_parser = parse_user)]
    user: Option<u32>,
    /// With --local: the sending socket's cgroup, a path below the cgroup2 root
    /// (system.slice/backup.service) [default: the root]
    #[arg(long, value_name = "PATH", requires = "local", value_parser = parse_cgroup)]
    cgroup: Option<symroute::model::CgroupPath>,
}

/// A uid, or a user name from the system's user database.
fn parse_user(s: &str) -> Result<u32, String> {
    use symroute::config::Names;
    match s.parse::<u32>() {
        Ok(u) if u != u32::MAX => Ok(u),
        _ => symroute::config_file::SystemUsers.uid(s).ok_or_else(|| {
            format!("no user named \"{s}\" on this host (give a uid or a user name)")
        }),
    }
}

fn parse_cgroup(s: &str) -> Result<symroute::model::CgroupPath, String> {
    symroute::model::CgroupPath::new(s)
}

fn parse_mark(s: &str) -> Result<u32, String> {
    let r = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u32::from_str_radix(h, 16),
        None => s.parse(),
    };
    r.map_err(|_| format!("\"{s}\" is not a 32-bit mark (e.g. 0x1000000 or 16777216)"))
}

impl PacketArgs {
    fn spec(&self) -> anyhow::Result<symroute::explain::trace::PacketSpec> {
        let protocol = symroute::model::IpProto::parse(&self.protocol).ok_or_else(|| {
            anyhow::anyhow!(
                "--protocol: \"{}\" is not a protocol name (/etc/protocols) or number",
                self.protocol
            )
        })?;
        if let Some(s) = self.source {
            anyhow::ensure!(
                s.is_ipv4() == self.destination.is_ipv4(),
                "--source and --destination must be the same address family"
            );
        }
        let ports = protocol.has_ports();
        Ok(symroute::explain::trace::PacketSpec {
            in_interface: self.in_interface.clone(),
            source_mac: self.source_mac.clone(),
            source: self.source,
            destination: self.destination,
            protocol: protocol.0,
            source_port: self.source_port.or(ports.then_some(40000)),
            destination_port: self.destination_port.or(ports.then_some(80)),
            mark: self.mark,
            uid: self.user,
            cgroup: self.cgroup.as_ref().map(|c| c.to_string()),
        })
    }
}

/// The state explain/doctor/import read: a snapshot, or the live (namespace's) kernel.
fn load_host(
    from: Option<&PathBuf>,
    netns: &NetnsArg,
) -> anyhow::Result<symroute::explain::host::HostState> {
    use symroute::explain::host::HostState;
    Ok(match from {
        Some(dir) => {
            let loaded = kernel::snapshot::load(dir)?;
            for m in &loaded.missing {
                eprintln!(
                    "symroute: note: {}/{m} is missing; that part of the state is empty",
                    dir.display()
                );
            }
            HostState::from_files(&loaded.files, loaded.missing, &dir.display().to_string())?
        }
        None => {
            netns.enter_reading()?;
            let c = kernel::snapshot::capture();
            for (m, why) in &c.missing {
                eprintln!("symroute: note: could not read {m}: {why}");
            }
            HostState::from_files(&c.files, c.missing.keys().cloned().collect(), "live")?
        }
    })
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    match cli.cmd {
        Cmd::Check { config } => {
            let m = config.load_trusted()?;
            let selectors: usize = m.policies.iter().map(|p| p.selector.item_count()).sum();
            writeln!(
                out,
                "ok: {} gateway(s), {} policy(ies), {} divert(s), {selectors} selector item(s); mark_mask {}, tables from {}, priorities from {}",
                m.gateways.len(),
                m.policies.len(),
                m.diverts.len(),
                m.settings.mark_mask,
                m.settings.first_table,
                m.settings.first_priority
            )?;
            // Each gateway's id and what follows from it (the same on every box that
            // loads this file, whatever its order).
            for (i, g) in m.gateways_indexed() {
                writeln!(
                    out,
                    "  gateway {}: id {} ({}), reply mark {}, route mark {}, table {}",
                    g.name,
                    g.id,
                    match g.id_from {
                        symroute::model::IdFrom::Config => "set in the file",
                        symroute::model::IdFrom::Name => "from its name",
                    },
                    plan::alloc::reply_mark(&m, i),
                    plan::alloc::route_mark(&m, i),
                    plan::alloc::gateway_table(&m, i)
                )?;
            }
        }
        Cmd::Plan {
            config,
            netns,
            json,
            script,
        } => {
            let m = config.load()?;
            netns.enter()?;
            // With a daemon here, gateways its health checks hold down are down.
            let health_down = daemon::status().map(|l| l.health_down).unwrap_or_default();
            let (_, plan, changes) = kernel::apply::prepare_health(&m, &health_down)?;
            if json {
                serde_json::to_writer_pretty(
                    &mut out,
                    &serde_json::json!({ "plan": plan, "changes": changes }),
                )?;
                writeln!(out)?;
            } else if script {
                write!(out, "{}", changes.script())?;
            } else {
                print_gateways(&mut out, &plan)?;
                print_changes(&mut out, &changes, "would")?;
            }
        }
        Cmd::Apply {
            config,
            netns,
            confirm: Some(secs),
            ..
        } => {
            // The deadline counts from now, on the boot clock (see kernel::clock).
            let deadline =
                kernel::clock::BootTime::now().after(std::time::Duration::from_secs(secs));
            let m = config.load()?;
            netns.enter()?;
            if let Some(code) = daemon::apply(&mut out, &config, Some(secs))? {
                return Ok(code);
            }
            return confirm::apply(&mut out, &m, netns.netns.as_deref(), secs, deadline);
        }
        Cmd::Apply {
            config,
            netns,
            inject_failure,
            abort_after,
            fail_rollback_reads,
            confirm: None,
        } => {
            let m = config.load()?;
            netns.enter()?;
            let faults = inject_failure.is_some() || abort_after.is_some();
            if !faults {
                if let Some(code) = daemon::apply(&mut out, &config, None)? {
                    return Ok(code);
                }
            }
            let report = kernel::apply::apply(
                &m,
                Faults {
                    fail_after: inject_failure,
                    abort_after,
                    fail_rollback_reads,
                },
            )?;
            print_gateways(&mut out, &report.plan)?;
            print_changes(&mut out, &report.changes, "applied")?;
        }
        Cmd::Confirm { netns } => {
            netns.enter()?;
            if daemon::confirm(&mut out)? {
                return Ok(ExitCode::SUCCESS);
            }
            if !kernel::confirm::confirm()? {
                anyhow::bail!("nothing to confirm: no `apply --confirm` is pending here");
            }
            writeln!(out, "confirmed")?;
        }
        Cmd::ConfirmWatch {
            netns,
            token,
            deadline,
        } => {
            netns.enter()?;
            confirm::watch(&token, deadline)?;
        }
        Cmd::Remove { netns } => {
            netns.enter()?;
            // A daemon would put everything back within milliseconds: say so instead.
            if let Some(live) = daemon::status() {
                eprintln!(
                    "symroute: symroute run (pid {}) keeps the policy applied here and would put it back at once; stop it first (systemctl stop symroute), or stop it with --remove-on-exit to remove everything as it exits",
                    live.daemon.pid
                );
                return Ok(ExitCode::from(1));
            }
            let changes = kernel::apply::remove()?;
            symroute::daemon::control::remove_stale()?;
            // `symroute exec`'s cgroups of this namespace, once no command runs in them.
            let (gone, busy) = kernel::cgroup::remove_exec()?;
            for c in &busy {
                eprintln!("symroute: left cgroup {c}: a command started by symroute exec still runs in it");
            }
            if changes.is_empty() && gone.is_empty() {
                writeln!(out, "nothing to remove: symroute owns nothing here")?;
            } else {
                for l in changes.summary() {
                    writeln!(out, "{l}")?;
                }
                for c in &gone {
                    writeln!(out, "- cgroup {c}")?;
                }
                writeln!(out, "removed")?;
            }
        }
        Cmd::Run {
            config,
            netns,
            remove_on_exit,
            log_level,
        } => {
            drop(out);
            symroute::daemon::log::init(log_level);
            // Absolute: `status` reads it from wherever it runs.
            let path = std::path::absolute(config.path())?;
            let model = config.load_trusted()?;
            // Before any thread exists: threads and children inherit the namespace.
            netns.enter()?;
            symroute::daemon::run(symroute::daemon::Options {
                config: path,
                model,
                netns: netns.netns,
                remove_on_exit,
            })?;
        }
        Cmd::Status {
            config,
            netns,
            json,
        } => {
            netns.enter()?;
            let live = daemon::status();
            // Without -c, the config the daemon runs.
            let m = match (&config.config, &live) {
                (None, Some(l)) => {
                    symroute::config_file::load(std::path::Path::new(&l.daemon.config))?
                }
                _ => config.load()?,
            };
            let mut observed = kernel::observe::observe()?;
            observed.host.cgroups = kernel::cgroup::observe(&m);
            if let Some(l) = &live {
                observed.host.health_down = l.health_down.clone();
            }
            let plan = plan::build(&m, &observed.host);
            let applied =
                observed.nft_fingerprint.as_deref() == Some(plan.nft_fingerprint.as_str());
            let mut st = kernel::status::status(&m, &plan, observed.nft_fingerprint.is_some())?;
            if let Some(l) = &live {
                daemon::overlay(&mut st, l);
            }
            if json {
                serde_json::to_writer_pretty(&mut out, &st)?;
                writeln!(out)?;
            } else {
                writeln!(
                    out,
                    "{}",
                    match (observed.nft_fingerprint.is_some(), applied) {
                        (false, _) => "not applied (no nftables table inet symroute)",
                        (true, true) => "applied, matches the config",
                        (true, false) =>
                            "applied, but differs from the config: run `symroute plan`",
                    }
                )?;
                match &live {
                    Some(l) => writeln!(
                        out,
                        "daemon: pid {}, config {}, started {}; {}",
                        l.daemon.pid, l.daemon.config, l.daemon.started, l.summary
                    )?,
                    None => writeln!(out, "daemon: not running in this namespace")?,
                }
                if let Some(h) = &st.ha {
                    writeln!(
                        out,
                        "ha: {} (keepalived's last word, {}); dead gateways' connections are flushed {}",
                        h.role,
                        symroute::daemon::gateways::rfc3339(
                            std::time::UNIX_EPOCH + std::time::Duration::from_secs(h.since_unix)
                        ),
                        if h.role == kernel::state::HaRole::Master {
                            "(a second after they go down)"
                        } else {
                            "only once this box is master"
                        }
                    )?;
                }
                if let Some(p) = live.as_ref().and_then(|l| l.pending_confirm.as_ref()) {
                    writeln!(
                        out,
                        "pending: `apply --confirm`; back to {} at {} unless `symroute confirm`",
                        p.previous_config, p.deadline
                    )?;
                }
                writeln!(out, "gateways:")?;
                for g in &st.gateways {
                    writeln!(out, "  {}", daemon::gateway_line(g))?;
                }
                writeln!(out, "policies:")?;
                for p in &st.policies {
                    writeln!(
                        out,
                        "  {:<20} {} {:<12} mark {}  {} packet(s) {} byte(s) classified",
                        p.name,
                        p.kind,
                        kernel::status::describe_gateways(&p.gateways),
                        p.mark,
                        p.packets,
                        p.bytes
                    )?;
                    for w in &p.waiting {
                        writeln!(
                            out,
                            "  {:<20} waiting for cgroup {}: {}",
                            "", w.cgroup, w.why
                        )?;
                    }
                }
                writeln!(
                    out,
                    "marks: mask {}, digest {} (`symroute doctor --peer` compares it with the other box of an HA pair)",
                    st.marks.mask, st.marks.digest
                )?;
                for g in &st.marks.gateways {
                    writeln!(
                        out,
                        "  {:<16} id {:<4} replies {:<10} routes {:<10} table {}",
                        g.name,
                        g.id,
                        g.reply_mark.as_deref().unwrap_or("-"),
                        g.route_mark.as_deref().unwrap_or("-"),
                        g.table
                    )?;
                }
            }
        }
        Cmd::Explain {
            packet,
            from,
            netns,
            config,
            json,
            verbose,
        } => {
            let spec = packet.spec()?;
            let model = config
                .as_ref()
                .map(|c| symroute::config_file::load(c))
                .transpose()?;
            let mut host = load_host(from.as_ref(), &netns)?;
            if from.is_none() {
                // Live: cgroups in the rules are written as nft writes them here.
                host.cgroup_root = kernel::cgroup::hierarchy().map(|h| h.nft_root);
            }
            if let Some(m) = &model {
                let mut view = host.host_view();
                view.cgroups = match &from {
                    None => kernel::cgroup::observe(m),
                    // Another host's state: its cgroups are unknown here; explain as if
                    // the config's exist (so a --cgroup in one is matched).
                    Some(_) => Some(plan::Cgroups {
                        ids: m
                            .policies
                            .iter()
                            .flat_map(|p| p.selector.cgroup.iter().map(|c| (c.clone(), 0)))
                            .collect(),
                        ..plan::Cgroups::default()
                    }),
                };
                let plan = plan::build(m, &view);
                for p in &plan.policies {
                    for w in &p.waiting {
                        eprintln!(
                            "symroute: note: policy {}: cgroup {} {}, so the table after apply does not match it",
                            p.name, w.cgroup, w.why
                        );
                    }
                }
                host.overlay(&plan)?;
            }
            let e = symroute::explain::trace::explain(&host, &spec);
            if json {
                serde_json::to_writer_pretty(&mut out, &e)?;
                writeln!(out)?;
            } else {
                write!(out, "{}", symroute::explain::trace::render(&e, verbose))?;
            }
        }
        Cmd::Doctor {
            from,
            netns,
            peer,
            json,
        } => {
            // The peer first: its path is relative to where we were started.
            let peer = peer.as_deref().map(load_peer).transpose()?;
            let host = load_host(from.as_ref(), &netns)?;
            let findings = symroute::explain::doctor::doctor_with_peer(&host, peer.as_ref());
            if json {
                serde_json::to_writer_pretty(
                    &mut out,
                    &serde_json::json!({ "findings": findings }),
                )?;
                writeln!(out)?;
            } else {
                write!(out, "{}", symroute::explain::doctor::render(&findings))?;
            }
            let errors = findings
                .iter()
                .any(|f| f.severity == symroute::explain::doctor::Severity::Error);
            return Ok(if errors {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            });
        }
        Cmd::Import { from, netns } => {
            let host = load_host(from.as_ref(), &netns)?;
            let imported = symroute::explain::import::import(&host);
            write!(out, "{}", imported.toml)?;
            if !imported.unexpressed.is_empty() {
                eprint!("{}", imported.report());
            }
        }
        Cmd::Snapshot { dir, netns } => {
            netns.enter_reading()?;
            let report = kernel::snapshot::take(&dir)?;
            writeln!(
                out,
                "wrote {} file(s) to {}: {}",
                report.written.len(),
                dir.display(),
                report.written.join(", ")
            )?;
            for (file, why) in &report.missing {
                writeln!(out, "missing {file}: {why}")?;
            }
        }
        Cmd::Exec(args) => {
            drop(out);
            return exec::run(args);
        }
        Cmd::Ha { role, netns } => {
            netns.enter()?;
            daemon::ha(&mut out, role.into())?;
        }
        Cmd::Lab { scenario } => {
            drop(out);
            lab::run(scenario).context("lab failed")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The other box of an HA pair, for `doctor --peer`: a snapshot directory, or a file
/// holding its `symroute status --json` (or the `marks` object of one). Read bounded: it is
/// whatever file the user points us at.
fn load_peer(path: &std::path::Path) -> anyhow::Result<symroute::explain::doctor::peer::Side> {
    use symroute::explain::doctor::peer;
    const MAX: u64 = 16 << 20;
    let origin = path.display().to_string();
    if path.is_dir() {
        let loaded = kernel::snapshot::load(path)?;
        let host =
            symroute::explain::host::HostState::from_files(&loaded.files, loaded.missing, &origin)?;
        return Ok(peer::side_of_host(&host));
    }
    let text = kernel::snapshot::read_bounded(path, MAX)
        .map_err(|why| anyhow::anyhow!("--peer {origin}: {why}"))?
        .ok_or_else(|| anyhow::anyhow!("--peer {origin}: no such file or directory"))?;
    let value: serde_json::Value = serde_json::from_str(&text).with_context(|| {
        format!("--peer {origin}: not JSON (expected the peer's `symroute status --json`, or a snapshot directory)")
    })?;
    let map = value.get("marks").unwrap_or(&value);
    let map: symroute::plan::markmap::MarkMap = serde_json::from_value(map.clone())
        .with_context(|| {
            format!("--peer {origin}: no mark map in it (expected the peer's `symroute status --json` from symroute with stable marks)")
        })?;
    Ok(peer::side_of_map(&map, &origin))
}

fn print_gateways(out: &mut impl Write, plan: &plan::Plan) -> anyhow::Result<()> {
    for g in &plan.gateways {
        match &g.state {
            plan::GatewayState::Down(why) => writeln!(
                out,
                "gateway {} is down ({why}); its routes will be added when it comes up (apply again)",
                g.name
            )?,
            plan::GatewayState::Partial(why) => writeln!(
                out,
                "gateway {} is partly up ({why}); the other family's routes are installed",
                g.name
            )?,
            plan::GatewayState::Up => {}
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

fn print_changes(
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
