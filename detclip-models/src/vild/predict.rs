use burn::prelude::*;
use burn::tensor::TensorData;
use burn::tensor::activation::softmax;
use detclip_core::DetError;
use detclip_core::ops::{DeltaBoxCoder, batched_nms_slice};

use super::model::Vild;
use super::rpn::read;
use super::sampling::HostBox;

/// The ViLD-ensemble's geometric weighting (§3.4): a class's score is
/// `p_text^λ · p_image^(1−λ)`, with `λ = base` for base classes and `λ = novel` for novel ones.
#[derive(Config, Debug, Copy)]
pub struct EnsembleWeights {
    /// `λ` of base classes (the paper: 2/3, trusting the text branch trained on them).
    #[config(default = 0.6667)]
    pub base: f32,
    /// `λ` of novel classes (the paper: 1/3, trusting the distilled image branch).
    #[config(default = 0.3333)]
    pub novel: f32,
}

/// Post-processing of [`predict`].
#[derive(Config, Debug)]
pub struct VildPredictConfig {
    /// Combine the text and image branches (ViLD-ensemble); `None`: ViLD-text scores only.
    pub ensemble: Option<EnsembleWeights>,
    /// Scores below this are dropped.
    #[config(default = 0.05)]
    pub score_threshold: f32,
    /// IoU threshold of the per-class NMS.
    #[config(default = 0.5)]
    pub nms_threshold: f32,
    /// Detections kept per image.
    #[config(default = 100)]
    pub max_detections: usize,
}

/// Detections of one image, by descending score.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VildDetections {
    /// xyxy boxes in image pixels.
    pub boxes: Vec<HostBox>,
    /// Scores.
    pub scores: Vec<f32>,
    /// Class indices into the class embeddings given to [`predict`].
    pub labels: Vec<usize>,
}

/// Class probabilities `[K, C]` of the ViLD-ensemble: `p_text^λ_c · p_image^(1−λ_c)` with
/// `λ_c` from `weights` by whether class `c` is a base class.
///
/// # Errors
/// [`DetError::Shape`] when the two are not `[K, C]` with `C = is_base.len()`.
pub fn ensemble_scores<B: Backend>(
    p_text: Tensor<B, 2>,
    p_image: Tensor<B, 2>,
    is_base: &[bool],
    weights: &EnsembleWeights,
) -> detclip_core::Result<Tensor<B, 2>> {
    let c = is_base.len();
    for (what, t) in [("p_text", &p_text), ("p_image", &p_image)] {
        if t.dims()[1] != c || t.dims() != p_text.dims() {
            return Err(DetError::Shape {
                op: "ensemble_scores",
                what,
                got: t.dims().to_vec(),
                expected: format!("[K, {c}] (one column per class), both alike"),
            });
        }
    }
    let lambda: Vec<f32> = is_base
        .iter()
        .map(|&b| if b { weights.base } else { weights.novel })
        .collect();
    let lambda = Tensor::<B, 2>::from_data(TensorData::new(lambda, [1, c]), &p_text.device());
    // x^λ = exp(λ ln x); probabilities are > 0 after a softmax, clamp for safety.
    let text = (p_text.clamp_min(1e-12).log() * lambda.clone()).exp();
    let image = (p_image.clamp_min(1e-12).log() * (lambda.neg() + 1.0)).exp();
    Ok(text * image)
}

/// Open-vocabulary detection with base and novel classes together (§3.4): proposals, the
/// class-agnostic box per RoI, ViLD-text probabilities over `[background, classes]` (the
/// background column dropped), optionally the ensemble with the image branch, then
/// per-class NMS.
///
/// # Shapes
/// - `images`: `[N, 3, H, W]`; `classes`: `[C, E]`; `is_base`: `C` flags
///
/// # Errors
/// [`DetError::Shape`] when `is_base` does not have one flag per class; the model's errors.
pub fn predict<B: Backend>(
    model: &Vild<B>,
    images: Tensor<B, 4>,
    classes: Tensor<B, 2>,
    is_base: &[bool],
    config: &VildPredictConfig,
) -> detclip_core::Result<Vec<VildDetections>> {
    let [n, _, h, w] = images.dims();
    predict_within(model, images, &vec![[h, w]; n], classes, is_base, config)
}

/// [`predict`] with each image's own `[height, width]` inside the padded batch (`sizes`, one
/// per image): proposals and detections are clipped to their image, and boxes under 0.01 px
/// wide or high are dropped before NMS, as torchvision's `RoIHeads.postprocess_detections`
/// does.
///
/// # Errors
/// As [`predict`]; [`DetError::Shape`] when `sizes` has not one entry per image.
pub fn predict_within<B: Backend>(
    model: &Vild<B>,
    images: Tensor<B, 4>,
    sizes: &[[usize; 2]],
    classes: Tensor<B, 2>,
    is_base: &[bool],
    config: &VildPredictConfig,
) -> detclip_core::Result<Vec<VildDetections>> {
    let [n, _, h, w] = images.dims();
    let [c, _] = classes.dims();
    if is_base.len() != c {
        return Err(DetError::Shape {
            op: "vild::predict",
            what: "is_base",
            got: vec![is_base.len()],
            expected: format!("{c} flags (one per class)"),
        });
    }
    if sizes.len() != n {
        return Err(DetError::Shape {
            op: "vild::predict",
            what: "image sizes",
            got: vec![sizes.len()],
            expected: format!("{n} (one per image)"),
        });
    }
    let features = model.features(images)?;
    let proposals = model.proposals_within(&model.rpn_outputs(&features), [h, w], sizes, false)?;
    let rois: Vec<Vec<HostBox>> = proposals.into_iter().map(|p| p.boxes).collect();
    let total: usize = rois.iter().map(Vec::len).sum();
    if total == 0 {
        return Ok(vec![VildDetections::default(); n]);
    }
    let regions = model.region_outputs(&features, &rois, [h, w])?;
    let text = softmax(model.text_logits(regions.embeddings, classes.clone())?, 1).narrow(1, 1, c);
    let scores = match &config.ensemble {
        Some(weights) => {
            let image = softmax(model.image_logits(regions.image_embeddings, classes)?, 1);
            ensemble_scores(text, image, is_base, weights)?
        }
        None => text,
    };
    let flat_rois: Vec<f32> = rois.iter().flatten().flatten().copied().collect();
    let reference =
        Tensor::<B, 2>::from_data(TensorData::new(flat_rois, [total, 4]), &scores.device());
    let boxes =
        DeltaBoxCoder::new(model.roi_config().box_weights).decode(regions.box_deltas, reference)?;
    let boxes = read("vild::predict", boxes)?;
    let scores = read("vild::predict", scores)?;
    let mut start = 0;
    rois.iter()
        .zip(sizes)
        .map(|(r, &size)| {
            let d = per_class_nms(
                &boxes[start * 4..],
                &scores[start * c..],
                r.len(),
                c,
                size,
                config,
            );
            start += r.len();
            d
        })
        .collect()
}

/// Every (RoI, class) pair above the threshold, the RoI's box clipped to the image (boxes
/// under 0.01 px wide or high dropped, torchvision's `remove_small_boxes`), NMS per class, the
/// best `max_detections`.
fn per_class_nms(
    boxes: &[f32],
    scores: &[f32],
    k: usize,
    c: usize,
    [h, w]: [usize; 2],
    config: &VildPredictConfig,
) -> detclip_core::Result<VildDetections> {
    let (mut cand_boxes, mut cand_scores, mut cand_labels) = (Vec::new(), Vec::new(), Vec::new());
    for r in 0..k {
        let b = &boxes[r * 4..r * 4 + 4];
        let clipped = [
            b[0].clamp(0.0, w as f32),
            b[1].clamp(0.0, h as f32),
            b[2].clamp(0.0, w as f32),
            b[3].clamp(0.0, h as f32),
        ];
        if clipped[2] - clipped[0] < 1e-2 || clipped[3] - clipped[1] < 1e-2 {
            continue;
        }
        for j in 0..c {
            let s = scores[r * c + j];
            if s >= config.score_threshold {
                cand_boxes.extend(clipped);
                cand_scores.push(s);
                cand_labels.push(j as i64);
            }
        }
    }
    let mut keep = batched_nms_slice(
        &cand_boxes,
        &cand_scores,
        &cand_labels,
        config.nms_threshold,
    )?;
    keep.truncate(config.max_detections);
    Ok(VildDetections {
        boxes: keep
            .iter()
            .map(|&i| {
                [
                    cand_boxes[i * 4],
                    cand_boxes[i * 4 + 1],
                    cand_boxes[i * 4 + 2],
                    cand_boxes[i * 4 + 3],
                ]
            })
            .collect(),
        scores: keep.iter().map(|&i| cand_scores[i]).collect(),
        labels: keep.iter().map(|&i| cand_labels[i] as usize).collect(),
    })
}
