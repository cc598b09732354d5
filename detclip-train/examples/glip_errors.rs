//! Per-class error analysis of a `glip` checkpoint on its recipe's evaluation set: for each
//! ground-truth box, the label of the best-scored detection that overlaps it (IoU ≥ 0.5), and
//! the score distributions of detections with the right label, a wrong label, and no object.
//! It separates "the boxes are not found" from "the boxes are found but named wrongly".
//! `--reverse` prompts the vocabulary in reverse order: labels that follow their words are
//! grounded by word, labels that stay at the same prompt positions are grounded by position.
//!
//! ```sh
//! cargo run --release -p detclip-train --example glip_errors -- runs/glip/checkpoint.bin [IMAGES] [--reverse]
//! ```
use burn::backend::NdArray;
use detclip_train::evaluate::{EvalSet, predict};
use detclip_train::learner::load_trained;
use detclip_train::recipe::Recipe;
use detclip_train::recipes::GlipRecipe;

fn iou(a: [f32; 4], b: [f32; 4]) -> f32 {
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let i = w * h;
    i / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - i)
}

fn main() {
    let (flags, args): (Vec<String>, Vec<String>) =
        std::env::args().skip(1).partition(|a| a.starts_with("--"));
    let reverse = flags.iter().any(|f| f == "--reverse");
    let path = args
        .first()
        .expect("usage: glip_errors CHECKPOINT [IMAGES] [--reverse]");
    let max: usize = args
        .get(1)
        .map_or(150, |a| a.parse().expect("IMAGES is a count"));
    let device = Default::default();
    let (recipe, model) = load_trained::<GlipRecipe, NdArray>(path.as_ref(), &device).unwrap();
    let set = EvalSet::of(&recipe)
        .unwrap()
        .expect("the recipe has an evaluation set");
    let n = set.samples.len().min(max);
    let samples = &set.samples[..n];
    let mut vocabulary = set.vocabulary.clone();
    if reverse {
        vocabulary.reverse();
    }
    let cx = recipe.context().unwrap();
    let dets = predict(&recipe, &cx, &model, samples, &vocabulary, 0.05, 4, &device).unwrap();
    let v = &vocabulary;
    let k = v.len();
    // For each GT: the label of the top-scoring detection with IoU >= 0.5.
    let mut confusion = vec![vec![0usize; k + 1]; k];
    // Detections by kind: score of matched-right, matched-wrong-label, unmatched.
    let (mut right, mut wrong, mut bg) = (Vec::new(), Vec::new(), Vec::new());
    for (s, d) in samples.iter().zip(&dets) {
        let gts: Vec<(usize, [f32; 4])> = s
            .instances
            .iter()
            .flat_map(|i| i.concepts.iter().map(move |&c| (c, i.bbox)))
            .filter_map(|(c, b)| {
                v.iter()
                    .position(|n| *n == s.concepts[c].name)
                    .map(|p| (p, b))
            })
            .collect();
        for &(g, b) in &gts {
            let best = d
                .iter()
                .filter(|x| iou(x.bbox, b) >= 0.5)
                .max_by(|a, b| a.score.total_cmp(&b.score));
            confusion[g][best.map_or(k, |x| x.label)] += 1;
        }
        for x in d {
            let m = gts
                .iter()
                .filter(|(_, b)| iou(x.bbox, *b) >= 0.5)
                .map(|(g, _)| *g)
                .collect::<Vec<_>>();
            if m.is_empty() {
                bg.push(x.score)
            } else if m.contains(&x.label) {
                right.push(x.score)
            } else {
                wrong.push(x.score)
            }
        }
    }
    println!("vocabulary {v:?}");
    println!("confusion (row: GT, col: top detection's label at IoU>=0.5, last col: none)");
    for (g, row) in confusion.iter().enumerate() {
        println!("{:>16} {:?}", v[g], row);
    }
    let stat = |name: &str, mut x: Vec<f32>| {
        x.sort_by(|a, b| b.total_cmp(a));
        let q = |p: f32| {
            x.get(((x.len() as f32) * p) as usize)
                .copied()
                .unwrap_or(f32::NAN)
        };
        let above = |t: f32| x.iter().filter(|&&s| s >= t).count();
        println!(
            "{name:>12}: n {:>6}  max {:.3} p10 {:.3} p50 {:.3}  ≥0.3: {} ≥0.5: {}",
            x.len(),
            x.first().copied().unwrap_or(f32::NAN),
            q(0.1),
            q(0.5),
            above(0.3),
            above(0.5)
        );
    };
    stat("right label", right);
    stat("wrong label", wrong);
    stat("background", bg);
}
