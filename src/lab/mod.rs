//! Namespace lab: the seed topologies built from network namespaces, with real
//! in-process TCP/UDP traffic. Used by `symroute lab` and the end-to-end tests.

pub mod ha;
pub mod interrupt;
pub mod netns;
pub mod service;
pub mod topology;
pub mod traffic;

pub use ha::{HaDaemons, HaPair};
pub use netns::{in_netns, veth, veth_mac, EtcNetns, Netns};
pub use service::Service;
pub use topology::{ProxyRelay, Services, TwoIsps};
pub use traffic::{tcp_probe, udp_probe, Session, TcpEcho, TcpServer, UdpEcho, UdpSource};
