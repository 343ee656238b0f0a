//! The control socket's protocol (`control` serves it, `symroute status`, `apply`,
//! `confirm`, `ha` and `exec` speak it): one JSON request line, one JSON response line:
//!
//! ```text
//! {"request":"status"}
//! {"request":"reload","config":"/etc/symroute/new.toml","confirm":60}
//! {"request":"confirm"}
//! {"request":"reconcile"}
//! ```
//!
//! A request reaches the actor as `Event::Control(Call)`; the actor answers through the
//! call's `Reply`.

use std::path::PathBuf;
use std::sync::mpsc::Sender;

use serde::{Deserialize, Serialize};

use super::serve;
use crate::kernel::state::HaRole;
use crate::kernel::status::DaemonStatus;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "lowercase")]
pub enum Request {
    /// The daemon's live view: gateways' state, since, loss, round trip.
    Status,
    /// Switch to this config file (validate → apply; a bad one changes nothing). With
    /// `confirm`, go back to the previous config after that many seconds unless a
    /// `confirm` request arrives first.
    Reload {
        config: PathBuf,
        #[serde(default)]
        confirm: Option<u64>,
    },
    /// Keep the config of a pending `reload` with `confirm`.
    Confirm,
    /// Observe and apply now, and answer when done: `symroute exec` asks after moving
    /// into its cgroup, so the table it waits for is one loaded after that move.
    Reconcile,
    /// keepalived's notify (`symroute ha ROLE`): this box's role in an HA pair.
    Ha { role: HaRole },
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    /// The exit code for the command that asked: 0 ok, 1 failure, 2 bad config.
    pub code: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What to print, for people.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lines: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<DaemonStatus>,
}

impl Response {
    pub fn done(lines: Vec<String>) -> Self {
        Response {
            ok: true,
            lines,
            ..Response::default()
        }
    }

    pub fn failed(code: u8, error: impl Into<String>) -> Self {
        Response {
            ok: false,
            code,
            error: Some(error.into()),
            ..Response::default()
        }
    }
}

/// A request on its way to the actor, with where to send the answer.
#[derive(Debug, Clone)]
pub struct Call {
    pub request: Request,
    pub reply: Reply,
}

/// Calls are equal when their requests are (the reply channels cannot be compared).
impl PartialEq for Call {
    fn eq(&self, other: &Self) -> bool {
        self.request == other.request
    }
}

impl Eq for Call {}

/// A response as sent: one JSON line.
pub fn line(resp: &Response) -> Vec<u8> {
    let mut text = serde_json::to_vec(resp).expect("response serializes");
    text.push(b'\n');
    text
}

/// Where the actor's answer to one call goes.
#[derive(Clone)]
pub struct Reply {
    tx: Sender<Vec<u8>>,
    waker: serve::Waker,
}

impl Reply {
    /// The answer goes to `tx`; `waker` has the serving thread pick it up.
    pub fn new(tx: Sender<Vec<u8>>, waker: serve::Waker) -> Reply {
        Reply { tx, waker }
    }

    pub fn send(self, resp: Response) {
        if self.tx.send(line(&resp)).is_ok() {
            self.waker.wake();
        }
    }
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reply")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_lines() {
        let r: Request = serde_json::from_str(r#"{"request":"status"}"#).unwrap();
        assert_eq!(r, Request::Status);
        let r: Request =
            serde_json::from_str(r#"{"request":"reload","config":"/etc/s.toml"}"#).unwrap();
        assert_eq!(
            r,
            Request::Reload {
                config: "/etc/s.toml".into(),
                confirm: None
            }
        );
        assert_eq!(
            serde_json::to_string(&Request::Confirm).unwrap(),
            r#"{"request":"confirm"}"#
        );
        assert_eq!(
            serde_json::to_string(&Response::failed(2, "bad.toml:1:1: x")).unwrap(),
            r#"{"ok":false,"code":2,"error":"bad.toml:1:1: x"}"#
        );
    }
}
