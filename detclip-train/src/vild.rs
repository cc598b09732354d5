//! `detclip vild precompute`: the offline half of ViLD-image (Gu et al., ICLR 2022, §3.3).
//!
//! The proposal network runs on every training image; the best `M` proposals after NMS are
//! cropped at 1× and 1.5× their size, both crops go through CLIP's image encoder, and the sum
//! of the two normalised embeddings, normalised again, is the teacher embedding of the
//! proposal. Training then pulls the detector's region embeddings of these proposals
//! towards them ([`detclip_models::vild::vild_loss`]).
//!
//! The result is one file per shard of `shard_size` images (`shard-00000.vild`, …): a magic
//! line, a JSON header (shard index, image keys, proposal counts, embedding width), the f32
//! data, and a CRC32 of header and data. A shard is written to a temporary file and renamed
//! into place, so a shard file is either whole or absent. Running again skips the shards
//! that are already whole (checked by CRC and by their image keys) and computes the rest:
//! an interrupted run resumes without losing or duplicating a proposal.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use burn::prelude::*;
use burn::tensor::TensorData;
use detclip_core::data::image::Orientation;
use detclip_core::data::sample::Sample;
use detclip_core::data::transforms::{Normalize, keep_ratio_size};
use detclip_core::{DetError, Result};
use detclip_models::clip::ClipVision;
use detclip_models::vild::{Vild, region_teacher};
use image::RgbImage;
use image::imageops::{FilterType, crop_imm, resize};
use serde::{Deserialize, Serialize};

/// The first bytes of a shard file.
const MAGIC: &[u8; 8] = b"VILDPRE1";

/// Settings of [`precompute`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrecomputeOptions {
    /// `M`: proposals kept per image (the best after the RPN's NMS).
    pub proposals: usize,
    /// Images per shard file.
    pub shard_size: usize,
    /// Shorter side of the detector's input (the image is resized keeping its ratio).
    pub short_side: u32,
    /// Cap on the longer side of the detector's input.
    pub max_long: Option<u32>,
    /// Side of the square crops fed to CLIP (its training resolution).
    pub crop_size: u32,
    /// Crop scales around each proposal's centre (ViLD: 1× and 1.5×).
    pub crop_scales: Vec<f32>,
    /// Crops per CLIP forward pass (bounds CLIP's activations: ViT-L on 600 crops at once
    /// would need tens of GB).
    pub crop_batch: usize,
    /// Stop after writing this many shards (the rest is left for a later run); `None`: all.
    pub max_shards: Option<usize>,
}

impl Default for PrecomputeOptions {
    fn default() -> Self {
        Self {
            proposals: 300,
            shard_size: 256,
            short_side: 800,
            max_long: Some(1333),
            crop_size: 224,
            crop_scales: vec![1.0, 1.5],
            crop_batch: 64,
            max_shards: None,
        }
    }
}

/// What [`precompute`] did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PrecomputeReport {
    /// Shards in the dataset.
    pub shards: usize,
    /// Shards found whole and skipped.
    pub skipped: usize,
    /// Shards written by this run.
    pub written: usize,
    /// Crops embedded by this run.
    pub crops: usize,
    /// Whether every shard is now on disk.
    pub complete: bool,
}

/// The header of a shard file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct ShardHeader {
    shard: usize,
    keys: Vec<String>,
    counts: Vec<usize>,
    dim: usize,
}

/// The teacher data of one image.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageTeacher {
    /// The sample's key.
    pub key: String,
    /// Proposals, xyxy in the original image's pixels, by descending objectness.
    pub boxes: Vec<[f32; 4]>,
    /// Unit embeddings, one row of `dim` per proposal.
    pub embeddings: Vec<f32>,
    /// Embedding width (that of the shard for an image without proposals).
    pub dim: usize,
}

/// The file of shard `index` in `dir`.
pub fn shard_path(dir: &Path, index: usize) -> PathBuf {
    dir.join(format!("shard-{index:05}.vild"))
}

/// The box scaled by `scale` around its centre, clipped to the image, as integer pixel
/// bounds `(x, y, w, h)` at least one pixel wide.
pub fn crop_window(b: &[f32; 4], scale: f32, width: u32, height: u32) -> (u32, u32, u32, u32) {
    let (cx, cy) = ((b[0] + b[2]) / 2.0, (b[1] + b[3]) / 2.0);
    let (hw, hh) = ((b[2] - b[0]) * scale / 2.0, (b[3] - b[1]) * scale / 2.0);
    let x0 = (cx - hw).floor().clamp(0.0, (width - 1) as f32) as u32;
    let y0 = (cy - hh).floor().clamp(0.0, (height - 1) as f32) as u32;
    let x1 = ((cx + hw).ceil() as u32).clamp(x0 + 1, width);
    let y1 = ((cy + hh).ceil() as u32).clamp(y0 + 1, height);
    (x0, y0, x1 - x0, y1 - y0)
}

/// The detector's input: keep-ratio resize, ImageNet normalisation, zero padding to a
/// multiple of 32. Returns the pixels `[1, 3, H, W]` and the resize factor.
fn detector_input<B: Backend>(
    image: &RgbImage,
    options: &PrecomputeOptions,
    device: &B::Device,
) -> (Tensor<B, 4>, f32) {
    let (w, h) = image.dimensions();
    let (rw, rh) = keep_ratio_size(w, h, options.short_side, options.max_long);
    let resized = resize(image, rw, rh, FilterType::Triangle);
    let planes = Normalize::imagenet().apply(&resized);
    let (pw, ph) = (rw.div_ceil(32) * 32, rh.div_ceil(32) * 32);
    let (rw, rh, pw, ph) = (rw as usize, rh as usize, pw as usize, ph as usize);
    let mut padded = vec![0.0f32; 3 * ph * pw];
    for c in 0..3 {
        for y in 0..rh {
            let src = c * rh * rw + y * rw;
            let dst = c * ph * pw + y * pw;
            padded[dst..dst + rw].copy_from_slice(&planes[src..src + rw]);
        }
    }
    let pixels = Tensor::from_data(TensorData::new(padded, [1, 3, ph, pw]), device);
    (pixels, rw as f32 / w as f32)
}

/// The teacher data of one image: the detector's best `M` proposals (mapped back to the
/// image's pixels) and their CLIP embeddings.
///
/// # Errors
/// Image decoding and model errors.
pub fn image_teacher<B: Backend>(
    detector: &Vild<B>,
    clip: &ClipVision<B>,
    sample: &Sample,
    options: &PrecomputeOptions,
    device: &B::Device,
) -> Result<ImageTeacher> {
    let image = sample.load_image(Orientation::Apply)?;
    let (pixels, factor) = detector_input::<B>(&image, options, device);
    let [_, _, h, w] = pixels.dims();
    let features = detector.features(pixels)?;
    let proposals = detector.proposals(&detector.rpn_outputs(&features), [h, w], false)?;
    let boxes: Vec<[f32; 4]> = proposals[0]
        .boxes
        .iter()
        .take(options.proposals)
        .map(|b| {
            // Back to the image's pixels; the RPN clipped to the padded input, so clip again.
            let (iw, ih) = (image.width() as f32, image.height() as f32);
            let b = b.map(|v| v / factor);
            [
                b[0].clamp(0.0, iw),
                b[1].clamp(0.0, ih),
                b[2].clamp(0.0, iw),
                b[3].clamp(0.0, ih),
            ]
        })
        .collect();
    let (embeddings, dim) = if boxes.is_empty() {
        (Vec::new(), 0)
    } else {
        let e = crop_embeddings(clip, &image, &boxes, options, device)?;
        let dim = e.dims()[1];
        (read(e)?, dim)
    };
    Ok(ImageTeacher {
        key: sample.key.clone(),
        boxes,
        embeddings,
        dim,
    })
}

/// `norm(Σ_s norm(CLIP(crop_s(box))))` of every box, `[M, E]`.
fn crop_embeddings<B: Backend>(
    clip: &ClipVision<B>,
    image: &RgbImage,
    boxes: &[[f32; 4]],
    options: &PrecomputeOptions,
    device: &B::Device,
) -> Result<Tensor<B, 2>> {
    let (w, h) = image.dimensions();
    let s = options.crop_size;
    let normalize = Normalize::clip();
    let mut pixels =
        Vec::with_capacity(boxes.len() * options.crop_scales.len() * 3 * (s * s) as usize);
    for scale in &options.crop_scales {
        for b in boxes {
            let (x, y, cw, ch) = crop_window(b, *scale, w, h);
            let crop = crop_imm(image, x, y, cw, ch).to_image();
            pixels.extend(normalize.apply(&resize(&crop, s, s, FilterType::Triangle)));
        }
    }
    let (k, s) = (options.crop_scales.len(), s as usize);
    let crops =
        Tensor::<B, 4>::from_data(TensorData::new(pixels, [k * boxes.len(), 3, s, s]), device);
    region_teacher(clip, crops, k, options.crop_batch)
}

fn read<B: Backend>(t: Tensor<B, 2>) -> Result<Vec<f32>> {
    t.into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .map_err(|e| DetError::InvalidOption {
            op: "vild precompute",
            why: format!("could not read tensor: {e:?}"),
        })
}

/// Runs the precompute over `samples` into `dir` (see the [module docs](self)), skipping the
/// shards already whole there.
///
/// # Errors
/// [`DetError::InvalidOption`] for zero `proposals`/`shard_size` or no crop scale,
/// [`DetError::Io`] when a shard cannot be written; image and model errors.
pub fn precompute<B: Backend>(
    detector: &Vild<B>,
    clip: &ClipVision<B>,
    samples: &[Sample],
    dir: &Path,
    options: &PrecomputeOptions,
    device: &B::Device,
) -> Result<PrecomputeReport> {
    if options.proposals == 0
        || options.shard_size == 0
        || options.crop_batch == 0
        || options.crop_scales.is_empty()
        || options.crop_size == 0
    {
        return Err(DetError::InvalidOption {
            op: "vild precompute",
            why: format!(
                "proposals, shard_size, crop_batch, crop_size and crop_scales must be non-zero: {options:?}"
            ),
        });
    }
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let shards: Vec<&[Sample]> = samples.chunks(options.shard_size).collect();
    let mut report = PrecomputeReport {
        shards: shards.len(),
        ..Default::default()
    };
    for (index, members) in shards.iter().enumerate() {
        let path = shard_path(dir, index);
        let keys: Vec<&str> = members.iter().map(|s| s.key.as_str()).collect();
        if shard_is_whole(&path, index, &keys) {
            report.skipped += 1;
            continue;
        }
        if options.max_shards.is_some_and(|m| report.written >= m) {
            return Ok(report);
        }
        let teachers = members
            .iter()
            .map(|s| image_teacher(detector, clip, s, options, device))
            .collect::<Result<Vec<_>>>()?;
        report.crops +=
            teachers.iter().map(|t| t.boxes.len()).sum::<usize>() * options.crop_scales.len();
        write_shard(&path, index, &teachers)?;
        report.written += 1;
    }
    report.complete = true;
    Ok(report)
}

fn io(path: &Path, e: impl std::fmt::Display) -> DetError {
    DetError::Io {
        path: path.display().to_string(),
        msg: e.to_string(),
    }
}

/// Whether `path` holds shard `index` of exactly these images, intact.
fn shard_is_whole(path: &Path, index: usize, keys: &[&str]) -> bool {
    match read_shard(path) {
        Ok((header, _)) => {
            header.shard == index
                && header
                    .keys
                    .iter()
                    .map(String::as_str)
                    .eq(keys.iter().copied())
        }
        Err(_) => false,
    }
}

/// Writes a shard through a temporary file renamed into place.
fn write_shard(path: &Path, index: usize, teachers: &[ImageTeacher]) -> Result<()> {
    // Images without proposals have no width of their own.
    let dim = teachers.iter().map(|t| t.dim).max().unwrap_or(0);
    let header = ShardHeader {
        shard: index,
        keys: teachers.iter().map(|t| t.key.clone()).collect(),
        counts: teachers.iter().map(|t| t.boxes.len()).collect(),
        dim,
    };
    let header = serde_json::to_vec(&header).map_err(|e| io(path, e))?;
    let mut body = Vec::new();
    body.extend((header.len() as u64).to_le_bytes());
    body.extend(&header);
    for t in teachers {
        for v in t.boxes.iter().flatten().chain(&t.embeddings) {
            body.extend(v.to_le_bytes());
        }
    }
    let crc = crc32fast::hash(&body);
    let tmp = path.with_extension("vild.tmp");
    let mut f = std::fs::File::create(&tmp).map_err(|e| io(&tmp, e))?;
    f.write_all(MAGIC)
        .and_then(|_| f.write_all(&body))
        .and_then(|_| f.write_all(&crc.to_le_bytes()))
        .and_then(|_| f.sync_all())
        .map_err(|e| io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| io(path, e))
}

fn read_shard(path: &Path) -> Result<(ShardHeader, Vec<ImageTeacher>)> {
    let bad = |why: &str| DetError::Io {
        path: path.display().to_string(),
        msg: format!("not a whole ViLD shard: {why}"),
    };
    let bytes = std::fs::read(path).map_err(|e| io(path, e))?;
    if bytes.len() < MAGIC.len() + 12 || &bytes[..8] != MAGIC {
        return Err(bad("no magic"));
    }
    let body = &bytes[8..bytes.len() - 4];
    let crc = u32::from_le_bytes(bytes[bytes.len() - 4..].try_into().expect("4 bytes"));
    if crc32fast::hash(body) != crc {
        return Err(bad("CRC mismatch"));
    }
    let len = u64::from_le_bytes(body[..8].try_into().expect("8 bytes")) as usize;
    let header: ShardHeader = body
        .get(8..8 + len)
        .and_then(|h| serde_json::from_slice(h).ok())
        .ok_or_else(|| bad("bad header"))?;
    let values: Vec<f32> = body[8 + len..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
        .collect();
    let expected: usize = header.counts.iter().map(|c| c * (4 + header.dim)).sum();
    if values.len() != expected || header.keys.len() != header.counts.len() {
        return Err(bad("data length does not match the header"));
    }
    let mut at = 0;
    let teachers = header
        .keys
        .iter()
        .zip(&header.counts)
        .map(|(key, &m)| {
            let boxes = values[at..at + 4 * m]
                .chunks(4)
                .map(|c| [c[0], c[1], c[2], c[3]])
                .collect();
            at += 4 * m;
            let embeddings = values[at..at + m * header.dim].to_vec();
            at += m * header.dim;
            ImageTeacher {
                key: key.clone(),
                boxes,
                embeddings,
                dim: header.dim,
            }
        })
        .collect();
    Ok((header, teachers))
}

/// Every image's teacher data in `dir`, by sample key.
///
/// # Errors
/// [`DetError::Io`] for an unreadable or damaged shard, [`DetError::InvalidOption`] when two
/// shards hold the same image.
pub fn load_teachers(dir: &Path) -> Result<HashMap<String, ImageTeacher>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "vild"))
        .collect();
    paths.sort();
    let mut out = HashMap::new();
    for p in paths {
        for t in read_shard(&p)?.1 {
            let key = t.key.clone();
            if out.insert(key.clone(), t).is_some() {
                return Err(DetError::InvalidOption {
                    op: "vild precompute",
                    why: format!("image `{key}` is in two shards ({})", p.display()),
                });
            }
        }
    }
    Ok(out)
}

/// The CLIP image tower `detclip vild precompute` loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClipModel {
    /// ViT-B/32.
    VitB32,
    /// ViT-B/16.
    VitB16,
    /// ViT-L/14.
    VitL14,
}

impl std::str::FromStr for ClipModel {
    type Err = DetError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "vit-b-32" => Ok(Self::VitB32),
            "vit-b-16" => Ok(Self::VitB16),
            "vit-l-14" => Ok(Self::VitL14),
            _ => Err(DetError::InvalidOption {
                op: "vild precompute",
                why: format!("unknown CLIP model `{s}` (vit-b-32, vit-b-16, vit-l-14)"),
            }),
        }
    }
}

/// The inputs of `detclip vild precompute`.
#[derive(Debug, Clone)]
pub struct PrecomputeCommand {
    /// COCO/LVIS instances json of the training images.
    pub annotations: PathBuf,
    /// Their image folder.
    pub images: PathBuf,
    /// A torchvision `maskrcnn_resnet50_fpn` state dict (the proposal network trained on the
    /// base classes), loaded through [`detclip_models::vild::torchvision_keys`].
    pub detector: PathBuf,
    /// A CLIP checkpoint (HF `CLIPModel` safetensors/bin or OpenAI state dict).
    pub clip: PathBuf,
    /// Its architecture.
    pub clip_model: ClipModel,
    /// Its key layout.
    pub clip_layout: detclip_models::clip::ClipLayout,
    /// Output folder of the shards.
    pub out: PathBuf,
    /// Settings.
    pub options: PrecomputeOptions,
}

struct PrecomputeTask(PrecomputeCommand);

impl detclip_core::backend::BackendTask for PrecomputeTask {
    type Output = Result<PrecomputeReport>;
    fn run<B: detclip_core::ext::DetclipAutodiffBackend>(self, device: B::Device) -> Self::Output {
        run_precompute::<B::InnerBackend>(&self.0, &device)
    }
}

fn run_precompute<B: Backend>(
    c: &PrecomputeCommand,
    device: &B::Device,
) -> Result<PrecomputeReport> {
    use detclip_core::data::coco::read_coco;
    use detclip_core::data::report::{OnError, ReadOptions};
    use detclip_models::clip::{ClipConfig, ClipLayout, hf_clip_keys, openai_clip_keys};
    use detclip_models::import::{LoadOptions, load_checkpoint};
    use detclip_models::vild::{VildConfig, torchvision_keys};

    let samples = read_coco(
        &c.annotations,
        &c.images,
        ReadOptions::default().on_error(OnError::Stop),
    )?
    .samples;
    let clip_config = match c.clip_model {
        ClipModel::VitB32 => ClipConfig::vit_b_32(c.clip_layout),
        ClipModel::VitB16 => ClipConfig::vit_b_16(c.clip_layout),
        ClipModel::VitL14 => ClipConfig::vit_l_14(c.clip_layout),
    };
    let mut clip = clip_config.init::<B>(device);
    let keys = match c.clip_layout {
        ClipLayout::Hf => hf_clip_keys(),
        ClipLayout::OpenAi => openai_clip_keys(),
    };
    load_checkpoint(&mut clip, &c.clip, &keys, &LoadOptions::default())?;
    let mut detector = VildConfig::r50(clip_config.vision.embed_dim).init::<B>(device)?;
    // A Mask R-CNN checkpoint has no ViLD heads; only the proposal network is used here.
    let partial = LoadOptions {
        allow_partial: true,
        ..Default::default()
    };
    let report = load_checkpoint(&mut detector, &c.detector, &torchvision_keys(), &partial)?;
    let needed = ["backbone.", "fpn.", "rpn."];
    if let Some(m) = report
        .missing
        .iter()
        .find(|m| needed.iter().any(|p| m.starts_with(p)))
    {
        return Err(DetError::Checkpoint {
            file: c.detector.display().to_string(),
            why: format!("the proposal network is incomplete: `{m}` is missing"),
        });
    }
    precompute(
        &detector,
        &clip.vision,
        &samples,
        &c.out,
        &c.options,
        device,
    )
}

/// `detclip vild precompute` on the device `device` (see [`PrecomputeCommand`]).
///
/// # Errors
/// A bad device, dataset or checkpoint, and the errors of [`precompute`].
pub fn precompute_command(command: PrecomputeCommand, device: &str) -> Result<PrecomputeReport> {
    let spec: detclip_core::backend::DeviceSpec = device.parse()?;
    detclip_core::backend::run_on(spec, PrecomputeTask(command))?
}
