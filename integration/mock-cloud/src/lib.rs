//! mock-cloud: an Alibaba Cloud ECS/VPC OpenAPI emulator for the project's tests and demo.
//!
//! Layout: `world` (the YAML schema), `state` (the cloud's run-time model: ENIs, addresses,
//! status transitions, persistence), `signature` (V1/V3 verification), `faults` (throttling
//! and injected failures), `api` (action dispatch and response shapes), `metadata` (the
//! instance metadata service), `admin` (the test-only admin API), `hypervisor` (links in
//! network namespaces for attached ENIs), `server` (HTTP). See `docs/mock-cloud.md`.

pub mod admin;
pub mod api;
pub mod faults;
pub mod hypervisor;
pub mod metadata;
pub mod server;
pub mod signature;
pub mod state;
pub mod world;
