use burn::prelude::*;
use burn::tensor::TensorData;
use burn::tensor::activation::log_softmax;
use detclip_core::DetError;
use detclip_core::loss::bce_with_logits;
use detclip_core::ops::{DeltaBoxCoder, RoiAlignOptions, roi_align};

use super::model::Vild;
use super::rpn::{rpn_loss, smooth_l1};
use super::sampling::{HostBox, Match, SampleRng, match_boxes, sample_balanced};
use crate::clip::l2_normalize;

/// Weights of ViLD's loss `L = L_text + w·L_image + L_box + L_mask + L_rpn` (§3.4).
#[derive(Config, Debug)]
pub struct VildLossConfig {
    /// `w`, the ViLD-image weight (the paper: 0.5 on LVIS).
    #[config(default = 0.5)]
    pub image_weight: f32,
    /// Distil into [`Vild::image_projection`] (the ViLD-ensemble's second head, trained by
    /// distillation only) instead of into [`Vild::projection`], which then learns from
    /// ViLD-text alone.
    #[config(default = false)]
    pub ensemble: bool,
    /// Side of the mask targets (twice the mask pooling size: 28).
    #[config(default = 28)]
    pub mask_size: usize,
}

/// Precomputed CLIP embeddings of an image's proposals (the ViLD-image teacher).
#[derive(Debug, Clone)]
pub struct TeacherRegions<B: Backend> {
    /// The proposals, xyxy in the image's pixels.
    pub boxes: Vec<HostBox>,
    /// CLIP's embedding of each (normalised), `[M, E]`.
    pub embeddings: Tensor<B, 2>,
}

/// The training targets of one image.
#[derive(Debug, Clone)]
pub struct VildTarget<B: Backend> {
    /// Ground-truth boxes of base classes, xyxy pixels.
    pub boxes: Vec<HostBox>,
    /// Index of each box's class in the class embeddings given to [`vild_loss`].
    pub labels: Vec<usize>,
    /// Binary masks `[G, H, W]` of the image (same size as the batch), if the data has them.
    pub masks: Option<Tensor<B, 3>>,
    /// Teacher embeddings for ViLD-image, if precomputed.
    pub teacher: Option<TeacherRegions<B>>,
}

/// Every term of ViLD's loss, each `[1]`.
#[derive(Debug, Clone)]
pub struct VildLosses<B: Backend> {
    /// Softmax cross-entropy of the ViLD-text logits over `[background, classes]`.
    pub text: Tensor<B, 1>,
    /// L1 distance of normalised region and teacher embeddings (0 without teachers).
    pub image: Tensor<B, 1>,
    /// Smooth-L1 of the class-agnostic box deltas of foreground RoIs.
    pub box_regression: Tensor<B, 1>,
    /// Binary cross-entropy of the class-agnostic masks (0 without masks).
    pub mask: Tensor<B, 1>,
    /// RPN objectness BCE.
    pub rpn_objectness: Tensor<B, 1>,
    /// RPN box smooth-L1.
    pub rpn_box: Tensor<B, 1>,
    /// The weighted sum.
    pub total: Tensor<B, 1>,
}

/// The RoIs of one image sampled for the second stage.
struct Sampled {
    rois: Vec<HostBox>,
    /// Class index + 1, 0 for background.
    labels: Vec<i64>,
    /// The matched object of each foreground RoI (the first `labels != 0` rows).
    matched: Vec<usize>,
}

fn sample_rois(
    candidates: Vec<HostBox>,
    target_boxes: &[HostBox],
    labels: &[usize],
    model_cfg: &super::RoiHeadsConfig,
    rng: &mut SampleRng,
) -> Sampled {
    let mut candidates = candidates;
    candidates.extend_from_slice(target_boxes); // torchvision adds the ground truth
    let matches = match_boxes(
        &candidates,
        target_boxes,
        model_cfg.fg_iou_threshold,
        model_cfg.bg_iou_threshold,
        false,
    );
    let (pos, neg) = sample_balanced(
        &matches,
        model_cfg.batch_size_per_image,
        model_cfg.positive_fraction,
        rng,
    );
    let mut out = Sampled {
        rois: Vec::new(),
        labels: Vec::new(),
        matched: Vec::new(),
    };
    for &p in &pos {
        let Match::Foreground(g) = matches[p] else {
            unreachable!("sampled positives match")
        };
        out.rois.push(candidates[p]);
        out.labels.push(labels[g] as i64 + 1);
        out.matched.push(g);
    }
    for &q in &neg {
        out.rois.push(candidates[q]);
        out.labels.push(0);
    }
    out
}

fn int_tensor<B: Backend>(v: Vec<i64>, device: &B::Device) -> Tensor<B, 1, Int> {
    let k = v.len();
    Tensor::from_data(TensorData::new(v, [k]), device)
}

fn box_tensor<B: Backend>(boxes: &[HostBox], device: &B::Device) -> Tensor<B, 2> {
    let flat: Vec<f32> = boxes.iter().flatten().copied().collect();
    Tensor::from_data(TensorData::new(flat, [boxes.len(), 4]), device)
}

/// ViLD's training loss on a batch (§3.4): the RPN loss, RoIs sampled from the proposals
/// (and the ground truth) as torchvision does, ViLD-text cross-entropy against the base
/// classes' embeddings `classes` `[C, E]`, class-agnostic box (and mask) losses on the
/// foreground RoIs, and ViLD-image on the teacher's proposals, pooled in the same pass.
///
/// # Errors
/// [`DetError::InvalidOption`] for one target per image missing, a label outside the
/// classes, boxes and labels of different lengths, teachers of the wrong width; shape errors
/// of the model.
pub fn vild_loss<B: Backend>(
    model: &Vild<B>,
    images: Tensor<B, 4>,
    targets: &[VildTarget<B>],
    classes: Tensor<B, 2>,
    config: &VildLossConfig,
    rng: &mut SampleRng,
) -> detclip_core::Result<VildLosses<B>> {
    let [n, _, h, w] = images.dims();
    let image_size = [h, w];
    let [num_classes, _] = classes.dims();
    check_targets(targets, n, num_classes)?;
    let device = images.device();
    let features = model.features(images)?;
    let rpn_out = model.rpn_outputs(&features);
    let proposals = model.proposals(&rpn_out, image_size, true)?;
    let gt: Vec<Vec<HostBox>> = targets.iter().map(|t| t.boxes.clone()).collect();
    let rpn = rpn_loss(&rpn_out, model.rpn_config(), image_size, &gt, rng)?;

    let sampled: Vec<Sampled> = proposals
        .into_iter()
        .zip(targets)
        .map(|(p, t)| sample_rois(p.boxes, &t.boxes, &t.labels, model.roi_config(), rng))
        .collect();
    // One pooling pass over the sampled RoIs and the teacher's proposals of every image.
    let mut rois = Vec::with_capacity(n);
    let (mut sampled_rows, mut teacher_rows) = (Vec::new(), Vec::new());
    let mut row = 0i64;
    for (s, t) in sampled.iter().zip(targets) {
        let teacher = t
            .teacher
            .as_ref()
            .map(|t| t.boxes.as_slice())
            .unwrap_or_default();
        sampled_rows.extend(row..row + s.rois.len() as i64);
        row += s.rois.len() as i64;
        teacher_rows.extend(row..row + teacher.len() as i64);
        row += teacher.len() as i64;
        rois.push([s.rois.as_slice(), teacher].concat());
    }
    let zero = || Tensor::<B, 1>::zeros([1], &device);
    let regions = model.region_outputs(&features, &rois, image_size)?;

    let labels: Vec<i64> = sampled
        .iter()
        .flat_map(|s| s.labels.iter().copied())
        .collect();
    let k = labels.len();
    let (text, box_regression) = if k == 0 {
        (zero(), zero())
    } else {
        let rows = int_tensor::<B>(sampled_rows.clone(), &device);
        let logits =
            model.text_logits(regions.embeddings.clone().select(0, rows.clone()), classes)?;
        let text = text_cross_entropy(logits, &labels);
        let deltas = regions.box_deltas.clone().select(0, rows);
        (
            text,
            box_loss(model, deltas, &sampled, targets, k, &device)?,
        )
    };
    let mask = match targets.iter().all(|t| t.masks.is_some())
        && sampled.iter().any(|s| !s.matched.is_empty())
    {
        true => mask_loss(model, &features, &sampled, targets, image_size, config)?,
        false => zero(),
    };
    let image = if teacher_rows.is_empty() {
        zero()
    } else {
        let branch = if config.ensemble {
            regions.image_embeddings
        } else {
            regions.embeddings
        };
        let student = branch.select(0, int_tensor::<B>(teacher_rows, &device));
        let teacher = Tensor::cat(
            targets
                .iter()
                .filter_map(|t| t.teacher.as_ref())
                .map(|t| t.embeddings.clone())
                .collect(),
            0,
        );
        vild_image_loss(student, teacher)?
    };
    let total = text.clone()
        + image.clone() * config.image_weight
        + box_regression.clone()
        + mask.clone()
        + rpn.objectness.clone()
        + rpn.box_regression.clone();
    Ok(VildLosses {
        text,
        image,
        box_regression,
        mask,
        rpn_objectness: rpn.objectness,
        rpn_box: rpn.box_regression,
        total,
    })
}

fn check_targets<B: Backend>(
    targets: &[VildTarget<B>],
    n: usize,
    num_classes: usize,
) -> detclip_core::Result<()> {
    let invalid = |why: String| {
        Err(DetError::InvalidOption {
            op: "vild_loss",
            why,
        })
    };
    if targets.len() != n {
        return invalid(format!("{} targets for {n} images", targets.len()));
    }
    for (i, t) in targets.iter().enumerate() {
        if t.boxes.len() != t.labels.len() {
            return invalid(format!(
                "image {i}: {} boxes but {} labels",
                t.boxes.len(),
                t.labels.len()
            ));
        }
        if let Some(&l) = t.labels.iter().find(|&&l| l >= num_classes) {
            return invalid(format!("image {i}: label {l} but {num_classes} classes"));
        }
        if let Some(m) = &t.masks
            && m.dims()[0] != t.boxes.len()
        {
            return invalid(format!(
                "image {i}: {} masks for {} boxes",
                m.dims()[0],
                t.boxes.len()
            ));
        }
    }
    Ok(())
}

/// Softmax cross-entropy of `[K, 1 + C]` logits with labels in `0..=C` (0 = background), mean.
pub fn text_cross_entropy<B: Backend>(logits: Tensor<B, 2>, labels: &[i64]) -> Tensor<B, 1> {
    let device = logits.device();
    let k = labels.len();
    let index = Tensor::<B, 2, Int>::from_data(TensorData::new(labels.to_vec(), [k, 1]), &device);
    log_softmax(logits, 1)
        .gather(1, index)
        .mean()
        .neg()
        .reshape([1])
}

/// ViLD-image (§3.3): `‖norm(student) − norm(teacher)‖₁` per region, mean over regions.
///
/// # Errors
/// [`DetError::Shape`] when the two are not the same shape.
pub fn vild_image_loss<B: Backend>(
    student: Tensor<B, 2>,
    teacher: Tensor<B, 2>,
) -> detclip_core::Result<Tensor<B, 1>> {
    if student.dims() != teacher.dims() {
        return Err(DetError::Shape {
            op: "vild_image_loss",
            what: "teacher",
            got: teacher.dims().to_vec(),
            expected: format!("{:?} like the region embeddings", student.dims()),
        });
    }
    Ok((l2_normalize(student) - l2_normalize(teacher))
        .abs()
        .sum_dim(1)
        .mean()
        .reshape([1]))
}

/// torchvision's `fastrcnn_loss` box term with one (class-agnostic) box per RoI: smooth L1
/// (β = 1/9) of the foreground RoIs' deltas, summed, over the number of sampled RoIs.
fn box_loss<B: Backend>(
    model: &Vild<B>,
    deltas: Tensor<B, 2>,
    sampled: &[Sampled],
    targets: &[VildTarget<B>],
    k: usize,
    device: &B::Device,
) -> detclip_core::Result<Tensor<B, 1>> {
    let (mut rows, mut rois, mut gts) = (Vec::new(), Vec::new(), Vec::new());
    let mut offset = 0;
    for (s, t) in sampled.iter().zip(targets) {
        for (j, &g) in s.matched.iter().enumerate() {
            rows.push((offset + j) as i64);
            rois.push(s.rois[j]);
            gts.push(t.boxes[g]);
        }
        offset += s.rois.len();
    }
    if rows.is_empty() {
        return Ok(Tensor::zeros([1], device));
    }
    let coder = DeltaBoxCoder::new(model.roi_config().box_weights);
    let target = coder.encode(box_tensor(&gts, device), box_tensor(&rois, device))?;
    let pred = deltas.select(0, int_tensor(rows, device));
    Ok(smooth_l1(pred - target, 1.0 / 9.0).sum().reshape([1]) / k as f32)
}

/// torchvision's `maskrcnn_loss` with one mask per RoI: each foreground RoI's object mask
/// cut out by RoIAlign to `mask_size²`, thresholded at 0.5; BCE with the mask logits.
fn mask_loss<B: Backend>(
    model: &Vild<B>,
    features: &[Tensor<B, 4>],
    sampled: &[Sampled],
    targets: &[VildTarget<B>],
    image_size: [usize; 2],
    config: &VildLossConfig,
) -> detclip_core::Result<Tensor<B, 1>> {
    let fg: Vec<Vec<HostBox>> = sampled
        .iter()
        .map(|s| s.rois[..s.matched.len()].to_vec())
        .collect();
    let logits = model.mask_logits(features, &fg, image_size)?;
    let m = config.mask_size;
    let [_, _, lh, lw] = logits.dims();
    if [lh, lw] != [m, m] {
        return Err(DetError::InvalidOption {
            op: "vild_loss",
            why: format!("mask head outputs {lh}×{lw}, mask_size is {m}"),
        });
    }
    let mut cut = Vec::new();
    for ((s, t), boxes) in sampled.iter().zip(targets).zip(&fg) {
        if boxes.is_empty() {
            continue;
        }
        let masks = t.masks.clone().expect("checked: every target has masks");
        let rows: Vec<f32> = s
            .matched
            .iter()
            .zip(boxes)
            .flat_map(|(&g, b)| [g as f32, b[0], b[1], b[2], b[3]])
            .collect();
        let rois =
            Tensor::<B, 2>::from_data(TensorData::new(rows, [boxes.len(), 5]), &masks.device());
        let options = RoiAlignOptions {
            output_size: [m, m],
            spatial_scale: 1.0,
            sampling_ratio: 0,
            aligned: false,
        };
        cut.push(roi_align(masks.unsqueeze_dim(1), rois, &options)?);
    }
    let target = Tensor::cat(cut, 0).greater_equal_elem(0.5).float();
    Ok(bce_with_logits(logits, target).mean().reshape([1]))
}
