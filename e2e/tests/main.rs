//! End-to-end tests against the real local control plane (`e2e/cluster.sh up`). Each test works
//! in its own namespace and, where it needs one, its own cluster-scoped authority.

mod harness;

mod alerts;
mod bad_input;
mod bundles;
mod fixtures;
mod foundation;
mod issuance;
mod keystores;
mod plugin;
mod recreate;
mod renewal;
mod rotation;
