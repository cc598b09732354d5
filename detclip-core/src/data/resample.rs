//! Image resizing exactly as Pillow's `Image.resize` computes it on 8-bit RGB (what
//! torchvision's `Resize` does to a PIL image, and so what GLIP's maskrcnn-benchmark test
//! transform and CLIP's preprocessing feed their models).
//!
//! Pillow (`libImaging/Resample.c`) convolves separably, horizontal pass first, with a filter
//! stretched by the scale when downsampling (antialiasing). Weights are computed in `f64`,
//! normalised per output pixel, then rounded to 22-bit fixed point; each pass accumulates in
//! `i32` from `1 << 21`, shifts right by 22 and clamps to `0..=255`. Doing the same here gives
//! the same bytes, so a preprocessed tensor matches the reference to the last bit instead of
//! within a grey level.

use image::{Rgb, RgbImage};

/// The resampling filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResampleFilter {
    /// `PIL.Image.BILINEAR` (triangle, support 1).
    Bilinear,
    /// `PIL.Image.BICUBIC` (Keys cubic with `a = −0.5`, support 2).
    Bicubic,
}

impl ResampleFilter {
    fn support(self) -> f64 {
        match self {
            Self::Bilinear => 1.0,
            Self::Bicubic => 2.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        let x = x.abs();
        match self {
            Self::Bilinear => {
                if x < 1.0 {
                    1.0 - x
                } else {
                    0.0
                }
            }
            Self::Bicubic => {
                const A: f64 = -0.5;
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
        }
    }
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Per output pixel: the first input pixel and the fixed-point weights (Pillow's
/// `precompute_coeffs` + `normalize_coeffs_8bpc`).
fn coefficients(input: u32, output: u32, filter: ResampleFilter) -> Vec<(usize, Vec<i32>)> {
    let scale = input as f64 / output as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    let ss = 1.0 / filterscale;
    (0..output)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            // C's (int) truncates toward zero.
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(input as i64) as usize;
            let raw: Vec<f64> = (xmin..xmax)
                .map(|x| filter.weight((x as f64 - center + 0.5) * ss))
                .collect();
            let total: f64 = raw.iter().sum();
            let fixed = raw
                .iter()
                .map(|&w| {
                    let w = if total != 0.0 { w / total } else { w };
                    let f = w * (1u32 << PRECISION_BITS) as f64;
                    if w < 0.0 {
                        (f - 0.5) as i32
                    } else {
                        (f + 0.5) as i32
                    }
                })
                .collect();
            (xmin, fixed)
        })
        .collect()
}

fn clip8(v: i32) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
}

fn convolve(pixels: impl Iterator<Item = [u8; 3]>, weights: &[i32]) -> [u8; 3] {
    let mut acc = [1i32 << (PRECISION_BITS - 1); 3];
    for (p, &k) in pixels.zip(weights) {
        for c in 0..3 {
            acc[c] += p[c] as i32 * k;
        }
    }
    acc.map(clip8)
}

/// `image` resized to `width × height` as Pillow's `Image.resize((width, height), filter)`.
/// A pass whose side does not change is skipped, as in Pillow.
pub fn resize_like_pil(
    image: &RgbImage,
    width: u32,
    height: u32,
    filter: ResampleFilter,
) -> RgbImage {
    let (w0, h0) = image.dimensions();
    let horizontal = if width != w0 {
        let coeffs = coefficients(w0, width, filter);
        RgbImage::from_fn(width, h0, |x, y| {
            let (start, k) = &coeffs[x as usize];
            Rgb(convolve(
                (0..k.len()).map(|i| image.get_pixel((start + i) as u32, y).0),
                k,
            ))
        })
    } else {
        image.clone()
    };
    if height == h0 {
        return horizontal;
    }
    let coeffs = coefficients(h0, height, filter);
    RgbImage::from_fn(width, height, |x, y| {
        let (start, k) = &coeffs[y as usize];
        Rgb(convolve(
            (0..k.len()).map(|i| horizontal.get_pixel(x, (start + i) as u32).0),
            k,
        ))
    })
}
