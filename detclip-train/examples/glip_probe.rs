//! Word or position? For a `glip` checkpoint, prompts the vocabulary in every cyclic order
//! (a Latin square: each name at each prompt position once) and splits what GLIP computes
//! into a part that follows the **word**, a part that follows its **prompt position**, and a
//! part that follows the **image**:
//!
//! - the word features at each stage of the language side (BERT's output, then after each
//!   X-MHA and each fused BERT layer; [`Glip::word_stages`]) and the unit-length projected
//!   tokens and per-token bias the head aligns regions with: for each stage, the share of the
//!   variance (over images × names × positions, first token of each name) explained by the
//!   word, by the position and by the image (main effects of a three-way layout);
//! - the alignment logits on each ground-truth box (the best anchor inside the box's central
//!   half, per token): the spread of the box's mean logit over words and over positions,
//!   how often the box's own word has the highest mean logit, and how often its own word wins
//!   in a single prompt.
//!
//! ```sh
//! cargo run --release -p detclip-train --example glip_probe -- runs/glip/checkpoint.bin [IMAGES]
//! ```
// The Latin-square layout (prompt r, position j, word (r + j) mod k) reads clearer with indices.
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

type B = NdArray;

fn to_vec<const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec::<f32>().unwrap()
}

/// Shares of the total sum of squares of `x[i][w][p]` (vectors of width `d`) explained by
/// the main effects of `i` (image), `w` (word) and `p` (position).
fn shares(x: &[Vec<Vec<Vec<f32>>>]) -> (f64, f64, f64) {
    let (ni, nw, np) = (x.len(), x[0].len(), x[0][0].len());
    let d = x[0][0][0].len();
    let n = (ni * nw * np) as f64;
    let mut grand = vec![0f64; d];
    let mut by_i = vec![vec![0f64; d]; ni];
    let mut by_w = vec![vec![0f64; d]; nw];
    let mut by_p = vec![vec![0f64; d]; np];
    for (i, xi) in x.iter().enumerate() {
        for (w, xw) in xi.iter().enumerate() {
            for (p, v) in xw.iter().enumerate() {
                for (k, &e) in v.iter().enumerate() {
                    let e = e as f64;
                    grand[k] += e / n;
                    by_i[i][k] += e / (nw * np) as f64;
                    by_w[w][k] += e / (ni * np) as f64;
                    by_p[p][k] += e / (ni * nw) as f64;
                }
            }
        }
    }
    let mut total = 0f64;
    for xi in x {
        for xw in xi {
            for v in xw {
                total += v
                    .iter()
                    .zip(&grand)
                    .map(|(&e, g)| (e as f64 - g).powi(2))
                    .sum::<f64>();
            }
        }
    }
    let ss = |means: &[Vec<f64>], reps: usize| {
        means
            .iter()
            .map(|m| {
                m.iter()
                    .zip(&grand)
                    .map(|(a, g)| (a - g).powi(2))
                    .sum::<f64>()
            })
            .sum::<f64>()
            * reps as f64
            / total.max(1e-30)
    };
    (ss(&by_i, nw * np), ss(&by_w, ni * np), ss(&by_p, ni * nw))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let path = args.first().expect("usage: glip_probe CHECKPOINT [IMAGES]");
    let max: usize = args
        .get(1)
        .map_or(40, |a| a.parse().expect("IMAGES is a count"));
    let device = Default::default();
    let (recipe, model) = load_trained::<GlipRecipe, B>(path.as_ref(), &device).unwrap();
    let set = EvalSet::of(&recipe)
        .unwrap()
        .expect("the recipe has an evaluation set");
    let samples = &set.samples[..set.samples.len().min(max)];
    let vocab = set.vocabulary.clone();
    let k = vocab.len();
    let tokenizer = recipe.tokenizer(Overflow::Error).unwrap();
    // Prompt r lists vocab[(r + j) % k] at position j; one prompt must hold the vocabulary.
    let mut prompts = Vec::new();
    for r in 0..k {
        let names: Vec<String> = (0..k).map(|j| vocab[(r + j) % k].clone()).collect();
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
        prompts.push(p.into_iter().next().unwrap());
    }
    let encoded: Vec<TokenizedText> = prompts
        .iter()
        .map(|p| tokenizer.encode(&p.text).unwrap())
        .collect();
    // token[r][j]: the first token of the name at position j of prompt r.
    let token: Vec<Vec<usize>> = prompts
        .iter()
        .zip(&encoded)
        .map(|(p, e)| {
            p.entries
                .iter()
                .map(|en| e.tokens_for_span(en.span).unwrap().start)
                .collect()
        })
        .collect();
    println!("prompt 0: {:?}", prompts[0].text);
    let transform = recipe.test_transform();
    let divisor = recipe.data().size_divisor;
    let head = &model.glip.head;
    // feats[stage][image][word][position] -> vector
    let mut feats: Vec<Vec<Vec<Vec<Vec<f32>>>>> = Vec::new();
    // logits[box][word][position], own word per box
    let mut box_logits: Vec<(usize, Vec<Vec<f32>>)> = Vec::new();
    // (word, FPN feature, fused feature) at each box's centre
    let mut regions: Vec<(usize, Vec<f32>, Vec<f32>)> = Vec::new();
    for s in samples {
        let prepared = transform.apply(Loaded::load(s.clone(), Orientation::Apply).unwrap());
        let batch = collate::<B>(vec![prepared], divisor, &device).unwrap();
        let levels = model.glip.image_features(batch.images.clone()).unwrap();
        let rep = |l: &Tensor<B, 4>| l.clone().repeat_dim(0, k);
        let levels: Vec<Tensor<B, 4>> = levels.iter().map(rep).collect();
        let (ids, mask) = batch_tensors::<B>(&encoded, &device).unwrap();
        let traced = model
            .glip
            .word_stages(levels.clone(), ids.clone(), mask.clone())
            .unwrap();
        let (mut stages, fused) = (traced.words, traced.levels);
        // Region features at each box's centre, on the level whose anchors fit it best: from
        // the FPN (image side alone) and from the fused pyramid (what the head reads; prompt 0).
        {
            let img_h = batch.images.dims()[2] as f32;
            let boxes = to_vec(batch.boxes[0].clone());
            let fpn: Vec<Vec<f32>> = levels
                .iter()
                .map(|l| to_vec(l.clone().narrow(0, 0, 1)))
                .collect();
            let fus: Vec<Vec<f32>> = fused
                .iter()
                .map(|l| to_vec(l.clone().narrow(0, 0, 1)))
                .collect();
            for (bi, inst) in batch.samples[0].instances.iter().enumerate() {
                let Some(own) = inst.concepts.first().and_then(|&c| {
                    vocab
                        .iter()
                        .position(|v| *v == batch.samples[0].concepts[c].name)
                }) else {
                    continue;
                };
                let b = &boxes[bi * 4..bi * 4 + 4];
                let side = (b[2] - b[0]).max(b[3] - b[1]);
                let lev = (0..levels.len())
                    .min_by(|&a, &c| {
                        let fit = |l: usize| {
                            let stride = img_h / levels[l].dims()[2] as f32;
                            (side / (4.0 * stride)).ln().abs()
                        };
                        fit(a).total_cmp(&fit(c))
                    })
                    .unwrap();
                let [_, ch, h, w] = levels[lev].dims();
                let stride = img_h / h as f32;
                let x = ((((b[0] + b[2]) / 2.0) / stride) as usize).min(w - 1);
                let y = ((((b[1] + b[3]) / 2.0) / stride) as usize).min(h - 1);
                let at = |v: &Vec<f32>| {
                    (0..ch)
                        .map(|c| v[c * h * w + y * w + x])
                        .collect::<Vec<f32>>()
                };
                regions.push((own, at(&fpn[lev]), at(&fus[lev])));
            }
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
        if feats.is_empty() {
            feats = vec![Vec::new(); stages.len()];
        }
        for (st, f) in stages.into_iter().zip(feats.iter_mut()) {
            let [_, t, d] = st.dims();
            let v = to_vec(st);
            let mut per = vec![vec![Vec::new(); k]; k];
            for r in 0..k {
                for j in 0..k {
                    let w = (r + j) % k;
                    let o = (r * t + token[r][j]) * d;
                    per[w][j] = v[o..o + d].to_vec();
                }
            }
            f.push(per);
        }
        // Alignment logits on the ground-truth boxes.
        let out = model
            .glip
            .forward_features(levels, ids, mask, Some(model.prompt.val()))
            .unwrap();
        let img_h = batch.images.dims()[2] as f32;
        let strides: Vec<f32> = out.sizes.iter().map(|&[h, _]| img_h / h as f32).collect();
        let logits: Vec<Vec<f32>> = out.logits.into_iter().map(to_vec).collect();
        let boxes = to_vec(batch.boxes[0].clone());
        for (bi, inst) in batch.samples[0].instances.iter().enumerate() {
            let Some(&c) = inst.concepts.first() else {
                continue;
            };
            let Some(own) = vocab
                .iter()
                .position(|v| *v == batch.samples[0].concepts[c].name)
            else {
                continue;
            };
            let b = &boxes[bi * 4..bi * 4 + 4];
            let (cx, cy) = ((b[0] + b[2]) / 2.0, (b[1] + b[3]) / 2.0);
            let (hw, hh) = ((b[2] - b[0]) / 4.0, (b[3] - b[1]) / 4.0);
            let mut l = vec![vec![f32::NEG_INFINITY; k]; k];
            for (lev, (lg, &[h, w])) in logits.iter().zip(&out.sizes).enumerate() {
                let st = strides[lev];
                for y in 0..h {
                    for x in 0..w {
                        let (ax, ay) = ((x as f32 + 0.5) * st, (y as f32 + 0.5) * st);
                        if (ax - cx).abs() > hw.max(st / 2.0) || (ay - cy).abs() > hh.max(st / 2.0)
                        {
                            continue;
                        }
                        for r in 0..k {
                            for j in 0..k {
                                let w_ = (r + j) % k;
                                let v = lg[(r * h * w + y * w + x) * t + token[r][j]];
                                if v > l[w_][j] {
                                    l[w_][j] = v;
                                }
                            }
                        }
                    }
                }
            }
            if l[0][0].is_finite() {
                box_logits.push((own, l));
            }
        }
    }
    let names = {
        let mut v = vec!["BERT output".to_string()];
        for i in 0..(feats.len() - 3) / 2 {
            v.push(format!("layer {i}: after X-MHA"));
            v.push(format!("layer {i}: after BERT layer"));
        }
        v.push("head: projected unit tokens".into());
        v.push("head: per-token bias".into());
        v
    };
    println!(
        "\nshare of variance (images {}, names {k}, positions {k}; first token of each name)",
        samples.len()
    );
    println!(
        "{:>32} {:>7} {:>7} {:>7} {:>7}",
        "stage", "word", "pos", "image", "rest"
    );
    for (name, f) in names.iter().zip(&feats) {
        let (i, w, p) = shares(f);
        println!(
            "{name:>32} {w:>7.3} {p:>7.3} {i:>7.3} {:>7.3}",
            (1.0 - i - w - p).max(0.0)
        );
    }
    // Logits on the boxes.
    let nb = box_logits.len();
    // confusion[own][w]: boxes of `own` whose highest mean logit is word `w`.
    let mut confusion = vec![vec![0usize; k]; k];
    for (own, l) in &box_logits {
        let mean = |w: usize| l[w].iter().sum::<f32>();
        let best = (0..k).max_by(|&a, &b| mean(a).total_cmp(&mean(b))).unwrap();
        confusion[*own][best] += 1;
    }
    println!("\nbox's word (row) against the word with its highest mean logit (column)");
    println!("{:>16} {:?}", "", vocab);
    for (w, row) in confusion.iter().enumerate() {
        println!("{:>16} {row:?}", vocab[w]);
    }
    let (mut sw, mut sp, mut own_best, mut own_wins, mut margin) = (0f64, 0f64, 0, 0, 0f64);
    for (own, l) in &box_logits {
        let word_mean: Vec<f64> = (0..k)
            .map(|w| l[w].iter().map(|&v| v as f64).sum::<f64>() / k as f64)
            .collect();
        let pos_mean: Vec<f64> = (0..k)
            .map(|j| (0..k).map(|w| l[w][j] as f64).sum::<f64>() / k as f64)
            .collect();
        let g = word_mean.iter().sum::<f64>() / k as f64;
        sw += word_mean.iter().map(|m| (m - g).powi(2)).sum::<f64>() / k as f64;
        sp += pos_mean.iter().map(|m| (m - g).powi(2)).sum::<f64>() / k as f64;
        let best = (0..k)
            .max_by(|&a, &b| word_mean[a].total_cmp(&word_mean[b]))
            .unwrap();
        own_best += usize::from(best == *own);
        margin += word_mean[*own] - (g * k as f64 - word_mean[*own]) / (k - 1) as f64;
        for r in 0..k {
            // In prompt r, word w sits at position (w - r) mod k.
            let best = (0..k)
                .max_by(|&a, &b| l[a][(a + k - r) % k].total_cmp(&l[b][(b + k - r) % k]))
                .unwrap();
            own_wins += usize::from(best == *own);
        }
    }
    // Do the region features tell the shapes apart? Leave-one-out nearest class mean (cosine).
    println!("\nregion features at box centres: leave-one-out nearest-class-mean accuracy");
    for (name, pick) in [("FPN (image side)", 1usize), ("fused (head input)", 2)] {
        let feats: Vec<(usize, Vec<f32>)> = regions
            .iter()
            .map(|r| (r.0, if pick == 1 { r.1.clone() } else { r.2.clone() }))
            .map(|(w, mut v)| {
                let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
                v.iter_mut().for_each(|x| *x /= n);
                (w, v)
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
            let best = (0..k)
                .filter(|&c| counts[c] > usize::from(c == *w))
                .max_by(|&a, &b| {
                    let score = |c: usize| {
                        let m: Vec<f32> = sums[c]
                            .iter()
                            .zip(v)
                            .map(|(s, x)| if c == *w { s - x } else { *s })
                            .collect();
                        let n = m.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
                        m.iter().zip(v).map(|(a, b)| a * b).sum::<f32>() / n
                    };
                    score(a).total_cmp(&score(b))
                })
                .unwrap();
            right += usize::from(best == *w);
        }
        let most = counts.iter().max().copied().unwrap_or(0);
        println!("{name:>32} {right}/{} (majority class {most})", feats.len());
    }
    // Per word: how well its mean logit ranks its own boxes above other boxes (the ranking a
    // class's AP measures), as the area under the ROC curve (0.5: chance).
    println!("\nper word: AUC of its mean logit, its boxes against the other boxes");
    for w in 0..k {
        let score = |l: &Vec<Vec<f32>>| l[w].iter().sum::<f32>();
        let pos: Vec<f32> = box_logits
            .iter()
            .filter(|b| b.0 == w)
            .map(|b| score(&b.1))
            .collect();
        let neg: Vec<f32> = box_logits
            .iter()
            .filter(|b| b.0 != w)
            .map(|b| score(&b.1))
            .collect();
        if pos.is_empty() || neg.is_empty() {
            continue;
        }
        let wins: f64 = pos
            .iter()
            .flat_map(|p| {
                neg.iter().map(move |n| {
                    if p > n {
                        1.0
                    } else if p == n {
                        0.5
                    } else {
                        0.0
                    }
                })
            })
            .sum();
        println!(
            "{:>16} {:.3} ({} boxes)",
            vocab[w],
            wins / (pos.len() * neg.len()) as f64,
            pos.len()
        );
    }
    println!("\nalignment logits on {nb} ground-truth boxes (best anchor in the box's centre):");
    println!(
        "  spread over words (var of the mean logit per word)    {:.4}",
        sw / nb as f64
    );
    println!(
        "  spread over positions (var of the mean per position)  {:.4}",
        sp / nb as f64
    );
    println!(
        "  own word minus other words (mean logit)               {:.4}",
        margin / nb as f64
    );
    println!(
        "  own word has the highest mean logit                   {own_best}/{nb} (chance {:.0})",
        nb as f64 / k as f64
    );
    println!(
        "  own word wins within a prompt                         {own_wins}/{} (chance {:.0})",
        nb * k,
        nb as f64
    );
}
