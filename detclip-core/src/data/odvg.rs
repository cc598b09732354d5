//! ODVG jsonl reader: the GroundingDINO / Open-GroundingDino / mmdetection format, one image
//! per line.
//!
//! ```text
//! {"filename": "a.jpg", "height": 480, "width": 640,
//!  "detection": {"instances": [{"bbox": [x1, y1, x2, y2], "label": 0, "category": "person"}]}}
//! {"filename": "b.jpg", "height": 400, "width": 600,
//!  "grounding": {"caption": "a dog on a sofa",
//!                "regions": [{"bbox": [x1, y1, x2, y2], "phrase": "a dog",
//!                             "tokens_positive": [[0, 5]]}]}}
//! ```
//!
//! Boxes are xyxy pixels. A `detection` line becomes a [`SourceKind::Detection`] sample whose
//! concepts are its categories: the name is `category` when the line has it, otherwise the
//! label map's name for `label` (Open-GroundingDino keeps names in a separate label map). A
//! `grounding` line becomes a [`SourceKind::Grounding`] sample: each distinct region phrase is
//! a concept, its spans are `tokens_positive` (character offsets, converted to bytes), or,
//! when a region has none (as in Open-GroundingDino's README examples), the first occurrence
//! of `phrase` in the caption.
//!
//! Bad input fails one line (file:line, or file:line:column for JSON errors): a syntax error,
//! a line with neither `detection` nor `grounding`, a negative-size box, a label that is not
//! in the label map, a span that does not fit the caption, a phrase not found in it, or a
//! missing image.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::error::{DataFault, Result};
use crate::ops::BoxFormat;

use super::report::{
    Collector, Dataset, ReadOptions, checked_box, jsonl_lines, line_error, parse_jsonl_line,
    read_text,
};
use super::sample::{Category, Concept, ImageSource, Instance, Sample, SourceKind, Span};

#[derive(Deserialize)]
struct RawLine {
    filename: String,
    height: u32,
    width: u32,
    detection: Option<RawDetection>,
    grounding: Option<RawGrounding>,
}

#[derive(Deserialize)]
struct RawDetection {
    instances: Vec<RawInstance>,
}

#[derive(Deserialize)]
struct RawInstance {
    bbox: Vec<f64>,
    label: u64,
    category: Option<String>,
}

#[derive(Deserialize)]
struct RawGrounding {
    caption: String,
    regions: Vec<RawRegion>,
}

#[derive(Deserialize)]
struct RawRegion {
    bbox: Vec<f64>,
    phrase: Option<String>,
    tokens_positive: Option<Vec<[usize; 2]>>,
}

/// Reads an ODVG jsonl file. `label_map` gives names (and the vocabulary) for detection
/// labels; without one, each instance must carry `category`, and the vocabulary is made of
/// the `(label, category)` pairs seen.
pub fn read_odvg(
    path: &Path,
    image_root: &Path,
    label_map: Option<&[Category]>,
    options: ReadOptions,
) -> Result<Dataset> {
    let text = read_text(path)?;
    let mut seen = BTreeMap::new();
    let mut out = Collector::new(options);
    for (line, json) in jsonl_lines(&text) {
        let built = parse_jsonl_line::<RawLine>(path, line, json).and_then(|raw| {
            let ctx = LineContext {
                path,
                line,
                label_map,
            };
            ctx.build(image_root, &raw, &mut seen, &mut out)
        });
        match built {
            Ok(sample) => out.push(sample)?,
            Err(e) => out.fail(e)?,
        }
    }
    let categories = match label_map {
        Some(map) => map.to_vec(),
        None => seen
            .into_iter()
            .map(|(id, name)| Category {
                id,
                name,
                synonyms: Vec::new(),
                frequency: None,
            })
            .collect(),
    };
    Ok(out.finish(categories))
}

struct LineContext<'a> {
    path: &'a Path,
    line: usize,
    label_map: Option<&'a [Category]>,
}

impl LineContext<'_> {
    fn error(&self, kind: DataFault, msg: impl Into<String>) -> crate::DetError {
        line_error(self.path, self.line, kind, msg)
    }

    fn build(
        &self,
        image_root: &Path,
        raw: &RawLine,
        seen: &mut BTreeMap<u64, String>,
        out: &mut Collector,
    ) -> Result<Sample> {
        let mut sample = Sample::new(
            format!("{}:{}", self.path.display(), self.line),
            ImageSource::File(image_root.join(&raw.filename)),
            raw.width,
            raw.height,
        );
        match (&raw.detection, &raw.grounding) {
            (Some(det), None) => self.detection(&mut sample, det, seen, out)?,
            (None, Some(g)) => self.grounding(&mut sample, g, out)?,
            _ => {
                return Err(self.error(
                    DataFault::Malformed,
                    "a line needs exactly one of `detection` and `grounding`",
                ));
            }
        }
        Ok(sample)
    }

    fn bbox(&self, raw: &[f64], out: &mut Collector) -> Result<Option<[f32; 4]>> {
        let b = checked_box(raw, BoxFormat::Xyxy)
            .map_err(|msg| self.error(DataFault::InvalidBox, msg))?;
        if b.is_none() {
            out.degenerate_box();
        }
        Ok(b)
    }

    fn category_name(&self, inst: &RawInstance) -> Result<String> {
        let mapped = match self.label_map {
            Some(map) => Some(map.iter().find(|c| c.id == inst.label).ok_or_else(|| {
                self.error(
                    DataFault::UnknownCategory,
                    format!("label {} is not in the label map", inst.label),
                )
            })?),
            None => None,
        };
        match (&inst.category, mapped) {
            (Some(name), _) => Ok(name.clone()),
            (None, Some(c)) => Ok(c.concept_name()),
            (None, None) => Err(self.error(
                DataFault::UnknownCategory,
                format!(
                    "label {} has no `category` and there is no label map",
                    inst.label
                ),
            )),
        }
    }

    fn detection(
        &self,
        sample: &mut Sample,
        det: &RawDetection,
        seen: &mut BTreeMap<u64, String>,
        out: &mut Collector,
    ) -> Result<()> {
        sample.kind = SourceKind::Detection;
        for inst in &det.instances {
            let name = self.category_name(inst)?;
            let Some(bbox) = self.bbox(&inst.bbox, out)? else {
                continue;
            };
            seen.entry(inst.label).or_insert_with(|| name.clone());
            let concept = sample.concept_index(&name, Some(inst.label));
            sample.instances.push(Instance {
                bbox,
                concepts: vec![concept],
                crowd: false,
                score: None,
            });
        }
        Ok(())
    }

    fn grounding(&self, sample: &mut Sample, g: &RawGrounding, out: &mut Collector) -> Result<()> {
        sample.kind = SourceKind::Grounding;
        for region in &g.regions {
            let concept = self.region_concept(&g.caption, region)?;
            let Some(bbox) = self.bbox(&region.bbox, out)? else {
                continue;
            };
            let index = match sample.concepts.iter().position(|c| *c == concept) {
                Some(i) => i,
                None => {
                    sample.concepts.push(concept);
                    sample.concepts.len() - 1
                }
            };
            sample.instances.push(Instance {
                bbox,
                concepts: vec![index],
                crowd: false,
                score: None,
            });
        }
        sample.caption = Some(g.caption.clone());
        Ok(())
    }

    fn region_concept(&self, caption: &str, region: &RawRegion) -> Result<Concept> {
        let spans = match (&region.tokens_positive, &region.phrase) {
            (Some(tp), _) if !tp.is_empty() => tp
                .iter()
                .map(|&[s, e]| {
                    Span::from_chars(caption, s, e).ok_or_else(|| {
                        self.error(
                            DataFault::InvalidSpan,
                            format!(
                                "tokens_positive [{s}, {e}] does not fit the caption ({} characters)",
                                caption.chars().count()
                            ),
                        )
                    })
                })
                .collect::<Result<Vec<_>>>()?,
            (_, Some(phrase)) => {
                let start = caption.find(phrase.as_str()).ok_or_else(|| {
                    self.error(
                        DataFault::InvalidSpan,
                        format!("phrase `{phrase}` is not in the caption"),
                    )
                })?;
                vec![Span::new(start, start + phrase.len())]
            }
            _ => {
                return Err(self.error(
                    DataFault::Malformed,
                    "a region needs `phrase` or `tokens_positive`",
                ));
            }
        };
        let name = match &region.phrase {
            Some(p) => p.clone(),
            None => spans
                .iter()
                .filter_map(|s| s.slice(caption))
                .collect::<Vec<_>>()
                .join(" "),
        };
        Ok(Concept {
            name,
            category_id: None,
            spans,
        })
    }
}
