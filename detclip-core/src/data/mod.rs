//! Data: the unified sample (image, boxes, concept names), the dataset readers (COCO, LVIS,
//! ODVG, image-text pairs), image decoding, transforms, batching, prompts and the synthetic
//! world.
//!
//! Every source becomes a [`Sample`]: DetCLIPv2's single formulation, so the learner never
//! needs to know where a sample came from ([`SourceKind`] is data, for loss weighting). The
//! book's *Data* chapter describes the formats, conventions and the bad-input policy.

pub mod batch;
pub mod coco;
pub mod image;
pub mod odvg;
pub mod pairs;
pub mod phrases;
pub mod prompt;
pub mod report;
pub mod resample;
pub mod sample;
pub mod synthetic;
pub mod transforms;
pub mod vocab;

pub use batch::{Batch, collate};
pub use coco::{read_coco, read_lvis};
pub use image::{Orientation, decode_image, image_size};
pub use odvg::read_odvg;
pub use pairs::{image_text_sample, read_coco_captions, read_pairs};
pub use phrases::{noun_phrase_texts, noun_phrases};
pub use prompt::{
    NegativeSampling, Prompt, PromptEntry, PromptFormat, TrainingPrompt, chunk_prompts,
    detection_prompt, fixed_chunk_prompts, glip_clean_name, token_range, training_prompt,
};
pub use report::{Dataset, ImageCheck, OnError, ReadOptions, ReadReport};
pub use resample::{ResampleFilter, resize_like_pil};
pub use sample::{Category, Concept, Frequency, ImageSource, Instance, Sample, SourceKind, Span};
pub use transforms::{
    Loaded, Normalize, Prepared, RandomCrop, TestTransform, TrainTransform, crop, hflip,
    keep_ratio_size, resize, resize_keep_ratio,
};
pub use vocab::read_vocabulary;
