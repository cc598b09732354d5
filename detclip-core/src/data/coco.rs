//! COCO and LVIS instance json readers (detection samples).
//!
//! Both files have `images`, `annotations` and `categories`; boxes are `[x, y, w, h]` in
//! pixels and become xyxy. Segmentations (polygons, RLE) are not read. One sample per image,
//! in the order of `images`, including images without boxes.
//!
//! - COCO `iscrowd: 1` boxes are kept with [`Instance::crowd`] set. Training must not use them
//!   as positives (mmdetection moves them to `gt_bboxes_ignore`; maskrcnn-benchmark drops
//!   them); [`Sample::training_instances`] and [`Sample::positive_concepts`] leave them out.
//! - LVIS images carry `neg_category_ids` (verified absent: [`Sample::negatives`]) and
//!   `not_exhaustive_category_ids` ([`Sample::not_exhaustive`]); categories carry `frequency`
//!   r/c/f and `synonyms`. LVIS v1 images have no `file_name`: it is taken from `coco_url`
//!   (`…/val2017/000000266409.jpg` → `val2017/000000266409.jpg`).
//!
//! Bad input: a syntax or shape error in the json stops the read (file:line:column). An
//! annotation with a negative-size box or an unknown `category_id` fails its image's sample;
//! an annotation whose `image_id` is not in `images` fails on its own; an image that is
//! missing or not an image fails its sample (as [`ReadOptions::images`] asks). Each failure is
//! an error or a skip as [`ReadOptions::on_error`] says. Zero-size boxes are dropped and
//! counted in [`ReadReport::degenerate_boxes`].

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;

use crate::error::{DataFault, Result};
use crate::ops::BoxFormat;

#[cfg(doc)]
use super::report::ReadReport;
use super::report::{
    Collector, Dataset, ReadOptions, checked_box, item_error, json_error, read_text,
};
use super::sample::{Category, Concept, ImageSource, Instance, Sample, SourceKind};
use super::vocab::RawCategory;

/// An image entry of a COCO-style json.
#[derive(Deserialize)]
pub(crate) struct RawImage {
    pub(crate) id: u64,
    pub(crate) file_name: Option<String>,
    coco_url: Option<String>,
    pub(crate) width: u32,
    pub(crate) height: u32,
    #[serde(default)]
    neg_category_ids: Vec<u64>,
    #[serde(default)]
    not_exhaustive_category_ids: Vec<u64>,
}

impl RawImage {
    /// The image path relative to the image root: `file_name`, else the last two parts of
    /// `coco_url` (LVIS v1).
    pub(crate) fn relative_path(&self) -> Option<String> {
        if let Some(f) = &self.file_name {
            return Some(f.clone());
        }
        let url = self.coco_url.as_deref()?;
        let mut parts = url.rsplit('/');
        let file = parts.next()?;
        let dir = parts.next()?;
        Some(format!("{dir}/{file}"))
    }
}

#[derive(Deserialize)]
struct RawAnnotation {
    id: u64,
    image_id: u64,
    category_id: u64,
    bbox: Vec<f64>,
    #[serde(default)]
    iscrowd: u8,
}

#[derive(Deserialize)]
struct RawFile {
    images: Vec<RawImage>,
    annotations: Vec<RawAnnotation>,
    categories: Vec<RawCategory>,
}

#[derive(Clone, Copy, PartialEq)]
enum Flavor {
    Coco,
    Lvis,
}

/// Reads a COCO instances json. Image paths are `image_root` joined with `file_name`.
pub fn read_coco(annotations: &Path, image_root: &Path, options: ReadOptions) -> Result<Dataset> {
    read_coco_like(annotations, image_root, options, Flavor::Coco)
}

/// Reads an LVIS json (v0.5 or v1): as [`read_coco`], plus each image's negative and
/// not-exhaustive categories. (Category `frequency` and `synonyms` are read by both.)
pub fn read_lvis(annotations: &Path, image_root: &Path, options: ReadOptions) -> Result<Dataset> {
    read_coco_like(annotations, image_root, options, Flavor::Lvis)
}

fn read_coco_like(
    path: &Path,
    image_root: &Path,
    options: ReadOptions,
    flavor: Flavor,
) -> Result<Dataset> {
    let text = read_text(path)?;
    let raw: RawFile = serde_json::from_str(&text).map_err(|e| json_error(path, 0, &e))?;
    let categories = raw
        .categories
        .into_iter()
        .map(|c| c.into_category(path))
        .collect::<Result<Vec<_>>>()?;
    let by_id: HashMap<u64, &Category> = categories.iter().map(|c| (c.id, c)).collect();

    let mut anns_of: HashMap<u64, Vec<&RawAnnotation>> = HashMap::new();
    let image_ids: std::collections::HashSet<u64> = raw.images.iter().map(|i| i.id).collect();
    let mut out = Collector::new(options);
    for ann in &raw.annotations {
        if image_ids.contains(&ann.image_id) {
            anns_of.entry(ann.image_id).or_default().push(ann);
        } else {
            out.fail(item_error(
                path,
                "annotation",
                ann.id,
                DataFault::UnknownImage,
                format!("image_id {} is not in `images`", ann.image_id),
            ))?;
        }
    }
    for img in &raw.images {
        let anns = anns_of.get(&img.id).map(Vec::as_slice).unwrap_or(&[]);
        match build_sample(path, image_root, img, anns, &by_id, flavor, &mut out) {
            Ok(sample) => out.push(sample)?,
            Err(e) => out.fail(e)?,
        }
    }
    Ok(out.finish(categories))
}

fn build_sample(
    path: &Path,
    image_root: &Path,
    img: &RawImage,
    anns: &[&RawAnnotation],
    categories: &HashMap<u64, &Category>,
    flavor: Flavor,
    out: &mut Collector,
) -> Result<Sample> {
    let rel = img.relative_path().ok_or_else(|| {
        item_error(
            path,
            "image",
            img.id,
            DataFault::Malformed,
            "has neither `file_name` nor `coco_url`",
        )
    })?;
    let mut sample = Sample::new(
        img.id.to_string(),
        ImageSource::File(image_root.join(rel)),
        img.width,
        img.height,
    );
    sample.kind = SourceKind::Detection;
    for ann in anns {
        let category = categories.get(&ann.category_id).ok_or_else(|| {
            item_error(
                path,
                "annotation",
                ann.id,
                DataFault::UnknownCategory,
                format!("category_id {} is not in `categories`", ann.category_id),
            )
        })?;
        let bbox = checked_box(&ann.bbox, BoxFormat::Xywh)
            .map_err(|msg| item_error(path, "annotation", ann.id, DataFault::InvalidBox, msg))?;
        let Some(bbox) = bbox else {
            out.degenerate_box();
            continue;
        };
        let concept = sample.concept_index(&category.concept_name(), Some(category.id));
        sample.instances.push(Instance {
            bbox,
            concepts: vec![concept],
            crowd: ann.iscrowd != 0,
            score: None,
        });
    }
    if flavor == Flavor::Lvis {
        let lookup = |ids: &[u64]| -> Result<Vec<Concept>> {
            ids.iter()
                .map(|id| {
                    categories.get(id).map(|c| c.concept()).ok_or_else(|| {
                        item_error(
                            path,
                            "image",
                            img.id,
                            DataFault::UnknownCategory,
                            format!("category id {id} (negative or not-exhaustive) is not in `categories`"),
                        )
                    })
                })
                .collect()
        };
        sample.negatives = lookup(&img.neg_category_ids)?;
        sample.not_exhaustive = lookup(&img.not_exhaustive_category_ids)?;
    }
    Ok(sample)
}
