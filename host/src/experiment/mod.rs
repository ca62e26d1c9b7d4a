//! Experiments: A/B tests between pipelines (`experiments/*.yaml`), served under their own
//! name as a chat-completions `model`.
//!
//! - [`load`]: one file → a validated [`Experiment`], or [`crate::pipeline::LoadError`]s with file:line:col.
//! - [`assign`]: which variant a user gets (weighted rendezvous hashing: sticky, stateless,
//!   minimal movement when a weight changes).
//! - [`Experiments`]: every experiment of a folder, hot-reloaded like the pipelines.
//! - [`stats`]: per-variant results with intervals, from what the store logged.
//!
//! See docs/experiments.md.

pub mod assign;
pub mod load;
mod registry;
pub mod stats;

pub use load::{AssignBy, Experiment, ExperimentSpec, Variant};
pub use registry::{ExperimentInfo, ExperimentWatch, Experiments, default_experiments_dir};
