//! Skiff's data plane. A connection flows the way the seeds draw it:
//! capture → [`listener`] (original-destination hand-off, sniffing) → [`filter_chain`] →
//! [`http`] ([`route`]) or [`tcp`] → [`cluster`] (load balancing, circuit breakers) → endpoint.
//!
//! Configuration arrives as Envoy v3 protos (bootstrap file or xDS) and is turned once into the
//! validated [`model`] by [`convert`].

pub mod access_log;
pub mod admin;
pub mod app_probe;
pub mod batch_io;
pub mod bootstrap;
pub mod cli;
pub mod cluster;
pub mod convert;
pub mod cors;
pub mod detect;
pub mod filter_chain;
pub mod hash;
pub mod http;
pub mod listener;
pub mod model;
pub mod outlier;
pub mod route;
pub mod server;
pub mod sidecar;
pub mod snapshot;
pub mod stats;
pub mod tcp;
pub mod tls;
pub mod upstream;
pub mod worker;
