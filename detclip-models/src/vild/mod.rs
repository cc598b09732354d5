//! ViLD (Gu et al., *Open-vocabulary Object Detection via Vision and Language Knowledge
//! Distillation*, ICLR 2022): a two-stage Mask R-CNN-style detector whose classifier is CLIP's
//! text embeddings.
//!
//! - The detector: ResNet + FPN ([`crate::resnet`], [`crate::fpn`]), a region proposal network
//!   ([`RpnHead`], [`select_proposals`], [`rpn_loss`]), torchvision's multi-level RoIAlign
//!   ([`MultiScaleRoiAlign`]), the two-FC box head ([`TwoMlpHead`]) with *class-agnostic* box
//!   regression and a class-agnostic mask head ([`MaskHead`]): one box and one mask per RoI,
//!   so that novel classes get boxes and masks too.
//! - ViLD-text (§3.2): each RoI is projected to the embedding space and classified by cosine
//!   similarity with `[e_bg, text embeddings]` over a temperature ([`vild_text_logits`]); the
//!   class embeddings come from CLIP's text tower with prompt templates, averaged over an
//!   ensemble of templates and cached ([`ClassEmbeddings`]).
//! - ViLD-image (§3.3): the L1 distance between the normalised region embeddings of
//!   precomputed proposals and CLIP's image embeddings of their crops ([`vild_loss`]).
//! - Inference (§3.4): base and novel classes together, optionally the ViLD-ensemble of a
//!   text-trained and an image-distilled projection with the paper's geometric weighting
//!   ([`predict`]), then per-class NMS.
//!
//! Reference for the shared parts: torchvision's `maskrcnn_resnet50_fpn` (key layout in
//! [`torchvision_keys`]); fixtures: `scripts/fixtures/vild.py`.

mod heads;
mod keys;
mod loss;
mod model;
mod predict;
mod roi;
mod rpn;
mod sampling;
mod text;

pub use heads::*;
pub use keys::*;
pub use loss::*;
pub use model::*;
pub use predict::*;
pub use roi::*;
pub use rpn::*;
pub use sampling::*;
pub use text::*;
