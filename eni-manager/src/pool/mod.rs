//! The warm pool: the durable model (`state`), the decisions (`planner`), the cloud
//! operations that carry them out (`ops`) and the actor that owns it all (`manager`).

pub mod manager;
pub mod ops;
pub mod planner;
pub mod state;

#[cfg(test)]
mod fake_cloud;
#[cfg(test)]
mod manager_tests;
