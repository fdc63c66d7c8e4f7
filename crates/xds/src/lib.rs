//! Envoy's v3 API as Skiff uses it: the real protobuf types (`envoy-types`), and their proto3 JSON
//! mapping (YAML/JSON bootstraps in, `/config_dump` out) through a descriptor set built from the
//! same `.proto` files.

pub use envoy_types::pb;
pub mod client;
mod grpc;
pub mod json;
pub mod server;
