//! `detclip detect`: a trained checkpoint, images and a prompt in; detections out, as one
//! COCO-format JSON (`detections.json`: images, categories, and annotations with scores) and
//! one picture per image with labelled boxes.

use std::path::{Path, PathBuf};

use detclip_core::data::{ImageSource, Orientation, Sample, image_size};
use detclip_core::ext::DetclipOps;
use detclip_core::{DetError, Result};
use image::RgbImage;
use serde_json::json;

use crate::draw::{PALETTE, draw_labelled_box};
use crate::evaluate::predict;
use crate::learner::write_atomic;
use crate::recipe::{Detected, Recipe};

/// The concept names of a prompt: `"cat. dog."` → `["cat", "dog"]` (GLIP's prompt style).
pub fn parse_prompt(prompt: &str) -> Result<Vec<String>> {
    let mut names: Vec<String> = Vec::new();
    for name in prompt.split('.').map(str::trim).filter(|s| !s.is_empty()) {
        if !names.iter().any(|n| n == name) {
            names.push(name.to_string());
        }
    }
    if names.is_empty() {
        return Err(DetError::InvalidOption {
            op: "detect",
            why: format!("the prompt `{prompt}` names no concept; write e.g. \"cat. dog.\""),
        });
    }
    Ok(names)
}

fn is_image(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .map(|e| matches!(e.to_ascii_lowercase().as_str(), "jpg" | "jpeg" | "png"))
        .unwrap_or(false)
}

/// The images of `path`: the file itself, or the JPEG/PNG files of a folder, sorted.
pub fn image_paths(path: &Path) -> Result<Vec<PathBuf>> {
    let io = |msg: String| DetError::Io {
        path: path.display().to_string(),
        msg,
    };
    if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    if !path.is_dir() {
        return Err(io("no such file or folder".into()));
    }
    let mut paths: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| io(e.to_string()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && is_image(p))
        .collect();
    paths.sort();
    if paths.is_empty() {
        return Err(io("the folder holds no .jpg, .jpeg or .png image".into()));
    }
    Ok(paths)
}

/// Samples (no annotations) for image files; every image's size is read first, so a bad
/// file is reported before anything is computed or written.
pub fn image_samples(paths: &[PathBuf]) -> Result<Vec<Sample>> {
    paths
        .iter()
        .map(|p| {
            let (w, h) = image_size(p, Orientation::Apply)?;
            Ok(Sample::new(
                p.display().to_string(),
                ImageSource::File(p.clone()),
                w,
                h,
            ))
        })
        .collect()
}

/// Draws the detections of one image with their names and scores.
pub fn annotate(image: &RgbImage, dets: &[Detected], names: &[String]) -> RgbImage {
    let mut img = image.clone();
    for d in dets {
        let color = PALETTE[d.label % PALETTE.len()];
        let label = format!("{} {:.2}", names[d.label], d.score);
        draw_labelled_box(&mut img, d.bbox, &label, color);
    }
    img
}

/// The COCO-format JSON of detections on `samples`.
pub fn coco_json(
    samples: &[Sample],
    dets: &[Vec<Detected>],
    names: &[String],
) -> serde_json::Value {
    let images: Vec<_> = samples
        .iter()
        .enumerate()
        .map(
            |(i, s)| json!({"id": i + 1, "file_name": s.key, "width": s.width, "height": s.height}),
        )
        .collect();
    let categories: Vec<_> = names
        .iter()
        .enumerate()
        .map(|(i, n)| json!({"id": i + 1, "name": n}))
        .collect();
    let mut annotations = Vec::new();
    for (i, ds) in dets.iter().enumerate() {
        for d in ds {
            let [x1, y1, x2, y2] = d.bbox;
            let (w, h) = ((x2 - x1).max(0.0), (y2 - y1).max(0.0));
            annotations.push(json!({
                "id": annotations.len() + 1,
                "image_id": i + 1,
                "category_id": d.label + 1,
                "bbox": [x1, y1, w, h],
                "area": w * h,
                "score": d.score,
            }));
        }
    }
    json!({"images": images, "categories": categories, "annotations": annotations})
}

/// What `detect` wrote.
#[derive(Debug, Clone)]
pub struct DetectReport {
    /// `detections.json`.
    pub json: PathBuf,
    /// The annotated pictures.
    pub pictures: Vec<PathBuf>,
    /// Detections per image.
    pub detections: Vec<Vec<Detected>>,
}

/// Detects `names` in `samples` with a trained model and writes `detections.json` and one
/// annotated PNG per image into `out`.
pub fn detect_and_write<R: Recipe, B: DetclipOps>(
    recipe: &R,
    model: &R::Model<B>,
    samples: &[Sample],
    names: &[String],
    threshold: f32,
    out: &Path,
    device: &B::Device,
) -> Result<DetectReport> {
    let dets = predict(recipe, model, samples, names, threshold, 4, device)?;
    let io = |p: &Path, e: String| DetError::Io {
        path: p.display().to_string(),
        msg: e,
    };
    std::fs::create_dir_all(out).map_err(|e| io(out, e.to_string()))?;
    let json_path = out.join("detections.json");
    let text = serde_json::to_string_pretty(&coco_json(samples, &dets, names)).expect("json");
    write_atomic(&json_path, text.as_bytes())?;
    let mut pictures = Vec::new();
    for (i, (s, d)) in samples.iter().zip(&dets).enumerate() {
        let image = s.load_image(Orientation::Apply)?;
        let stem = match &s.image {
            ImageSource::File(p) => p
                .file_stem()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| format!("image{i}")),
            ImageSource::Memory(_) => format!("image{i:03}"),
        };
        let path = out.join(format!("{stem}.detections.png"));
        annotate(&image, d, names)
            .save(&path)
            .map_err(|e| io(&path, e.to_string()))?;
        pictures.push(path);
    }
    Ok(DetectReport {
        json: json_path,
        pictures,
        detections: dets,
    })
}
