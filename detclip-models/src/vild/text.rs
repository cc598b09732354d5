use std::collections::HashMap;

use burn::prelude::*;
use burn::tensor::TensorData;
use detclip_core::DetError;

use crate::clip::{ClipText, l2_normalize};
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
    pub fn new(templates: &[&str]) -> detclip_core::Result<Self> {
        if templates.is_empty() || templates.iter().any(|t| t.matches("{}").count() != 1) {
            return Err(DetError::InvalidOption {
                op: "ClassEmbeddings",
                why: format!("templates must be non-empty, each with one `{{}}`: {templates:?}"),
            });
        }
        Ok(Self {
            templates: templates.iter().map(|t| t.to_string()).collect(),
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
            let rows = self.encode(text, tokenizer, &missing, device)?;
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
        tokenizer: &TextTokenizer,
        names: &[String],
        device: &B::Device,
    ) -> detclip_core::Result<Vec<Vec<f32>>> {
        let prompts: Vec<String> = names
            .iter()
            .flat_map(|n| self.templates.iter().map(move |t| t.replace("{}", n)))
            .collect();
        let tokens = tokenizer.encode_batch(&prompts)?;
        let (ids, _) = batch_tensors::<B>(&tokens, device)?;
        let embeds = l2_normalize(text.forward(ids)?.text_embeds);
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
