//! Anchors per FPN level, the distance box coder of dense heads, and the ATSS assigner.

mod anchors;
mod atss;
mod level;

pub use anchors::*;
pub use atss::*;
pub use level::*;
