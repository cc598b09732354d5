//! What does a `glip` checkpoint's grounding follow? Prompts the vocabulary in `R` random
//! orders (seeded; every name in every prompt) and splits what GLIP computes into the parts
//! that follow the **word**, its **prompt position**, the **previous** and the **next** name
//! (its context), and the **image**:
//!
//! - the word features at each stage of the language side (BERT's output, then after each
//!   X-MHA and each fused BERT layer, [`Glip::word_stages`]) and the unit-length projected
//!   tokens and per-token bias the head aligns regions with: per stage, the share of the total
//!   variance (first token of each name, over images × prompts × names) explained by each
//!   factor's means (main effects; the factors are nearly balanced, not exactly orthogonal);
//! - the region features at each ground-truth box's centre, from the FPN (the image side
//!   alone) and from the fused pyramid the head reads: leave-one-out nearest-class-mean
//!   accuracy over the box's concept (do they tell the concepts apart at all?);
//! - the alignment logits on each box (per token, the best anchor inside the box's central
//!   half): the same shares, and per word the AUC of its mean logit for its own boxes against
//!   the other boxes (the ranking a class's AP measures; 0.5 is chance).
//!
//! ```sh
//! cargo run --release -p detclip-train --example glip_probe -- runs/glip/checkpoint.bin [IMAGES] [PROMPTS]
//! ```
// Prompt r, position j and word w index several tables at once; indices read clearer.
#![allow(clippy::needless_range_loop)]
use burn::backend::NdArray;
use burn::prelude::*;
use detclip_core::data::prompt::PromptFormat;
use detclip_core::data::{Loaded, Orientation, collate};
use detclip_models::glip::described_prompts;
use detclip_models::tokenizer::{Overflow, TokenizedText, batch_tensors};
use detclip_train::evaluate::EvalSet;
use detclip_train::learner::load_trained;
use detclip_train::recipe::Recipe;
use detclip_train::recipes::GlipRecipe;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

type B = NdArray;

/// Factors of one observation: image, word, position, previous name, next name (`k` stands
/// for the prompt's start or end).
const FACTORS: [&str; 5] = ["image", "word", "pos", "prev", "next"];

struct Obs {
    f: [usize; 5],
    v: Vec<f32>,
}

fn to_vec<const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec::<f32>().unwrap()
}

/// The share of the total sum of squares explained by each factor's level means.
fn shares(obs: &[Obs]) -> [f64; 5] {
    let d = obs[0].v.len();
    let n = obs.len() as f64;
    let mut grand = vec![0f64; d];
    for o in obs {
        grand
            .iter_mut()
            .zip(&o.v)
            .for_each(|(g, &x)| *g += x as f64 / n);
    }
    let total: f64 = obs
        .iter()
        .map(|o| {
            o.v.iter()
                .zip(&grand)
                .map(|(&x, g)| (x as f64 - g).powi(2))
                .sum::<f64>()
        })
        .sum();
    let mut out = [0f64; 5];
    for (f, share) in out.iter_mut().enumerate() {
        let levels = obs.iter().map(|o| o.f[f]).max().unwrap_or(0) + 1;
        let mut sums = vec![vec![0f64; d]; levels];
        let mut counts = vec![0usize; levels];
        for o in obs {
            counts[o.f[f]] += 1;
            sums[o.f[f]]
                .iter_mut()
                .zip(&o.v)
                .for_each(|(s, &x)| *s += x as f64);
        }
        let ss: f64 = sums
            .iter()
            .zip(&counts)
            .filter(|(_, c)| **c > 0)
            .map(|(s, &c)| {
                s.iter()
                    .zip(&grand)
                    .map(|(x, g)| (x / c as f64 - g).powi(2))
                    .sum::<f64>()
                    * c as f64
            })
            .sum();
        *share = ss / total.max(1e-30);
    }
    out
}

fn print_shares(name: &str, obs: &[Obs]) {
    let s = shares(obs);
    print!("{name:>30}");
    for x in s {
        print!(" {x:>6.3}");
    }
    println!();
}

/// Area under the ROC curve of `pos` scores against `neg` scores.
fn auc(pos: &[f64], neg: &[f64]) -> f64 {
    let mut wins = 0f64;
    for p in pos {
        for n in neg {
            wins += if p > n {
                1.0
            } else if p == n {
                0.5
            } else {
                0.0
            };
        }
    }
    wins / (pos.len() * neg.len()).max(1) as f64
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let path = args
        .first()
        .expect("usage: glip_probe CHECKPOINT [IMAGES] [PROMPTS]");
    let max: usize = args
        .get(1)
        .map_or(60, |a| a.parse().expect("IMAGES is a count"));
    let device = Default::default();
    let (recipe, model) = load_trained::<GlipRecipe, B>(path.as_ref(), &device).unwrap();
    let set = EvalSet::of(&recipe)
        .unwrap()
        .expect("the recipe has an evaluation set");
    let samples = &set.samples[..set.samples.len().min(max)];
    let vocab = set.vocabulary.clone();
    let k = vocab.len();
    let r_count: usize = args
        .get(2)
        .map_or(3 * k, |a| a.parse().expect("PROMPTS is a count"));
    let tokenizer = recipe.tokenizer(Overflow::Error).unwrap();
    // orders[r][j]: the word at position j of prompt r.
    let mut rng = StdRng::seed_from_u64(17);
    let orders: Vec<Vec<usize>> = (0..r_count)
        .map(|_| {
            let mut o: Vec<usize> = (0..k).collect();
            o.shuffle(&mut rng);
            o
        })
        .collect();
    let mut encoded: Vec<TokenizedText> = Vec::new();
    // token[r][j]: the first token of the name at position j of prompt r.
    let mut token: Vec<Vec<usize>> = Vec::new();
    for order in &orders {
        let names: Vec<&str> = order.iter().map(|&w| vocab[w].as_str()).collect();
        let p = described_prompts(
            &names,
            &Default::default(),
            &PromptFormat::default(),
            recipe.text.max_tokens,
            |t| {
                tokenizer.encode(t).map_or(usize::MAX, |e| {
                    e.attention_mask.iter().filter(|&&m| m == 1).count()
                })
            },
        )
        .unwrap();
        assert_eq!(p.len(), 1, "the vocabulary does not fit one prompt");
        let e = tokenizer.encode(&p[0].text).unwrap();
        token.push(
            p[0].entries
                .iter()
                .map(|en| e.tokens_for_span(en.span).unwrap().start)
                .collect(),
        );
        encoded.push(e);
    }
    let factors = |i: usize, r: usize, j: usize| {
        let o = &orders[r];
        [
            i,
            o[j],
            j,
            if j == 0 { k } else { o[j - 1] },
            o.get(j + 1).copied().unwrap_or(k),
        ]
    };
    let transform = recipe.test_transform();
    let divisor = recipe.data().size_divisor;
    let head = &model.glip.head;
    let mut stages_obs: Vec<Vec<Obs>> = Vec::new();
    // Per box: its word, and (factors, logit) per prompt and position.
    let mut boxes_obs: Vec<(usize, Vec<Obs>)> = Vec::new();
    // (word, FPN feature, fused feature) at each box's centre.
    let mut regions: Vec<(usize, Vec<f32>, Vec<f32>)> = Vec::new();
    for (i, s) in samples.iter().enumerate() {
        let prepared = transform.apply(Loaded::load(s.clone(), Orientation::Apply).unwrap());
        let batch = collate::<B>(vec![prepared], divisor, &device).unwrap();
        let image_levels = model.glip.image_features(batch.images.clone()).unwrap();
        let levels: Vec<Tensor<B, 4>> = image_levels
            .iter()
            .map(|l| l.clone().repeat_dim(0, r_count))
            .collect();
        let (ids, mask) = batch_tensors::<B>(&encoded, &device).unwrap();
        let traced = model
            .glip
            .word_stages(levels.clone(), ids.clone(), mask.clone())
            .unwrap();
        let mut stages = traced.words;
        let img_h = batch.images.dims()[2] as f32;
        let boxes = to_vec(batch.boxes[0].clone());
        let sample = &batch.samples[0];
        let own_of = |bi: usize| {
            sample.instances[bi]
                .concepts
                .first()
                .and_then(|&c| vocab.iter().position(|v| *v == sample.concepts[c].name))
        };
        // Region features at each box's centre, on the level whose anchors fit it best.
        let fpn: Vec<Vec<f32>> = image_levels.into_iter().map(to_vec).collect();
        let fused: Vec<Vec<f32>> = traced
            .levels
            .iter()
            .map(|l| to_vec(l.clone().narrow(0, 0, 1)))
            .collect();
        for bi in 0..sample.instances.len() {
            let Some(own) = own_of(bi) else { continue };
            let b = &boxes[bi * 4..bi * 4 + 4];
            let side = (b[2] - b[0]).max(b[3] - b[1]);
            let fit = |l: usize| {
                let stride = img_h / levels[l].dims()[2] as f32;
                (side / (recipe.model.anchor_scale * stride)).ln().abs()
            };
            let lev = (0..levels.len())
                .min_by(|&a, &c| fit(a).total_cmp(&fit(c)))
                .unwrap();
            let [_, ch, h, w] = levels[lev].dims();
            let stride = img_h / h as f32;
            let x = ((((b[0] + b[2]) / 2.0) / stride) as usize).min(w - 1);
            let y = ((((b[1] + b[3]) / 2.0) / stride) as usize).min(h - 1);
            let at =
                |v: &[f32]| -> Vec<f32> { (0..ch).map(|c| v[c * h * w + y * w + x]).collect() };
            regions.push((own, at(&fpn[lev]), at(&fused[lev])));
        }
        // What the head aligns with: unit-length projected tokens, and the per-token bias.
        let last = stages.last().unwrap().clone();
        let unit = last.clone() / last.powi_scalar(2).sum_dim(2).sqrt().clamp_min(1e-12);
        let projected = head.dot_product_projection_text.forward(unit.clone() / 2.0);
        let [n, t, _] = unit.dims();
        let bias = unit
            .matmul(head.bias_lang.val().reshape([1, -1, 1]))
            .reshape([n, t, 1]);
        stages.push(projected);
        stages.push(bias);
        if stages_obs.is_empty() {
            stages_obs = (0..stages.len()).map(|_| Vec::new()).collect();
        }
        for (st, obs) in stages.into_iter().zip(stages_obs.iter_mut()) {
            let [_, t, d] = st.dims();
            let v = to_vec(st);
            for r in 0..r_count {
                for (j, &tok) in token[r].iter().enumerate() {
                    let o = (r * t + tok) * d;
                    obs.push(Obs {
                        f: factors(i, r, j),
                        v: v[o..o + d].to_vec(),
                    });
                }
            }
        }
        // Alignment logits on the ground-truth boxes.
        let out = model
            .glip
            .forward_features(levels, ids, mask, Some(model.prompt.val()))
            .unwrap();
        let logits: Vec<Vec<f32>> = out.logits.into_iter().map(to_vec).collect();
        for bi in 0..sample.instances.len() {
            let Some(own) = own_of(bi) else { continue };
            let b = &boxes[bi * 4..bi * 4 + 4];
            let (cx, cy) = ((b[0] + b[2]) / 2.0, (b[1] + b[3]) / 2.0);
            let (hw, hh) = ((b[2] - b[0]) / 4.0, (b[3] - b[1]) / 4.0);
            let mut best = vec![vec![f32::NEG_INFINITY; k]; r_count];
            for (lg, &[h, w]) in logits.iter().zip(&out.sizes) {
                let st = img_h / h as f32;
                for y in 0..h {
                    for x in 0..w {
                        let (ax, ay) = ((x as f32 + 0.5) * st, (y as f32 + 0.5) * st);
                        if (ax - cx).abs() > hw.max(st / 2.0) || (ay - cy).abs() > hh.max(st / 2.0)
                        {
                            continue;
                        }
                        for (r, row) in best.iter_mut().enumerate() {
                            for (j, b) in row.iter_mut().enumerate() {
                                let v = lg[(r * h * w + y * w + x) * t + token[r][j]];
                                *b = b.max(v);
                            }
                        }
                    }
                }
            }
            let obs: Vec<Obs> = (0..r_count)
                .flat_map(|r| (0..k).map(move |j| (r, j)))
                .map(|(r, j)| Obs {
                    f: factors(boxes_obs.len(), r, j),
                    v: vec![best[r][j]],
                })
                .collect();
            if obs.iter().all(|o| o.v[0].is_finite()) {
                boxes_obs.push((own, obs));
            }
        }
    }

    println!(
        "{} images, {} names, {r_count} prompts in random orders; vocabulary {vocab:?}",
        samples.len(),
        k
    );
    println!("\nshare of variance of the word features (first token of each name)");
    print!("{:>30}", "stage");
    for f in FACTORS {
        print!(" {f:>6}");
    }
    println!();
    let layers = (stages_obs.len() - 3) / 2;
    let mut names = vec!["BERT output".to_string()];
    for l in 0..layers {
        names.push(format!("layer {l}: after X-MHA"));
        names.push(format!("layer {l}: after BERT layer"));
    }
    names.push("head: projected unit tokens".into());
    names.push("head: per-token bias".into());
    for (name, obs) in names.iter().zip(&stages_obs) {
        print_shares(name, obs);
    }

    // Logits on the boxes: shares within each box (the image factor is the box here).
    let all: Vec<Obs> = boxes_obs
        .iter()
        .flat_map(|(_, o)| {
            o.iter().map(|x| Obs {
                f: x.f,
                v: x.v.clone(),
            })
        })
        .collect();
    println!(
        "\nalignment logits on {} ground-truth boxes (best anchor in each box's centre)",
        boxes_obs.len()
    );
    print!("{:>30}", "");
    for f in ["box", "word", "pos", "prev", "next"] {
        print!(" {f:>6}");
    }
    println!();
    print_shares("share of variance", &all);
    // Interaction that matters: does a word score higher on its own boxes?
    println!("\nper word: AUC of its mean logit (over prompts), its boxes against the others");
    let mean_of = |obs: &[Obs], w: usize| {
        let v: Vec<f64> = obs
            .iter()
            .filter(|o| o.f[1] == w)
            .map(|o| o.v[0] as f64)
            .collect();
        v.iter().sum::<f64>() / v.len().max(1) as f64
    };
    let mut own_best = 0;
    for (own, obs) in &boxes_obs {
        let best = (0..k)
            .max_by(|&a, &b| mean_of(obs, a).total_cmp(&mean_of(obs, b)))
            .unwrap();
        own_best += usize::from(best == *own);
    }
    for w in 0..k {
        let pos: Vec<f64> = boxes_obs
            .iter()
            .filter(|b| b.0 == w)
            .map(|b| mean_of(&b.1, w))
            .collect();
        let neg: Vec<f64> = boxes_obs
            .iter()
            .filter(|b| b.0 != w)
            .map(|b| mean_of(&b.1, w))
            .collect();
        if !pos.is_empty() && !neg.is_empty() {
            println!(
                "{:>30} {:.3} ({} boxes)",
                vocab[w],
                auc(&pos, &neg),
                pos.len()
            );
        }
    }
    println!(
        "own word has the highest mean logit on {own_best} of {} boxes (chance {:.0})",
        boxes_obs.len(),
        boxes_obs.len() as f64 / k as f64
    );

    // Do the region features tell the concepts apart? Leave-one-out nearest class mean.
    println!(
        "\nregion features at box centres: leave-one-out nearest-class-mean accuracy (cosine)"
    );
    for (name, fused) in [("FPN (image side)", false), ("fused (head input)", true)] {
        let feats: Vec<(usize, Vec<f32>)> = regions
            .iter()
            .map(|r| {
                let mut v = if fused { r.2.clone() } else { r.1.clone() };
                let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
                v.iter_mut().for_each(|x| *x /= n);
                (r.0, v)
            })
            .collect();
        let d = feats.first().map_or(0, |f| f.1.len());
        let mut sums = vec![vec![0f32; d]; k];
        let mut counts = vec![0usize; k];
        for (w, v) in &feats {
            counts[*w] += 1;
            sums[*w].iter_mut().zip(v).for_each(|(s, x)| *s += x);
        }
        let mut right = 0;
        for (w, v) in &feats {
            let score = |c: usize| {
                let m: Vec<f32> = sums[c]
                    .iter()
                    .zip(v)
                    .map(|(s, x)| if c == *w { s - x } else { *s })
                    .collect();
                let n = m.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
                m.iter().zip(v).map(|(a, b)| a * b).sum::<f32>() / n
            };
            let best = (0..k)
                .filter(|&c| counts[c] > usize::from(c == *w))
                .max_by(|&a, &b| score(a).total_cmp(&score(b)))
                .unwrap();
            right += usize::from(best == *w);
        }
        println!(
            "{name:>30} {right}/{} (largest class {}, uniform guess {:.0})",
            feats.len(),
            counts.iter().max().copied().unwrap_or(0),
            feats.len() as f64 / k as f64
        );
    }
}
