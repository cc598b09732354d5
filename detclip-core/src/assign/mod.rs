//! Anchors per FPN level and the ATSS assigner.

mod anchors;
mod atss;

pub use anchors::*;
pub use atss::*;
