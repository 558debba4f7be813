//! pinhook: a Kubernetes admission webhook that rejects mutable image tags.
//!
//! The pure core ([`reference`], [`policy`], [`workload`], [`admission`]) decides; the edges
//! ([`server`], [`audit`], [`check`]) read requests and write answers.
#![forbid(unsafe_code)]

pub mod admission;
pub mod audit;
pub mod bootstrap;
pub mod certs;
pub mod check;
pub mod config;
pub mod duration;
pub mod metrics;
pub mod mutate;
pub mod patterns;
pub mod pin;
pub mod policy;
pub mod reference;
pub mod reload;
pub mod resolve;
pub mod server;
pub mod tls;
pub mod workload;
