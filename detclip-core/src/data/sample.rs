//! The one sample every source becomes: an image, boxes, concept names and the links between
//! them (DetCLIPv2's "(image, boxes, concepts)" triple), plus a caption with phrase spans for
//! grounding, and the concepts known to be absent.

use std::path::PathBuf;
use std::sync::Arc;

use image::RgbImage;

use crate::error::{DataFault, DataLocation, DetError, Result};

/// Where a sample came from. It is data for the loss weighting, never a branch in the learner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum SourceKind {
    /// Detection data (COCO, LVIS, Objects365, ODVG `detection` lines): boxes with class names.
    Detection,
    /// Grounding data (ODVG `grounding` lines, Flickr30k Entities): a caption whose phrases
    /// point at boxes.
    Grounding,
    /// Image-text pairs: a caption, noun phrases, no boxes.
    ImageText,
}

/// A half-open range of **UTF-8 byte** offsets into a caption or prompt, `text[start..end]`.
///
/// Bytes are what Rust slices by; Python tools (GLIP's `tokens_positive`, ODVG) count
/// characters. [`Span::from_chars`] and [`Span::to_chars`] convert, and the readers do it on
/// input, so a span in a [`Sample`] is always valid for slicing its caption.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Span {
    /// First byte.
    pub start: usize,
    /// One past the last byte.
    pub end: usize,
}

impl Span {
    /// The span `start..end` in bytes.
    pub fn new(start: usize, end: usize) -> Self {
        Self { start, end }
    }

    /// The text it covers, or `None` if it does not lie on character boundaries of `text`.
    pub fn slice<'a>(&self, text: &'a str) -> Option<&'a str> {
        text.get(self.start..self.end)
    }

    /// Converts a span counted in characters (Python `str` indices) into bytes of `text`;
    /// `None` if it is reversed or runs past the end.
    pub fn from_chars(text: &str, start: usize, end: usize) -> Option<Self> {
        if start > end {
            return None;
        }
        let byte_of = |c: usize| {
            text.char_indices()
                .map(|(b, _)| b)
                .chain(std::iter::once(text.len()))
                .nth(c)
        };
        Some(Self::new(byte_of(start)?, byte_of(end)?))
    }

    /// The span counted in characters of `text` (Python `str` indices); `None` if it does not
    /// lie on character boundaries.
    pub fn to_chars(&self, text: &str) -> Option<(usize, usize)> {
        let s = self.slice(text)?;
        let start = text[..self.start].chars().count();
        Some((start, start + s.chars().count()))
    }
}

/// LVIS category frequency, from the number of training images a category appears in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Frequency {
    /// Rare: 1–10 training images.
    Rare,
    /// Common: 11–100 training images.
    Common,
    /// Frequent: more than 100 training images.
    Frequent,
}

impl Frequency {
    /// Parses LVIS's `"r"`, `"c"`, `"f"`.
    pub fn from_letter(s: &str) -> Option<Self> {
        match s {
            "r" => Some(Self::Rare),
            "c" => Some(Self::Common),
            "f" => Some(Self::Frequent),
            _ => None,
        }
    }
}

/// A category of a dataset's vocabulary.
#[derive(Debug, Clone, PartialEq)]
pub struct Category {
    /// The dataset's id (COCO 1..90 with gaps, LVIS 1..1203, ODVG 0-based labels).
    pub id: u64,
    /// The name as the file spells it (`aerosol_can`).
    pub name: String,
    /// Other names (LVIS `synonyms`); empty where the dataset has none.
    pub synonyms: Vec<String>,
    /// LVIS r/c/f; `None` for other datasets.
    pub frequency: Option<Frequency>,
}

impl Category {
    /// The concept name used in prompts: the file's name with `_` read as a space
    /// (`aerosol_can` → `aerosol can`, `bow_(weapon)` → `bow (weapon)`). GLIP's official
    /// evaluation also drops the parenthesised part ([`glip_clean_name`](super::glip_clean_name):
    /// `bow `), which its recipe applies when its prompt rule says so.
    pub fn concept_name(&self) -> String {
        self.name.replace('_', " ")
    }

    /// This category as a concept without caption spans.
    pub fn concept(&self) -> Concept {
        Concept {
            name: self.concept_name(),
            category_id: Some(self.id),
            spans: Vec::new(),
        }
    }
}

/// A concept: a class name, or a phrase of a caption.
#[derive(Debug, Clone, PartialEq)]
pub struct Concept {
    /// Its name (`red star`, `dining table`, `Heart graphics`).
    pub name: String,
    /// The dataset category it stands for, if any.
    pub category_id: Option<u64>,
    /// Where the sample's caption mentions it (bytes). Empty for detection samples, which
    /// have no caption until a prompt is built.
    pub spans: Vec<Span>,
}

/// One box and the concepts it belongs to.
#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    /// `[x1, y1, x2, y2]` in pixels of the sample's image, continuous coordinates: pixel `i`
    /// covers `[i, i + 1)`, so a box around the whole image is `[0, 0, W, H]`.
    pub bbox: [f32; 4],
    /// Indices into [`Sample::concepts`]. Usually one; a grounding box may have several.
    pub concepts: Vec<usize>,
    /// COCO `iscrowd`: the box covers a group of objects. Kept, flagged; training treats it as
    /// an ignore region and never as a positive (see [`Sample::training_instances`]).
    pub crowd: bool,
    /// A detector's confidence in the box, for boxes handed to a recogniser (RegionSpot's
    /// `detclip detect --boxes`, whose class scores are multiplied by it); `None` for
    /// annotations.
    pub score: Option<f32>,
}

/// Where the image's pixels come from. Decoding is lazy: readers only record the path.
#[derive(Debug, Clone, PartialEq)]
pub enum ImageSource {
    /// An image file, decoded on demand by [`crate::data::image::decode_image`].
    File(PathBuf),
    /// Pixels already in memory (the synthetic world).
    Memory(Arc<RgbImage>),
}

/// The unified sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// A key unique within its dataset: the image id, or file name and line for jsonl.
    pub key: String,
    /// The image.
    pub image: ImageSource,
    /// Width in pixels, as annotated (after EXIF orientation, see [`crate::data::image`]).
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Which kind of source it came from.
    pub kind: SourceKind,
    /// The concepts of this sample: the classes present (detection), the phrases (grounding),
    /// or the noun phrases of the caption (image-text).
    pub concepts: Vec<Concept>,
    /// The boxes.
    pub instances: Vec<Instance>,
    /// Concepts known to be absent from the image (LVIS `neg_category_ids`).
    pub negatives: Vec<Concept>,
    /// Concepts that are present but not exhaustively boxed (LVIS
    /// `not_exhaustive_category_ids`): unboxed regions must not count as negatives for them.
    pub not_exhaustive: Vec<Concept>,
    /// The caption (grounding, image-text); concept spans point into it.
    pub caption: Option<String>,
}

impl Sample {
    /// A sample with no concepts, boxes or caption.
    pub fn new(key: impl Into<String>, image: ImageSource, width: u32, height: u32) -> Self {
        Self {
            key: key.into(),
            image,
            width,
            height,
            kind: SourceKind::Detection,
            concepts: Vec::new(),
            instances: Vec::new(),
            negatives: Vec::new(),
            not_exhaustive: Vec::new(),
            caption: None,
        }
    }

    /// The index of the concept named `name` (and `category_id`), added if it is new.
    pub fn concept_index(&mut self, name: &str, category_id: Option<u64>) -> usize {
        if let Some(i) = self
            .concepts
            .iter()
            .position(|c| c.name == name && c.category_id == category_id)
        {
            return i;
        }
        self.concepts.push(Concept {
            name: name.to_string(),
            category_id,
            spans: Vec::new(),
        });
        self.concepts.len() - 1
    }

    /// The boxes training learns from: every box but crowd boxes.
    pub fn training_instances(&self) -> impl Iterator<Item = &Instance> {
        self.instances.iter().filter(|i| !i.crowd)
    }

    /// For each concept, whether one of `instances` belongs to it.
    fn concepts_used_by<'a>(&self, instances: impl Iterator<Item = &'a Instance>) -> Vec<bool> {
        let mut used = vec![false; self.concepts.len()];
        for inst in instances {
            for &c in &inst.concepts {
                used[c] = true;
            }
        }
        used
    }

    /// Indices of the concepts that at least one non-crowd box belongs to, ascending.
    pub fn positive_concepts(&self) -> Vec<usize> {
        let used = self.concepts_used_by(self.training_instances());
        (0..used.len()).filter(|&c| used[c]).collect()
    }

    /// The boxes as a flat `[x1, y1, x2, y2, …]` list.
    pub fn box_slice(&self) -> Vec<f32> {
        self.instances.iter().flat_map(|i| i.bbox).collect()
    }

    /// Keeps the boxes for which `keep` holds. A detection concept that loses all its boxes is
    /// removed too (it is no longer in the image) and the links are renumbered; grounding and
    /// image-text concepts stay, because the caption still mentions them.
    pub fn retain_instances(&mut self, mut keep: impl FnMut(&Instance) -> bool) {
        self.instances.retain(|i| keep(i));
        if self.kind != SourceKind::Detection {
            return;
        }
        let used = self.concepts_used_by(self.instances.iter());
        let mut new_index = vec![usize::MAX; self.concepts.len()];
        let mut next = 0;
        for (c, &u) in used.iter().enumerate() {
            if u {
                new_index[c] = next;
                next += 1;
            }
        }
        let mut c = 0;
        self.concepts.retain(|_| {
            c += 1;
            used[c - 1]
        });
        for inst in &mut self.instances {
            for link in &mut inst.concepts {
                *link = new_index[*link];
            }
        }
    }

    /// Checks the invariants every reader and transform keeps: boxes finite with
    /// `x1 ≤ x2`, `y1 ≤ y2`; links point at existing concepts; spans lie on character
    /// boundaries of the caption (and there is a caption when there are spans).
    pub fn validate(&self) -> Result<()> {
        let fault = |kind, msg: String| DetError::Data {
            file: format!("sample {}", self.key),
            at: DataLocation::File,
            kind,
            msg,
        };
        crate::ops::validate_box_slice("Sample::validate", &self.box_slice())?;
        for (b, inst) in self.instances.iter().enumerate() {
            if let Some(&c) = inst.concepts.iter().find(|&&c| c >= self.concepts.len()) {
                return Err(fault(
                    DataFault::UnknownCategory,
                    format!("box {b} links concept {c} of {}", self.concepts.len()),
                ));
            }
        }
        for concept in &self.concepts {
            for span in &concept.spans {
                let ok = self
                    .caption
                    .as_deref()
                    .is_some_and(|t| span.slice(t).is_some());
                if !ok {
                    return Err(fault(
                        DataFault::InvalidSpan,
                        format!(
                            "concept `{}` has span {span:?} outside its caption",
                            concept.name
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}
