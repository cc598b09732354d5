//! `detclip regionspot cache`: SAM's and CLIP's outputs for every training image, computed
//! once and written to the recipe's cache folder, so that training runs only the module.
//!
//! The batches training draws must then present each image exactly as the cache saw it:
//! sources with one short side and no flip (the key holds the boxes bit for bit; another
//! resolution is another key, computed and cached on the fly).

use std::path::Path;

use burn::prelude::*;
use detclip_core::data::{Loaded, Orientation, TestTransform, collate};
use detclip_core::{DetError, Result};
use detclip_models::regionspot::RegionSpot;

use super::RegionSpotRecipe;
use crate::data::Source;

/// What a cache pass did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CacheReport {
    /// Images with boxes seen.
    pub images: usize,
    /// Cache files written by this pass.
    pub written: usize,
    /// Images already cached.
    pub present: usize,
}

/// Fills `recipe.cache_dir` with the frozen features of every image (with boxes) of every
/// training source, at the source's first short side without flipping. Images already cached
/// are read back instead, so an interrupted pass resumes where it stopped.
///
/// # Errors
/// [`DetError::InvalidOption`] when the recipe has no cache folder; data, image and cache
/// errors.
pub fn cache_features<B: Backend>(
    recipe: &RegionSpotRecipe,
    model: &RegionSpot<B>,
    device: &B::Device,
    mut progress: impl FnMut(usize, usize),
) -> Result<CacheReport> {
    let dir = recipe
        .cache_dir
        .as_ref()
        .ok_or_else(|| DetError::InvalidOption {
            op: "regionspot cache",
            why: "the recipe names no cache_dir".into(),
        })?;
    std::fs::create_dir_all(dir).map_err(|e| DetError::Io {
        path: dir.display().to_string(),
        msg: e.to_string(),
    })?;
    let mut report = CacheReport::default();
    let sources = recipe
        .data
        .sources
        .iter()
        .map(Source::load)
        .collect::<Result<Vec<_>>>()?;
    let total: usize = sources.iter().map(|s| s.samples.len()).sum();
    let mut done = 0;
    for source in &sources {
        let transform = TestTransform {
            short: source.config.short_sides[0],
            max_long: source.config.max_long,
            normalize: recipe.normalize(),
        };
        for sample in &source.samples {
            done += 1;
            let prepared = transform.apply(Loaded::load(sample.clone(), Orientation::Apply)?);
            let batch = collate::<B>(vec![prepared], recipe.data.size_divisor, device)?;
            let (boxes, _) = RegionSpotRecipe::labelled_boxes(&batch, 0, &source.vocabulary);
            if boxes.is_empty() {
                continue;
            }
            let before = count_files(dir);
            recipe.frozen(model, &batch, 0, &boxes)?;
            report.images += 1;
            if count_files(dir) > before {
                report.written += 1;
            } else {
                report.present += 1;
            }
            progress(done, total);
        }
    }
    Ok(report)
}

/// Cache files in `dir` (`.safetensors`).
pub fn count_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter(|e| e.path().extension().is_some_and(|x| x == "safetensors"))
                .count()
        })
        .unwrap_or(0)
}
