pub mod doctor;
pub mod host;
pub mod import;
pub mod netfilter;
pub mod routing;
pub mod trace;
