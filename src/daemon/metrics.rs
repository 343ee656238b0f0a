//! Prometheus metrics of `symroute run`, opt-in with `[settings] metrics = "ADDR:PORT"`.
//!
//! The actor publishes what it knows (gateway states, and from its live gateway state the
//! probes' loss and round trips and the failovers, as `status` shows them; reconcile
//! durations) into a `Snapshot` behind a mutex, a few field updates per event. A thread of
//! its own serves `GET /metrics`: it copies the snapshot, then does the live kernel reads
//! itself (the policies' nft counters, conntrack entries per gateway mark), so neither a
//! slow client nor a slow read ever holds up the actor.
//!
//! Besides symroute's own figures the page has what every exporter has: the `process_*`
//! metrics of the daemon, `symroute_build_info`, and whether the last config reload
//! worked (`symroute_config_last_reload_successful`, as Prometheus itself reports it).
//!
//! The HTTP side is a hand-written HTTP/1.0 responder for this one endpoint: a web
//! framework or an async runtime would dwarf the rest of the daemon for a single GET.
//! Clients are served together on one thread (`serve`): up to 64 at once, each with 1 s
//! to send its request head (8 KiB at most) and 2 s to read the page, the idle ones
//! making room for new ones, so stuck or hostile clients never hold up a scrape and cost
//! no threads. The kernel reads are kept for 1 s and the page with them (`Scrape`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::serve;
use crate::kernel::conntrack::Conntrack;
use crate::kernel::process::{self, ProcessStats};
use crate::kernel::status::{self, LiveGateway, State};
use crate::plan::Plan;

/// Upper bounds of the reconcile-duration buckets, in seconds (a typical pass takes
/// ~25 ms; an `nft -f` of a large table can take seconds).
pub const RECONCILE_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Largest request head accepted.
const MAX_REQUEST: usize = 8 * 1024;
/// Scrapers served at once: a request head within 1 s, the page read within 2 s; idle
/// or slow clients make room for new ones (`serve`).
const LIMITS: serve::Limits = serve::Limits {
    max_clients: 64,
    request_deadline: Duration::from_secs(1),
    // A page is made from counters read at most once a second.
    wait_deadline: Duration::from_secs(10),
    answer_deadline: Duration::from_secs(2),
    max_request: MAX_REQUEST,
};
/// How long one read of the kernel's counters serves scrapes.
const LIVE_TTL: Duration = Duration::from_secs(1);

/// What the actor knows, as of its last update.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The mark bits symroute owns (conntrack marks are counted inside them).
    pub mark_mask: u32,
    /// The gateways of the last successful reconcile, in config order.
    pub gateways: Vec<GatewaySnap>,
    /// The policies of the last successful reconcile, in config order.
    pub policies: Vec<PolicySnap>,
    /// Durations of every reconcile (apply) the actor ran, failed ones included.
    pub reconcile: Histogram,
    /// Bumped on every update, so a page rendered from an older one is not reused.
    pub generation: u64,
    /// Bumped on every successful reconcile: the kernel's counters and connections are
    /// read again after one (a failover flushes connections).
    pub applied: u64,
    /// Whether the last config load (startup, SIGHUP, `symroute apply`) was taken.
    pub reload_ok: bool,
    /// When a config was last taken, seconds since the epoch.
    pub reload_success_unix: f64,
    /// Reconciles that failed (errors and conflicts with foreign objects).
    pub apply_errors: u64,
}

impl Default for Snapshot {
    fn default() -> Self {
        Snapshot {
            mark_mask: 0,
            gateways: Vec::new(),
            policies: Vec::new(),
            reconcile: Histogram::new(&RECONCILE_BUCKETS),
            generation: 0,
            applied: 0,
            reload_ok: true,
            reload_success_unix: unix_now(),
            apply_errors: 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct GatewaySnap {
    /// As `status` shows it: state, probe loss and round trip, failovers.
    pub live: LiveGateway,
    /// Its reply and route marks: the conntrack marks of its connections.
    pub marks: Vec<u32>,
    /// The named counter of the connections `symroute exec --gateway` started via it.
    pub exec_counter: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PolicySnap {
    pub name: String,
    /// Its named counter in `table inet symroute`.
    pub counter: String,
}

/// A Prometheus histogram: per-bucket counts (not cumulative), sum and count.
#[derive(Debug, Clone)]
pub struct Histogram {
    bounds: &'static [f64],
    /// One per bound, plus the last for values above every bound.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
            count: 0,
        }
    }

    pub fn observe(&mut self, v: f64) {
        let i = self
            .bounds
            .iter()
            .position(|b| v <= *b)
            .unwrap_or(self.bounds.len());
        self.counts[i] += 1;
        self.sum += v;
        self.count += 1;
    }
}

/// What the serving thread reads from the kernel at scrape time; `None` when a read
/// failed (its samples are left out rather than reported as zero).
#[derive(Debug, Default)]
pub struct Live {
    /// Counter name → (packets, bytes).
    pub counters: Option<BTreeMap<String, (u64, u64)>>,
    /// Gateway name → conntrack entries with one of its marks.
    pub connections: Option<BTreeMap<String, u64>>,
    /// The daemon's own CPU, memory and descriptors.
    pub process: Option<ProcessStats>,
}

/// The actor's handle: updates go into the shared snapshot.
pub struct Metrics {
    shared: Arc<Mutex<Snapshot>>,
    serving: bool,
}

fn lock(m: &Mutex<Snapshot>) -> MutexGuard<'_, Snapshot> {
    // A panic elsewhere while holding the lock leaves plain data behind: still usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Metrics {
    /// Start serving on `addr` (bound here, so a taken port is a startup error), or just
    /// keep the snapshot when metrics are off.
    pub fn start(addr: Option<SocketAddr>) -> io::Result<Metrics> {
        let shared = Arc::new(Mutex::new(Snapshot::default()));
        let serving = addr.is_some();
        if let Some(addr) = addr {
            let listener = TcpListener::bind(addr)
                .map_err(|e| io::Error::new(e.kind(), format!("listening on {addr}: {e}")))?;
            let scrape = Scrape {
                shared: shared.clone(),
                cache: None,
            };
            serve::spawn("metrics", listener, scrape, LIMITS)?;
            tracing::info!("serving Prometheus metrics on http://{addr}/metrics");
        }
        Ok(Metrics { shared, serving })
    }

    /// Whether a metrics page is served (else updates are kept but nobody reads them).
    pub fn serving(&self) -> bool {
        self.serving
    }

    /// One reconcile took `took` (whether it succeeded or not).
    pub fn reconciled(&self, took: Duration) {
        let mut s = lock(&self.shared);
        s.reconcile.observe(took.as_secs_f64());
        s.generation += 1;
    }

    /// A reconcile succeeded with `plan`; `live` is the actor's live gateway state after it.
    pub fn applied(&self, plan: &Plan, live: &[LiveGateway]) {
        let mut s = lock(&self.shared);
        s.mark_mask = plan.mark_mask.bits();
        s.gateways = plan
            .gateways
            .iter()
            .enumerate()
            .filter_map(|(i, g)| {
                Some(GatewaySnap {
                    live: live.iter().find(|l| l.name == g.name)?.clone(),
                    marks: [g.reply_mark, g.route_mark]
                        .into_iter()
                        .flatten()
                        .map(|m| m.bits())
                        .collect(),
                    exec_counter: crate::plan::nft::exec_counter_name(i, &g.name),
                })
            })
            .collect();
        s.policies = plan
            .policies
            .iter()
            .map(|p| PolicySnap {
                name: p.name.clone(),
                counter: p.counter.clone(),
            })
            .collect();
        s.applied += 1;
        s.generation += 1;
    }

    /// A config was loaded (`ok`) or refused: SIGHUP, or `symroute apply` through the
    /// daemon (refused also when its apply failed and the daemon went back).
    pub fn reloaded(&self, ok: bool) {
        let mut s = lock(&self.shared);
        s.reload_ok = ok;
        if ok {
            s.reload_success_unix = unix_now();
        }
        s.generation += 1;
    }

    /// A reconcile failed (an error, or foreign objects in the way).
    pub fn apply_failed(&self) {
        let mut s = lock(&self.shared);
        s.apply_errors += 1;
        s.generation += 1;
    }

    /// A probe result changed the live gateway state (loss, round trips).
    pub fn probed(&self, live: &[LiveGateway]) {
        let mut s = lock(&self.shared);
        s.generation += 1;
        for g in &mut s.gateways {
            if let Some(l) = live.iter().find(|l| l.name == g.live.name) {
                g.live = l.clone();
            }
        }
    }
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The metrics page on `serve`'s loop. The live kernel reads (nft counters, conntrack)
/// are the slow part of a page: they are kept for `LIVE_TTL` (or until the next
/// reconcile), and the page rendered
/// from them is reused while neither they nor the snapshot changed, so a HEAD and a GET,
/// or many scrapers at once, cost one read and one render.
struct Scrape {
    shared: Arc<Mutex<Snapshot>>,
    cache: Option<Cached>,
}

struct Cached {
    read_at: Instant,
    /// The snapshot's `applied` when the kernel was read.
    applied: u64,
    /// The snapshot's generation the page was rendered from.
    generation: u64,
    live: Live,
    page: Arc<String>,
}

impl Scrape {
    fn page(&mut self) -> Arc<String> {
        let snap = lock(&self.shared).clone();
        let fresh = |c: &Cached| c.read_at.elapsed() < LIVE_TTL && c.applied == snap.applied;
        match &mut self.cache {
            Some(c) if fresh(c) && c.generation == snap.generation => {}
            Some(c) if fresh(c) => {
                c.page = Arc::new(render(&snap, &c.live));
                c.generation = snap.generation;
            }
            _ => {
                let live = read_live(&snap);
                self.cache = Some(Cached {
                    read_at: Instant::now(),
                    applied: snap.applied,
                    generation: snap.generation,
                    page: Arc::new(render(&snap, &live)),
                    live,
                });
            }
        }
        self.cache.as_ref().expect("filled above").page.clone()
    }
}

impl serve::Protocol for Scrape {
    fn complete(&self, buf: &[u8]) -> Option<usize> {
        head_end(buf)
    }

    fn answer(&mut self, head: &[u8], _: &serve::Waker) -> serve::Answer {
        serve::Answer::Now(respond(head, true, || self.page()))
    }

    fn incomplete(&mut self, head: &[u8], too_large: bool, _: &serve::Waker) -> serve::Answer {
        if head.is_empty() && !too_large {
            return serve::Answer::Close;
        }
        serve::Answer::Now(respond(head, false, || self.page()))
    }
}

/// Where the request head ends (before its blank line).
fn head_end(data: &[u8]) -> Option<usize> {
    let crlf = data.windows(4).position(|w| w == b"\r\n\r\n");
    let lf = data.windows(2).position(|w| w == b"\n\n");
    crlf.into_iter().chain(lf).min()
}

/// What `GET /` answers: where the metrics are.
const INDEX: &str = "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>symroute</title></head>\n<body><h1>symroute</h1>\n<p>Symmetric policy routing daemon (<code>symroute run</code>). Prometheus metrics: <a href=\"/metrics\">/metrics</a>.</p>\n</body></html>\n";

/// The whole HTTP/1.0 response to a request head; `metrics` gives the page, called
/// only for `GET /metrics` (or HEAD, for its length).
fn respond(head: &[u8], complete: bool, metrics: impl FnOnce() -> Arc<String>) -> Vec<u8> {
    let text = |code: &str, body: &str| {
        (
            code.to_string(),
            "text/plain; charset=utf-8",
            Arc::new(body.to_string()),
        )
    };
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut words = line.split_whitespace();
    let (method, target, version) = (words.next(), words.next(), words.next());
    let path = target.map(|t| t.split('?').next().unwrap_or(t));
    let (status, ctype, body) = if !complete && head.len() >= MAX_REQUEST {
        text("431 Request Header Fields Too Large", "request too large\n")
    } else if !complete || !version.is_some_and(|v| v.starts_with("HTTP/")) {
        text("400 Bad Request", "bad request\n")
    } else if !matches!(path, Some("/metrics" | "/")) {
        text("404 Not Found", "not found: /metrics is served here\n")
    } else if !matches!(method, Some("GET" | "HEAD")) {
        text("405 Method Not Allowed", "only GET /metrics or /\n")
    } else if path == Some("/") {
        (
            "200 OK".to_string(),
            "text/html; charset=utf-8",
            Arc::new(INDEX.to_string()),
        )
    } else {
        (
            "200 OK".to_string(),
            "text/plain; version=0.0.4; charset=utf-8",
            metrics(),
        )
    };
    let mut out = format!(
        "HTTP/1.0 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if method != Some("HEAD") {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

/// The kernel reads of one scrape, in the daemon's namespace (the process is in it).
fn read_live(snap: &Snapshot) -> Live {
    let counters = match status::policy_counters() {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::debug!("metrics: reading the policy counters: {e}");
            None
        }
    };
    let connections = Conntrack::open().and_then(|mut ct| {
        let mut out = BTreeMap::new();
        for g in &snap.gateways {
            out.insert(
                g.live.name.clone(),
                ct.count_any(g.marks.iter().copied(), snap.mark_mask)?,
            );
        }
        Ok(out)
    });
    let connections = match connections {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::debug!("metrics: counting conntrack entries: {e}");
            None
        }
    };
    let process = match process::read() {
        Ok(p) => Some(p),
        Err(e) => {
            tracing::debug!("metrics: reading /proc/self: {e}");
            None
        }
    };
    Live {
        counters,
        connections,
        process,
    }
}

/// The text exposition format (version 0.0.4) of one scrape.
pub fn render(s: &Snapshot, live: &Live) -> String {
    let mut out = Page::default();
    let each = |f: &dyn Fn(&GatewaySnap) -> Option<String>| -> Vec<(&str, String)> {
        s.gateways
            .iter()
            .filter_map(|g| Some((g.live.name.as_str(), f(g)?)))
            .collect()
    };
    out.per_gateway(
        "symroute_gateway_up",
        "gauge",
        "1 when the gateway is up (its routes installed, for at least one address family), 0 when down (link or health checks).",
        each(&|g| Some(u8::from(g.live.state == Some(State::Up)).to_string())),
    );
    out.per_gateway(
        "symroute_probe_rtt_seconds",
        "gauge",
        "Mean round trip of the gateway's recent answered health probes (the last 10).",
        each(&|g| g.live.rtt_ms.map(|ms| float(ms / 1e3))),
    );
    out.per_gateway(
        "symroute_probe_loss_ratio",
        "gauge",
        "Lost health probes over the gateway's check window (all its targets).",
        each(&|g| g.live.loss.map(float)),
    );
    out.per_gateway(
        "symroute_failovers_total",
        "counter",
        "Times the gateway went from up to down since the daemon started.",
        each(&|g| Some(g.live.failovers.to_string())),
    );
    out.per_gateway(
        "symroute_connections",
        "gauge",
        "Conntrack entries carrying the gateway's route or reply mark (connections symroute pins to it).",
        each(&|g| {
            let conns = live.connections.as_ref()?;
            Some(conns.get(&g.live.name).copied().unwrap_or(0).to_string())
        }),
    );
    out.per_gateway(
        "symroute_exec_packets_total",
        "counter",
        "New connections `symroute exec --gateway` sent via the gateway (their first packets).",
        each(&|g| {
            let counters = live.counters.as_ref()?;
            Some(counters.get(&g.exec_counter).map_or(0, |c| c.0).to_string())
        }),
    );
    for (name, help, pick) in [
        (
            "symroute_policy_packets_total",
            "Packets the policy classified: the first packet of each new connection it matched.",
            (|c: (u64, u64)| c.0) as fn((u64, u64)) -> u64,
        ),
        (
            "symroute_policy_bytes_total",
            "Bytes of the packets the policy classified (first packets of new connections only).",
            |c: (u64, u64)| c.1,
        ),
    ] {
        out.family(name, "counter", help);
        if let Some(counters) = &live.counters {
            for p in &s.policies {
                let c = counters.get(&p.counter).copied().unwrap_or((0, 0));
                out.sample(name, &[("policy", &p.name)], pick(c));
            }
        }
    }
    let h = &s.reconcile;
    let name = "symroute_reconcile_duration_seconds";
    out.family(
        name,
        "histogram",
        "Duration of the daemon's reconciles (observe, plan, diff, apply), failed ones included.",
    );
    let mut cumulative = 0;
    for (i, c) in h.counts.iter().enumerate() {
        cumulative += c;
        let le = h.bounds.get(i).map_or("+Inf".to_string(), |b| float(*b));
        out.sample(&format!("{name}_bucket"), &[("le", &le)], cumulative);
    }
    out.sample(&format!("{name}_sum"), &[], float(h.sum));
    out.sample(&format!("{name}_count"), &[], h.count);
    out.single(
        "symroute_apply_errors_total",
        "counter",
        "Reconciles of the daemon that failed (an error, or foreign objects in the way): nothing was changed by them.",
        s.apply_errors,
    );
    out.single(
        "symroute_config_last_reload_successful",
        "gauge",
        "1 when the last config load (startup, SIGHUP, `symroute apply` through the daemon) was taken, 0 when it was refused (the previous config runs).",
        u8::from(s.reload_ok),
    );
    out.single(
        "symroute_config_last_reload_success_timestamp_seconds",
        "gauge",
        "When a config was last taken, in seconds since the Unix epoch.",
        float(s.reload_success_unix),
    );
    out.family(
        "symroute_build_info",
        "gauge",
        "The running symroute's version and the git commit it was built from (unknown outside git); always 1.",
    );
    out.sample(
        "symroute_build_info",
        &[("version", VERSION), ("commit", COMMIT)],
        1,
    );
    if let Some(p) = &live.process {
        process_metrics(&mut out, p);
    }
    out.0
}

/// The version and commit symroute was built from (`build.rs`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const COMMIT: &str = env!("BUILT_FROM_COMMIT");

/// The `process_*` families of the Prometheus client libraries, same names and meanings.
fn process_metrics(out: &mut Page, p: &ProcessStats) {
    for (name, kind, help, value) in [
        (
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
            float(p.cpu_seconds),
        ),
        (
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            p.resident_bytes.to_string(),
        ),
        (
            "process_virtual_memory_bytes",
            "gauge",
            "Virtual memory size in bytes.",
            p.virtual_bytes.to_string(),
        ),
        (
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since unix epoch in seconds.",
            float(p.start_time_unix),
        ),
        (
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
            p.open_fds.to_string(),
        ),
        (
            "process_max_fds",
            "gauge",
            "Maximum number of open file descriptors.",
            p.max_fds.to_string(),
        ),
    ] {
        out.single(name, kind, help, value);
    }
}

/// A float as Prometheus writes it.
fn float(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        v.to_string()
    }
}

#[derive(Default)]
struct Page(String);

impl Page {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    /// A family with one sample and no labels.
    fn single(&mut self, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }

    /// A family with one sample per gateway.
    fn per_gateway(&mut self, name: &str, kind: &str, help: &str, values: Vec<(&str, String)>) {
        self.family(name, kind, help);
        for (gateway, v) in values {
            self.sample(name, &[("gateway", gateway)], v);
        }
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.0 += name;
        if !labels.is_empty() {
            let labels: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape_label(v)))
                .collect();
            let _ = write!(self.0, "{{{}}}", labels.join(","));
        }
        let _ = writeln!(self.0, " {value}");
    }
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(
        name: &str,
        state: Option<State>,
        rtt_ms: Option<f64>,
        loss: Option<f64>,
        failovers: u64,
    ) -> LiveGateway {
        LiveGateway {
            name: name.into(),
            interface: "up1".into(),
            state,
            reason: None,
            since: "2024-05-01T12:34:56.789Z".into(),
            since_unix: 1_714_566_896,
            loss,
            rtt_ms,
            failovers,
        }
    }

    fn snapshot() -> Snapshot {
        let mut s = Snapshot {
            mark_mask: 0xff00_0000,
            gateways: vec![
                GatewaySnap {
                    live: live("isp1", Some(State::Up), Some(1.5), Some(0.2), 0),
                    marks: vec![0x0100_0000],
                    exec_counter: "x0_isp1".into(),
                },
                GatewaySnap {
                    live: live("we\"ird\\gw\nx", Some(State::Down), None, None, 2),
                    marks: vec![],
                    exec_counter: "x1_we_ird_gw_x".into(),
                },
            ],
            policies: vec![PolicySnap {
                name: "smtp-out".into(),
                counter: "p0_smtp-out".into(),
            }],
            reload_ok: false,
            reload_success_unix: 1_796_000_000.5,
            apply_errors: 3,
            ..Snapshot::default()
        };
        for v in [0.003, 0.02, 0.02, 30.0] {
            s.reconcile.observe(v);
        }
        s
    }

    #[test]
    fn renders_the_exposition_format() {
        let mut counters = BTreeMap::new();
        counters.insert("p0_smtp-out".to_string(), (7u64, 420u64));
        counters.insert("x0_isp1".to_string(), (2u64, 120u64));
        let mut conns = BTreeMap::new();
        conns.insert("isp1".to_string(), 3u64);
        let live = Live {
            counters: Some(counters),
            connections: Some(conns),
            process: Some(ProcessStats {
                cpu_seconds: 1.25,
                resident_bytes: 4096,
                virtual_bytes: 8192,
                start_time_unix: 1_796_000_000.0,
                open_fds: 9,
                max_fds: 4096,
            }),
        };
        let page = render(&snapshot(), &live);
        let want = r#"# HELP symroute_gateway_up 1 when the gateway is up (its routes installed, for at least one address family), 0 when down (link or health checks).
# TYPE symroute_gateway_up gauge
symroute_gateway_up{gateway="isp1"} 1
symroute_gateway_up{gateway="we\"ird\\gw\nx"} 0
# HELP symroute_probe_rtt_seconds Mean round trip of the gateway's recent answered health probes (the last 10).
# TYPE symroute_probe_rtt_seconds gauge
symroute_probe_rtt_seconds{gateway="isp1"} 0.0015
# HELP symroute_probe_loss_ratio Lost health probes over the gateway's check window (all its targets).
# TYPE symroute_probe_loss_ratio gauge
symroute_probe_loss_ratio{gateway="isp1"} 0.2
# HELP symroute_failovers_total Times the gateway went from up to down since the daemon started.
# TYPE symroute_failovers_total counter
symroute_failovers_total{gateway="isp1"} 0
symroute_failovers_total{gateway="we\"ird\\gw\nx"} 2
# HELP symroute_connections Conntrack entries carrying the gateway's route or reply mark (connections symroute pins to it).
# TYPE symroute_connections gauge
symroute_connections{gateway="isp1"} 3
symroute_connections{gateway="we\"ird\\gw\nx"} 0
# HELP symroute_exec_packets_total New connections `symroute exec --gateway` sent via the gateway (their first packets).
# TYPE symroute_exec_packets_total counter
symroute_exec_packets_total{gateway="isp1"} 2
symroute_exec_packets_total{gateway="we\"ird\\gw\nx"} 0
# HELP symroute_policy_packets_total Packets the policy classified: the first packet of each new connection it matched.
# TYPE symroute_policy_packets_total counter
symroute_policy_packets_total{policy="smtp-out"} 7
# HELP symroute_policy_bytes_total Bytes of the packets the policy classified (first packets of new connections only).
# TYPE symroute_policy_bytes_total counter
symroute_policy_bytes_total{policy="smtp-out"} 420
# HELP symroute_reconcile_duration_seconds Duration of the daemon's reconciles (observe, plan, diff, apply), failed ones included.
# TYPE symroute_reconcile_duration_seconds histogram
symroute_reconcile_duration_seconds_bucket{le="0.005"} 1
symroute_reconcile_duration_seconds_bucket{le="0.01"} 1
symroute_reconcile_duration_seconds_bucket{le="0.025"} 3
symroute_reconcile_duration_seconds_bucket{le="0.05"} 3
symroute_reconcile_duration_seconds_bucket{le="0.1"} 3
symroute_reconcile_duration_seconds_bucket{le="0.25"} 3
symroute_reconcile_duration_seconds_bucket{le="0.5"} 3
symroute_reconcile_duration_seconds_bucket{le="1"} 3
symroute_reconcile_duration_seconds_bucket{le="2.5"} 3
symroute_reconcile_duration_seconds_bucket{le="5"} 3
symroute_reconcile_duration_seconds_bucket{le="10"} 3
symroute_reconcile_duration_seconds_bucket{le="+Inf"} 4
symroute_reconcile_duration_seconds_sum 30.043
symroute_reconcile_duration_seconds_count 4
# HELP symroute_apply_errors_total Reconciles of the daemon that failed (an error, or foreign objects in the way): nothing was changed by them.
# TYPE symroute_apply_errors_total counter
symroute_apply_errors_total 3
# HELP symroute_config_last_reload_successful 1 when the last config load (startup, SIGHUP, `symroute apply` through the daemon) was taken, 0 when it was refused (the previous config runs).
# TYPE symroute_config_last_reload_successful gauge
symroute_config_last_reload_successful 0
# HELP symroute_config_last_reload_success_timestamp_seconds When a config was last taken, in seconds since the Unix epoch.
# TYPE symroute_config_last_reload_success_timestamp_seconds gauge
symroute_config_last_reload_success_timestamp_seconds 1796000000.5
# HELP symroute_build_info The running symroute's version and the git commit it was built from (unknown outside git); always 1.
# TYPE symroute_build_info gauge
symroute_build_info{version="VERSION",commit="COMMIT"} 1
# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.
# TYPE process_cpu_seconds_total counter
process_cpu_seconds_total 1.25
# HELP process_resident_memory_bytes Resident memory size in bytes.
# TYPE process_resident_memory_bytes gauge
process_resident_memory_bytes 4096
# HELP process_virtual_memory_bytes Virtual memory size in bytes.
# TYPE process_virtual_memory_bytes gauge
process_virtual_memory_bytes 8192
# HELP process_start_time_seconds Start time of the process since unix epoch in seconds.
# TYPE process_start_time_seconds gauge
process_start_time_seconds 1796000000
# HELP process_open_fds Number of open file descriptors.
# TYPE process_open_fds gauge
process_open_fds 9
# HELP process_max_fds Maximum number of open file descriptors.
# TYPE process_max_fds gauge
process_max_fds 4096
"#
        .replace("VERSION", VERSION)
        .replace("COMMIT", COMMIT);
        assert_eq!(page, want);
    }

    #[test]
    fn failed_live_reads_leave_their_samples_out() {
        let page = render(&snapshot(), &Live::default());
        assert!(
            page.contains("# TYPE symroute_connections gauge\n# HELP symroute_exec_packets_total")
        );
        assert!(page.contains(
            "# TYPE symroute_exec_packets_total counter\n# HELP symroute_policy_packets_total"
        ));
        assert!(!page.contains("symroute_policy_bytes_total{"));
        assert!(page.contains("symroute_gateway_up{gateway=\"isp1\"} 1\n"));
    }

    #[test]
    fn help_is_escaped_and_floats_are_prometheus_floats() {
        let mut p = Page::default();
        p.family("x", "gauge", "a\\b\nc");
        assert_eq!(p.0, "# HELP x a\\\\b\\nc\n# TYPE x gauge\n");
        assert_eq!(float(f64::INFINITY), "+Inf");
        assert_eq!(float(f64::NAN), "NaN");
        assert_eq!(float(1.0), "1");
        assert_eq!(float(0.25), "0.25");
    }

    fn status_of(head: &str) -> (String, String) {
        let complete = head_end(head.as_bytes()).is_some();
        let end = head_end(head.as_bytes()).unwrap_or(head.len());
        let out = respond(&head.as_bytes()[..end], complete, || {
            Arc::new("PAGE".into())
        });
        let out = String::from_utf8(out).unwrap();
        let status = out.lines().next().unwrap().to_string();
        let body = out.split_once("\r\n\r\n").unwrap().1.to_string();
        (status, body)
    }

    #[test]
    fn only_get_metrics_is_served() {
        assert_eq!(
            status_of("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            ("HTTP/1.0 200 OK".into(), "PAGE".into())
        );
        assert_eq!(
            status_of("GET /metrics?x=1 HTTP/1.0\n\n").0,
            "HTTP/1.0 200 OK"
        );
        assert_eq!(
            status_of("HEAD /metrics HTTP/1.0\r\n\r\n"),
            ("HTTP/1.0 200 OK".into(), "".into())
        );
        let (status, index) = status_of("GET / HTTP/1.0\r\n\r\n");
        assert_eq!(status, "HTTP/1.0 200 OK");
        assert!(
            index.contains("<a href=\"/metrics\">/metrics</a>"),
            "{index}"
        );
        assert_eq!(
            status_of("GET /index.html HTTP/1.0\r\n\r\n").0,
            "HTTP/1.0 404 Not Found"
        );
        assert_eq!(
            status_of("GET /metricsx HTTP/1.0\r\n\r\n").0,
            "HTTP/1.0 404 Not Found"
        );
        assert_eq!(
            status_of("POST /metrics HTTP/1.0\r\n\r\n").0,
            "HTTP/1.0 405 Method Not Allowed"
        );
        assert_eq!(
            status_of("GET /metrics\r\n\r\n").0,
            "HTTP/1.0 400 Bad Request"
        );
        assert_eq!(
            status_of("GET /metrics HTTP/1.0\r\n").0,
            "HTTP/1.0 400 Bad Request"
        );
        let big = format!("GET /metrics HTTP/1.0\r\nX: {}", "a".repeat(MAX_REQUEST));
        let out = respond(big.as_bytes(), false, || unreachable!());
        assert!(out.starts_with(b"HTTP/1.0 431 "));
        let ok = String::from_utf8(respond(b"GET /metrics HTTP/1.0", true, || {
            Arc::new("abc".into())
        }))
        .unwrap();
        assert!(
            ok.contains(
                "Content-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: 3\r\n"
            ),
            "{ok}"
        );
    }

    #[test]
    fn a_head_and_a_get_share_one_render_until_something_changes() {
        let m = Metrics::start(None).unwrap();
        let mut scrape = Scrape {
            shared: m.shared.clone(),
            cache: None,
        };
        let head = respond(b"HEAD /metrics HTTP/1.0", true, || scrape.page());
        let first = scrape.page();
        let get = respond(b"GET /metrics HTTP/1.0", true, || scrape.page());
        assert!(Arc::ptr_eq(&first, &scrape.page()), "rendered again");
        let len = format!("Content-Length: {}\r\n", first.len());
        assert!(String::from_utf8_lossy(&head).contains(&len));
        assert!(get.ends_with(first.as_bytes()));
        // A new reconcile's figures make a new page.
        m.reconciled(Duration::from_millis(5));
        let second = scrape.page();
        assert!(!Arc::ptr_eq(&first, &second));
        assert!(second.contains("symroute_reconcile_duration_seconds_count 1"));
    }

    #[test]
    fn applied_takes_the_plan_and_the_live_state() {
        let m = Metrics::start(None).unwrap();
        m.reconciled(Duration::from_millis(20));
        let text = include_str!("../../examples/two-isps-firewall.toml");
        let model = crate::config::parse_str(text, "t.toml").unwrap();
        let plan = crate::plan::build(&model, &crate::plan::HostView::default());
        let mut gateways = super::super::gateways::Live::default();
        gateways.observe(&plan, std::time::SystemTime::now());
        let live = gateways.snapshot(&model, &BTreeMap::new());
        m.applied(&plan, &live);
        let s = lock(&m.shared).clone();
        assert_eq!(s.reconcile.count, 1);
        assert_eq!(s.gateways.len(), 2);
        assert_eq!(s.policies.len(), 2);
        let isp1 = &s.gateways[0];
        assert_eq!((isp1.live.failovers, isp1.live.rtt_ms), (0, None));
        let g = &plan.gateways[0];
        let want: Vec<u32> = [g.reply_mark, g.route_mark]
            .into_iter()
            .flatten()
            .map(|m| m.bits())
            .collect();
        assert_eq!(isp1.marks, want, "{isp1:?}");
        let page = render(&s, &Live::default());
        assert!(
            page.contains("symroute_gateway_up{gateway=\"isp1\"} 0\n"),
            "no links in an empty host view: {page}"
        );
    }
}
