//! Training and test transforms: resize keeping aspect, multi-scale, horizontal flip (with
//! left/right swapped in the text), random crop, normalisation. Boxes move with the image.
//!
//! Conventions:
//! - Boxes are continuous xyxy pixels (pixel `i` covers `[i, i + 1)`): a flip maps `x` to
//!   `W − x` (torchvision, GLIP's `BoxList.transpose` with `TO_REMOVE = 0`, mmdetection 3),
//!   not maskrcnn-benchmark's old `W − x − 1`.
//! - Resizing scales x by `new_w / old_w` and y by `new_h / old_h` (GLIP `BoxList.resize`,
//!   mmdetection `scale_factor`). The size rule is GLIP's `Resize.get_size` (see
//!   [`keep_ratio_size`]); pixels are resampled as Pillow's antialiased `BILINEAR` computes
//!   them, byte for byte ([`resize_like_pil`]), which torchvision's `Resize` on a PIL image
//!   and so GLIP's test transform use.
//! - Randomness comes only from the `rng` passed in, so a seeded `StdRng` reproduces a run.

use image::RgbImage;
use image::imageops;
use rand::Rng;

use crate::error::{DetError, Result};

use super::image::Orientation;
use super::resample::{ResampleFilter, resize_like_pil};
use super::sample::{Concept, Sample, Span};

/// A sample with its decoded pixels, as it goes through the transforms. The sample's
/// `width`/`height` always equal the image's.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    /// The pixels.
    pub image: RgbImage,
    /// The annotations, in the pixels' frame.
    pub sample: Sample,
}

impl Loaded {
    /// Decodes the sample's image.
    pub fn load(sample: Sample, orientation: Orientation) -> Result<Self> {
        let image = sample.load_image(orientation)?;
        Ok(Self { image, sample })
    }

    /// Puts pixels and annotations together; the image must have the sample's size.
    pub fn new(image: RgbImage, sample: Sample) -> Result<Self> {
        if image.dimensions() != (sample.width, sample.height) {
            return Err(DetError::InvalidOption {
                op: "Loaded::new",
                why: format!(
                    "image is {:?}, sample `{}` says {}x{}",
                    image.dimensions(),
                    sample.key,
                    sample.width,
                    sample.height
                ),
            });
        }
        Ok(Self { image, sample })
    }
}

/// GLIP's (maskrcnn-benchmark's) `Resize.get_size`: the shorter side becomes `short`, unless
/// the longer side would then exceed `max_long`, in which case the longer side becomes
/// (about) `max_long`. Returns `(width, height)`.
///
/// Exactly: if `long / short_orig · short > max_long`, `short = round(max_long · short_orig /
/// long_orig)`; then the shorter side is `short` and the longer `floor(short · long / short_orig)`.
/// mmdetection's `Resize(keep_ratio=True)` computes one scale factor and rounds both sides
/// (`int(w · s + 0.5)`), so the longer side can differ by one pixel.
pub fn keep_ratio_size(width: u32, height: u32, short: u32, max_long: Option<u32>) -> (u32, u32) {
    let (w, h) = (width as f64, height as f64);
    let (min_orig, max_orig) = (w.min(h), w.max(h));
    let mut size = short as f64;
    if let Some(max) = max_long
        && max_orig / min_orig * size > max as f64
    {
        size = (max as f64 * min_orig / max_orig).round();
    }
    if (width <= height && w == size) || (height <= width && h == size) {
        return (width, height);
    }
    if width < height {
        (size as u32, (size * h / w) as u32)
    } else {
        ((size * w / h) as u32, size as u32)
    }
}

/// Resizes to exactly `width × height`, scaling the boxes per axis.
pub fn resize(loaded: Loaded, width: u32, height: u32) -> Loaded {
    let Loaded { image, mut sample } = loaded;
    if (width, height) == image.dimensions() {
        return Loaded { image, sample };
    }
    let sx = width as f32 / sample.width as f32;
    let sy = height as f32 / sample.height as f32;
    for inst in &mut sample.instances {
        let [x1, y1, x2, y2] = inst.bbox;
        inst.bbox = [x1 * sx, y1 * sy, x2 * sx, y2 * sy];
    }
    sample.width = width;
    sample.height = height;
    let image = resize_like_pil(&image, width, height, ResampleFilter::Bilinear);
    Loaded { image, sample }
}

/// Resizes keeping the aspect ratio ([`keep_ratio_size`]).
///
/// `short` 0 keeps the image's own size (RegionSpot's official predictor feeds the photo as
/// it is).
pub fn resize_keep_ratio(loaded: Loaded, short: u32, max_long: Option<u32>) -> Loaded {
    if short == 0 {
        return loaded;
    }
    let (w, h) = keep_ratio_size(loaded.sample.width, loaded.sample.height, short, max_long);
    resize(loaded, w, h)
}

/// Flips horizontally: pixels, boxes (`x → W − x`), and the words `left`/`right` in the
/// caption and concept names, with spans moved so they cover the same phrases.
pub fn hflip(loaded: Loaded) -> Loaded {
    let Loaded { image, mut sample } = loaded;
    let w = sample.width as f32;
    for inst in &mut sample.instances {
        let [x1, y1, x2, y2] = inst.bbox;
        inst.bbox = [w - x2, y1, w - x1, y2];
    }
    if let Some(caption) = &sample.caption {
        let (text, edits) = swap_left_right(caption);
        for concept in &mut sample.concepts {
            for span in &mut concept.spans {
                *span = Span::new(
                    map_offset(&edits, span.start, false),
                    map_offset(&edits, span.end, true),
                );
            }
        }
        sample.caption = Some(text);
    }
    let rename = |concepts: &mut Vec<Concept>| {
        for c in concepts {
            c.name = swap_left_right(&c.name).0;
        }
    };
    rename(&mut sample.concepts);
    rename(&mut sample.negatives);
    rename(&mut sample.not_exhaustive);
    Loaded {
        image: imageops::flip_horizontal(&image),
        sample,
    }
}

/// One replaced word: its byte range before and after.
#[derive(Debug, Clone, Copy)]
struct Edit {
    old: (usize, usize),
    new: (usize, usize),
}

/// Swaps the whole words `left` and `right` (any case; the case pattern is kept: `Left` →
/// `Right`, `LEFT` → `RIGHT`). Unlike GLIP and MDETR's substring replacement, `bright` and
/// `leftover` are left alone, and [`hflip`] moves the spans.
pub fn swap_left_right_text(text: &str) -> String {
    swap_left_right(text).0
}

fn swap_left_right(text: &str) -> (String, Vec<Edit>) {
    let mut out = String::with_capacity(text.len() + 8);
    let mut edits = Vec::new();
    let mut last = 0;
    for (start, end) in words(text) {
        let word = &text[start..end];
        let other = match word.to_lowercase().as_str() {
            "left" => "right",
            "right" => "left",
            _ => continue,
        };
        out.push_str(&text[last..start]);
        let new_start = out.len();
        out.push_str(&same_case(word, other));
        edits.push(Edit {
            old: (start, end),
            new: (new_start, out.len()),
        });
        last = end;
    }
    out.push_str(&text[last..]);
    (out, edits)
}

/// Byte ranges of the maximal alphanumeric runs of `text`.
fn words(text: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, c) in text.char_indices() {
        match (c.is_alphanumeric(), start) {
            (true, None) => start = Some(i),
            (false, Some(s)) => {
                out.push((s, i));
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        out.push((s, text.len()));
    }
    out
}

fn same_case(model: &str, word: &str) -> String {
    if model.chars().all(|c| c.is_uppercase()) {
        word.to_uppercase()
    } else if model.chars().next().is_some_and(char::is_uppercase) {
        let mut c = word.chars();
        c.next()
            .map(|f| f.to_uppercase().chain(c).collect())
            .unwrap_or_default()
    } else {
        word.to_string()
    }
}

/// Where byte offset `o` of the old text lands in the new one. An offset inside a replaced
/// word goes to the start of its replacement (span starts) or its end (span ends).
fn map_offset(edits: &[Edit], o: usize, is_end: bool) -> usize {
    let mut delta: isize = 0;
    for e in edits {
        if o <= e.old.0 {
            break;
        }
        if o < e.old.1 {
            return if is_end { e.new.1 } else { e.new.0 };
        }
        delta = e.new.1 as isize - e.old.1 as isize;
    }
    (o as isize + delta) as usize
}

/// Crops to the window `x, y, width, height` (pixels, must lie inside the image). Boxes are
/// shifted, clipped to the window, and those left with no area are dropped with their
/// concept links ([`Sample::retain_instances`]).
pub fn crop(loaded: Loaded, x: u32, y: u32, width: u32, height: u32) -> Result<Loaded> {
    let Loaded { image, mut sample } = loaded;
    if width == 0 || height == 0 || x + width > sample.width || y + height > sample.height {
        return Err(DetError::InvalidOption {
            op: "crop",
            why: format!(
                "window {width}x{height} at ({x}, {y}) is empty or not inside the {}x{} image",
                sample.width, sample.height
            ),
        });
    }
    let (fx, fy, fw, fh) = (x as f32, y as f32, width as f32, height as f32);
    for inst in &mut sample.instances {
        let [x1, y1, x2, y2] = inst.bbox;
        inst.bbox = [
            (x1 - fx).clamp(0.0, fw),
            (y1 - fy).clamp(0.0, fh),
            (x2 - fx).clamp(0.0, fw),
            (y2 - fy).clamp(0.0, fh),
        ];
    }
    sample.retain_instances(|i| i.bbox[2] > i.bbox[0] && i.bbox[3] > i.bbox[1]);
    sample.width = width;
    sample.height = height;
    let image = imageops::crop_imm(&image, x, y, width, height).to_image();
    Ok(Loaded { image, sample })
}

/// Pixel values before normalisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PixelScale {
    /// `0..=1` (torchvision `ToTensor`).
    Unit,
    /// `0..=255` (mmdetection, maskrcnn-benchmark `TO_BGR255`).
    Byte,
}

/// Channel order of the output tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelOrder {
    /// R, G, B.
    Rgb,
    /// B, G, R (Caffe-style backbones; GLIP's maskrcnn-benchmark configs).
    Bgr,
}

/// `(pixel − mean) / std` per channel, after ordering channels and scaling pixels. `mean` and
/// `std` are given in the output channel order, as the configs give them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Normalize {
    /// Per-channel mean, in output order and pixel scale.
    pub mean: [f32; 3],
    /// Per-channel standard deviation.
    pub std: [f32; 3],
    /// Output channel order.
    pub order: ChannelOrder,
    /// Pixel scale before the mean is subtracted.
    pub scale: PixelScale,
}

impl Normalize {
    /// torchvision / timm ImageNet: RGB in `0..=1`, mean `(0.485, 0.456, 0.406)`, std
    /// `(0.229, 0.224, 0.225)`. Also what HF GroundingDINO and OWL-style models use.
    pub fn imagenet() -> Self {
        Self {
            mean: [0.485, 0.456, 0.406],
            std: [0.229, 0.224, 0.225],
            order: ChannelOrder::Rgb,
            scale: PixelScale::Unit,
        }
    }

    /// mmdetection's `data_preprocessor` for PyTorch-style backbones: RGB `0..=255`, mean
    /// `(123.675, 116.28, 103.53)`, std `(58.395, 57.12, 57.375)` (the ImageNet values × 255).
    pub fn mmdet() -> Self {
        Self {
            mean: [123.675, 116.28, 103.53],
            std: [58.395, 57.12, 57.375],
            order: ChannelOrder::Rgb,
            scale: PixelScale::Byte,
        }
    }

    /// GLIP's Swin configs (maskrcnn-benchmark, `INPUT.TO_BGR255: True`): BGR `0..=255`, mean
    /// `(103.53, 116.28, 123.675)`, std `(57.375, 57.12, 58.395)`.
    pub fn glip_swin() -> Self {
        Self {
            mean: [103.53, 116.28, 123.675],
            std: [57.375, 57.12, 58.395],
            order: ChannelOrder::Bgr,
            scale: PixelScale::Byte,
        }
    }

    /// OpenAI CLIP's preprocessing (also Hugging Face's `CLIPImageProcessor`): RGB in
    /// `0..=1`, mean `(0.48145466, 0.4578275, 0.40821073)`, std `(0.26862954, 0.26130258,
    /// 0.27577711)`.
    pub fn clip() -> Self {
        Self {
            mean: [0.481_454_66, 0.457_827_5, 0.408_210_73],
            std: [0.268_629_54, 0.261_302_6, 0.275_777_1],
            order: ChannelOrder::Rgb,
            scale: PixelScale::Unit,
        }
    }

    /// maskrcnn-benchmark's default for Caffe2 ResNets (GLIP's R50 configs): BGR `0..=255`,
    /// mean `(102.9801, 115.9465, 122.7717)`, std 1.
    pub fn caffe() -> Self {
        Self {
            mean: [102.9801, 115.9465, 122.7717],
            std: [1.0, 1.0, 1.0],
            order: ChannelOrder::Bgr,
            scale: PixelScale::Byte,
        }
    }

    /// The image as `[3, H, W]` planes, row-major.
    pub fn apply(&self, image: &RgbImage) -> Vec<f32> {
        let (w, h) = image.dimensions();
        let plane = (w * h) as usize;
        let mut out = vec![0.0f32; 3 * plane];
        let source = match self.order {
            ChannelOrder::Rgb => [0, 1, 2],
            ChannelOrder::Bgr => [2, 1, 0],
        };
        let unit = match self.scale {
            PixelScale::Unit => 1.0 / 255.0,
            PixelScale::Byte => 1.0,
        };
        for (i, px) in image.pixels().enumerate() {
            for c in 0..3 {
                let v = px.0[source[c]] as f32 * unit;
                out[c * plane + i] = (v - self.mean[c]) / self.std[c];
            }
        }
        out
    }
}

/// A random crop: each side a uniform fraction in `[min_scale, max_scale]` of the image's,
/// at a uniform position. A window that would drop every box of a sample that has some is
/// redrawn, up to `tries` times; then the image is left uncropped (mmdetection's
/// `allow_negative_crop = False`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RandomCrop {
    /// Smallest side fraction, in `(0, 1]`.
    pub min_scale: f32,
    /// Largest side fraction, in `[min_scale, 1]`.
    pub max_scale: f32,
    /// Windows drawn before giving up.
    pub tries: u32,
}

impl RandomCrop {
    /// Applies the crop with randomness from `rng`.
    pub fn apply(&self, loaded: Loaded, rng: &mut impl Rng) -> Result<Loaded> {
        if !(self.min_scale > 0.0 && self.min_scale <= self.max_scale && self.max_scale <= 1.0) {
            return Err(DetError::InvalidOption {
                op: "RandomCrop",
                why: format!(
                    "need 0 < min_scale ≤ max_scale ≤ 1, got {} and {}",
                    self.min_scale, self.max_scale
                ),
            });
        }
        let (w, h) = (loaded.sample.width, loaded.sample.height);
        let had_boxes = loaded.sample.training_instances().next().is_some();
        for _ in 0..self.tries {
            let cw = self.side(rng, w);
            let ch = self.side(rng, h);
            let x = rng.random_range(0..=w - cw);
            let y = rng.random_range(0..=h - ch);
            let keeps_a_box = loaded.sample.training_instances().any(|i| {
                let [x1, y1, x2, y2] = i.bbox;
                x1.max(x as f32) < x2.min((x + cw) as f32)
                    && y1.max(y as f32) < y2.min((y + ch) as f32)
            });
            if keeps_a_box || !had_boxes {
                return crop(loaded, x, y, cw, ch);
            }
        }
        Ok(loaded)
    }

    fn side(&self, rng: &mut impl Rng, full: u32) -> u32 {
        let f = rng.random_range(self.min_scale..=self.max_scale);
        ((full as f32 * f).round() as u32).clamp(1, full)
    }
}

/// A transformed image as `[3, H, W]` floats, and its annotations in the same frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Prepared {
    /// `[3, H, W]` planes, row-major, normalised.
    pub pixels: Vec<f32>,
    /// The sample; `width`/`height` are `W`/`H`.
    pub sample: Sample,
}

/// The training pipeline: random flip, random crop, multi-scale keep-ratio resize,
/// normalisation (GLIP / mmdetection order, with the crop before the resize as in DETR's).
#[derive(Debug, Clone, PartialEq)]
pub struct TrainTransform {
    /// Shorter-side sizes, one drawn uniformly per image (multi-scale training; one entry for
    /// a single scale).
    pub short_sides: Vec<u32>,
    /// Cap on the longer side.
    pub max_long: Option<u32>,
    /// Probability of a horizontal flip.
    pub flip_prob: f64,
    /// Optional random crop.
    pub crop: Option<RandomCrop>,
    /// Normalisation.
    pub normalize: Normalize,
}

impl TrainTransform {
    /// GLIP's multi-scale training: shorter side in 480..800 step 32, longer ≤ 1333, flip 0.5,
    /// no crop, Swin normalisation.
    pub fn glip() -> Self {
        Self {
            short_sides: (480..=800).step_by(32).collect(),
            max_long: Some(1333),
            flip_prob: 0.5,
            crop: None,
            normalize: Normalize::glip_swin(),
        }
    }

    /// Applies the pipeline with randomness from `rng`.
    pub fn apply(&self, loaded: Loaded, rng: &mut impl Rng) -> Result<Prepared> {
        if self.short_sides.is_empty() {
            return Err(DetError::InvalidOption {
                op: "TrainTransform",
                why: "short_sides is empty".into(),
            });
        }
        let mut loaded = loaded;
        if rng.random_bool(self.flip_prob.clamp(0.0, 1.0)) {
            loaded = hflip(loaded);
        }
        if let Some(c) = &self.crop {
            loaded = c.apply(loaded, rng)?;
        }
        let short = self.short_sides[rng.random_range(0..self.short_sides.len())];
        let loaded = resize_keep_ratio(loaded, short, self.max_long);
        Ok(Prepared {
            pixels: self.normalize.apply(&loaded.image),
            sample: loaded.sample,
        })
    }
}

/// The test pipeline: one keep-ratio resize and normalisation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TestTransform {
    /// Shorter side (0: the image's own size).
    pub short: u32,
    /// Cap on the longer side.
    pub max_long: Option<u32>,
    /// Normalisation.
    pub normalize: Normalize,
}

impl TestTransform {
    /// Applies the pipeline.
    pub fn apply(&self, loaded: Loaded) -> Prepared {
        let loaded = resize_keep_ratio(loaded, self.short, self.max_long);
        Prepared {
            pixels: self.normalize.apply(&loaded.image),
            sample: loaded.sample,
        }
    }
}
