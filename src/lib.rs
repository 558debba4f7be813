//! pinhook: a Kubernetes admission webhook that rejects mutable image tags.
//!
//! A request flows one way: [`server`] reads it; [`admission`] reads it once into a view and
//! judges each image once ([`policy`], [`reference`], [`workload`], [`pin`]) into a decision;
//! [`mutate`] resolves what the decision asks for through [`resolve`]; [`answer`] turns
//! decision and results into one answer, which [`server`] serializes and [`audit`] and
//! [`metrics`] read. Everything but `server`, `mutate` and `resolve` is pure.
#![forbid(unsafe_code)]

pub mod admission;
pub mod answer;
pub mod audit;
pub mod bootstrap;
pub mod budget;
pub mod certs;
pub mod check;
pub mod config;
pub mod drift;
pub mod duration;
pub mod idle;
pub mod krm;
pub mod logs;
pub mod manifest;
pub mod metrics;
pub mod mutate;
pub mod offline;
pub mod patterns;
pub mod pin;
pub mod pin_files;
pub mod policy;
pub mod reference;
pub mod reload;
pub mod resolve;
pub mod server;
pub mod text;
pub mod tls;
pub mod workload;
