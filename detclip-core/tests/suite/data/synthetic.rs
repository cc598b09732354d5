//! The synthetic world: deterministic by seed, tight boxes, held-out concepts kept out of
//! training, captions whose spans and relations are right (also after a flip).

use std::collections::HashMap;

use detclip_core::data::synthetic::{
    HeldOut, Naming, Shape, Split, SyntheticImage, World, WorldConfig,
};
use detclip_core::data::{ImageSource, Loaded, hflip};
use image::RgbImage;

fn world(seed: u64) -> World {
    World::new(WorldConfig {
        seed,
        ..WorldConfig::default()
    })
    .unwrap()
}

fn pixels(img: &SyntheticImage) -> &RgbImage {
    match &img.sample.image {
        ImageSource::Memory(p) => p,
        ImageSource::File(_) => panic!("synthetic images are in memory"),
    }
}

#[test]
fn the_world_is_deterministic_per_seed() {
    let (a, b) = (world(7), world(7));
    for split in [Split::Train, Split::Test] {
        for i in 0..5 {
            assert_eq!(a.image(split, i), b.image(split, i));
        }
    }
    assert_ne!(
        world(7).image(Split::Train, 0),
        world(8).image(Split::Train, 0)
    );
    assert_ne!(a.image(Split::Train, 0), a.image(Split::Train, 1));
    assert_ne!(a.image(Split::Train, 0), a.image(Split::Test, 0));
}

#[test]
fn boxes_tightly_enclose_the_drawn_pixels() {
    let w = world(3);
    let mut objects = 0;
    for split in [Split::Train, Split::Test] {
        for i in 0..40 {
            let img = w.image(split, i);
            let px = pixels(&img);
            let (width, height) = px.dimensions();
            assert!((128..=320).contains(&width) && (128..=320).contains(&height));
            // The background is the most common colour.
            let mut freq = HashMap::new();
            for p in px.pixels() {
                *freq.entry(p.0).or_insert(0) += 1;
            }
            let bg = *freq.iter().max_by_key(|(_, n)| **n).unwrap().0;
            assert!(bg[0] == bg[1] && bg[1] == bg[2], "grey background");
            let inside_some_box = |x: u32, y: u32| {
                img.objects.iter().any(|o| {
                    let (fx, fy) = (x as f32 + 0.5, y as f32 + 0.5);
                    o.bbox[0] < fx && fx < o.bbox[2] && o.bbox[1] < fy && fy < o.bbox[3]
                })
            };
            for (x, y, p) in px.enumerate_pixels() {
                if p.0 != bg {
                    assert!(
                        inside_some_box(x, y),
                        "drawn pixel ({x}, {y}) outside every box"
                    );
                }
            }
            // Each box's four edges touch a drawn pixel: it is tight.
            for o in &img.objects {
                let [x1, y1, x2, y2] = o.bbox.map(|v| v as u32);
                let drawn = |x: u32, y: u32| px.get_pixel(x, y).0 != bg;
                assert!((y1..y2).any(|y| drawn(x1, y)), "left edge of {o:?}");
                assert!((y1..y2).any(|y| drawn(x2 - 1, y)), "right edge of {o:?}");
                assert!((x1..x2).any(|x| drawn(x, y1)), "top edge of {o:?}");
                assert!((x1..x2).any(|x| drawn(x, y2 - 1)), "bottom edge of {o:?}");
                objects += 1;
            }
            assert_eq!(img.sample.instances.len(), img.objects.len());
        }
    }
    assert!(objects > 100);
}

#[test]
fn masks_are_the_drawn_pixels_and_their_bounds_are_the_boxes() {
    let w = world(5);
    let mut covered = 0usize;
    for split in [Split::Train, Split::Test] {
        for i in 0..20 {
            let img = w.image(split, i);
            let px = pixels(&img);
            // Pixels no mask covers are untouched background (one grey for the whole image).
            let bg = px
                .enumerate_pixels()
                .find(|&(x, y, _)| !img.objects.iter().any(|o| o.covers(x, y)))
                .unwrap()
                .2
                .0;
            for (x, y, p) in px.enumerate_pixels() {
                let owners = img.objects.iter().filter(|o| o.covers(x, y)).count();
                assert!(owners <= 1, "masks overlap at ({x}, {y})");
                if owners == 0 {
                    assert_eq!(p.0, bg, "pixel ({x}, {y}) is drawn but in no mask");
                }
            }
            for o in &img.objects {
                let (width, height) = px.dimensions();
                let mut bounds: Option<[u32; 4]> = None;
                for y in 0..height {
                    for x in 0..width {
                        if o.covers(x, y) {
                            covered += 1;
                            let b = bounds.get_or_insert([x, y, x, y]);
                            *b = [b[0].min(x), b[1].min(y), b[2].max(x), b[3].max(y)];
                        }
                    }
                }
                let [x1, y1, x2, y2] = bounds.expect("an object covers pixels");
                assert_eq!(
                    [x1 as f32, y1 as f32, (x2 + 1) as f32, (y2 + 1) as f32],
                    o.bbox,
                    "mask bounds of {o:?}"
                );
            }
        }
    }
    assert!(covered > 10_000);
}

#[test]
fn held_out_concepts_never_appear_in_training() {
    let w = world(11);
    let held = w.held_out_vocabulary();
    assert!(held.contains(&"red star".to_string()) && held.contains(&"red ring".to_string()));
    assert!(!held.contains(&"green ring".to_string()));
    let train_vocab = w.vocabulary(Split::Train);
    assert!(held.iter().all(|h| !train_vocab.contains(h)));
    for i in 0..300 {
        let img = w.image(Split::Train, i);
        let caption = img.sample.caption.as_deref().unwrap();
        for o in &img.objects {
            assert!(!w.is_held_out(o.color, o.shape), "train image {i}: {o:?}");
        }
        for h in &held {
            assert!(
                !caption.contains(h.as_str()),
                "train image {i} says `{h}`: {caption}"
            );
        }
    }
    for i in 0..100 {
        let img = w.image(Split::Test, i);
        assert!(
            img.objects.iter().any(|o| w.is_held_out(o.color, o.shape)),
            "test image {i}"
        );
    }
    // Under shape naming, a held-out pair's shape is still seen; a held-out shape is not.
    let shapes = World::new(WorldConfig {
        naming: Naming::Shape,
        held_out: HeldOut {
            shapes: vec![Shape::Cross],
            pairs: vec![],
        },
        ..WorldConfig::default()
    })
    .unwrap();
    assert_eq!(shapes.held_out_vocabulary(), ["cross"]);
    assert_eq!(shapes.vocabulary(Split::Train).len(), 6);
}

#[test]
fn caption_spans_name_the_boxes_and_relations_match_the_boxes() {
    let w = world(5);
    let mut related = 0;
    for i in 0..60 {
        let img = w.image(Split::Train, i);
        let s = &img.sample;
        s.validate().unwrap();
        let caption = s.caption.as_deref().unwrap();
        for (inst, o) in s.instances.iter().zip(&img.objects) {
            let c = &s.concepts[inst.concepts[0]];
            assert_eq!(c.name, format!("{} {}", o.color.name(), o.shape.name()));
            assert_eq!(inst.bbox, o.bbox);
        }
        for c in &s.concepts {
            for span in &c.spans {
                assert_eq!(span.slice(caption), Some(c.name.as_str()));
            }
        }
        if img.objects.len() < 2 {
            continue;
        }
        related += 1;
        let ImageSource::Memory(px) = &s.image else {
            unreachable!()
        };
        let flipped = hflip(Loaded::new(px.as_ref().clone(), s.clone()).unwrap()).sample;
        for sample in [s, &flipped] {
            let text = sample.caption.as_deref().unwrap();
            let (a, b) = (sample.instances[0].bbox, sample.instances[1].bbox);
            let (dx, dy) = (
                (b[0] + b[2] - a[0] - a[2]) / 2.0,
                (b[1] + b[3] - a[1] - a[3]) / 2.0,
            );
            let said = ["left of", "right of", "above", "below"]
                .into_iter()
                .find(|r| text.contains(&format!(" {r} ")))
                .unwrap();
            let truth = match (dx.abs() >= dy.abs(), dx > 0.0, dy > 0.0) {
                (true, true, _) => "left of",
                (true, false, _) => "right of",
                (false, _, true) => "above",
                (false, _, false) => "below",
            };
            assert_eq!(said, truth, "{text}");
            for c in &sample.concepts {
                for span in &c.spans {
                    assert_eq!(span.slice(text), Some(c.name.as_str()));
                }
            }
        }
    }
    assert!(related > 20);
}

#[test]
fn bad_world_settings_are_errors() {
    let bad = |c: WorldConfig| World::new(c).is_err();
    assert!(bad(WorldConfig {
        min_side: 300,
        max_side: 200,
        ..WorldConfig::default()
    }));
    assert!(bad(WorldConfig {
        max_objects: 0,
        ..WorldConfig::default()
    }));
    assert!(bad(WorldConfig {
        held_out: HeldOut {
            shapes: Shape::ALL.to_vec(),
            pairs: vec![]
        },
        ..WorldConfig::default()
    }));
}
