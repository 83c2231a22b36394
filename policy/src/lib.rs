//! Kubernetes NetworkPolicy v1 compiler.
//!
//! - [`types`]: the Kubernetes objects (`NetworkPolicy`, `Pod`, `Namespace`), reduced serde
//!   structs.
//! - [`compile()`]: policies + pods + namespaces -> per-pod [`PodRules`].
//! - [`rules`]: the output, per pod and direction a list of CIDR entries with the protocols
//!   and port ranges allowed, flattened so one longest-prefix lookup decides (the shape the
//!   eBPF LPM trie of `eni-bpf` holds).
//!
//! A crate of its own, not a module of `eni-bpf`: it is pure computation that the manager,
//! `enictl` and the CNI plugin share, and its tests run anywhere, without clang, aya or
//! root. It does no I/O and knows nothing of map layouts (`eni-bpf` converts [`PodRules`]).

#![deny(missing_docs)]

pub mod compile;
pub mod rules;
pub mod types;

#[cfg(test)]
mod tests;

pub use compile::{
    compile, compile_only, pod_ipv4, selector_matches, Compiled, PodRef, PolicyError,
};
pub use rules::{
    Allowed, CidrRule, DirectionRules, PodRules, PortRange, Protocol, MAX_PORT_RANGES,
};
