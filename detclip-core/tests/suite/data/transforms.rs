//! Transforms move boxes exactly with the pixels, and the flip keeps caption spans on their
//! phrases.

use detclip_core::data::synthetic::{Split, World, WorldConfig};
use detclip_core::data::transforms::swap_left_right_text;
use detclip_core::data::{
    Concept, ImageSource, Instance, Loaded, Normalize, RandomCrop, Sample, SourceKind, Span,
    TrainTransform, crop, hflip, keep_ratio_size, resize, resize_keep_ratio,
};
use image::{Rgb, RgbImage};
use rand::SeedableRng;
use rand::rngs::StdRng;

/// A `w`×`h` image whose pixel (x, y) is (x, y, 7), with the given named boxes.
fn loaded(w: u32, h: u32, kind: SourceKind, boxes: &[(&str, [f32; 4])]) -> Loaded {
    let image = RgbImage::from_fn(w, h, |x, y| Rgb([x as u8, y as u8, 7]));
    let mut s = Sample::new("t", ImageSource::Memory(image.clone().into()), w, h);
    s.kind = kind;
    for &(name, bbox) in boxes {
        let c = s.concept_index(name, None);
        s.instances.push(Instance {
            bbox,
            concepts: vec![c],
            crowd: false,
            score: None,
        });
    }
    Loaded::new(image, s).unwrap()
}

fn boxes(l: &Loaded) -> Vec<[f32; 4]> {
    l.sample.instances.iter().map(|i| i.bbox).collect()
}

#[test]
fn keep_ratio_size_follows_glip_get_size() {
    // Hand-computed from maskrcnn-benchmark's Resize.get_size.
    // 640x480 → short 800: 800/480·640 = 1066.7 → 1066 (int truncates).
    assert_eq!(keep_ratio_size(640, 480, 800, Some(1333)), (1066, 800));
    // 333x500 (portrait): w = 800, h = int(800·500/333) = 1201; 1201.2 ≤ 1333, no cap.
    assert_eq!(keep_ratio_size(333, 500, 800, Some(1333)), (800, 1201));
    // 1000x200: 5·800 > 1333 → short = round(1333·200/1000) = round(266.6) = 267, then
    // w = int(267·1000/200) = 1335. (mmdetection's single scale factor gives 1333x267.)
    assert_eq!(keep_ratio_size(1000, 200, 800, Some(1333)), (1335, 267));
    // Already at size: unchanged. No cap: only the short side matters.
    assert_eq!(keep_ratio_size(800, 600, 600, None), (800, 600));
    assert_eq!(keep_ratio_size(1000, 200, 800, None), (4000, 800));
}

#[test]
fn resize_scales_boxes_per_axis() {
    let l = loaded(
        100,
        50,
        SourceKind::Detection,
        &[("a", [10.0, 5.0, 30.0, 25.0])],
    );
    let r = resize(l, 200, 150);
    assert_eq!(r.image.dimensions(), (200, 150));
    assert_eq!((r.sample.width, r.sample.height), (200, 150));
    assert_eq!(boxes(&r), [[20.0, 15.0, 60.0, 75.0]]);
    let l = loaded(
        640,
        480,
        SourceKind::Detection,
        &[("a", [64.0, 48.0, 640.0, 480.0])],
    );
    let r = resize_keep_ratio(l, 800, Some(1333));
    assert_eq!(r.image.dimensions(), (1066, 800));
    let sx = 1066.0f32 / 640.0;
    let sy = 800.0f32 / 480.0;
    assert_eq!(boxes(&r), [[64.0 * sx, 48.0 * sy, 1066.0, 800.0]]);
}

#[test]
fn hflip_moves_boxes_continuously_and_pixels_with_them() {
    let l = loaded(
        100,
        40,
        SourceKind::Detection,
        &[
            ("a", [10.0, 5.0, 30.0, 25.0]),
            ("b", [0.0, 0.0, 100.0, 40.0]),
        ],
    );
    let f = hflip(l.clone());
    // x' = W − x (torchvision / GLIP continuous convention), x1 and x2 swap roles.
    assert_eq!(
        boxes(&f),
        [[70.0, 5.0, 90.0, 25.0], [0.0, 0.0, 100.0, 40.0]]
    );
    // Pixel column x lands in column W − 1 − x: the box [10, 30) of pixels is now [70, 90).
    assert_eq!(f.image.get_pixel(99, 3).0, [0, 3, 7]);
    assert_eq!(f.image.get_pixel(70, 5).0, l.image.get_pixel(29, 5).0);
    assert_eq!(f.image.get_pixel(89, 5).0, l.image.get_pixel(10, 5).0);
    assert_eq!(hflip(f), l, "two flips are the identity");
}

#[test]
fn hflip_swaps_left_and_right_and_keeps_spans_on_their_phrases() {
    let caption = "Café: the dog left of the cat, Right side, brightly LEFT-handed; leftover.";
    let l = loaded(50, 50, SourceKind::Grounding, &[]);
    let mut s = l.sample.clone();
    let span_of = |p: &str| {
        let start = caption.find(p).unwrap();
        Span::new(start, start + p.len())
    };
    let phrases = [
        "the dog",
        "the dog left of the cat",
        "Right side",
        "LEFT",
        "leftover",
        "the cat",
    ];
    for p in phrases {
        s.concepts.push(Concept {
            name: p.to_string(),
            category_id: None,
            spans: vec![span_of(p)],
        });
    }
    // A span that starts inside "left" (an odd phrase boundary) goes to the word's start.
    s.concepts[4].spans.push(Span::new(
        span_of("left of").start + 2,
        span_of("the cat").end,
    ));
    s.caption = Some(caption.to_string());
    let f = hflip(Loaded::new(l.image, s).unwrap()).sample;
    let flipped = f.caption.as_deref().unwrap();
    assert_eq!(
        flipped,
        "Café: the dog right of the cat, Left side, brightly RIGHT-handed; leftover."
    );
    let texts: Vec<&str> = f
        .concepts
        .iter()
        .map(|c| c.spans[0].slice(flipped).unwrap())
        .collect();
    assert_eq!(
        texts,
        [
            "the dog",
            "the dog right of the cat",
            "Left side",
            "RIGHT",
            "leftover",
            "the cat"
        ]
    );
    for (c, p) in f.concepts.iter().zip(phrases) {
        assert_eq!(
            c.name,
            swap_left_right_text(p),
            "names are swapped like the caption"
        );
    }
    assert_eq!(
        f.concepts[4].spans[1].slice(flipped),
        Some("right of the cat")
    );
    f.validate().unwrap();
}

#[test]
fn crop_clips_boxes_and_drops_vanished_ones_with_their_concepts() {
    let l = loaded(
        100,
        100,
        SourceKind::Detection,
        &[
            ("a", [10.0, 10.0, 30.0, 30.0]),
            ("b", [60.0, 60.0, 90.0, 90.0]),
            ("c", [40.0, 0.0, 70.0, 20.0]),
        ],
    );
    let c = crop(l.clone(), 20, 5, 50, 50).unwrap();
    assert_eq!(c.image.dimensions(), (50, 50));
    assert_eq!(c.image.get_pixel(0, 0).0, [20, 5, 7]);
    // a: shifted by (−20, −5) and clipped at 0; b: clipped to zero height, dropped;
    // c: clipped at the top.
    assert_eq!(boxes(&c), [[0.0, 5.0, 10.0, 25.0], [20.0, 0.0, 50.0, 15.0]]);
    let names: Vec<&str> = c.sample.concepts.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["a", "c"], "b is no longer in the image");
    let links: Vec<&[usize]> = c
        .sample
        .instances
        .iter()
        .map(|i| i.concepts.as_slice())
        .collect();
    assert_eq!(links, [[0], [1]]);
    // Grounding concepts stay: the caption still mentions them.
    let mut g = l.clone();
    g.sample.kind = SourceKind::Grounding;
    let c = crop(g, 20, 5, 50, 50).unwrap();
    assert_eq!(c.sample.concepts.len(), 3);
    assert_eq!(c.sample.instances[1].concepts, [2]);
    assert!(crop(l, 60, 0, 50, 10).is_err(), "window outside the image");
}

#[test]
fn normalize_orders_channels_and_scales() {
    let img = RgbImage::from_pixel(2, 1, Rgb([10, 20, 30]));
    let n = Normalize::imagenet().apply(&img);
    let expect = |v: f32, m: f32, s: f32| (v / 255.0 - m) / s;
    let want = [
        expect(10.0, 0.485, 0.229),
        expect(20.0, 0.456, 0.224),
        expect(30.0, 0.406, 0.225),
    ];
    let got = [n[0], n[2], n[4]];
    crate::harness::assert_close("imagenet", &got, &want, 1e-6, 1e-6);
    assert_eq!(n.len(), 6);
    assert_eq!((n[0], n[2], n[4]), (n[1], n[3], n[5]), "both pixels alike");
    // GLIP Swin: BGR 0-255, so channel 0 is blue.
    let g = Normalize::glip_swin().apply(&img);
    assert_eq!(g[0], (30.0 - 103.53) / 57.375);
    assert_eq!(g[4], (10.0 - 123.675) / 58.395);
    let c = Normalize::caffe().apply(&img);
    assert_eq!(c[2], 20.0 - 115.9465);
}

fn synthetic(index: u64) -> Loaded {
    let world = World::new(WorldConfig::default()).unwrap();
    let s = world.image(Split::Train, index).sample;
    let ImageSource::Memory(img) = &s.image else {
        unreachable!()
    };
    Loaded::new(img.as_ref().clone(), s.clone()).unwrap()
}

#[test]
fn train_transform_is_seeded_and_keeps_boxes_valid() {
    let t = TrainTransform {
        short_sides: vec![96, 128, 160],
        max_long: Some(256),
        flip_prob: 0.5,
        crop: Some(RandomCrop {
            min_scale: 0.5,
            max_scale: 1.0,
            tries: 10,
        }),
        normalize: Normalize::imagenet(),
    };
    for index in 0..20 {
        let run = |seed| {
            t.apply(synthetic(index), &mut StdRng::seed_from_u64(seed))
                .unwrap()
        };
        let a = run(index);
        assert_eq!(a, run(index), "same seed, same result");
        let s = &a.sample;
        s.validate().unwrap();
        assert_eq!(a.pixels.len(), 3 * (s.width * s.height) as usize);
        // The short side is a drawn scale unless the long-side cap lowered it (GLIP's rule
        // can overshoot the cap by a pixel or two, see keep_ratio_size_follows_glip_get_size).
        let capped = s.width.max(s.height) >= 250 && s.width.max(s.height) <= 258;
        assert!(
            [96, 128, 160].contains(&s.width.min(s.height)) || capped,
            "{}x{}",
            s.width,
            s.height
        );
        assert!(!s.instances.is_empty(), "the crop keeps at least one box");
        for i in &s.instances {
            assert!(i.bbox[0] >= 0.0 && i.bbox[2] <= s.width as f32 + 1e-3);
            assert!(i.bbox[1] >= 0.0 && i.bbox[3] <= s.height as f32 + 1e-3);
        }
    }
    let outs: std::collections::HashSet<(u32, u32)> = (0..10)
        .map(|seed| {
            let p = t
                .apply(synthetic(0), &mut StdRng::seed_from_u64(seed))
                .unwrap();
            (p.sample.width, p.sample.height)
        })
        .collect();
    assert!(
        outs.len() > 1,
        "different seeds give different scales/crops"
    );
}
