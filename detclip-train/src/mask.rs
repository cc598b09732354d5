//! Binary masks as COCO's uncompressed run-length encoding (what `detections.json` carries as
//! a detection's `segmentation`, readable by `pycocotools.mask.frPyObjects`).

use serde_json::{Value, json};

/// A binary mask of an image of `size = [height, width]`: `counts` alternate runs of 0s and
/// 1s, starting with 0s (a mask that starts with a 1 has a leading 0-run of length 0), over
/// the pixels in column-major order (down each column, then to the next), as COCO's RLE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rle {
    /// `[height, width]`.
    pub size: [usize; 2],
    /// Run lengths, 0-run first.
    pub counts: Vec<u32>,
}

impl Rle {
    /// Encodes a row-major mask (`mask[y · width + x]`).
    ///
    /// # Panics
    /// When `mask.len() != height · width`.
    pub fn encode(mask: &[bool], height: usize, width: usize) -> Self {
        assert_eq!(mask.len(), height * width, "mask size");
        let mut counts = Vec::new();
        let mut current = false;
        let mut run = 0u32;
        for x in 0..width {
            for y in 0..height {
                if mask[y * width + x] != current {
                    counts.push(run);
                    run = 0;
                    current = !current;
                }
                run += 1;
            }
        }
        counts.push(run);
        Self {
            size: [height, width],
            counts,
        }
    }

    /// The row-major mask.
    pub fn decode(&self) -> Vec<bool> {
        let [h, w] = self.size;
        let mut mask = vec![false; h * w];
        let mut k = 0usize;
        for (i, &run) in self.counts.iter().enumerate() {
            for _ in 0..run {
                if k >= h * w {
                    break;
                }
                if i % 2 == 1 {
                    mask[(k % h) * w + k / h] = true;
                }
                k += 1;
            }
        }
        mask
    }

    /// Pixels in the mask.
    pub fn area(&self) -> u64 {
        self.counts
            .iter()
            .skip(1)
            .step_by(2)
            .map(|&c| c as u64)
            .sum()
    }

    /// The mask at another size, by nearest neighbour (pixel centres mapped back).
    pub fn resize(&self, height: usize, width: usize) -> Self {
        let [h, w] = self.size;
        if [height, width] == self.size {
            return self.clone();
        }
        if h == 0 || w == 0 {
            return Self::encode(&vec![false; height * width], height, width);
        }
        let src = self.decode();
        let mut out = vec![false; height * width];
        for y in 0..height {
            let sy = (((y as f64 + 0.5) * h as f64 / height as f64) as usize).min(h - 1);
            for x in 0..width {
                let sx = (((x as f64 + 0.5) * w as f64 / width as f64) as usize).min(w - 1);
                out[y * width + x] = src[sy * w + sx];
            }
        }
        Self::encode(&out, height, width)
    }

    /// COCO's JSON form, `{"size": [h, w], "counts": [...]}`.
    pub fn to_json(&self) -> Value {
        json!({"size": self.size, "counts": self.counts})
    }
}
