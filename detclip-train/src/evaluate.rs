//! Evaluation during and after training: a recipe's detections on a set of samples, scored
//! with `detclip_core::eval`'s COCO evaluator (pycocotools parity), over all concepts and over
//! the seen and held-out ones separately.
//!
//! An [`EvalSet`] is the synthetic world's test split (ground truth built from its samples) or
//! a COCO-format instances json (scored against the file's own ground truth: its image and
//! category ids, areas and crowd flags). An LVIS file (categories with frequencies) is also
//! scored with the federated LVIS evaluator (APr / APc / APf).

use std::collections::HashSet;
use std::path::Path;

use detclip_core::data::synthetic::Split;
use detclip_core::data::{
    Frequency, Loaded, OnError, Orientation, Prepared, ReadOptions, Sample, collate, read_coco,
};
use detclip_core::eval::json::{GtAnnotation, GtCategory, GtImage};
use detclip_core::eval::{
    CocoStats, Detection, GroundTruth, LvisStats, evaluate_coco, evaluate_lvis,
};
use detclip_core::ext::DetclipOps;
use detclip_core::{DetError, Result};
use serde::Serialize;

use crate::data::{CocoEvalConfig, EvalConfig, SyntheticConfig, names_category};
use crate::recipe::{Detected, Recipe};

/// The evaluation set: samples, the vocabulary they are scored on, and which concepts were
/// held out of training.
#[derive(Debug, Clone)]
pub struct EvalSet {
    /// The samples.
    pub samples: Vec<Sample>,
    /// Every concept name.
    pub vocabulary: Vec<String>,
    /// The held-out names.
    pub held_out: Vec<String>,
    /// For a set read from a file: its own ground truth and ids. `None`: the ground truth is
    /// built from the samples ([`ground_truth`]).
    pub truth: Option<FileTruth>,
}

/// The ground truth of an annotation file, and how the set's samples and vocabulary map to
/// its ids.
#[derive(Debug, Clone)]
pub struct FileTruth {
    /// The file's ground truth (restricted to the set's images).
    pub ground_truth: GroundTruth,
    /// The image id of each sample.
    pub image_ids: Vec<i64>,
    /// The category id of each vocabulary entry.
    pub category_ids: Vec<i64>,
}

impl EvalSet {
    /// The evaluation set a recipe's data config names, if any.
    pub fn of<R: Recipe>(recipe: &R) -> Result<Option<Self>> {
        recipe
            .data()
            .eval
            .as_ref()
            .map(Self::from_config)
            .transpose()
    }

    /// The set `config` describes (files are read and checked here).
    pub fn from_config(config: &EvalConfig) -> Result<Self> {
        match config {
            EvalConfig::Synthetic(c) => Self::synthetic(c),
            EvalConfig::Coco(c) => Self::coco(c),
        }
    }

    /// The test split of a synthetic world; the held-out concepts are the world's.
    pub fn synthetic(config: &SyntheticConfig) -> Result<Self> {
        let world = config.world()?;
        Ok(Self {
            samples: config.samples(Split::Test)?,
            vocabulary: world.vocabulary(Split::Test),
            held_out: world.held_out_vocabulary(),
            truth: None,
        })
    }

    /// A COCO-format instances json and its images.
    pub fn coco(config: &CocoEvalConfig) -> Result<Self> {
        for (path, what) in [
            (&config.annotations, "annotation file"),
            (&config.images, "image folder"),
        ] {
            if !path.exists() {
                return Err(DetError::Io {
                    path: path.display().to_string(),
                    msg: format!("the evaluation set's {what} does not exist"),
                });
            }
        }
        let options = ReadOptions::default().on_error(OnError::Stop);
        let mut dataset = read_coco(&config.annotations, &config.images, options)?;
        if config.categories.is_some() {
            let keep = crate::data::kept_categories(
                &dataset.categories,
                config.categories.as_deref(),
                false,
                &config.annotations,
            )?;
            dataset
                .categories
                .retain(|c| keep.contains(&c.concept_name()));
        }
        let mut samples = dataset.samples;
        if let Some(n) = config.max_images {
            samples.truncate(n);
        }
        let image_ids = samples
            .iter()
            .map(|s| image_id(s, &config.annotations))
            .collect::<Result<Vec<_>>>()?;
        let vocabulary: Vec<String> = dataset
            .categories
            .iter()
            .map(|c| c.concept_name())
            .collect();
        let category_ids: Vec<i64> = dataset.categories.iter().map(|c| c.id as i64).collect();
        let held_out = held_out_names(config, &dataset.categories)?;
        let mut ground_truth = GroundTruth::from_file(&config.annotations)?;
        let kept: HashSet<i64> = image_ids.iter().copied().collect();
        ground_truth.images.retain(|i| kept.contains(&i.id));
        let evaluated: HashSet<i64> = category_ids.iter().copied().collect();
        ground_truth
            .categories
            .retain(|c| evaluated.contains(&c.id));
        ground_truth
            .annotations
            .retain(|a| kept.contains(&a.image_id) && evaluated.contains(&a.category_id));
        Ok(Self {
            samples,
            vocabulary,
            held_out,
            truth: Some(FileTruth {
                ground_truth,
                image_ids,
                category_ids,
            }),
        })
    }
}

/// A COCO sample's image id (its key).
fn image_id(sample: &Sample, file: &Path) -> Result<i64> {
    sample.key.parse().map_err(|_| DetError::InvalidOption {
        op: "eval",
        why: format!(
            "{}: image key `{}` is not an id",
            file.display(),
            sample.key
        ),
    })
}

/// The held-out vocabulary entries: the named categories and, when asked, the rare ones.
fn held_out_names(
    config: &CocoEvalConfig,
    categories: &[detclip_core::data::Category],
) -> Result<Vec<String>> {
    let unknown: Vec<&String> = config
        .held_out
        .iter()
        .filter(|n| !categories.iter().any(|c| names_category(c, n)))
        .collect();
    if !unknown.is_empty() {
        return Err(DetError::InvalidOption {
            op: "eval",
            why: format!(
                "{}: held-out categories not in the file or not among the evaluated `categories`: {unknown:?}",
                config.annotations.display()
            ),
        });
    }
    if config.held_out_rare && categories.iter().all(|c| c.frequency.is_none()) {
        return Err(DetError::InvalidOption {
            op: "eval",
            why: format!(
                "{}: held_out_rare needs LVIS category frequencies, and the file has none",
                config.annotations.display()
            ),
        });
    }
    Ok(categories
        .iter()
        .filter(|c| {
            config.held_out.iter().any(|n| names_category(c, n))
                || (config.held_out_rare && c.frequency == Some(Frequency::Rare))
        })
        .map(|c| c.concept_name())
        .collect())
}

/// Runs the recipe's inference on `samples` in batches of at most `batch_size` consecutive
/// images of the same padded size (so an image's detections do not depend on its neighbours);
/// boxes come back in each sample's own pixel frame.
#[allow(clippy::too_many_arguments)]
pub fn predict<R: Recipe, B: DetclipOps>(
    recipe: &R,
    cx: &R::Context,
    model: &R::Model<B>,
    samples: &[Sample],
    vocabulary: &[String],
    threshold: f32,
    batch_size: usize,
    device: &B::Device,
) -> Result<Vec<Vec<Detected>>> {
    let transform = recipe.test_transform();
    let divisor = recipe.data().size_divisor.max(1);
    let padded = |p: &Prepared| {
        let up = |v: u32| (v as usize).div_ceil(divisor) * divisor;
        (up(p.sample.height), up(p.sample.width))
    };
    let mut out = Vec::with_capacity(samples.len());
    let mut start = 0;
    while start < samples.len() {
        // A batch holds consecutive images of one padded size, so each image's detections
        // are those it gets alone (padding is part of the input: Swin attends over it).
        let mut prepared =
            vec![transform.apply(Loaded::load(samples[start].clone(), Orientation::Apply)?)];
        let size = padded(&prepared[0]);
        let mut end = start + 1;
        while end < samples.len() && end - start < batch_size.max(1) {
            let next = transform.apply(Loaded::load(samples[end].clone(), Orientation::Apply)?);
            if padded(&next) != size {
                break;
            }
            prepared.push(next);
            end += 1;
        }
        let chunk = &samples[start..end];
        let scales: Vec<(f32, f32)> = chunk
            .iter()
            .zip(&prepared)
            .map(|(s, p)| {
                (
                    s.width as f32 / p.sample.width as f32,
                    s.height as f32 / p.sample.height as f32,
                )
            })
            .collect();
        let batch = collate::<B>(prepared, divisor, device)?;
        let dets = recipe.detect(cx, model, &batch, vocabulary, threshold)?;
        for ((d, (sx, sy)), s) in dets.into_iter().zip(scales).zip(chunk) {
            out.push(
                d.into_iter()
                    .map(|mut x| {
                        x.bbox = [
                            x.bbox[0] * sx,
                            x.bbox[1] * sy,
                            x.bbox[2] * sx,
                            x.bbox[3] * sy,
                        ];
                        x.mask = x
                            .mask
                            .map(|m| m.resize(s.height as usize, s.width as usize));
                        x
                    })
                    .collect(),
            );
        }
        start = end;
    }
    Ok(out)
}

/// The ground truth of `samples` with category `i + 1` for `vocabulary[i]`, keeping only the
/// categories in `keep` (indices into the vocabulary). Image ids are sample positions + 1.
pub fn ground_truth(samples: &[Sample], vocabulary: &[String], keep: &[usize]) -> GroundTruth {
    let mut annotations = Vec::new();
    for (i, s) in samples.iter().enumerate() {
        for inst in &s.instances {
            for &c in &inst.concepts {
                let name = &s.concepts[c].name;
                let Some(v) = vocabulary.iter().position(|n| n == name) else {
                    continue;
                };
                if !keep.contains(&v) {
                    continue;
                }
                let [x1, y1, x2, y2] = inst.bbox.map(f64::from);
                annotations.push(GtAnnotation {
                    id: annotations.len() as i64 + 1,
                    image_id: i as i64 + 1,
                    category_id: v as i64 + 1,
                    bbox: [x1, y1, x2 - x1, y2 - y1],
                    area: (x2 - x1) * (y2 - y1),
                    iscrowd: inst.crowd,
                    ignore: inst.crowd,
                });
            }
        }
    }
    GroundTruth {
        source: "<evaluation set>".into(),
        images: (0..samples.len())
            .map(|i| GtImage {
                id: i as i64 + 1,
                neg_category_ids: None,
                not_exhaustive_category_ids: None,
            })
            .collect(),
        categories: keep
            .iter()
            .map(|&v| GtCategory {
                id: v as i64 + 1,
                name: vocabulary[v].clone(),
                frequency: None,
            })
            .collect(),
        annotations,
    }
}

/// Detections in the COCO results format, keeping the categories in `keep`.
pub fn coco_detections(dets: &[Vec<Detected>], keep: &[usize]) -> Vec<Detection> {
    dets.iter()
        .enumerate()
        .flat_map(|(i, ds)| {
            ds.iter().filter(|d| keep.contains(&d.label)).map(move |d| {
                let [x1, y1, x2, y2] = d.bbox.map(f64::from);
                Detection {
                    image_id: i as i64 + 1,
                    category_id: d.label as i64 + 1,
                    bbox: [x1, y1, (x2 - x1).max(0.0), (y2 - y1).max(0.0)],
                    score: d.score as f64,
                }
            })
        })
        .collect()
}

/// COCO AP over the categories `keep` (indices into `vocabulary`).
pub fn coco_ap(
    samples: &[Sample],
    dets: &[Vec<Detected>],
    vocabulary: &[String],
    keep: &[usize],
) -> Result<CocoStats> {
    let gt = ground_truth(samples, vocabulary, keep);
    Ok(evaluate_coco(&gt, &coco_detections(dets, keep))?.stats)
}

/// AP over all concepts, the seen ones and the held-out ones.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct EvalReport {
    /// Every concept of the vocabulary.
    pub all: CocoStats,
    /// The concepts seen in training.
    pub seen: CocoStats,
    /// The held-out concepts (None when there are none).
    pub held_out: Option<CocoStats>,
    /// For a set read from an LVIS file (categories with frequencies): the federated LVIS
    /// evaluation of every concept (`LVISEval`: APr / APc / APf, 300 detections per image).
    /// `all`, `seen` and `held_out` stay COCO-style scores of the same detections.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lvis: Option<LvisStats>,
}

/// Evaluates detections of `samples` against `vocabulary`, split into seen and held-out.
pub fn evaluate(
    samples: &[Sample],
    dets: &[Vec<Detected>],
    vocabulary: &[String],
    held_out: &[String],
) -> Result<EvalReport> {
    let all: Vec<usize> = (0..vocabulary.len()).collect();
    let (held, seen): (Vec<usize>, Vec<usize>) = all
        .iter()
        .partition(|&&i| held_out.contains(&vocabulary[i]));
    Ok(EvalReport {
        all: coco_ap(samples, dets, vocabulary, &all)?,
        seen: coco_ap(samples, dets, vocabulary, &seen)?,
        held_out: if held.is_empty() {
            None
        } else {
            Some(coco_ap(samples, dets, vocabulary, &held)?)
        },
        lvis: None,
    })
}

/// Scores detections of an evaluation set (one list per sample, labels indexing its
/// vocabulary): all concepts, the seen ones and the held-out ones.
pub fn evaluate_set(set: &EvalSet, dets: &[Vec<Detected>]) -> Result<EvalReport> {
    let Some(truth) = &set.truth else {
        return evaluate(&set.samples, dets, &set.vocabulary, &set.held_out);
    };
    let all: Vec<Detection> = dets
        .iter()
        .zip(&truth.image_ids)
        .flat_map(|(ds, &image_id)| {
            ds.iter().map(move |d| {
                let [x1, y1, x2, y2] = d.bbox.map(f64::from);
                Detection {
                    image_id,
                    category_id: truth.category_ids[d.label],
                    bbox: [x1, y1, (x2 - x1).max(0.0), (y2 - y1).max(0.0)],
                    score: d.score as f64,
                }
            })
        })
        .collect();
    let (mut held, mut seen) = (Vec::new(), Vec::new());
    for (name, &id) in set.vocabulary.iter().zip(&truth.category_ids) {
        if set.held_out.contains(name) {
            held.push(id);
        } else {
            seen.push(id);
        }
    }
    let score = |keep: &[i64]| -> Result<CocoStats> {
        let keep: HashSet<i64> = keep.iter().copied().collect();
        let mut gt = truth.ground_truth.clone();
        gt.categories.retain(|c| keep.contains(&c.id));
        gt.annotations.retain(|a| keep.contains(&a.category_id));
        let dts: Vec<Detection> = all
            .iter()
            .filter(|d| keep.contains(&d.category_id))
            .cloned()
            .collect();
        Ok(evaluate_coco(&gt, &dts)?.stats)
    };
    let federated = truth
        .ground_truth
        .categories
        .iter()
        .any(|c| c.frequency.is_some());
    Ok(EvalReport {
        all: evaluate_coco(&truth.ground_truth, &all)?.stats,
        seen: score(&seen)?,
        held_out: if held.is_empty() {
            None
        } else {
            Some(score(&held)?)
        },
        lvis: if federated {
            Some(evaluate_lvis(&truth.ground_truth, &all)?.stats)
        } else {
            None
        },
    })
}
