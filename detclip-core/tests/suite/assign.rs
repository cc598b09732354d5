//! Anchors against torchvision; the ATSS assigner against mmdetection and a hand-worked case.

use detclip_core::assign::{AnchorGenerator, AtssOptions, atss_assign};

use crate::harness::{Fixture, assert_close, to_vec};

backend_test! {
    fn anchors_match_torchvision<B>(device) {
        let f = Fixture::load(crate::harness::fixtures(), "anchors.safetensors");
        let generator = AnchorGenerator::torchvision(&[8.0, 16.0], &[vec![32.0], vec![64.0, 90.0]], &[0.5, 1.0, 2.0]);
        let (anchors, counts) = generator.grid_anchors::<B>(&[[8, 6], [4, 3]], device).unwrap();
        let expected_counts: Vec<usize> = f.i64s("counts").into_iter().map(|c| c as usize).collect();
        assert_eq!(counts, expected_counts);
        assert_close("anchors", &to_vec(anchors), &f.f32s("anchors"), 0.0, 0.0);
        assert!(generator.grid_anchors::<B>(&[[8, 6]], device).is_err());
    }
}

#[test]
fn atss_preset_has_one_anchor_per_cell_on_p3_to_p7() {
    let g = AnchorGenerator::atss();
    let levels = g
        .grid_anchors_host(&[[4, 4], [2, 2], [1, 1], [1, 1], [1, 1]])
        .unwrap();
    assert_eq!(
        levels.iter().map(Vec::len).collect::<Vec<_>>(),
        vec![16, 4, 1, 1, 1]
    );
    // stride 8, size 64, mmdetection's centre offset 0: the cell (1, 2) anchor is centred at (8, 16)
    assert_eq!(
        levels[0][2 * 4 + 1],
        [8.0 - 32.0, 16.0 - 32.0, 8.0 + 32.0, 16.0 + 32.0]
    );
    assert_eq!(levels[4][0], [-512.0, -512.0, 512.0, 512.0]);
}

fn fixture_boxes(f: &Fixture, key: &str) -> Vec<[f32; 4]> {
    f.f32s(key)
        .chunks_exact(4)
        .map(|c| [c[0], c[1], c[2], c[3]])
        .collect()
}

#[test]
fn atss_matches_mmdetection() {
    let f = Fixture::load(crate::harness::fixtures(), "atss.safetensors");
    let anchors = fixture_boxes(&f, "anchors");
    let gt = fixture_boxes(&f, "gt");
    let counts: Vec<usize> = f.i64s("counts").into_iter().map(|c| c as usize).collect();
    let a = atss_assign(&anchors, &counts, &gt, &AtssOptions::default()).unwrap();
    // mmdetection: 0 = background, g + 1 = ground-truth box g
    let ours: Vec<i64> = a
        .gt_index
        .iter()
        .map(|g| g.map_or(0, |g| g as i64 + 1))
        .collect();
    assert_eq!(ours, f.i64s("gt_inds"));
    let expected_iou = f.f32s("max_overlaps");
    for (i, g) in a.gt_index.iter().enumerate() {
        if g.is_some() {
            assert!((a.iou[i] - expected_iou[i]).abs() < 1e-6, "anchor {i}");
        }
    }
    // the fixture exercises the centre-inside rule: without it, box 3 (a thin strip between
    // anchor rows) would get positives
    let loose = atss_assign(
        &anchors,
        &counts,
        &gt,
        &AtssOptions {
            center_eps: f32::NEG_INFINITY,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(!a.gt_index.contains(&Some(3)));
    assert!(loose.gt_index.contains(&Some(3)));
}

#[test]
fn atss_hand_worked() {
    // one level, 3×3 anchors of size 10 centred at (10x, 10y)
    let mut anchors = Vec::new();
    for y in 0..3 {
        for x in 0..3 {
            let (cx, cy) = (10.0 * x as f32, 10.0 * y as f32);
            anchors.push([cx - 5.0, cy - 5.0, cx + 5.0, cy + 5.0]);
        }
    }
    let opts = AtssOptions {
        top_k: 3,
        center_eps: 0.01,
        plus_one: false,
    };
    // gt centre (7, 6.5): candidates (10,10) IoU 56/176, (10,0) 32/200, (0,10) 28/204;
    // threshold = mean + std = 0.30369 -> only anchor 4 = (10,10)
    let one = atss_assign(&anchors, &[9], &[[1.0, 1.0, 13.0, 12.0]], &opts).unwrap();
    assert_eq!(one.positives(), vec![4]);
    assert!((one.iou[4] - 56.0 / 176.0).abs() < 1e-6);
    let (i1, i2, i3) = (56.0f32 / 176.0, 32.0f32 / 200.0, 28.0f32 / 204.0);
    let mean = (i1 + i2 + i3) / 3.0;
    let std = (((i1 - mean).powi(2) + (i2 - mean).powi(2) + (i3 - mean).powi(2)) / 2.0).sqrt();
    assert!((one.thresholds[0] - (mean + std)).abs() < 1e-6);
    // a second box centred on anchor 4 with IoU 100/144 takes it: highest IoU wins
    let two = atss_assign(
        &anchors,
        &[9],
        &[[1.0, 1.0, 13.0, 12.0], [4.0, 4.0, 16.0, 16.0]],
        &opts,
    )
    .unwrap();
    assert_eq!(two.gt_index[4], Some(1));
    assert!((two.iou[4] - 100.0 / 144.0).abs() < 1e-6);
    assert_eq!(two.positives(), vec![4]);
    // no boxes: all background; inconsistent level counts: an error
    assert!(
        atss_assign(&anchors, &[9], &[], &opts)
            .unwrap()
            .positives()
            .is_empty()
    );
    assert!(atss_assign(&anchors, &[4, 4], &[[0.0, 0.0, 1.0, 1.0]], &opts).is_err());
}
