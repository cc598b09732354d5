//! GLIP's inference (released `ATSSPostProcessor` with dot-product logits, `SCORE_AGG: MEAN`):
//! token probabilities are averaged over each phrase's tokens into phrase scores, candidates
//! above a threshold are weighted by the centerness probability, boxes are decoded from their
//! anchors, class-aware NMS runs per image and the best detections are kept; the score is
//! `sqrt(phrase · centerness)`. A vocabulary larger than one prompt is split into prompt
//! chunks run as rows of one batch; each chunk is post-processed on its own and the chunks of
//! one image are concatenated, as the released chunked evaluation does.

use burn::prelude::*;
use burn::tensor::TensorData;
use burn::tensor::activation::sigmoid;

use std::collections::BTreeMap;

use detclip_core::DetError;
use detclip_core::Result as DetResult;
use detclip_core::data::{Normalize, TestTransform};
use detclip_core::ext::DetclipOps;
use detclip_core::ops::{batched_nms_slice_with, top_k_slice};
use serde::{Deserialize, Serialize};

use super::{GlipDetector, GlipGeometry, GlipOutput, GlipPromptConfig, phrase_tokens};
pub use crate::dense::Detections;
use crate::dense::check_test_limits;
use crate::tokenizer::{TextTokenizer, TokenizedText, batch_tensors};

/// A phrase of a prompt: which class (vocabulary entry) it names and its tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhraseTokens {
    /// Index in the whole vocabulary.
    pub class: usize,
    /// Its tokens in this prompt (see [`positive_tokens`](super::positive_tokens)).
    pub tokens: Vec<usize>,
}

/// GLIP's inference settings (the released test settings).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GlipTestConfig {
    /// Shorter side of the test resize (`INPUT.MIN_SIZE_TEST`, 800).
    pub short_side: u32,
    /// Cap on the longer side (`INPUT.MAX_SIZE_TEST`, 1333).
    pub max_long: Option<u32>,
    /// Phrase scores at or below this are not candidates (`MODEL.ATSS.INFERENCE_TH`, 0.05).
    pub candidate_threshold: f32,
    /// Candidates kept per image before NMS (`MODEL.ATSS.PRE_NMS_TOP_N`, 1000).
    pub pre_nms_top_k: usize,
    /// NMS IoU threshold, per class (`MODEL.ATSS.NMS_TH`, 0.6).
    pub nms_iou: f32,
    /// Detections kept per image (`MODEL.ATSS.DETECTIONS_PER_IMG`, 100).
    pub max_detections: usize,
    /// Descriptions of classes, written into the prompt as `"name, description"`
    /// ([`described_prompts`](super::described_prompts)).
    #[serde(default)]
    pub descriptions: BTreeMap<String, String>,
    /// How the vocabulary becomes prompts (default: `"a. b. c."` filled to the token budget;
    /// [`GlipPromptConfig::official`] for the released evaluation's).
    #[serde(default)]
    pub prompt: GlipPromptConfig,
    /// Most (image, prompt chunk) rows run through the fusion tower and head at once: a large
    /// vocabulary (LVIS: 31 chunks) runs in groups of rows rather than as one batch, so memory
    /// stays bounded. The detections do not depend on it (each row is post-processed alone).
    #[serde(default = "default_max_rows")]
    pub max_rows: usize,
}

fn default_max_rows() -> usize {
    8
}

impl Default for GlipTestConfig {
    fn default() -> Self {
        Self {
            short_side: 800,
            max_long: Some(1333),
            candidate_threshold: 0.05,
            pre_nms_top_k: 1000,
            nms_iou: 0.6,
            max_detections: 100,
            descriptions: BTreeMap::new(),
            prompt: GlipPromptConfig::default(),
            max_rows: default_max_rows(),
        }
    }
}

impl GlipTestConfig {
    /// The released test transform: keep-ratio resize with Pillow's bilinear, then BGR in
    /// 0–255 normalised by mean `(103.53, 116.28, 123.675)`, std `(57.375, 57.12, 58.395)`
    /// (`INPUT.TO_BGR255`, `INPUT.PIXEL_MEAN`/`PIXEL_STD` of GLIP's Swin configs). Training
    /// normalises the same way.
    pub fn transform(&self) -> TestTransform {
        TestTransform {
            short: self.short_side,
            max_long: self.max_long,
            normalize: Normalize::glip_swin(),
        }
    }

    /// Checks the values.
    ///
    /// # Errors
    /// [`DetError::InvalidOption`] naming the first bad value.
    pub fn validate(&self) -> DetResult<()> {
        check_test_limits(
            "glip test",
            (self.short_side, self.max_long),
            self.pre_nms_top_k,
            self.nms_iou,
            self.max_detections,
        )?;
        if !(0.0..1.0).contains(&self.candidate_threshold) {
            return Err(DetError::InvalidOption {
                op: "glip test",
                why: format!(
                    "candidate_threshold must be in [0, 1), got {}",
                    self.candidate_threshold
                ),
            });
        }
        if self.max_rows == 0 {
            return Err(DetError::InvalidOption {
                op: "glip test",
                why: "max_rows must be positive".into(),
            });
        }
        self.prompt.validate()
    }
}

/// `[T, C]` averaging matrix of one prompt's phrases.
fn averaging_matrix(phrases: &[PhraseTokens], tokens: usize, width: usize) -> DetResult<Vec<f32>> {
    let mut m = vec![0.0f32; tokens * width];
    for (c, phrase) in phrases.iter().enumerate() {
        if phrase.tokens.is_empty() || phrase.tokens.iter().any(|&t| t >= tokens) {
            return Err(DetError::InvalidOption {
                op: "glip_detect",
                why: format!(
                    "phrase of class {} has tokens {:?} (prompt of {tokens} tokens)",
                    phrase.class, phrase.tokens
                ),
            });
        }
        for &t in &phrase.tokens {
            m[t * width + c] = 1.0 / phrase.tokens.len() as f32;
        }
    }
    Ok(m)
}

/// Detections per image from a batch whose row `r` ran prompt `phrases[r]` on image
/// `image_of_row[r]` (a chunked vocabulary: several rows per image), exactly as the released
/// `ATSSPostProcessor` and chunked evaluation compute them:
///
/// 1. per row and pyramid level, the (anchor, phrase) pairs whose phrase score exceeds
///    `candidate_threshold` are candidates; the `pre_nms_top_k` best by phrase × centerness
///    are kept, their boxes decoded from the anchors and clipped to the unpadded input
///    (`[0, w − 1] × [0, h − 1]`, maskrcnn-benchmark's `clip_to_image`); score
///    `sqrt(phrase · centerness)`;
/// 2. per row, the levels' candidates are concatenated, class-aware NMS (in the geometry's box
///    convention) runs, and the detections scoring at least the `max_detections`-th best are
///    kept (`kthvalue`: ties at the cut are all kept);
/// 3. the rows of one image (its prompt chunks) are concatenated in order, with no further NMS
///    or cap (`engine/inference.py`).
///
/// `image_sizes[i]` is image `i`'s unpadded `(height, width)` in the network input.
///
/// # Errors
/// [`DetError::InvalidOption`] when the rows, phrases and images disagree, or a phrase has no
/// or out-of-prompt tokens.
pub fn glip_detect<B: Backend>(
    out: &GlipOutput<B>,
    phrases: &[Vec<PhraseTokens>],
    image_of_row: &[usize],
    image_sizes: &[(usize, usize)],
    config: &GlipTestConfig,
    geometry: &GlipGeometry,
) -> DetResult<Vec<Detections>> {
    let logits = Tensor::cat(out.logits.clone(), 1);
    let [n, a, t] = logits.dims();
    if phrases.len() != n
        || image_of_row.len() != n
        || image_of_row.iter().any(|&i| i >= image_sizes.len())
    {
        return Err(DetError::InvalidOption {
            op: "glip_detect",
            why: format!(
                "{n} rows but {} prompts and {} image indices for {} images",
                phrases.len(),
                image_of_row.len(),
                image_sizes.len()
            ),
        });
    }
    let width = phrases.iter().map(Vec::len).max().unwrap_or(0).max(1);
    let device = logits.device();
    // One averaging matrix per row, applied as a batched product.
    let mut matrices = Vec::with_capacity(n * t * width);
    for row in phrases {
        matrices.extend(averaging_matrix(row, t, width)?);
    }
    let matrix = Tensor::<B, 3>::from_data(TensorData::new(matrices, [n, t, width]), &device);
    let scores = sigmoid(logits).matmul(matrix);
    let centerness = sigmoid(flatten(&out.centerness)).reshape([n, a, 1]);
    let per_level = geometry.anchors.grid_anchors_host(&out.sizes)?;
    let level_counts: Vec<usize> = per_level.iter().map(Vec::len).collect();
    let anchors: Vec<[f32; 4]> = per_level.into_iter().flatten().collect();
    let anchor_t = Tensor::<B, 2>::from_data(
        TensorData::new(anchors.as_flattened().to_vec(), [a, 4]),
        &device,
    )
    .unsqueeze_dim::<3>(0)
    .expand([n, a, 4])
    .reshape([n * a, 4]);
    let boxes = geometry
        .coder
        .decode(flatten(&out.bbox_reg).reshape([n * a, 4]), anchor_t)?;
    // Post-processing is data-dependent: read the three maps once.
    let read = |x: Tensor<B, 3>| {
        x.into_data()
            .convert::<f32>()
            .to_vec::<f32>()
            .map_err(|e| DetError::InvalidOption {
                op: "glip_detect",
                why: format!("reading scores: {e:?}"),
            })
    };
    let scores = read(scores)?;
    let ctr = read(centerness)?;
    let boxes = read(boxes.reshape([n, a, 4]))?;
    let offset = if geometry.coder.plus_one { 1.0 } else { 0.0 };

    let mut per_image = vec![Detections::default(); image_sizes.len()];
    for (r, row) in phrases.iter().enumerate() {
        let (h, w) = image_sizes[image_of_row[r]];
        let (max_x, max_y) = (w as f32 - offset, h as f32 - offset);
        let (mut b, mut s, mut c) = (Vec::new(), Vec::new(), Vec::new());
        let mut start = 0;
        for &count in &level_counts {
            // (score × centerness, anchor, phrase) of this level's candidates.
            let mut cand = Vec::new();
            for k in start..start + count {
                for (j, _) in row.iter().enumerate() {
                    let p = scores[(r * a + k) * width + j];
                    if p > config.candidate_threshold {
                        cand.push((p * ctr[r * a + k], k, j));
                    }
                }
            }
            let weighted: Vec<f32> = cand.iter().map(|x| x.0).collect();
            for i in top_k_slice(&weighted, config.pre_nms_top_k) {
                let (v, k, j) = cand[i];
                let q = &boxes[(r * a + k) * 4..(r * a + k + 1) * 4];
                b.extend_from_slice(&[
                    q[0].clamp(0.0, max_x),
                    q[1].clamp(0.0, max_y),
                    q[2].clamp(0.0, max_x),
                    q[3].clamp(0.0, max_y),
                ]);
                s.push(v.sqrt());
                c.push(row[j].class as i64);
            }
            start += count;
        }
        let mut keep = batched_nms_slice_with(&b, &s, &c, config.nms_iou, geometry.coder.plus_one)?;
        if keep.len() > config.max_detections && config.max_detections > 0 {
            // kthvalue(n − cap + 1) of the kept scores, and every score at or above it.
            let mut sorted: Vec<f32> = keep.iter().map(|&i| s[i]).collect();
            sorted.sort_by(|x, y| y.total_cmp(x));
            let cut = sorted[config.max_detections - 1];
            keep.retain(|&i| s[i] >= cut);
        }
        let d = &mut per_image[image_of_row[r]];
        for i in keep {
            d.boxes
                .push([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]]);
            d.scores.push(s[i]);
            d.classes.push(c[i] as usize);
        }
    }
    Ok(per_image)
}

impl<B: DetclipOps> GlipDetector<B> {
    /// Detections of `vocabulary` on a batch of images, as the released chunked evaluation
    /// runs them: the names (with their descriptions) split into prompts by `test.prompt`
    /// (each of at most `max_tokens` tokens); every prompt chunk of every image a row, run in
    /// batches of at most `test.max_rows` rows, the image side run once per image and its
    /// pyramid repeated for the chunks; the rows of one image
    /// post-processed one by one and concatenated ([`glip_detect`], boxes clipped to each
    /// image's unpadded `(height, width)`); detections scoring at least `threshold`.
    ///
    /// # Shapes
    /// - `images`: `[N, 3, H, W]`; `image_sizes`: `N` unpadded `(height, width)`
    ///
    /// # Errors
    /// A name that does not fit a prompt on its own; tokenizer and model errors.
    #[allow(clippy::too_many_arguments)]
    pub fn detect_vocabulary(
        &self,
        images: Tensor<B, 4>,
        image_sizes: &[(usize, usize)],
        vocabulary: &[String],
        tokenizer: &TextTokenizer,
        max_tokens: usize,
        test: &GlipTestConfig,
        geometry: &GlipGeometry,
        threshold: f32,
    ) -> DetResult<Vec<Detections>> {
        let device = images.device();
        let prompts = test
            .prompt
            .prompts(vocabulary, &test.descriptions, max_tokens, |t| {
                tokenizer.encode(t).map_or(usize::MAX, |e| {
                    e.attention_mask.iter().filter(|&&m| m == 1).count()
                })
            })?;
        let encoded =
            tokenizer.encode_batch(&prompts.iter().map(|p| p.text.as_str()).collect::<Vec<_>>())?;
        let phrases: Vec<Vec<PhraseTokens>> = prompts
            .iter()
            .zip(&encoded)
            .map(|(p, e)| {
                p.entries
                    .iter()
                    .map(|entry| PhraseTokens {
                        class: entry.source,
                        tokens: phrase_tokens(e, &[entry.span]),
                    })
                    .collect()
            })
            .collect();
        // Rows: every prompt chunk of every image, image-major, run in groups of at most
        // `max_rows`; the groups' detections are appended per image in row order.
        let n = image_sizes.len();
        let chunks = prompts.len();
        let rows = n * chunks;
        let levels = self.glip.image_features(images)?;
        let mut dets = vec![Detections::default(); n];
        let mut start = 0;
        while start < rows {
            let end = (start + test.max_rows.max(1)).min(rows);
            let image_of_row: Vec<usize> = (start..end).map(|r| r / chunks).collect();
            let group: Vec<TokenizedText> =
                (start..end).map(|r| encoded[r % chunks].clone()).collect();
            let row_phrases: Vec<Vec<PhraseTokens>> =
                (start..end).map(|r| phrases[r % chunks].clone()).collect();
            let index: Vec<i64> = image_of_row.iter().map(|&i| i as i64).collect();
            let index =
                Tensor::<B, 1, Int>::from_data(TensorData::new(index, [end - start]), &device);
            let group_levels = levels
                .iter()
                .map(|l| l.clone().select(0, index.clone()))
                .collect();
            let (ids, mask) = batch_tensors::<B>(&group, &device)?;
            let out =
                self.glip
                    .forward_features(group_levels, ids, mask, Some(self.prompt.val()))?;
            let found = glip_detect(
                &out,
                &row_phrases,
                &image_of_row,
                image_sizes,
                test,
                geometry,
            )?;
            for (all, d) in dets.iter_mut().zip(found) {
                all.boxes.extend(d.boxes);
                all.scores.extend(d.scores);
                all.classes.extend(d.classes);
            }
            start = end;
        }
        Ok(dets
            .into_iter()
            .map(|d| {
                let keep: Vec<usize> = (0..d.scores.len())
                    .filter(|&i| d.scores[i] >= threshold)
                    .collect();
                Detections {
                    boxes: keep.iter().map(|&i| d.boxes[i]).collect(),
                    scores: keep.iter().map(|&i| d.scores[i]).collect(),
                    classes: keep.iter().map(|&i| d.classes[i]).collect(),
                }
            })
            .collect())
    }
}

/// `[N, C, H, W]` per level → `[N, Σ H·W, C]`.
fn flatten<B: Backend>(levels: &[Tensor<B, 4>]) -> Tensor<B, 3> {
    Tensor::cat(
        levels
            .iter()
            .map(|x| {
                let [n, c, h, w] = x.dims();
                x.clone().reshape([n, c, h * w]).swap_dims(1, 2)
            })
            .collect(),
        1,
    )
}
