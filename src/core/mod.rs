//! The pure core: certificates, policy, schedules, trust bundles, the rotation state machine,
//! and durations. Nothing here talks to Kubernetes, reads a clock or does I/O:
//! every function takes the time (and whatever it observed) as an argument, so each is tested
//! with a fixed clock. It imports the resource types of [`crate::api`] and nothing from the
//! controllers or the process.

pub mod bundle;
pub mod duration;
pub mod handshake;
pub mod keystore;
pub mod pki;
pub mod policy;
pub mod rotation;
pub mod schedule;
