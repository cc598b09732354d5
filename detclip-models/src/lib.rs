//! detclip-models: backend-generic model blocks (filled by the building-blocks issue).
#![warn(missing_docs)]
