//! This suite's view of [`detclip_core::testing`], plus what the learner tests share.

#![allow(dead_code, unused_imports)]

pub use detclip_core::testing::*;

use burn::module::{Module, ModuleVisitor, Param};
use burn::prelude::*;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};

/// Model initialisation draws from the backend's global generator: tests that compare runs
/// hold this lock so that no other test draws in between the seed and the build.
pub fn init_lock() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `f` holding [`init_lock`]: every call that seeds or draws from the backend's global
/// RNG (training, building or loading a model) must, or a test that compares initial weights
/// sees another test's draws.
pub fn locked<T>(f: impl FnOnce() -> T) -> T {
    let _g = init_lock();
    f()
}

/// A fresh, empty scratch folder for one test.
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("detclip-train-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch folder");
    dir
}

/// A module built under [`init_lock`] must be materialised inside it: Burn draws lazily
/// initialised parameters at first use, which would fall outside the lock, in the middle of
/// another test's seeded build.
pub use detclip_train::learner::materialised;

/// Every float of a module, in visiting order.
pub struct Collect(pub Vec<f32>);

impl<B: Backend> ModuleVisitor<B> for Collect {
    fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<B, D>>) {
        self.0.extend(
            p.val()
                .into_data()
                .convert::<f32>()
                .to_vec::<f32>()
                .expect("f32 parameters"),
        );
    }
}

/// Every float of a module, in visiting order.
pub fn floats<B: Backend, M: Module<B>>(m: &M) -> Vec<f32> {
    let mut c = Collect(Vec::new());
    m.visit(&mut c);
    c.0
}

/// Run options for tests: no progress bar, no evaluation.
pub fn quiet(out: &std::path::Path) -> detclip_train::learner::RunOptions {
    let mut o = detclip_train::learner::RunOptions::new(out);
    o.progress = false;
    o.evaluate = false;
    o
}

/// IoU of two xyxy boxes (continuous convention).
pub fn iou(a: [f32; 4], b: [f32; 4]) -> f32 {
    let inter =
        (a[2].min(b[2]) - a[0].max(b[0])).max(0.0) * (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let area = |x: [f32; 4]| (x[2] - x[0]) * (x[3] - x[1]);
    inter / (area(a) + area(b) - inter)
}

/// How many of a reference's detections ours match, and how closely.
#[derive(Debug, Clone, Copy)]
pub struct Matched {
    /// Reference detections with a match.
    pub count: usize,
    /// The lowest IoU of a match.
    pub worst_iou: f32,
    /// The largest |score difference| of a match.
    pub worst_score: f32,
}

/// A COCO photo of the shared data as a sample (EXIF orientation applied).
pub fn photo_sample(data: &std::path::Path, file: &str) -> detclip_core::data::Sample {
    use detclip_core::data::{ImageSource, Orientation, Sample, image_size};
    let path = data.join("images/coco2017").join(file);
    let (w, h) = image_size(&path, Orientation::Apply).unwrap();
    Sample::new(file, ImageSource::File(path), w, h)
}

/// Greedy matching in the reference's order (descending score): each detection of the
/// reference's image record `img` (`boxes`, `scores`, `labels`) takes the unused one of `ours`
/// with the same label (`label_of(our vocabulary index)`) and the best IoU, when that IoU is
/// ≥ 0.999 and the scores differ by ≤ 1e-3. Returns the match and the reference's count.
pub fn match_reference(
    ours: &[detclip_train::recipe::Detected],
    img: &serde_json::Value,
    label_of: impl Fn(usize) -> u64,
) -> (Matched, usize) {
    let floats = |v: &serde_json::Value| -> Vec<f32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect()
    };
    let boxes: Vec<Vec<f32>> = img["boxes"]
        .as_array()
        .unwrap()
        .iter()
        .map(floats)
        .collect();
    let scores = floats(&img["scores"]);
    let labels: Vec<u64> = img["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect();
    let mut used = vec![false; ours.len()];
    let mut m = Matched {
        count: 0,
        worst_iou: 1.0,
        worst_score: 0.0,
    };
    for k in 0..boxes.len() {
        let b = [boxes[k][0], boxes[k][1], boxes[k][2], boxes[k][3]];
        let best = (0..ours.len())
            .filter(|&j| !used[j] && label_of(ours[j].label) == labels[k])
            .max_by(|&x, &y| iou(ours[x].bbox, b).total_cmp(&iou(ours[y].bbox, b)));
        if let Some(j) = best {
            let v = iou(ours[j].bbox, b);
            let d = (ours[j].score - scores[k]).abs();
            if v >= 0.999 && d <= 1e-3 {
                used[j] = true;
                m.count += 1;
                m.worst_iou = m.worst_iou.min(v);
                m.worst_score = m.worst_score.max(d);
            }
        }
    }
    (m, boxes.len())
}
