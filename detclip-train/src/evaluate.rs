//! Evaluation during and after training: a recipe's detections on a set of samples, scored
//! with `detclip_core::eval`'s COCO evaluator (pycocotools parity), over all concepts and over
//! the seen and held-out ones separately.

use detclip_core::Result;
use detclip_core::data::{Loaded, Orientation, Sample, collate};
use detclip_core::eval::json::{GtAnnotation, GtCategory, GtImage};
use detclip_core::eval::{CocoStats, Detection, GroundTruth, evaluate_coco};
use detclip_core::ext::DetclipOps;
use serde::Serialize;

use crate::recipe::{Detected, Recipe};

/// Runs the recipe's inference on `samples` in batches of `batch_size`; boxes come back in
/// each sample's own pixel frame.
pub fn predict<R: Recipe, B: DetclipOps>(
    recipe: &R,
    model: &R::Model<B>,
    samples: &[Sample],
    vocabulary: &[String],
    threshold: f32,
    batch_size: usize,
    device: &B::Device,
) -> Result<Vec<Vec<Detected>>> {
    let transform = recipe.test_transform();
    let divisor = recipe.data().size_divisor;
    let mut out = Vec::with_capacity(samples.len());
    for chunk in samples.chunks(batch_size.max(1)) {
        let mut prepared = Vec::with_capacity(chunk.len());
        for s in chunk {
            prepared.push(transform.apply(Loaded::load(s.clone(), Orientation::Apply)?));
        }
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
        let dets = recipe.detect(model, &batch, vocabulary, threshold)?;
        for (d, (sx, sy)) in dets.into_iter().zip(scales) {
            out.push(
                d.into_iter()
                    .map(|mut x| {
                        x.bbox = [
                            x.bbox[0] * sx,
                            x.bbox[1] * sy,
                            x.bbox[2] * sx,
                            x.bbox[3] * sy,
                        ];
                        x
                    })
                    .collect(),
            );
        }
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
    })
}
