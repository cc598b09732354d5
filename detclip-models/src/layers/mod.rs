//! Small pieces shared by the blocks: input checks, norm helpers, L2 normalisation, a pool that works
//! around a burn-cubecl layout bug.

mod check;
mod frozen_bn;
mod normalize;
mod pool;
mod rows;

pub use check::*;
pub use frozen_bn::*;
pub use normalize::*;
pub use pool::*;
pub use rows::*;
