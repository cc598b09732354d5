//! What SAM and CLIP see of a photo in the official RegionSpot (`RegionSpot_Predictor.set_image`
//! in github.com/Surrey-UP-Lab/RegionSpot, `regionspot/predictor.py`):
//!
//! - SAM: `ResizeLongestSide(S).apply_image` on the 8-bit RGB image (torchvision's `resize` of a
//!   PIL image: PIL's bilinear filter, sizes `int(side · S / longest + 0.5)`), then
//!   `Sam.preprocess`: `(x − pixel_mean) / pixel_std` in 0–255 and zero padding to `S × S` at
//!   the bottom and right;
//! - CLIP: `resize_norm`: the whole image in `0..=1` squashed to `C × C` by `F.interpolate`
//!   (bilinear, `align_corners=False`, no antialiasing), then CLIP's normalisation;
//! - boxes: `apply_boxes`, each axis scaled by the resized side over the original one.

use detclip_core::data::resample::{ResampleFilter, resize_like_pil};
use detclip_core::data::transforms::{ChannelOrder, Normalize, PixelScale};
use detclip_models::clip::{CLIP_MEAN, CLIP_STD};
use image::{Rgb, RgbImage};

/// The frozen models' inputs for one photo.
#[derive(Debug, Clone)]
pub struct OfficialPixels {
    /// SAM's input `[3, S, S]`, row-major planes.
    pub sam: Vec<f32>,
    /// The resized photo's `[height, width]` inside SAM's square (`get_preprocess_shape`).
    pub sam_input: [usize; 2],
    /// CLIP's input `[3, C, C]`, row-major planes.
    pub clip: Vec<f32>,
}

impl OfficialPixels {
    /// Box scale `[x, y]` from the photo's pixels to SAM's frame (`apply_boxes`).
    pub fn box_scale(&self, photo: [usize; 2]) -> [f32; 2] {
        [
            (self.sam_input[1] as f64 / photo[1] as f64) as f32,
            (self.sam_input[0] as f64 / photo[0] as f64) as f32,
        ]
    }
}

/// segment-anything's `ResizeLongestSide.get_preprocess_shape`: `[height, width]`.
pub fn preprocess_shape(height: usize, width: usize, side: usize) -> [usize; 2] {
    let scale = side as f64 / height.max(width) as f64;
    [
        (height as f64 * scale + 0.5) as usize,
        (width as f64 * scale + 0.5) as usize,
    ]
}

/// SAM's and CLIP's inputs for `image` (RGB, 8 bits), SAM's input side `sam_side` and CLIP's
/// `clip_side`, as the official predictor computes them.
pub fn official_pixels(image: &RgbImage, sam_side: usize, clip_side: usize) -> OfficialPixels {
    let (w, h) = (image.width() as usize, image.height() as usize);
    let [nh, nw] = preprocess_shape(h, w, sam_side);
    let resized = resize_like_pil(image, nw as u32, nh as u32, ResampleFilter::Bilinear);
    let planes = Normalize::mmdet().apply(&resized);
    let mut sam = vec![0.0f32; 3 * sam_side * sam_side];
    for c in 0..3 {
        for y in 0..nh {
            let src = &planes[c * nh * nw + y * nw..c * nh * nw + (y + 1) * nw];
            let at = c * sam_side * sam_side + y * sam_side;
            sam[at..at + nw].copy_from_slice(src);
        }
    }
    OfficialPixels {
        sam,
        sam_input: [nh, nw],
        clip: clip_squashed(image, clip_side),
    }
}

/// One axis of PyTorch's bilinear upsampling with `align_corners=False`
/// (`area_pixel_compute_source_index`): per output index, the two source indices and their
/// weights.
fn linear_axis(input: usize, output: usize) -> Vec<(usize, usize, f32, f32)> {
    let scale = input as f32 / output as f32;
    (0..output)
        .map(|d| {
            let real = (scale * (d as f32 + 0.5) - 0.5).max(0.0);
            let i0 = (real as usize).min(input - 1);
            let i1 = if i0 < input - 1 { i0 + 1 } else { i0 };
            let l1 = (real - i0 as f32).clamp(0.0, 1.0);
            (i0, i1, 1.0 - l1, l1)
        })
        .collect()
}

/// CLIP's input `[3, side, side]`: the image in `0..=1`, bilinear to `side × side`, CLIP's
/// normalisation.
fn clip_squashed(image: &RgbImage, side: usize) -> Vec<f32> {
    let (w, h) = (image.width() as usize, image.height() as usize);
    let ys = linear_axis(h, side);
    let xs = linear_axis(w, side);
    let raw = image.as_raw();
    let at = |y: usize, x: usize, c: usize| raw[(y * w + x) * 3 + c] as f32 / 255.0;
    let mut out = vec![0.0f32; 3 * side * side];
    for c in 0..3 {
        for (oy, &(y0, y1, h0, h1)) in ys.iter().enumerate() {
            for (ox, &(x0, x1, w0, w1)) in xs.iter().enumerate() {
                let v = h0 * (w0 * at(y0, x0, c) + w1 * at(y0, x1, c))
                    + h1 * (w0 * at(y1, x0, c) + w1 * at(y1, x1, c));
                out[c * side * side + oy * side + ox] = (v - CLIP_MEAN[c]) / CLIP_STD[c];
            }
        }
    }
    out
}

/// The 8-bit RGB image whose normalisation by `normalize` gave `planes` (`[3, h, w]`): the
/// inverse of [`Normalize::apply`], rounded.
pub fn denormalize(planes: &[f32], h: usize, w: usize, normalize: &Normalize) -> RgbImage {
    let plane = h * w;
    let scale = match normalize.scale {
        PixelScale::Unit => 255.0,
        PixelScale::Byte => 1.0,
    };
    let target = match normalize.order {
        ChannelOrder::Rgb => [0, 1, 2],
        ChannelOrder::Bgr => [2, 1, 0],
    };
    let mut image = RgbImage::new(w as u32, h as u32);
    for (i, px) in image.pixels_mut().enumerate() {
        let mut rgb = [0u8; 3];
        for c in 0..3 {
            let v = (planes[c * plane + i] * normalize.std[c] + normalize.mean[c]) * scale;
            rgb[target[c]] = v.round().clamp(0.0, 255.0) as u8;
        }
        *px = Rgb(rgb);
    }
    image
}
