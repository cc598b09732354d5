use burn::prelude::*;
use burn::tensor::activation::softmax;
use detclip_core::DetError;

use super::model::RegionSpot;
use crate::sam::ResizeLongestSide;

/// Where the boxes of [`RegionSpot::recognize`] come from.
#[derive(Debug, Clone)]
pub enum BoxSource<B: Backend> {
    /// Boxes given by a user or taken from ground truth (the paper's recognition protocol):
    /// a prediction's score is its class probability.
    Given,
    /// Boxes from another detector (e.g. GLIP's, as the paper does on LVIS) with their
    /// scores `[N]`: a prediction's score is detector score × class probability.
    Detector(Tensor<B, 1>),
}

/// RegionSpot's predictions for one image, in descending class probability (the official
/// order; with detector boxes the scores are not sorted).
#[derive(Debug, Clone)]
pub struct RegionPredictions<B: Backend> {
    /// Boxes `[K, 4]` `x1 y1 x2 y2` in the original image.
    pub boxes: Tensor<B, 2>,
    /// Scores `[K]`.
    pub scores: Tensor<B, 1>,
    /// Class indices `[K]`.
    pub labels: Tensor<B, 1, Int>,
    /// Which box of the input each prediction is for, `[K]`.
    pub box_indices: Tensor<B, 1, Int>,
    /// SAM's binary masks `[K, H, W]` at the original size (logit > 0).
    pub masks: Tensor<B, 3, Bool>,
}

impl<B: Backend> RegionSpot<B> {
    /// Recognises boxes in one image (the official `forward_eval` + `inference_gt_box` /
    /// `inference_pred_box`): class probabilities are a softmax over the classes, and the
    /// `top_k` (box, class) pairs of highest probability over all boxes and classes are kept
    /// (the official value is 900), each with SAM's mask; with detector boxes each
    /// probability is then multiplied by its box's score.
    ///
    /// # Shapes
    /// - `sam_image`: `[1, 3, S, S]` preprocessed from the image resized by
    ///   [`ResizeLongestSide`] to SAM's input size; `clip_pixels`: `[1, 3, H', W']`
    /// - `boxes`: `[N, 4]` in the original image of `original_size = [H, W]`
    /// - `class_embeddings`: `[C, E]` normalised
    ///
    /// # Errors
    /// [`DetError::Shape`] for mis-shaped inputs or detector scores that are not `[N]`,
    /// [`DetError::InvalidOption`] for `top_k == 0`.
    #[allow(clippy::too_many_arguments)]
    pub fn recognize(
        &self,
        sam_image: Tensor<B, 4>,
        clip_pixels: Tensor<B, 4>,
        boxes: Tensor<B, 2>,
        source: BoxSource<B>,
        original_size: [usize; 2],
        class_embeddings: Tensor<B, 2>,
        top_k: usize,
    ) -> Result<RegionPredictions<B>, DetError> {
        let [n, four] = boxes.dims();
        if four != 4 || n == 0 {
            return Err(DetError::Shape {
                op: "RegionSpot::recognize",
                what: "boxes",
                got: vec![n, four],
                expected: "[N ≥ 1, 4]".into(),
            });
        }
        if top_k == 0 {
            return Err(DetError::InvalidOption {
                op: "RegionSpot::recognize",
                why: "top_k must be at least 1".into(),
            });
        }
        if let BoxSource::Detector(scores) = &source
            && scores.dims() != [n]
        {
            return Err(DetError::Shape {
                op: "RegionSpot::recognize",
                what: "detector scores",
                got: scores.dims().to_vec(),
                expected: format!("[{n}] like the boxes"),
            });
        }
        let img_size = self.sam.image_encoder.img_size();
        let resize = ResizeLongestSide::new(img_size);
        let input_size = resize.preprocess_shape(original_size[0], original_size[1]);
        let sam_boxes = resize.apply_boxes(boxes.clone(), original_size)?;
        let out = self.forward(
            sam_image,
            sam_boxes.unsqueeze(),
            clip_pixels,
            class_embeddings,
        )?;
        let c = out.logits.dims()[2];
        let probs = softmax(out.logits.reshape([n, c]), 1);
        // The official order (`inference_pred_box`): the top k by class probability, then
        // each times its box's score.
        let k = top_k.min(n * c);
        let (probs, flat) = probs.reshape([n * c]).topk_with_indices(k, 0);
        let box_indices = flat.clone().div_scalar(c as i64);
        let labels = flat.remainder_scalar(c as i64);
        let scores = match source {
            BoxSource::Given => probs,
            BoxSource::Detector(scores) => probs * scores.select(0, box_indices.clone()),
        };
        let masks = self
            .sam
            .postprocess_masks(out.masks, input_size, original_size)?
            .squeeze_dim::<3>(0)
            .select(0, box_indices.clone())
            .greater_elem(0.0);
        Ok(RegionPredictions {
            boxes: boxes.select(0, box_indices.clone()),
            scores,
            labels,
            box_indices,
            masks,
        })
    }
}
