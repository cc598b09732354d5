//! The joint sampler: sources drawn in their configured proportions, each batch at its own
//! size and resolution, deterministic by seed.

use detclip_core::data::SourceKind;
use detclip_train::data::{DatasetConfig, JointSampler, Source, SourceConfig, SyntheticConfig};

fn source(name: &str, kind: SourceKind, batch: usize, short: u32, weight: f64) -> SourceConfig {
    SourceConfig {
        name: name.into(),
        dataset: DatasetConfig::Synthetic(SyntheticConfig::new(7, 6, (64, 64), (2, 16), kind)),
        batch_size: batch,
        short_sides: vec![short],
        max_long: None,
        weight,
        flip_prob: 0.5,
    }
}

fn sampler(seed: u64) -> JointSampler {
    let sources = [
        source("det", SourceKind::Detection, 3, 64, 3.0),
        source("grounding", SourceKind::Grounding, 2, 96, 1.0),
        source("pairs", SourceKind::ImageText, 1, 128, 1.0),
    ]
    .iter()
    .map(|c| Source::load(c).unwrap())
    .collect();
    JointSampler::new(sources, seed, 32)
}

#[test]
fn sources_are_drawn_in_proportion() {
    let s = sampler(1);
    let n = 3000u64;
    let mut counts = [0usize; 3];
    for step in 0..n {
        counts[s.source_at(step)] += 1;
    }
    let expected = [0.6, 0.2, 0.2];
    for (c, e) in counts.iter().zip(expected) {
        let f = *c as f64 / n as f64;
        assert!(
            (f - e).abs() < 0.03,
            "counts {counts:?}, expected {expected:?}"
        );
    }
}

backend_test! {
    fn each_source_has_its_own_batch_shape<B>(device) {
        let mut s = sampler(2);
        // Square 64-pixel images: the short side is the source's resolution, padded to /32.
        let shape = [(3, 64), (2, 96), (1, 128)];
        let mut seen = [false; 3];
        for _ in 0..30 {
            let drawn = s.next_batch::<B::InnerBackend>(device).unwrap();
            let [n, c, h, w] = drawn.batch.images.dims();
            let (size, side) = shape[drawn.source];
            assert_eq!((n, c, h, w), (size, 3, side, side), "source {}", drawn.source);
            let kind = [SourceKind::Detection, SourceKind::Grounding, SourceKind::ImageText];
            assert!(drawn.batch.samples.iter().all(|x| x.kind == kind[drawn.source]));
            seen[drawn.source] = true;
        }
        assert_eq!(seen, [true; 3]);
        assert_eq!(s.state().step, 30);
    }
}

backend_test! {
    fn a_restored_sampler_draws_the_same_batches<B>(device) {
        let mut a = sampler(3);
        for _ in 0..7 {
            a.next_batch::<B::InnerBackend>(device).unwrap();
        }
        let mut b = sampler(3);
        b.restore(a.state().clone()).unwrap();
        for _ in 0..5 {
            let (x, y) = (
                a.next_batch::<B::InnerBackend>(device).unwrap(),
                b.next_batch::<B::InnerBackend>(device).unwrap(),
            );
            assert_eq!(x.source, y.source);
            let keys = |d: &detclip_train::data::Drawn<B::InnerBackend>| {
                d.batch.samples.iter().map(|s| s.key.clone()).collect::<Vec<_>>()
            };
            assert_eq!(keys(&x), keys(&y));
            assert_eq!(
                x.batch.images.into_data().to_vec::<f32>().unwrap(),
                y.batch.images.into_data().to_vec::<f32>().unwrap()
            );
        }
    }
}
