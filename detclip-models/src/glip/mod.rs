//! GLIP (Li et al., "Grounded Language-Image Pre-training", CVPR 2022; reference:
//! microsoft/GLIP, `maskrcnn_benchmark/modeling/rpn/vldyhead.py`): detection as phrase
//! grounding with deep fusion of image and text.
//!
//! - [`XMhaFusion`]: the cross-modality multi-head attention (X-MHA, eq. 4–5) with the
//!   released model's stabilisers (logit clamping, row-max subtraction, padding mask,
//!   layer scale);
//! - [`DyConv`]: one DyHead block (scale-, spatial- and task-aware attention) with the
//!   released model's shared-offset modulated deformable convolutions;
//! - [`Glip`] / [`GlipConfig`] (`glip_t()`, `small()`): backbone, FPN P3–P7, the VLDyHead
//!   tower and the ATSS head with token-level alignment logits, returning raw outputs;
//! - [`glip_loss`]: positive map, ATSS assignment, token focal + GIoU + centerness;
//! - [`glip_detect`]: phrase scores, decoding, NMS; [`GlipDetector::detect_vocabulary`]: a
//!   vocabulary of any size in prompt chunks, as the released evaluation runs it;
//! - [`glip_keys`]: the released checkpoint layout;
//! - [`described_prompts`]: prompts whose classes carry descriptions (`"name, description"`);
//!   [`GlipPromptConfig`]: this project's prompt rule or the released evaluation's.
//!
//! Parity against `scripts/fixtures/glip.py`: see `book/src/glip.md`.

mod dyhead;
mod inference;
mod keys;
mod loss;
mod model;
mod prompt;
mod xmha;

pub use dyhead::*;
pub use inference::*;
pub use keys::*;
pub use loss::*;
pub use model::*;
pub use prompt::*;
pub use xmha::*;

use crate::import::KeyMap;

/// Rename rules from the released names inside one `VLDyHead.dyhead_tower` entry to ours:
/// `DyConv.{j}` → `convs.{j}`, `AttnConv.1` → `attn_conv`, `relu.fc.{0,2}` →
/// `relu.{squeeze,expand}`; `b_attn.*` (X-MHA) keeps its names. Applies anywhere in a key, so
/// the same rules serve a whole GLIP checkpoint.
pub fn fusion_block_keys() -> KeyMap {
    KeyMap::new()
        .rename(r"(^|\.)DyConv\.(\d+)\.", "${1}convs.${2}.")
        .rename(r"(^|\.)AttnConv\.1\.", "${1}attn_conv.")
        .rename(r"(^|\.)relu\.fc\.0\.", "${1}relu.squeeze.")
        .rename(r"(^|\.)relu\.fc\.2\.", "${1}relu.expand.")
}
