//! The open-vocabulary splits of the literature, as data blocks for `detclip train --data`.
//!
//! - **COCO 48/17** (Bansal et al., ECCV 2018; OVR-CNN, ViLD, RegionCLIP, DetCLIPv2's COCO
//!   numbers): train on the boxes of 48 base categories, evaluate on 65 (the 48 and 17 novel
//!   ones); the other 15 COCO categories are left out of both. Novel AP is the headline.
//! - **LVIS rare-as-novel** (ViLD, Gu et al., ICLR 2022): train on the boxes of LVIS's
//!   frequent and common categories, evaluate on all 1203 with the federated LVIS evaluator;
//!   APr (the 337 rare categories) is the headline.
//!
//! The images of a split's training file all stay; only the boxes of held-out categories go
//! (the protocols keep novel objects in the pictures, unlabelled).

use std::path::Path;

use crate::data::{CocoEvalConfig, DataConfig, DatasetConfig, EvalConfig, SourceConfig};

/// The 48 base categories of the COCO open-vocabulary split.
pub const COCO_BASE_48: [&str; 48] = [
    "person",
    "bicycle",
    "car",
    "motorcycle",
    "train",
    "truck",
    "boat",
    "bench",
    "bird",
    "horse",
    "sheep",
    "bear",
    "zebra",
    "giraffe",
    "backpack",
    "handbag",
    "suitcase",
    "frisbee",
    "skis",
    "kite",
    "surfboard",
    "bottle",
    "fork",
    "spoon",
    "bowl",
    "banana",
    "apple",
    "sandwich",
    "orange",
    "broccoli",
    "carrot",
    "pizza",
    "donut",
    "chair",
    "bed",
    "toilet",
    "tv",
    "laptop",
    "mouse",
    "remote",
    "microwave",
    "oven",
    "toaster",
    "refrigerator",
    "book",
    "clock",
    "vase",
    "toothbrush",
];

/// The 17 novel categories of the COCO open-vocabulary split.
pub const COCO_NOVEL_17: [&str; 17] = [
    "airplane",
    "bus",
    "cat",
    "dog",
    "cow",
    "elephant",
    "umbrella",
    "tie",
    "snowboard",
    "skateboard",
    "cup",
    "knife",
    "cake",
    "couch",
    "keyboard",
    "sink",
    "scissors",
];

fn strings(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

fn detection_source(
    annotations: &Path,
    images: &Path,
    categories: Option<Vec<String>>,
    drop_rare: bool,
) -> SourceConfig {
    SourceConfig {
        name: "detection".into(),
        dataset: DatasetConfig::Coco {
            annotations: annotations.into(),
            images: images.into(),
            categories,
            drop_rare,
        },
        batch_size: 2,
        short_sides: vec![640, 672, 704, 736, 768, 800],
        max_long: Some(1333),
        weight: 1.0,
        flip_prob: 0.5,
    }
}

/// COCO 48/17: a detection source of the base boxes of `train` (an `instances_train2017.json`
/// and its image folder), evaluated on the 65 categories of `val` with the 17 novel ones held
/// out. Multi-scale training at 640–800 short sides, batch 2: change what the run needs.
pub fn coco_48_17(train: (&Path, &Path), val: (&Path, &Path)) -> DataConfig {
    let all: Vec<String> = strings(&COCO_BASE_48)
        .into_iter()
        .chain(strings(&COCO_NOVEL_17))
        .collect();
    DataConfig {
        sources: vec![detection_source(
            train.0,
            train.1,
            Some(strings(&COCO_BASE_48)),
            false,
        )],
        eval: Some(EvalConfig::Coco(CocoEvalConfig {
            annotations: val.0.into(),
            images: val.1.into(),
            held_out: strings(&COCO_NOVEL_17),
            held_out_rare: false,
            max_images: None,
            categories: Some(all),
        })),
        size_divisor: 32,
    }
}

/// LVIS rare-as-novel: a detection source of the frequent and common boxes of `train` (an
/// `lvis_v1_train.json` and its image folder), evaluated on every category of `val` with the
/// rare ones held out (and the federated LVIS evaluation: APr).
pub fn lvis_rare_novel(train: (&Path, &Path), val: (&Path, &Path)) -> DataConfig {
    DataConfig {
        sources: vec![detection_source(train.0, train.1, None, true)],
        eval: Some(EvalConfig::Coco(CocoEvalConfig {
            annotations: val.0.into(),
            images: val.1.into(),
            held_out: Vec::new(),
            held_out_rare: true,
            max_images: None,
            categories: None,
        })),
        size_divisor: 32,
    }
}
