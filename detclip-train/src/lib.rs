//! detclip-train
#![warn(missing_docs)]
