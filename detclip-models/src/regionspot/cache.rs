//! The per-image cache of SAM's and CLIP's outputs: they never change while the module
//! trains, so they are computed once and read back.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::prelude::*;
use detclip_core::DetError;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use super::model::{FrozenFeatures, RegionSpot, RegionSpotConfig};

/// Names of the tensors in a cache file.
const REGION_TOKENS: &str = "region_tokens";
const MASKS: &str = "masks";
const CLIP_FEATURES: &str = "clip_features";
/// Metadata entry holding what the key was derived from, checked on reading.
const SOURCE: &str = "source";

/// The cache key of one image: a hash of the image path, its boxes (bit-exact) and the model
/// configuration, as 16 hex digits. Another box, image or model gives another key.
pub fn cache_key(image: &Path, boxes: &[[f32; 4]], config: &RegionSpotConfig) -> String {
    format!("{:016x}", fnv1a(source(image, boxes, config).as_bytes()))
}

/// Where the cache file of `key` lives in `dir`.
pub fn cache_path(dir: &Path, key: &str) -> PathBuf {
    dir.join(format!("{key}.safetensors"))
}

/// The text a key hashes; stored in the file too, so that a hash collision or a file copied
/// under the wrong name is detected on reading.
fn source(image: &Path, boxes: &[[f32; 4]], config: &RegionSpotConfig) -> String {
    let boxes: Vec<String> = boxes
        .iter()
        .flatten()
        .map(|v| format!("{:08x}", v.to_bits()))
        .collect();
    format!("{}\n{}\n{config}", image.display(), boxes.join(","))
}

/// 64-bit FNV-1a: stable across Rust versions and platforms (unlike `DefaultHasher`).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The frozen features of one image (batch 1) for these boxes: read from `dir` when cached,
/// else computed with `model` and written there (atomically: temporary file, then rename).
/// This is the library side of the `detclip regionspot cache` command (to be added with the
/// CLI): one call per image.
///
/// # Shapes
/// - `sam_image`: `[1, 3, S, S]` preprocessed; `clip_pixels`: `[1, 3, H, W]`;
///   `boxes` in SAM's input frame
///
/// # Errors
/// [`DetError::Io`] when the cache cannot be read or written, [`DetError::Shape`] for
/// mis-shaped inputs.
#[allow(clippy::too_many_arguments)]
pub fn cached_frozen_features<B: Backend>(
    model: &RegionSpot<B>,
    config: &RegionSpotConfig,
    dir: &Path,
    image: &Path,
    boxes: &[[f32; 4]],
    sam_image: Tensor<B, 4>,
    clip_pixels: Tensor<B, 4>,
) -> Result<FrozenFeatures<B>, DetError> {
    let device = sam_image.device();
    let src = source(image, boxes, config);
    let path = cache_path(dir, &cache_key(image, boxes, config));
    let flat: Vec<f32> = boxes.iter().flatten().copied().collect();
    let boxes = Tensor::<B, 3>::from_data(TensorData::new(flat, [1, boxes.len(), 4]), &device);
    if let Some(features) = read_frozen_features(&path, &src, &device)? {
        return Ok(FrozenFeatures {
            boxes: Some(boxes),
            ..features
        });
    }
    let features = model.frozen_features(sam_image, boxes, clip_pixels)?;
    write_frozen_features(&path, &src, &features)?;
    Ok(features)
}

/// Writes one image's features as safetensors (`region_tokens`, `masks`, `clip_features`,
/// f32, with `source` in the metadata), through a temporary file renamed into place.
///
/// # Errors
/// [`DetError::Io`] when the directory or file cannot be written.
pub fn write_frozen_features<B: Backend>(
    path: &Path,
    source: &str,
    features: &FrozenFeatures<B>,
) -> Result<(), DetError> {
    let io = |e: &dyn std::fmt::Display| DetError::Io {
        path: path.display().to_string(),
        msg: e.to_string(),
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| io(&e))?;
    }
    let bytes = |t: TensorData| -> Result<(Vec<usize>, Vec<u8>), DetError> {
        let shape = t.shape.to_vec();
        let values = t
            .convert::<f32>()
            .to_vec::<f32>()
            .map_err(|e| io(&format!("{e:?}")))?;
        Ok((shape, values.iter().flat_map(|v| v.to_le_bytes()).collect()))
    };
    let parts = [
        (REGION_TOKENS, bytes(features.region_tokens.to_data())?),
        (MASKS, bytes(features.masks.to_data())?),
        (CLIP_FEATURES, bytes(features.clip_features.to_data())?),
    ];
    let views = parts
        .iter()
        .map(|(name, (shape, data))| {
            TensorView::new(Dtype::F32, shape.clone(), data)
                .map(|v| (name.to_string(), v))
                .map_err(|e| io(&e))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let metadata = HashMap::from([(SOURCE.to_string(), source.to_string())]);
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    safetensors::serialize_to_file(views, Some(metadata), &tmp).map_err(|e| io(&e))?;
    std::fs::rename(&tmp, path).map_err(|e| io(&e))
}

/// Reads one image's features; `Ok(None)` when there is no such file.
///
/// # Errors
/// [`DetError::Io`] for an unreadable file, one that is not a cache file, or one written for
/// another image, boxes or model (its `source` differs).
pub fn read_frozen_features<B: Backend>(
    path: &Path,
    source: &str,
    device: &B::Device,
) -> Result<Option<FrozenFeatures<B>>, DetError> {
    let io = |msg: String| DetError::Io {
        path: path.display().to_string(),
        msg,
    };
    let buffer = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(e.to_string())),
    };
    let (_, metadata) = SafeTensors::read_metadata(&buffer).map_err(|e| io(e.to_string()))?;
    let stored = metadata
        .metadata()
        .as_ref()
        .and_then(|m| m.get(SOURCE))
        .ok_or_else(|| io("not a RegionSpot cache file (no `source` metadata)".into()))?;
    if stored != source {
        return Err(io(format!(
            "cached for another image, boxes or model:\n{stored}\nnot\n{source}"
        )));
    }
    let file = SafeTensors::deserialize(&buffer).map_err(|e| io(e.to_string()))?;
    let tensor = |name: &str| -> Result<TensorData, DetError> {
        let view = file.tensor(name).map_err(|e| io(e.to_string()))?;
        if view.dtype() != Dtype::F32 {
            return Err(io(format!("`{name}` is {:?}, not F32", view.dtype())));
        }
        let values: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        Ok(TensorData::new(values, view.shape().to_vec()))
    };
    let region_tokens = tensor(REGION_TOKENS)?;
    let masks = tensor(MASKS)?;
    let clip_features = tensor(CLIP_FEATURES)?;
    let ranks = [
        region_tokens.shape.len(),
        masks.shape.len(),
        clip_features.shape.len(),
    ];
    if ranks != [3, 4, 3] {
        return Err(io(format!("tensor ranks {ranks:?}, expected [3, 4, 3]")));
    }
    Ok(Some(FrozenFeatures {
        region_tokens: Tensor::from_data(region_tokens, device),
        masks: Tensor::from_data(masks, device),
        clip_features: Tensor::from_data(clip_features, device),
        boxes: None,
    }))
}
