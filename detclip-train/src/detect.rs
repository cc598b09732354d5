//! `detclip detect`: a trained checkpoint, images and a prompt in; detections out, as one
//! COCO-format JSON (`detections.json`: images, categories, and annotations with scores) and
//! one picture per image with labelled boxes.
//!
//! Recipes that classify boxes they are given ([`Recipe::GIVEN_BOXES`], RegionSpot) take
//! them from a COCO-format file ([`attach_boxes`]): another detector's `detections.json`,
//! or a ground-truth annotation file.

use std::path::{Path, PathBuf};

use std::collections::HashMap;

use detclip_core::data::{ImageSource, Instance, Orientation, Sample, image_size};
use detclip_core::error::{DataFault, DataLocation};
use detclip_core::ext::DetclipOps;
use detclip_core::{DetError, Result};
use image::RgbImage;
use serde::Deserialize;
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

#[derive(Deserialize)]
struct BoxFile {
    images: Vec<BoxImage>,
    annotations: Vec<BoxAnnotation>,
}

#[derive(Deserialize)]
struct BoxImage {
    id: u64,
    file_name: String,
}

#[derive(Deserialize)]
struct BoxAnnotation {
    #[serde(default)]
    id: Option<u64>,
    image_id: u64,
    bbox: [f64; 4],
    #[serde(default)]
    score: Option<f64>,
}

/// How far (pixels) a given box may reach past the image's border before it is refused;
/// within this it is clipped (detectors and annotators round outward).
pub const BOX_TOLERANCE: f64 = 1.0;

fn base_name(path: &str) -> &str {
    path.rsplit(['/', '\\']).next().unwrap_or(path)
}

/// Reads the boxes of a COCO-format file (`images` with `id` and `file_name`; `annotations`
/// with `image_id`, `bbox` `[x, y, w, h]` and, optionally, `score`) into the samples'
/// instances, for a recipe that classifies given boxes. Returns how many boxes were attached.
///
/// An image of the file is matched to a sample by its `file_name`: the same path, or else the
/// same file name without folders (which must then be unique among the file's images). Images
/// the file does not list get no boxes; the file's other images are ignored. Boxes scored
/// below `min_score` are dropped. A box that is empty, not finite, or reaches more than
/// [`BOX_TOLERANCE`] pixels past its image is an error; within that it is clipped.
pub fn attach_boxes(path: &Path, samples: &mut [Sample], min_score: f32) -> Result<usize> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| DetError::Io {
        path: file.clone(),
        msg: e.to_string(),
    })?;
    let parsed: BoxFile = serde_json::from_str(&text).map_err(|e| DetError::Json {
        file: file.clone(),
        line: e.line(),
        column: e.column(),
        msg: e.to_string(),
    })?;
    let data_err = |what, id: String, kind, msg: String| DetError::Data {
        file: file.clone(),
        at: DataLocation::Item { what, id },
        kind,
        msg,
    };
    let mut by_base: HashMap<&str, Vec<u64>> = HashMap::new();
    let mut ids = HashMap::new();
    for im in &parsed.images {
        if ids.insert(im.id, im.file_name.as_str()).is_some() {
            return Err(data_err(
                "image",
                im.id.to_string(),
                DataFault::Malformed,
                "the id is listed twice".into(),
            ));
        }
        by_base
            .entry(base_name(&im.file_name))
            .or_default()
            .push(im.id);
    }
    // Sample position of each listed image id.
    let mut target: HashMap<u64, usize> = HashMap::new();
    for (i, s) in samples.iter().enumerate() {
        let exact = parsed.images.iter().find(|im| im.file_name == s.key);
        let id = match exact {
            Some(im) => Some(im.id),
            None => match by_base.get(base_name(&s.key)).map(Vec::as_slice) {
                Some([id]) => Some(*id),
                Some(several) => {
                    return Err(DetError::Dataset {
                        file: file.clone(),
                        why: format!(
                            "{} images are named `{}`: give the image's path as its file_name",
                            several.len(),
                            base_name(&s.key)
                        ),
                    });
                }
                None => None,
            },
        };
        if let Some(id) = id {
            target.insert(id, i);
        }
    }
    let mut attached = 0;
    for (k, a) in parsed.annotations.iter().enumerate() {
        let name =
            a.id.map_or_else(|| format!("#{}", k + 1), |id| id.to_string());
        if !ids.contains_key(&a.image_id) {
            return Err(data_err(
                "annotation",
                name,
                DataFault::UnknownImage,
                format!("image_id {} is not in the file's images", a.image_id),
            ));
        }
        if a.score.is_some_and(|s| s < f64::from(min_score)) {
            continue;
        }
        let Some(&i) = target.get(&a.image_id) else {
            continue;
        };
        let s = &mut samples[i];
        let [x, y, w, h] = a.bbox;
        let bad = |msg: String| data_err("annotation", name.clone(), DataFault::InvalidBox, msg);
        if !a.bbox.iter().all(|v| v.is_finite()) || w <= 0.0 || h <= 0.0 {
            return Err(bad(format!("bbox {:?} is empty or not finite", a.bbox)));
        }
        let (iw, ih) = (f64::from(s.width), f64::from(s.height));
        let t = BOX_TOLERANCE;
        if x < -t || y < -t || x + w > iw + t || y + h > ih + t {
            return Err(bad(format!(
                "bbox {:?} lies outside the {}×{} image `{}`",
                a.bbox, s.width, s.height, s.key
            )));
        }
        let clip = |v: f64, hi: f64| v.clamp(0.0, hi) as f32;
        let bbox = [clip(x, iw), clip(y, ih), clip(x + w, iw), clip(y + h, ih)];
        if bbox[2] <= bbox[0] || bbox[3] <= bbox[1] {
            return Err(bad(format!("bbox {:?} is empty inside its image", a.bbox)));
        }
        s.instances.push(Instance {
            bbox,
            concepts: Vec::new(),
            crowd: false,
            score: a.score.map(|v| v as f32),
        });
        attached += 1;
    }
    Ok(attached)
}

/// Draws the detections of one image with their names and scores.
pub fn annotate(image: &RgbImage, dets: &[Detected], names: &[String]) -> RgbImage {
    let mut img = image.clone();
    // Masks first, blended at 40 %, so every box and label stays readable.
    for d in dets {
        let Some(m) = &d.mask else { continue };
        if m.size != [img.height() as usize, img.width() as usize] {
            continue;
        }
        let color = PALETTE[d.label % PALETTE.len()];
        let w = img.width() as usize;
        for (k, _) in m.decode().into_iter().enumerate().filter(|&(_, on)| on) {
            let p = img.get_pixel_mut((k % w) as u32, (k / w) as u32);
            for (c, &target) in p.0.iter_mut().zip(&color) {
                *c = ((*c as u16 * 3 + target as u16 * 2) / 5) as u8;
            }
        }
    }
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
            let mut a = json!({
                "id": annotations.len() + 1,
                "image_id": i + 1,
                "category_id": d.label + 1,
                "bbox": [x1, y1, w, h],
                "area": w * h,
                "score": d.score,
            });
            if let Some(m) = &d.mask {
                a["segmentation"] = m.to_json();
                a["area"] = json!(m.area());
            }
            annotations.push(a);
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
    let cx = recipe.context()?;
    let dets = predict(recipe, &cx, model, samples, names, threshold, 4, device)?;
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
