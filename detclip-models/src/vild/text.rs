use std::collections::HashMap;

use burn::prelude::*;
use burn::tensor::TensorData;
use detclip_core::DetError;

use detclip_core::ops::{RoiAlignOptions, roi_align};

use super::sampling::HostBox;
use crate::clip::{Clip, ClipText, ClipVision, ClipVisionConfig, imagenet_to_clip, l2_normalize};
use crate::tokenizer::{TextTokenizer, batch_tensors};

/// ViLD's single prompt (§3.2).
pub const VILD_PROMPT: &str = "a photo of {} in the scene";

/// The prompt ensemble of ViLD's released code (CLIP's ImageNet templates adapted to
/// scenes); `{}` is the class name.
pub const VILD_TEMPLATES: &[&str] = &[
    "a photo of {} in the scene.",
    "There is {} in the scene.",
    "There is the {} in the scene.",
    "a photo of the {} in the scene.",
    "a photo of one {} in the scene.",
    "itap of the {}.",
    "itap of my {}.",
    "a photo of the {}.",
    "a photo of my {}.",
    "a photo of one {}.",
    "a photo of many {}.",
    "a good photo of the {}.",
    "a bad photo of the {}.",
    "a close-up photo of the {}.",
];

/// ViLD-text logits (§3.2, Eq. 1): the cosine similarity of each region embedding with the
/// learned background embedding and every class embedding, divided by the temperature.
/// Column 0 is the background.
///
/// # Shapes
/// - `regions`: `[K, E]`, `background`: `[E]`, `classes`: `[C, E]` → `[K, 1 + C]`
///
/// # Errors
/// [`DetError::Shape`] when the widths differ.
pub fn vild_text_logits<B: Backend>(
    regions: Tensor<B, 2>,
    background: Tensor<B, 1>,
    classes: Tensor<B, 2>,
    temperature: f64,
) -> detclip_core::Result<Tensor<B, 2>> {
    let [_, e] = regions.dims();
    for (what, got) in [
        ("background", vec![background.dims()[0]]),
        ("classes", classes.dims().to_vec()),
    ] {
        if got.last() != Some(&e) {
            return Err(DetError::Shape {
                op: "vild_text_logits",
                what,
                got,
                expected: format!("width {e} like the region embeddings"),
            });
        }
    }
    let targets = Tensor::cat(vec![background.unsqueeze_dim(0), classes], 0);
    Ok(cosine_logits(regions, targets, temperature))
}

/// `norm(a) · norm(b)ᵀ / temperature`.
pub(super) fn cosine_logits<B: Backend>(
    a: Tensor<B, 2>,
    b: Tensor<B, 2>,
    temperature: f64,
) -> Tensor<B, 2> {
    l2_normalize(a).matmul(l2_normalize(b).transpose()) / temperature
}

/// Class embeddings from CLIP's text tower, computed once per class name and kept.
///
/// Each name is put into every template; the template embeddings are normalised, averaged
/// and normalised again (CLIP's prompt ensembling, as ViLD does). With one template this is
/// the plain normalised embedding of that prompt.
#[derive(Debug, Clone)]
pub struct ClassEmbeddings {
    templates: Vec<String>,
    cache: HashMap<String, Vec<f32>>,
}

impl ClassEmbeddings {
    /// An empty cache for these templates (each must contain `{}` once).
    ///
    /// # Errors
    /// [`DetError::InvalidOption`] for no template or a template without `{}`.
    pub fn new(templates: &[impl AsRef<str>]) -> detclip_core::Result<Self> {
        let templates: Vec<String> = templates.iter().map(|t| t.as_ref().to_string()).collect();
        if templates.is_empty() || templates.iter().any(|t| t.matches("{}").count() != 1) {
            return Err(DetError::InvalidOption {
                op: "ClassEmbeddings",
                why: format!("templates must be non-empty, each with one `{{}}`: {templates:?}"),
            });
        }
        Ok(Self {
            templates,
            cache: HashMap::new(),
        })
    }

    /// The templates.
    pub fn templates(&self) -> &[String] {
        &self.templates
    }

    /// How many class names are cached.
    pub fn cached(&self) -> usize {
        self.cache.len()
    }

    /// The embeddings of `names`, `[C, E]`, unit rows; names not seen before are encoded (in
    /// one batch) and cached. The tokenizer must pad to a fixed length
    /// ([`TokenizerOptions::with_pad_to_max_len`](crate::tokenizer::TokenizerOptions)).
    ///
    /// # Errors
    /// [`DetError::InvalidOption`] for no name, tokenizer and text-tower errors.
    pub fn get<B: Backend>(
        &mut self,
        text: &ClipText<B>,
        tokenizer: &TextTokenizer,
        names: &[impl AsRef<str>],
        device: &B::Device,
    ) -> detclip_core::Result<Tensor<B, 2>> {
        let ids = |prompts: &[String]| -> detclip_core::Result<Tensor<B, 2, Int>> {
            let tokens = tokenizer.encode_batch(prompts)?;
            Ok(batch_tensors::<B>(&tokens, device)?.0)
        };
        self.get_with(text, ids, names, device)
    }

    /// [`ClassEmbeddings::get`] with the token ids of the prompts given by `ids` (`[P, L]`
    /// for `P` prompts), for text towers whose ids do not come from a `tokenizer.json` (the
    /// synthetic world's word vocabulary).
    ///
    /// # Errors
    /// As [`ClassEmbeddings::get`], and `ids`' errors.
    pub fn get_with<B: Backend>(
        &mut self,
        text: &ClipText<B>,
        ids: impl Fn(&[String]) -> detclip_core::Result<Tensor<B, 2, Int>>,
        names: &[impl AsRef<str>],
        device: &B::Device,
    ) -> detclip_core::Result<Tensor<B, 2>> {
        if names.is_empty() {
            return Err(DetError::InvalidOption {
                op: "ClassEmbeddings",
                why: "no class names".into(),
            });
        }
        let mut missing: Vec<String> = Vec::new();
        for n in names.iter().map(|n| n.as_ref().to_string()) {
            if !self.cache.contains_key(&n) && !missing.contains(&n) {
                missing.push(n);
            }
        }
        if !missing.is_empty() {
            let rows = self.encode(text, ids, &missing)?;
            for (name, row) in missing.into_iter().zip(rows) {
                self.cache.insert(name, row);
            }
        }
        let e = self.cache[names[0].as_ref()].len();
        let flat: Vec<f32> = names
            .iter()
            .flat_map(|n| self.cache[n.as_ref()].iter().copied())
            .collect();
        Ok(Tensor::from_data(
            TensorData::new(flat, [names.len(), e]),
            device,
        ))
    }

    fn encode<B: Backend>(
        &self,
        text: &ClipText<B>,
        ids: impl Fn(&[String]) -> detclip_core::Result<Tensor<B, 2, Int>>,
        names: &[String],
    ) -> detclip_core::Result<Vec<Vec<f32>>> {
        let prompts: Vec<String> = names
            .iter()
            .flat_map(|n| self.templates.iter().map(move |t| t.replace("{}", n)))
            .collect();
        let embeds = l2_normalize(text.forward(ids(&prompts)?)?.text_embeds);
        let [_, e] = embeds.dims();
        let t = self.templates.len();
        let mean = embeds
            .reshape([names.len(), t, e])
            .mean_dim(1)
            .reshape([names.len(), e]);
        let values = super::rpn::read("ClassEmbeddings", l2_normalize(mean))?;
        Ok(values.chunks(e).map(<[f32]>::to_vec).collect())
    }
}

/// ViLD-image's teacher of regions (§3.3): CLIP's image embeddings of each region's crops at
/// several scales (ViLD: 1× and 1.5×), each normalised, summed over the scales and normalised
/// again. `crops` holds `scales` blocks of the same `M` regions, scale-major, already in
/// CLIP's normalisation; they run through the image tower `batch` crops at a time.
///
/// # Shapes
/// - `crops`: `[scales·M, 3, S, S]` → `[M, E]`
///
/// # Errors
/// [`DetError::InvalidOption`] when the crops are not `scales` blocks; image-tower errors.
pub fn region_teacher<B: Backend>(
    vision: &ClipVision<B>,
    crops: Tensor<B, 4>,
    scales: usize,
    batch: usize,
) -> detclip_core::Result<Tensor<B, 2>> {
    let [rows, _, _, _] = crops.dims();
    if scales == 0 || !rows.is_multiple_of(scales) {
        return Err(DetError::InvalidOption {
            op: "region_teacher",
            why: format!("{rows} crops are not {scales} scales of the same regions"),
        });
    }
    let m = rows / scales;
    let mut embeds = Vec::new();
    let mut start = 0;
    while start < rows {
        let n = batch.max(1).min(rows - start);
        let chunk = crops.clone().narrow(0, start, n);
        embeds.push(l2_normalize(vision.forward(chunk)?.image_embeds));
        start += n;
    }
    let embeds = Tensor::cat(embeds, 0);
    let e = embeds.dims()[1];
    Ok(l2_normalize(
        embeds.reshape([scales, m, e]).sum_dim(0).reshape([m, e]),
    ))
}

/// The box scaled by `s` around its centre, clipped to an `h × w` image.
pub fn scale_box(b: HostBox, s: f32, h: usize, w: usize) -> HostBox {
    let (cx, cy) = ((b[0] + b[2]) / 2.0, (b[1] + b[3]) / 2.0);
    let (hw, hh) = ((b[2] - b[0]) * s / 2.0, (b[3] - b[1]) * s / 2.0);
    let (w, h) = (w as f32, h as f32);
    [
        (cx - hw).clamp(0.0, w),
        (cy - hh).clamp(0.0, h),
        (cx + hw).clamp(0.0, w),
        (cy + hh).clamp(0.0, h),
    ]
}

/// [`region_teacher`] of boxes in a batch of ImageNet-normalised images (the detector's
/// input): each box scaled by every factor of `scales` ([`scale_box`]), cut out by RoIAlign at
/// CLIP's input side and re-normalised for CLIP ([`imagenet_to_clip`]), the whole batch's
/// crops through the image tower at once. What `detclip vild precompute` stores, from the
/// batch's pixels instead of the image file's.
///
/// # Shapes
/// - `config`: the image tower's sizes (its input side is the crops');
/// - `images`: `[N, 3, H, W]`; `boxes`: per image, xyxy in its pixels; `image_sizes`: `N`
///   unpadded `(height, width)` → `[K, E]` for the `K` boxes in order
///
/// # Errors
/// RoIAlign and image-tower errors.
pub fn batch_region_teacher<B: Backend>(
    clip: &Clip<B>,
    config: &ClipVisionConfig,
    images: Tensor<B, 4>,
    boxes: &[Vec<HostBox>],
    image_sizes: &[(usize, usize)],
    scales: &[f32],
) -> detclip_core::Result<Tensor<B, 2>> {
    let device = images.device();
    let e = config.embed_dim;
    let k: usize = boxes.iter().map(Vec::len).sum();
    if k == 0 {
        return Ok(Tensor::zeros([0, e], &device));
    }
    let mut rows = Vec::with_capacity(scales.len() * k * 5);
    for &s in scales {
        for (i, (bs, &(ih, iw))) in boxes.iter().zip(image_sizes).enumerate() {
            for b in bs {
                rows.push(i as f32);
                rows.extend(scale_box(*b, s, ih, iw));
            }
        }
    }
    let rois = Tensor::<B, 2>::from_data(TensorData::new(rows, [scales.len() * k, 5]), &device);
    let side = config.image_size;
    let options = RoiAlignOptions {
        output_size: [side, side],
        spatial_scale: 1.0,
        sampling_ratio: 2,
        aligned: false,
    };
    let crops = imagenet_to_clip(roi_align(images, rois, &options)?);
    region_teacher(&clip.vision, crops, scales.len(), scales.len() * k)
}

/// Filled boxes `[G, H, W]` on an `h × w` canvas: 1 where a pixel's centre lies inside the
/// box (mask targets for data without instance masks).
pub fn box_mask_targets<B: Backend>(
    boxes: &[HostBox],
    h: usize,
    w: usize,
    device: &B::Device,
) -> Tensor<B, 3> {
    let mut data = vec![0.0f32; boxes.len() * h * w];
    for (g, b) in boxes.iter().enumerate() {
        let (x0, x1) = (
            (b[0] - 0.5).ceil().max(0.0) as usize,
            (b[2] - 0.5).ceil().max(0.0) as usize,
        );
        let (y0, y1) = (
            (b[1] - 0.5).ceil().max(0.0) as usize,
            (b[3] - 0.5).ceil().max(0.0) as usize,
        );
        for y in y0..y1.min(h) {
            let row = g * h * w + y * w;
            data[row + x0.min(w)..row + x1.min(w)].fill(1.0);
        }
    }
    Tensor::from_data(TensorData::new(data, [boxes.len(), h, w]), device)
}
