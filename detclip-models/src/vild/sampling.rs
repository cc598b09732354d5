//! Host-side target assignment of the two stages: torchvision's `Matcher` and
//! `BalancedPositiveNegativeSampler`, with a small seeded generator so that a training step
//! is reproducible.

/// An xyxy box on the host.
pub type HostBox = [f32; 4];

/// IoU of two xyxy boxes (0 when both are empty).
pub fn host_iou(a: &HostBox, b: &HostBox) -> f32 {
    let area = |r: &HostBox| (r[2] - r[0]).max(0.0) * (r[3] - r[1]).max(0.0);
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = w * h;
    let union = area(a) + area(b) - inter;
    if union > 0.0 { inter / union } else { 0.0 }
}

/// What the matcher decided for one candidate box.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Match {
    /// IoU ≥ the foreground threshold with this ground-truth box.
    Foreground(usize),
    /// IoU < the background threshold with every ground-truth box.
    Background,
    /// In between: not sampled.
    Ignored,
}

/// torchvision's `Matcher`: each candidate goes to its highest-IoU ground-truth box;
/// foreground when that IoU is `≥ fg`, background when `< bg`, ignored in between. With
/// `allow_low_quality`, every ground-truth box also keeps the candidates of its own highest
/// IoU as foreground (the RPN's rule, so that no object is left without an anchor).
pub fn match_boxes(
    candidates: &[HostBox],
    gt: &[HostBox],
    fg: f32,
    bg: f32,
    allow_low_quality: bool,
) -> Vec<Match> {
    if gt.is_empty() {
        return vec![Match::Background; candidates.len()];
    }
    let ious: Vec<Vec<f32>> = candidates
        .iter()
        .map(|c| gt.iter().map(|g| host_iou(c, g)).collect())
        .collect();
    let best: Vec<(usize, f32)> = ious
        .iter()
        .map(|row| {
            row.iter()
                .enumerate()
                .fold(
                    (0, f32::NEG_INFINITY),
                    |acc, (j, &v)| if v > acc.1 { (j, v) } else { acc },
                )
        })
        .collect();
    let mut out: Vec<Match> = best
        .iter()
        .map(|&(j, v)| {
            if v >= fg {
                Match::Foreground(j)
            } else if v < bg {
                Match::Background
            } else {
                Match::Ignored
            }
        })
        .collect();
    if allow_low_quality {
        for j in 0..gt.len() {
            let top = ious.iter().map(|r| r[j]).fold(f32::NEG_INFINITY, f32::max);
            if top <= 0.0 {
                continue; // overlaps nothing: torchvision would mark every non-overlap
            }
            for (i, row) in ious.iter().enumerate() {
                if row[j] == top {
                    out[i] = Match::Foreground(best[i].0);
                }
            }
        }
    }
    out
}

/// A small seeded generator (SplitMix64) for the samplers: reproducible, no global state.
#[derive(Debug, Clone)]
pub struct SampleRng(u64);

impl SampleRng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// `k` distinct elements of `items` in random order (all of them when `k ≥ len`).
    pub fn choose(&mut self, mut items: Vec<usize>, k: usize) -> Vec<usize> {
        let k = k.min(items.len());
        for i in 0..k {
            let j = i + (self.next_u64() % (items.len() - i) as u64) as usize;
            items.swap(i, j);
        }
        items.truncate(k);
        items
    }
}

/// torchvision's `BalancedPositiveNegativeSampler`: at most `batch · positive_fraction`
/// foreground candidates, background ones to fill the batch. Returns the indices of the
/// sampled foreground and background candidates.
pub fn sample_balanced(
    matches: &[Match],
    batch: usize,
    positive_fraction: f32,
    rng: &mut SampleRng,
) -> (Vec<usize>, Vec<usize>) {
    let pos: Vec<usize> = (0..matches.len())
        .filter(|&i| matches!(matches[i], Match::Foreground(_)))
        .collect();
    let neg: Vec<usize> = (0..matches.len())
        .filter(|&i| matches[i] == Match::Background)
        .collect();
    let num_pos = ((batch as f32 * positive_fraction) as usize).min(pos.len());
    let num_neg = (batch - num_pos).min(neg.len());
    (rng.choose(pos, num_pos), rng.choose(neg, num_neg))
}
