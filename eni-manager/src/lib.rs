//! eni-manager: the node daemon. It keeps a warm pool of ENIs and addresses (`pool`), records
//! every promise durably before making it (`store`), configures attached ENIs on the node
//! (`node`), answers the CNI over a unix socket (`rpc`) and exports metrics (`metrics`).
//! `config` reads and checks the configuration; `provider` builds the cloud client;
//! `services` feeds Service definitions to the eBPF socket load balancer (`eni_bpf`);
//! `policy` keeps the per-pod NetworkPolicy rules in the eBPF policy maps; `masquerade`
//! SNATs pod traffic leaving the node in eBPF (ip-masq-agent semantics); `hostports` carries
//! the pods' host ports from the pool to the services loop.
#![deny(missing_docs)]

pub mod config;
pub mod hostports;
pub mod kubewatch;
pub mod masquerade;
pub mod metrics;
pub mod node;
pub mod policy;
pub mod pool;
pub mod provider;
pub mod rpc;
pub mod services;
pub mod store;
