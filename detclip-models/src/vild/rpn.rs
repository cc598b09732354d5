use burn::nn::PaddingConfig2d;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::prelude::*;
use burn::tensor::activation::relu;
use detclip_core::DetError;
use detclip_core::assign::AnchorGenerator;
use detclip_core::loss::bce_with_logits;
use detclip_core::nn::conv2d;
use detclip_core::ops::{DeltaBoxCoder, batched_nms_slice, top_k_slice};

use super::sampling::{HostBox, Match, SampleRng, match_boxes, sample_balanced};

/// The region proposal network's anchors, selection and training targets (torchvision's
/// `RegionProposalNetwork` defaults).
#[derive(Config, Debug)]
pub struct RpnConfig {
    /// Anchor size per pyramid level (one per level, P2 first).
    #[config(default = "vec![32.0, 64.0, 128.0, 256.0, 512.0]")]
    pub anchor_sizes: Vec<f32>,
    /// Anchor aspect ratios `h / w`.
    #[config(default = "vec![0.5, 1.0, 2.0]")]
    pub aspect_ratios: Vec<f32>,
    /// Best-scoring anchors kept per level before NMS, in training.
    #[config(default = 2000)]
    pub pre_nms_top_n_train: usize,
    /// Best-scoring anchors kept per level before NMS, at inference.
    #[config(default = 1000)]
    pub pre_nms_top_n_test: usize,
    /// Proposals kept per image after NMS, in training.
    #[config(default = 2000)]
    pub post_nms_top_n_train: usize,
    /// Proposals kept per image after NMS, at inference.
    #[config(default = 1000)]
    pub post_nms_top_n_test: usize,
    /// IoU threshold of the NMS between proposals (of the same level).
    #[config(default = 0.7)]
    pub nms_threshold: f32,
    /// Anchors with IoU ≥ this with a ground-truth box are positives.
    #[config(default = 0.7)]
    pub fg_iou_threshold: f32,
    /// Anchors with IoU < this with every ground-truth box are negatives.
    #[config(default = 0.3)]
    pub bg_iou_threshold: f32,
    /// Anchors sampled per image for the loss.
    #[config(default = 256)]
    pub batch_size_per_image: usize,
    /// Largest fraction of positives among the sampled anchors.
    #[config(default = 0.5)]
    pub positive_fraction: f32,
    /// Proposals narrower or lower than this (pixels) are dropped.
    #[config(default = 1e-3)]
    pub min_size: f32,
}

impl RpnConfig {
    /// torchvision's anchor generator for these sizes and ratios (strides are taken from the
    /// feature maps, see [`rpn_anchors`]).
    pub fn anchor_generator(&self) -> AnchorGenerator {
        let sizes: Vec<Vec<f32>> = self.anchor_sizes.iter().map(|&s| vec![s]).collect();
        let strides = vec![1.0; sizes.len()];
        AnchorGenerator::torchvision(&strides, &sizes, &self.aspect_ratios)
    }

    /// Anchors per feature-map cell.
    pub fn anchors_per_cell(&self) -> usize {
        self.aspect_ratios.len()
    }
}

/// torchvision's `RPNHead`: a shared 3×3 conv + ReLU, then 1×1 convs for the objectness
/// (one logit per anchor) and the box deltas (four per anchor), on every level.
#[derive(Module, Debug)]
pub struct RpnHead<B: Backend> {
    /// 3×3 conv (`rpn.head.conv.0.0`).
    pub conv: Conv2d<B>,
    /// Objectness logits, `A` channels.
    pub cls_logits: Conv2d<B>,
    /// Box deltas, `4A` channels.
    pub bbox_pred: Conv2d<B>,
}

impl<B: Backend> RpnHead<B> {
    /// Builds the head for `channels`-wide features and `anchors` anchors per cell.
    pub fn new(channels: usize, anchors: usize, device: &B::Device) -> Self {
        let conv1 = |c_out| Conv2dConfig::new([channels, c_out], [1, 1]).init(device);
        Self {
            conv: Conv2dConfig::new([channels, channels], [3, 3])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(device),
            cls_logits: conv1(anchors),
            bbox_pred: conv1(4 * anchors),
        }
    }

    /// Objectness and box deltas of every level.
    ///
    /// # Shapes
    /// - `features[l]`: `[N, C, H_l, W_l]` → objectness `[N, A, H_l, W_l]`, deltas
    ///   `[N, 4A, H_l, W_l]`
    pub fn forward(&self, features: &[Tensor<B, 4>]) -> RpnOutputs<B> {
        let (objectness, deltas) = features
            .iter()
            .map(|f| {
                let t = relu(conv2d(&self.conv, f.clone()));
                (
                    conv2d(&self.cls_logits, t.clone()),
                    conv2d(&self.bbox_pred, t),
                )
            })
            .unzip();
        RpnOutputs { objectness, deltas }
    }
}

/// Raw outputs of [`RpnHead::forward`], one tensor per level.
#[derive(Debug, Clone)]
pub struct RpnOutputs<B: Backend> {
    /// Objectness logits `[N, A, H_l, W_l]`.
    pub objectness: Vec<Tensor<B, 4>>,
    /// Box deltas `[N, 4A, H_l, W_l]` (anchor-major: channels `4a..4a+4` are anchor `a`).
    pub deltas: Vec<Tensor<B, 4>>,
}

impl<B: Backend> RpnOutputs<B> {
    /// Objectness `[N, Σ H·W·A]` and deltas `[N, Σ H·W·A, 4]` in the anchors' order (cell-major,
    /// anchor inner, levels concatenated), as torchvision's `concat_box_prediction_layers`.
    pub fn flatten(&self) -> (Tensor<B, 2>, Tensor<B, 3>) {
        let obj = self
            .objectness
            .iter()
            .map(|o| {
                let [n, a, h, w] = o.dims();
                o.clone().permute([0, 2, 3, 1]).reshape([n, h * w * a])
            })
            .collect();
        let deltas = self
            .deltas
            .iter()
            .map(|d| {
                let [n, a4, h, w] = d.dims();
                let a = a4 / 4;
                d.clone()
                    .reshape([n, a, 4, h, w])
                    .permute([0, 3, 4, 1, 2])
                    .reshape([n, h * w * a, 4])
            })
            .collect();
        (Tensor::cat(obj, 1), Tensor::cat(deltas, 1))
    }

    /// `[H_l, W_l]` of every level.
    pub fn sizes(&self) -> Vec<[usize; 2]> {
        self.objectness
            .iter()
            .map(|o| {
                let [_, _, h, w] = o.dims();
                [h, w]
            })
            .collect()
    }
}

/// Anchors of every level for an `image_size` (`[H, W]` of the padded batch), torchvision's
/// way: the stride of a level is `image // feature` on each axis separately (so a level
/// whose size does not divide the image, such as P6, gets the stride torchvision gives it).
/// Returns the anchors of each level, cell-major, anchor inner.
pub fn rpn_anchors(
    generator: &AnchorGenerator,
    image_size: [usize; 2],
    sizes: &[[usize; 2]],
) -> detclip_core::Result<Vec<Vec<HostBox>>> {
    if sizes.len() != generator.levels.len() {
        return Err(DetError::InvalidOption {
            op: "rpn_anchors",
            why: format!(
                "{} feature levels for {} anchor sizes",
                sizes.len(),
                generator.levels.len()
            ),
        });
    }
    Ok(sizes
        .iter()
        .enumerate()
        .map(|(l, &[h, w])| {
            let sy = (image_size[0] / h.max(1)) as f32;
            let sx = (image_size[1] / w.max(1)) as f32;
            let base = generator.base_anchors(l);
            let mut out = Vec::with_capacity(h * w * base.len());
            for y in 0..h {
                for x in 0..w {
                    let (dx, dy) = (x as f32 * sx, y as f32 * sy);
                    for b in &base {
                        out.push([b[0] + dx, b[1] + dy, b[2] + dx, b[3] + dy]);
                    }
                }
            }
            out
        })
        .collect())
}

/// Proposals of one image, by descending objectness.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Proposals {
    /// xyxy boxes in image pixels, clipped to the image.
    pub boxes: Vec<HostBox>,
    /// Objectness probabilities.
    pub scores: Vec<f32>,
}

/// How many proposals [`select_proposals`] keeps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProposalLimits {
    /// Best anchors kept per level before NMS.
    pub pre_nms_top_n: usize,
    /// Proposals kept per image after NMS.
    pub post_nms_top_n: usize,
    /// NMS IoU threshold (boxes of different levels never suppress each other).
    pub nms_threshold: f32,
    /// Smallest side kept.
    pub min_size: f32,
}

impl RpnConfig {
    /// The limits for training (`true`) or inference.
    pub fn limits(&self, training: bool) -> ProposalLimits {
        let (pre, post) = if training {
            (self.pre_nms_top_n_train, self.post_nms_top_n_train)
        } else {
            (self.pre_nms_top_n_test, self.post_nms_top_n_test)
        };
        ProposalLimits {
            pre_nms_top_n: pre,
            post_nms_top_n: post,
            nms_threshold: self.nms_threshold,
            min_size: self.min_size,
        }
    }
}

pub(super) fn read<B: Backend, const D: usize>(
    op: &'static str,
    t: Tensor<B, D>,
) -> detclip_core::Result<Vec<f32>> {
    t.into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .map_err(|e| DetError::InvalidOption {
            op,
            why: format!("could not read tensor: {e:?}"),
        })
}

/// torchvision's `RegionProposalNetwork.filter_proposals`: per image and level the
/// `pre_nms_top_n` best anchors by objectness, decoded (`DeltaBoxCoder` with weights 1),
/// clipped to `image_size` (the padded batch: a proposal of an image smaller than the batch
/// may reach into its bottom/right padding; clip again per image where it matters, as the
/// precompute does), small boxes dropped, NMS within each level, then the
/// `post_nms_top_n` best. The selection runs on the host (as NMS does on every backend); the
/// proposals carry no gradient.
///
/// # Errors
/// [`DetError::InvalidOption`] when the outputs do not match the anchor levels.
pub fn select_proposals<B: Backend>(
    outputs: &RpnOutputs<B>,
    generator: &AnchorGenerator,
    image_size: [usize; 2],
    limits: &ProposalLimits,
) -> detclip_core::Result<Vec<Proposals>> {
    let n = outputs.objectness.first().map_or(0, |t| t.dims()[0]);
    select_proposals_within(outputs, generator, image_size, &vec![image_size; n], limits)
}

/// [`select_proposals`] with each image's own `[height, width]` inside the padded batch
/// `image_size` (`images`, one per image): anchors follow the padded batch, proposals are
/// clipped to their image, as torchvision clips to `ImageList.image_sizes`.
///
/// # Errors
/// As [`select_proposals`]; [`DetError::Shape`] when `images` has not one size per image.
pub fn select_proposals_within<B: Backend>(
    outputs: &RpnOutputs<B>,
    generator: &AnchorGenerator,
    image_size: [usize; 2],
    images: &[[usize; 2]],
    limits: &ProposalLimits,
) -> detclip_core::Result<Vec<Proposals>> {
    let sizes = outputs.sizes();
    let anchors = rpn_anchors(generator, image_size, &sizes)?;
    let counts: Vec<usize> = anchors.iter().map(Vec::len).collect();
    let flat_anchors: Vec<f32> = anchors.iter().flatten().flatten().copied().collect();
    let (obj, deltas) = outputs.flatten();
    let [n, total] = obj.dims();
    if total != flat_anchors.len() / 4 {
        return Err(DetError::InvalidOption {
            op: "select_proposals",
            why: format!("{total} predictions for {} anchors", flat_anchors.len() / 4),
        });
    }
    let device = obj.device();
    let reference = Tensor::<B, 2>::from_data(TensorData::new(flat_anchors, [total, 4]), &device)
        .unsqueeze_dim::<3>(0)
        .expand([n, total, 4])
        .reshape([n * total, 4]);
    let coder = DeltaBoxCoder::new([1.0; 4]);
    let boxes = coder.decode(deltas.reshape([n * total, 4]).detach(), reference)?;
    let boxes = read("select_proposals", boxes)?;
    let logits = read("select_proposals", obj.detach())?;
    if images.len() != n {
        return Err(DetError::Shape {
            op: "select_proposals",
            what: "image sizes",
            got: vec![images.len()],
            expected: format!("{n} (one per image)"),
        });
    }
    (0..n)
        .map(|i| {
            let (h, w) = (images[i][0] as f32, images[i][1] as f32);
            let logits = &logits[i * total..(i + 1) * total];
            let boxes = &boxes[i * total * 4..(i + 1) * total * 4];
            let mut cand_boxes = Vec::new();
            let mut cand_scores = Vec::new();
            let mut cand_levels = Vec::new();
            let mut start = 0;
            for (l, &count) in counts.iter().enumerate() {
                for j in top_k_slice(&logits[start..start + count], limits.pre_nms_top_n) {
                    let a = start + j;
                    let b = &boxes[a * 4..a * 4 + 4];
                    let clipped = [
                        b[0].clamp(0.0, w),
                        b[1].clamp(0.0, h),
                        b[2].clamp(0.0, w),
                        b[3].clamp(0.0, h),
                    ];
                    if clipped[2] - clipped[0] < limits.min_size
                        || clipped[3] - clipped[1] < limits.min_size
                    {
                        continue;
                    }
                    cand_boxes.extend(clipped);
                    cand_scores.push(1.0 / (1.0 + (-logits[a]).exp()));
                    cand_levels.push(l as i64);
                }
                start += count;
            }
            let keep = batched_nms_slice(
                &cand_boxes,
                &cand_scores,
                &cand_levels,
                limits.nms_threshold,
            )?;
            let keep = &keep[..keep.len().min(limits.post_nms_top_n)];
            Ok(Proposals {
                boxes: keep
                    .iter()
                    .map(|&k| {
                        [
                            cand_boxes[k * 4],
                            cand_boxes[k * 4 + 1],
                            cand_boxes[k * 4 + 2],
                            cand_boxes[k * 4 + 3],
                        ]
                    })
                    .collect(),
                scores: keep.iter().map(|&k| cand_scores[k]).collect(),
            })
        })
        .collect()
}

/// The RPN's two losses.
#[derive(Debug, Clone)]
pub struct RpnLoss<B: Backend> {
    /// Binary cross-entropy of the sampled anchors' objectness, mean, `[1]`.
    pub objectness: Tensor<B, 1>,
    /// Smooth-L1 (β = 1/9) of the positive anchors' deltas, summed and divided by the number
    /// of sampled anchors (torchvision's normalisation), `[1]`.
    pub box_regression: Tensor<B, 1>,
}

/// Smooth L1 of torchvision's detection losses, elementwise.
pub fn smooth_l1<B: Backend, const D: usize>(diff: Tensor<B, D>, beta: f32) -> Tensor<B, D> {
    let a = diff.abs();
    let small = a.clone().lower_elem(beta);
    let quadratic = a.clone().powi_scalar(2) * (0.5 / beta);
    let linear = a - 0.5 * beta;
    linear.mask_where(small, quadratic)
}

/// torchvision's RPN loss: anchors are matched to the ground truth (IoU ≥ 0.7 positive,
/// < 0.3 negative, plus each object's best anchors), 256 per image sampled with at most half
/// positives; BCE on their objectness, smooth L1 on the positives' deltas.
///
/// # Errors
/// [`DetError::InvalidOption`] when `gt` does not have one entry per image.
pub fn rpn_loss<B: Backend>(
    outputs: &RpnOutputs<B>,
    config: &RpnConfig,
    image_size: [usize; 2],
    gt: &[Vec<HostBox>],
    rng: &mut SampleRng,
) -> detclip_core::Result<RpnLoss<B>> {
    let anchors: Vec<HostBox> =
        rpn_anchors(&config.anchor_generator(), image_size, &outputs.sizes())?
            .into_iter()
            .flatten()
            .collect();
    let (obj, deltas) = outputs.flatten();
    let [n, total] = obj.dims();
    if gt.len() != n {
        return Err(DetError::InvalidOption {
            op: "rpn_loss",
            why: format!("{} ground-truth lists for {n} images", gt.len()),
        });
    }
    let device = obj.device();
    let mut sampled = Vec::new();
    let mut labels = Vec::new();
    let mut pos_rows = Vec::new();
    let mut pos_anchors = Vec::new();
    let mut pos_gt = Vec::new();
    for (i, boxes) in gt.iter().enumerate() {
        let matches = match_boxes(
            &anchors,
            boxes,
            config.fg_iou_threshold,
            config.bg_iou_threshold,
            true,
        );
        let (pos, neg) = sample_balanced(
            &matches,
            config.batch_size_per_image,
            config.positive_fraction,
            rng,
        );
        for &p in &pos {
            let Match::Foreground(g) = matches[p] else {
                unreachable!("sampled positives match")
            };
            sampled.push((i * total + p) as i64);
            labels.push(1.0f32);
            pos_rows.push((i * total + p) as i64);
            pos_anchors.extend(anchors[p]);
            pos_gt.extend(boxes[g]);
        }
        for &q in &neg {
            sampled.push((i * total + q) as i64);
            labels.push(0.0);
        }
    }
    let count = sampled.len().max(1) as f32;
    let zero = || Tensor::<B, 1>::zeros([1], &device);
    if sampled.is_empty() {
        return Ok(RpnLoss {
            objectness: zero(),
            box_regression: zero(),
        });
    }
    let idx = |v: Vec<i64>| {
        let k = v.len();
        Tensor::<B, 1, Int>::from_data(TensorData::new(v, [k]), &device)
    };
    let k = labels.len();
    let logits = obj.reshape([n * total]).select(0, idx(sampled));
    let targets = Tensor::<B, 1>::from_data(TensorData::new(labels, [k]), &device);
    let objectness = bce_with_logits(logits, targets).mean().reshape([1]);
    let box_regression = if pos_rows.is_empty() {
        zero()
    } else {
        let p = pos_rows.len();
        let pred = deltas.reshape([n * total, 4]).select(0, idx(pos_rows));
        let reference = Tensor::<B, 2>::from_data(TensorData::new(pos_anchors, [p, 4]), &device);
        let gt_boxes = Tensor::<B, 2>::from_data(TensorData::new(pos_gt, [p, 4]), &device);
        let target = DeltaBoxCoder::new([1.0; 4]).encode(gt_boxes, reference)?;
        smooth_l1(pred - target, 1.0 / 9.0).sum().reshape([1]) / count
    };
    Ok(RpnLoss {
        objectness,
        box_regression,
    })
}
