//! `detclip vild precompute`: shards are whole or absent, an interrupted run resumes without
//! losing or duplicating a proposal, and the result equals the uninterrupted run.

use detclip_core::data::sample::SourceKind;
use detclip_core::data::synthetic::Split;
use detclip_models::clip::ClipVisionConfig;
use detclip_models::vild::VildConfig;
use detclip_train::data::SyntheticConfig;
use detclip_train::vild::{PrecomputeOptions, crop_window, load_teachers, precompute, shard_path};

use crate::harness::{locked, materialised, scratch};

#[test]
fn crop_windows_scale_around_the_centre_and_stay_inside() {
    assert_eq!(
        crop_window(&[10.0, 20.0, 30.0, 40.0], 1.0, 100, 100),
        (10, 20, 20, 20)
    );
    assert_eq!(
        crop_window(&[10.0, 20.0, 30.0, 40.0], 1.5, 100, 100),
        (5, 15, 30, 30)
    );
    assert_eq!(
        crop_window(&[0.0, 0.0, 100.0, 50.0], 1.5, 100, 60),
        (0, 0, 100, 60)
    );
    assert_eq!(
        crop_window(&[99.5, 59.5, 99.5, 59.5], 1.0, 100, 60),
        (99, 59, 1, 1),
        "an empty box still gives a pixel"
    );
}

backend_test! {
    fn vild_precompute_resumes_without_losing_or_duplicating_proposals<B>(device) {
        type I<B> = <B as burn::tensor::backend::AutodiffBackend>::InnerBackend;
        let (detector, clip) = locked(|| {
            let detector = materialised(VildConfig::tiny(16).init::<I<B>>(device).unwrap());
            let clip = ClipVisionConfig::new()
                .with_image_size(32)
                .with_patch_size(8)
                .with_width(32)
                .with_layers(1)
                .with_heads(4)
                .with_mlp_width(64)
                .with_embed_dim(16)
                .init::<I<B>>(device);
            (detector, materialised(clip))
        });
        let samples = SyntheticConfig::new(3, 5, (64, 96), (3, 12), SourceKind::Detection)
        .samples(Split::Train)
        .unwrap();
        let options = PrecomputeOptions {
            proposals: 7,
            shard_size: 2,
            short_side: 64,
            max_long: Some(96),
            crop_size: 32,
            ..Default::default()
        };
        // Uninterrupted.
        let whole = scratch("vild-precompute-whole");
        let report = precompute(&detector, &clip, &samples, &whole, &options, device).unwrap();
        assert_eq!((report.shards, report.written, report.skipped, report.complete), (3, 3, 0, true));
        assert_eq!(report.crops, 5 * 7 * 2, "every image has M proposals, each cropped twice");

        // Interrupted after one shard, then after another, and a half-written temporary file
        // and a damaged shard left behind: the next run redoes exactly what is missing.
        let resumed = scratch("vild-precompute-resumed");
        let stop_after_one = PrecomputeOptions { max_shards: Some(1), ..options.clone() };
        let r = precompute(&detector, &clip, &samples, &resumed, &stop_after_one, device).unwrap();
        assert_eq!((r.written, r.skipped, r.complete), (1, 0, false));
        assert!(shard_path(&resumed, 0).exists() && !shard_path(&resumed, 1).exists());
        let r = precompute(&detector, &clip, &samples, &resumed, &stop_after_one, device).unwrap();
        assert_eq!((r.written, r.skipped, r.complete), (1, 1, false));
        std::fs::write(shard_path(&resumed, 2).with_extension("vild.tmp"), b"VILDPRE1 half").unwrap();
        let second = std::fs::read(shard_path(&resumed, 1)).unwrap();
        std::fs::write(shard_path(&resumed, 1), &second[..second.len() - 9]).unwrap();
        assert!(load_teachers(&resumed).is_err(), "a damaged shard is refused on reading");
        let r = precompute(&detector, &clip, &samples, &resumed, &options, device).unwrap();
        assert_eq!((r.written, r.skipped, r.complete), (2, 1, true), "shard 1 (damaged) and 2 redone");
        assert_eq!(std::fs::read(shard_path(&resumed, 1)).unwrap(), second);
        let r = precompute(&detector, &clip, &samples, &resumed, &options, device).unwrap();
        assert_eq!((r.written, r.skipped, r.crops), (0, 3, 0), "a complete run does nothing");

        let a = load_teachers(&whole).unwrap();
        let b = load_teachers(&resumed).unwrap();
        assert_eq!(a.len(), samples.len(), "every image once");
        for s in &samples {
            let (ta, tb) = (&a[&s.key], &b[&s.key]);
            assert_eq!(ta, tb, "{}: the resumed run equals the uninterrupted one", s.key);
            assert_eq!(ta.boxes.len(), 7);
            assert_eq!(ta.embeddings.len(), 7 * 16);
            for row in ta.embeddings.chunks(16) {
                let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
                assert!((norm - 1.0).abs() < 1e-4, "teacher embeddings are unit vectors: {norm}");
            }
            for bx in &ta.boxes {
                assert!(bx[0] <= bx[2] && bx[1] <= bx[3] && bx[2] <= s.width as f32 + 1e-3 && bx[3] <= s.height as f32 + 1e-3);
            }
        }
        // CLIP in chunks of 3 crops: the same proposals, the same embeddings up to rounding.
        let chunked = scratch("vild-precompute-chunked");
        let small_batches = PrecomputeOptions { crop_batch: 3, ..options.clone() };
        precompute(&detector, &clip, &samples, &chunked, &small_batches, device).unwrap();
        for (key, tc) in load_teachers(&chunked).unwrap() {
            assert_eq!(tc.boxes, a[&key].boxes);
            let d = tc.embeddings.iter().zip(&a[&key].embeddings).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
            assert!(d < 1e-5, "{key}: chunked CLIP differs by {d}");
        }
        let total: usize = a.values().map(|t| t.boxes.len()).sum();
        assert_eq!(total, 5 * 7, "no proposal lost or duplicated");
        // Another dataset in the same folder: the keys do not match, the shards are redone.
        let other = &samples[1..];
        let r = precompute(&detector, &clip, other, &resumed, &options, device).unwrap();
        assert_eq!(r.skipped, 0);
        assert!(precompute(&detector, &clip, &samples, &resumed, &PrecomputeOptions { proposals: 0, ..options }, device).is_err());
    }
}
