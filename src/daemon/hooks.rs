//! `[settings] on_change`: commands run on every gateway up↔down change (and once per
//! gateway at startup, from the old state "none"), with the event in environment
//! variables. The actor only queues them; one worker thread runs them in
//! order (`/bin/sh -c CMD`, each in its own process group), waits at most `LIMIT` for
//! each, kills the group after that, and logs one line per command.

use std::os::unix::process::CommandExt;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Sender};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::gateways::Transition;
use super::Daemon;
use crate::plan::Plan;

/// How long one hook may run before it is killed.
pub const LIMIT: Duration = Duration::from_secs(30);

struct Job {
    commands: Vec<String>,
    env: Vec<(&'static str, String)>,
    what: String,
}

/// The queue to the worker thread (started on first use).
#[derive(Default)]
pub struct Hooks(Option<Sender<Job>>);

impl Hooks {
    /// Queue `commands` for one transition; never blocks.
    pub fn fire(&mut self, commands: &[String], t: &Transition, netns: Option<&str>) {
        if commands.is_empty() {
            return;
        }
        let job = Job {
            commands: commands.to_vec(),
            env: env(t, netns),
            what: format!("gateway {} {}→{}", t.gateway, t.old, t.new),
        };
        // A send fails only if the worker died (it never should): start another.
        let job = match &self.0 {
            Some(tx) => match tx.send(job) {
                Ok(()) => return,
                Err(mpsc::SendError(job)) => job,
            },
            None => job,
        };
        self.start_with(job);
    }

    fn start_with(&mut self, job: Job) {
        let (tx, rx) = mpsc::channel::<Job>();
        let spawned = std::thread::Builder::new()
            .name("hooks".into())
            .spawn(move || {
                for job in rx {
                    for cmd in &job.commands {
                        run_one(cmd, &job.env, &job.what);
                    }
                }
            });
        match spawned {
            Ok(_) => {
                let _ = tx.send(job);
                self.0 = Some(tx);
            }
            Err(e) => warn!(
                "on_change: could not start the hook thread, not running hooks for {}: {e}",
                job.what
            ),
        }
    }
}

impl Daemon {
    /// After an apply: note each gateway's state and run the hooks for its up↔down
    /// changes (`log_gateways` has logged them). Returns the changes.
    pub(super) fn gateways_observed(&mut self, plan: &Plan) -> Vec<Transition> {
        let changes = self.live.observe(plan, std::time::SystemTime::now());
        for t in &changes {
            self.hooks
                .fire(&self.model.settings.on_change, t, self.netns.as_deref());
        }
        changes
    }
}

/// The environment a hook sees.
fn env(t: &Transition, netns: Option<&str>) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("SYMROUTE_EVENT", "gateway".to_string()),
        ("SYMROUTE_GATEWAY", t.gateway.clone()),
        ("SYMROUTE_INTERFACE", t.interface.clone()),
        ("SYMROUTE_OLD_STATE", t.old.to_string()),
        ("SYMROUTE_NEW_STATE", t.new.to_string()),
        ("SYMROUTE_REASON", t.reason.clone()),
    ];
    if let Some(ns) = netns {
        env.push(("SYMROUTE_NETNS", ns.to_string()));
    }
    env
}

fn run_one(cmd: &str, env: &[(&'static str, String)], what: &str) {
    let started = Instant::now();
    let child = Command::new("/bin/sh")
        .arg("-c")
        .arg(cmd)
        .envs(env.iter().map(|(k, v)| (*k, v)))
        .stdin(Stdio::null())
        .process_group(0)
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            warn!("on_change `{cmd}` ({what}): could not start /bin/sh: {e}");
            return;
        }
    };
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break Ok(st),
            Ok(None) if started.elapsed() >= LIMIT => {
                // SAFETY: kill(2) on the process group our child leads.
                unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
                let _ = child.wait();
                break Err(format!("killed after {} s", LIMIT.as_secs()));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => break Err(format!("waiting for it failed: {e}")),
        }
    };
    let ms = started.elapsed().as_millis();
    match status {
        Ok(st) if st.success() => info!("on_change `{cmd}` ({what}): exit 0 in {ms} ms"),
        Ok(st) => warn!("on_change `{cmd}` ({what}): {} in {ms} ms", describe(st)),
        Err(why) => warn!("on_change `{cmd}` ({what}): {why}"),
    }
}

fn describe(st: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (st.code(), st.signal()) {
        (Some(c), _) => format!("exit {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => st.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hook_sees_the_event_in_its_environment() {
        let dir = std::env::temp_dir().join(format!("symroute-hook-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("env");
        let t = Transition {
            gateway: "isp1".into(),
            interface: "up1".into(),
            old: "up",
            new: "down",
            reason: "health check: 3 of last 5 probes lost".into(),
        };
        let cmd = format!("env | grep ^SYMROUTE_ | sort > {}", out.display());
        run_one(&cmd, &env(&t, Some("fw")), "test");
        let text = std::fs::read_to_string(&out).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(
            text,
            "SYMROUTE_EVENT=gateway\nSYMROUTE_GATEWAY=isp1\nSYMROUTE_INTERFACE=up1\n\
             SYMROUTE_NETNS=fw\nSYMROUTE_NEW_STATE=down\nSYMROUTE_OLD_STATE=up\n\
             SYMROUTE_REASON=health check: 3 of last 5 probes lost\n"
        );
    }
}
