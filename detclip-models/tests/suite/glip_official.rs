//! GLIP's released test-time mechanics against the official code (microsoft/GLIP run by
//! `scripts/fixtures/glip_official.py`): the test transform on real photos, the anchors, the
//! box coder, and the post-processing of chunked prompts.

use burn::prelude::*;
use burn::tensor::TensorData;
use detclip_core::data::{ImageSource, Loaded, Sample};
use detclip_core::data::{
    Orientation, ResampleFilter, TestTransform, decode_image, keep_ratio_size, resize,
    resize_like_pil,
};
use detclip_models::glip::{GlipConfig, GlipOutput, GlipTestConfig, PhraseTokens, glip_detect};
use serde_json::Value;

use crate::harness::{Fixture, fixtures, shared_data, to_vec};

fn mechanics() -> Value {
    let path = fixtures().join("glip_official_mechanics.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{} is missing ({e}); run scripts/fixtures/glip_official.py",
            path.display()
        )
    });
    serde_json::from_str(&text).unwrap()
}

fn f32s(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn fnv1a64(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// The released test transform gives the official bytes: same resized size, same RGB bytes
/// (Pillow's bilinear, byte for byte) at 800/1333 and 224, same BGR-255 normalisation.
#[test]
fn glip_test_transform_matches_official_on_photos() {
    let m = mechanics();
    let Some(data) = shared_data("glip_test_transform_matches_official_on_photos") else {
        return;
    };
    let transform = GlipTestConfig::default().transform();
    for rec in m["transform"].as_array().unwrap() {
        let file = rec["file"].as_str().unwrap();
        let path = data.join("images/coco2017").join(file);
        let image = decode_image(&path, Orientation::Apply).unwrap();
        let (w, h) = image.dimensions();
        assert_eq!(
            [w as u64, h as u64],
            [
                rec["size"][0].as_u64().unwrap(),
                rec["size"][1].as_u64().unwrap()
            ],
            "{file}"
        );
        let decoded_same = fnv1a64(image.as_raw()) == rec["decoded_fnv1a64"].as_str().unwrap();
        eprintln!(
            "{file}: decoded bytes {}",
            if decoded_same {
                "equal Pillow's"
            } else {
                "differ from Pillow's"
            }
        );
        for r in rec["resized"].as_array().unwrap() {
            let short = r["short"].as_u64().unwrap() as u32;
            let max_long = r["max_long"].as_u64().map(|v| v as u32);
            let (rw, rh) = keep_ratio_size(w, h, short, max_long);
            assert_eq!(
                [rw as u64, rh as u64],
                [
                    r["size"][0].as_u64().unwrap(),
                    r["size"][1].as_u64().unwrap()
                ],
                "{file} size at {short}"
            );
            // Pillow's bilinear, byte for byte, on the same input (a synthetic image of the
            // photo's size: JPEG decoders differ by a grey level here and there).
            let synth = image::RgbImage::from_fn(w, h, |x, y| {
                let (x, y) = (x as u64, y as u64);
                image::Rgb([
                    ((x * 7 + y * 13) % 256) as u8,
                    ((x * x + 3 * y) % 251) as u8,
                    ((x * y + 5 * x) % 241) as u8,
                ])
            });
            let resized = resize_like_pil(&synth, rw, rh, ResampleFilter::Bilinear);
            assert_eq!(
                fnv1a64(resized.as_raw()),
                r["synthetic_fnv1a64"].as_str().unwrap(),
                "{file}: resized bytes differ from Pillow's at {short}"
            );
            let sample = Sample::new(file, ImageSource::File(path.clone()), w, h);
            let photo = resize(Loaded::new(image.clone(), sample).unwrap(), rw, rh);
            let same = fnv1a64(photo.image.as_raw()) == r["fnv1a64"].as_str().unwrap();
            eprintln!(
                "{file} at {short}: resized photo {}",
                if same {
                    "equals Pillow's"
                } else {
                    "differs (decoder)"
                }
            );
            if short == 224 {
                let t = TestTransform {
                    short: 224,
                    max_long: None,
                    ..transform
                };
                let sample = Sample::new(file, ImageSource::File(path.clone()), w, h);
                let prepared = t.apply(Loaded::new(synth.clone(), sample).unwrap());
                let plane = (rw * rh) as usize;
                for p in rec["normalized"].as_array().unwrap() {
                    let (y, x) = (
                        p["y"].as_u64().unwrap() as usize,
                        p["x"].as_u64().unwrap() as usize,
                    );
                    for (c, want) in f32s(&p["values"]).into_iter().enumerate() {
                        let got = prepared.pixels[c * plane + y * rw as usize + x];
                        assert!(
                            (got - want).abs() < 1e-5,
                            "{file} ({y}, {x}) channel {c}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
}

/// The anchors of GLIP-T's config (`make_anchor_generator_complex`) on a padded batch.
#[test]
fn glip_anchors_match_official() {
    let m = mechanics();
    let levels = m["anchors"]["levels"].as_array().unwrap();
    let sizes: Vec<[usize; 2]> = levels
        .iter()
        .map(|l| {
            [
                l["size"][0].as_u64().unwrap() as usize,
                l["size"][1].as_u64().unwrap() as usize,
            ]
        })
        .collect();
    let ours = GlipConfig::glip_t()
        .geometry()
        .anchors
        .grid_anchors_host(&sizes)
        .unwrap();
    for (l, (level, got)) in levels.iter().zip(&ours).enumerate() {
        assert_eq!(
            got.len() as u64,
            level["count"].as_u64().unwrap(),
            "level {l}"
        );
        assert_eq!(
            got[0].to_vec(),
            f32s(&level["first"]),
            "level {l} first anchor"
        );
        assert_eq!(
            got[got.len() - 1].to_vec(),
            f32s(&level["last"]),
            "level {l} last anchor"
        );
    }
}

backend_test! {
    /// `vldyhead.BoxCoder.decode` (+1 widths, centre (x1 + x2)/2, clamp of dw/dh).
    fn glip_box_coder_matches_official<B>(device) {
        let m = mechanics();
        let c = &m["coder"];
        let rows = |v: &Value| -> Vec<f32> { v.as_array().unwrap().iter().flat_map(f32s).collect() };
        let n = c["reference"].as_array().unwrap().len();
        let refs = Tensor::<B, 2>::from_data(TensorData::new(rows(&c["reference"]), [n, 4]), device);
        let deltas = Tensor::<B, 2>::from_data(TensorData::new(rows(&c["deltas"]), [n, 4]), device);
        let got = to_vec(GlipConfig::glip_t().geometry().coder.decode(deltas, refs).unwrap());
        for (g, w) in got.iter().zip(rows(&c["decoded"])) {
            assert!((g - w).abs() <= 1e-4 * w.abs().max(1.0), "{got:?}");
        }
    }
}

backend_test! {
    /// `ATSSPostProcessor` per prompt chunk (per-level top-k, clip to w − 1, +1 NMS, kthvalue
    /// cap), chunks concatenated, boxes resized to the original images: the same detections.
    fn glip_post_processing_matches_official<B>(device) {
        let m = mechanics();
        let p = &m["post"];
        let fx = Fixture::load(fixtures(), "glip_official_post.safetensors");
        let levels: Vec<[usize; 2]> = p["levels"].as_array().unwrap().iter()
            .map(|l| [l[0].as_u64().unwrap() as usize, l[1].as_u64().unwrap() as usize]).collect();
        let chunks = p["chunks"].as_array().unwrap();
        // Rows chunk-major: (chunk 0, image 0), (chunk 0, image 1), (chunk 1, image 0), …
        let mut logits = vec![];
        let mut bbox_reg = vec![];
        let mut centerness = vec![];
        for l in 0..levels.len() {
            let get = |what: &str, c: usize| fx.tensor::<B::InnerBackend, 4>(&format!("chunk{c}.{what}{l}"), device);
            let get3 = |c: usize| fx.tensor::<B::InnerBackend, 3>(&format!("chunk{c}.logits{l}"), device);
            logits.push(Tensor::cat((0..chunks.len()).map(get3).collect(), 0));
            bbox_reg.push(Tensor::cat((0..chunks.len()).map(|c| get("reg", c)).collect(), 0));
            centerness.push(Tensor::cat((0..chunks.len()).map(|c| get("ctr", c)).collect(), 0));
        }
        let out = GlipOutput { logits, bbox_reg, centerness, sizes: levels };
        let mut phrases = vec![];
        let mut image_of_row = vec![];
        for chunk in chunks {
            let mut row: Vec<PhraseTokens> = chunk.as_object().unwrap().iter().map(|(label, tokens)| PhraseTokens {
                class: label.parse::<usize>().unwrap() - 1,
                tokens: tokens.as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as usize).collect(),
            }).collect();
            row.sort_by_key(|p| p.class);
            for image in 0..2 {
                phrases.push(row.clone());
                image_of_row.push(image);
            }
        }
        let sizes: Vec<(usize, usize)> = p["sizes"].as_array().unwrap().iter()
            .map(|s| (s[0].as_u64().unwrap() as usize, s[1].as_u64().unwrap() as usize)).collect();
        let geometry = GlipConfig::glip_t().geometry();
        let dets = glip_detect(&out, &phrases, &image_of_row, &sizes, &GlipTestConfig::default(), &geometry).unwrap();
        let (mut worst_box, mut worst_score) = (0.0f32, 0.0f32);
        for (i, (d, want)) in dets.iter().zip(p["detections"].as_array().unwrap()).enumerate() {
            let (h, w) = sizes[i];
            let o = &p["originals"][i];
            let (oh, ow) = (o[0].as_u64().unwrap() as f32, o[1].as_u64().unwrap() as f32);
            let (sx, sy) = (ow / w as f32, oh / h as f32);
            let labels: Vec<usize> = want["labels"].as_array().unwrap().iter().map(|l| l.as_u64().unwrap() as usize - 1).collect();
            assert_eq!(d.classes, labels, "image {i}: labels (in order)");
            for (k, (b, wb)) in d.boxes.iter().zip(want["boxes"].as_array().unwrap()).enumerate() {
                let got = [b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy];
                for (g, e) in got.iter().zip(f32s(wb)) {
                    worst_box = worst_box.max((g - e).abs());
                    assert!((g - e).abs() < 1e-2, "image {i} detection {k}: {got:?} vs {wb}");
                }
            }
            for (g, e) in d.scores.iter().zip(f32s(&want["scores"])) {
                worst_score = worst_score.max((g - e).abs());
                assert!((g - e).abs() < 1e-5, "image {i}: score {g} vs {e}");
            }
        }
        eprintln!("glip post-processing vs official: {} + {} detections, max |box diff| {worst_box:.2e}, max |score diff| {worst_score:.2e}",
            dets[0].scores.len(), dets[1].scores.len());
    }
}
