//! ViLD against torchvision's Mask R-CNN parts (fixtures from scripts/fixtures/vild.py): the
//! checkpoint key map, FPN features, RPN head and proposals, MultiScaleRoIAlign with
//! TwoMLPHead, class-agnostic box regression and the projections, the ViLD-text logits and
//! the mask head; then the pieces torchvision has no counterpart for (matcher, sampler,
//! ensemble, class embeddings, loss and prediction).

use std::collections::BTreeMap;

use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use detclip_core::DetError;
use detclip_models::clip::{ClipLayout, EotPooling, l2_normalize};
use detclip_models::import::{KeyMap, LoadOptions, load_checkpoint};
use detclip_models::tokenizer::{TextTokenizer, TokenizerOptions};
use detclip_models::vild::{
    ClassEmbeddings, EnsembleWeights, Match, MultiScaleRoiAlign, SampleRng, TeacherRegions,
    VILD_PROMPT, VILD_TEMPLATES, Vild, VildConfig, VildLossConfig, VildPredictConfig, VildTarget,
    ensemble_scores, match_boxes, predict, predict_within, sample_balanced, torchvision_keys,
    vild_loss, vild_text_logits,
};
use regex::Regex;

use crate::harness::{Fixture, LazyShapes, assert_close, fixtures, max_abs_diff, to_vec};

const EMBED: usize = 8;
const TEMPERATURE: f64 = 0.01;

/// The fixture's detector: torchvision's state dict through the key map, ViLD's own parts
/// from the heads file.
fn load<B: Backend>(device: &B::Device) -> Vild<B> {
    let mut config = VildConfig::tiny(EMBED);
    // The fixture's RPN limits (torchvision's `rpn_{pre,post}_nms_top_n_test`).
    config.rpn.pre_nms_top_n_test = 50;
    config.rpn.post_nms_top_n_test = 20;
    let mut model = config.init::<B>(device).unwrap();
    let partial = LoadOptions {
        allow_partial: true,
        ..Default::default()
    };
    let report = load_checkpoint(
        &mut model,
        &fixtures().join("vild_tiny.pth"),
        &torchvision_keys(),
        &partial,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        report.unexpected.is_empty(),
        "unexpected: {:?}",
        report.unexpected
    );
    let mut missing = report.missing.clone();
    missing.sort();
    assert_eq!(
        missing,
        [
            "background",
            "box_regression.bias",
            "box_regression.weight",
            "image_projection.bias",
            "image_projection.weight",
            "mask_head.logits.bias",
            "mask_head.logits.weight",
            "projection.bias",
            "projection.weight",
        ],
        "only ViLD's own parameters are not in a torchvision checkpoint"
    );
    let heads = load_checkpoint(
        &mut model,
        &fixtures().join("vild_tiny_heads.safetensors"),
        &KeyMap::new(),
        &partial,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(heads.applied.len(), 9, "{:?}", heads.applied);
    model
}

fn rois(io: &Fixture, key: &str) -> Vec<[f32; 4]> {
    io.f32s(key)
        .chunks(4)
        .map(|c| [c[0], c[1], c[2], c[3]])
        .collect()
}

fn check(what: &str, got: Vec<f32>, want: &[f32], tol: f32, worst: &mut Vec<(String, f32)>) {
    let d = max_abs_diff(&got, want);
    assert_close(what, &got, want, tol, tol);
    worst.push((what.into(), d));
}

backend_test! {
    fn vild_matches_torchvision_maskrcnn_parts<B>(device) {
        type I<B> = <B as AutodiffBackend>::InnerBackend;
        let model = load::<I<B>>(device);
        let io = Fixture::load(fixtures(), "vild_tiny_io.safetensors");
        let images = io.tensor::<I<B>, 4>("images", device);
        let [_, _, h, w] = images.dims();
        let mut worst = Vec::new();
        let features = model.features(images).unwrap();
        for (l, f) in features.iter().enumerate() {
            check(&format!("fpn{l}"), to_vec(f.clone()), &io.f32s(&format!("fpn{l}")), 1e-4, &mut worst);
        }
        let rpn = model.rpn_outputs(&features);
        for l in 0..5 {
            check(&format!("rpn_objectness{l}"), to_vec(rpn.objectness[l].clone()), &io.f32s(&format!("rpn_objectness{l}")), 1e-4, &mut worst);
            check(&format!("rpn_deltas{l}"), to_vec(rpn.deltas[l].clone()), &io.f32s(&format!("rpn_deltas{l}")), 1e-4, &mut worst);
        }
        let proposals = model.proposals(&rpn, [h, w], false).unwrap();
        for (i, p) in proposals.iter().enumerate() {
            let got: Vec<f32> = p.boxes.iter().flatten().copied().collect();
            check(&format!("proposals{i}"), got, &io.f32s(&format!("proposals{i}")), 1e-4, &mut worst);
        }
        let rois = vec![rois(&io, "rois0"), rois(&io, "rois1")];
        let regions = model.region_outputs(&features, &rois, [h, w]).unwrap();
        check("representation", to_vec(regions.representation), &io.f32s("representation"), 1e-4, &mut worst);
        check("box_deltas", to_vec(regions.box_deltas), &io.f32s("box_deltas"), 1e-4, &mut worst);
        check("region_embeddings", to_vec(regions.embeddings.clone()), &io.f32s("region_embeddings"), 1e-4, &mut worst);
        check("image_embeddings", to_vec(regions.image_embeddings), &io.f32s("image_embeddings"), 1e-4, &mut worst);
        let classes = io.tensor::<I<B>, 2>("class_embeddings", device);
        let logits = model.text_logits(regions.embeddings, classes).unwrap();
        // Logits are cosines over T = 0.01: 1e-6 in the cosine is 1e-4 here.
        check("logits", to_vec(logits), &io.f32s("logits"), 2e-4, &mut worst);
        let masks = model.mask_logits(&features, &rois, [h, w]).unwrap();
        assert_eq!(masks.dims().to_vec(), io.shape("mask_logits"));
        check("mask_logits", to_vec(masks), &io.f32s("mask_logits"), 1e-4, &mut worst);
        for (what, d) in worst {
            println!("vild {what}: max |diff| = {d:e}");
        }
    }
}

backend_test! {
    fn vild_text_logits_match_the_fixture_from_its_inputs<B>(device) {
        // The logits function alone, on the fixture's embeddings (no model in between).
        type I<B> = <B as AutodiffBackend>::InnerBackend;
        let io = Fixture::load(fixtures(), "vild_tiny_io.safetensors");
        let heads = Fixture::load(fixtures(), "vild_tiny_heads.safetensors");
        let logits = vild_text_logits(
            io.tensor::<I<B>, 2>("region_embeddings", device),
            heads.tensor::<I<B>, 1>("background", device),
            io.tensor::<I<B>, 2>("class_embeddings", device),
            TEMPERATURE,
        )
        .unwrap();
        let d = max_abs_diff(&to_vec(logits.clone()), &io.f32s("logits"));
        println!("vild_text_logits alone: max |diff| = {d:e}");
        assert_close("logits", &to_vec(logits), &io.f32s("logits"), 2e-4, 1e-5);
        let wrong = Tensor::<I<B>, 2>::zeros([3, EMBED + 1], device);
        let err = vild_text_logits(io.tensor::<I<B>, 2>("region_embeddings", device), heads.tensor::<I<B>, 1>("background", device), wrong, TEMPERATURE).unwrap_err();
        assert!(matches!(err, DetError::Shape { what: "classes", .. }), "{err}");
    }
}

#[test]
fn level_mapper_follows_fpn_equation_one() {
    let m = MultiScaleRoiAlign::new(7); // canonical 224 at level 4, levels 2..=5
    let side = |s: f32| [0.0, 0.0, s, s];
    assert_eq!(m.level(&side(10.0), 2, 5), 0);
    assert_eq!(m.level(&side(111.9), 2, 5), 0);
    assert_eq!(m.level(&side(112.0), 2, 5), 1);
    assert_eq!(m.level(&side(224.0), 2, 5), 2);
    assert_eq!(m.level(&side(447.0), 2, 5), 2);
    assert_eq!(m.level(&side(448.0), 2, 5), 3);
    assert_eq!(m.level(&side(5000.0), 2, 5), 3);
    assert_eq!(
        m.level(&[3.0, 3.0, 3.0, 3.0], 2, 5),
        0,
        "an empty box goes to the finest level"
    );
}

#[test]
fn matcher_and_sampler_follow_torchvision_rules() {
    let gt = [[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]];
    let cands = [
        [0.0, 0.0, 10.0, 9.0],    // IoU 0.9 with gt 0
        [0.0, 0.0, 10.0, 5.0],    // 0.5: ignored at (0.7, 0.3)
        [50.0, 50.0, 60.0, 60.0], // background
        [20.0, 20.0, 30.0, 24.0], // 0.4 with gt 1: gt 1's best
    ];
    let m = match_boxes(&cands, &gt, 0.7, 0.3, false);
    assert_eq!(
        m,
        [
            Match::Foreground(0),
            Match::Ignored,
            Match::Background,
            Match::Ignored
        ]
    );
    let m = match_boxes(&cands, &gt, 0.7, 0.3, true);
    assert_eq!(
        m[3],
        Match::Foreground(1),
        "low-quality match keeps gt 1's best anchor"
    );
    assert_eq!(
        match_boxes(&cands, &[], 0.5, 0.5, true),
        [Match::Background; 4]
    );
    let many: Vec<Match> = (0..100)
        .map(|i| {
            if i % 4 == 0 {
                Match::Foreground(0)
            } else {
                Match::Background
            }
        })
        .collect();
    let (pos, neg) = sample_balanced(&many, 16, 0.25, &mut SampleRng::new(1));
    assert_eq!((pos.len(), neg.len()), (4, 12));
    assert!(pos.iter().all(|&i| i % 4 == 0) && neg.iter().all(|&i| i % 4 != 0));
    let mut all = [pos.clone(), neg.clone()].concat();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 16, "no candidate is sampled twice");
    let again = sample_balanced(&many, 16, 0.25, &mut SampleRng::new(1));
    assert_eq!(
        again,
        (pos, neg),
        "the same seed samples the same candidates"
    );
}

backend_test! {
    fn ensemble_weights_text_for_base_and_image_for_novel<B>(device) {
        let p_text = Tensor::<B, 2>::from_floats([[0.8, 0.1], [0.2, 0.6]], device);
        let p_image = Tensor::<B, 2>::from_floats([[0.1, 0.7], [0.5, 0.3]], device);
        let w = EnsembleWeights::new();
        let got = to_vec(ensemble_scores(p_text, p_image, &[true, false], &w).unwrap());
        let want = [
            0.8f32.powf(0.6667) * 0.1f32.powf(0.3333),
            0.1f32.powf(0.3333) * 0.7f32.powf(0.6667),
            0.2f32.powf(0.6667) * 0.5f32.powf(0.3333),
            0.6f32.powf(0.3333) * 0.3f32.powf(0.6667),
        ];
        assert_close("ensemble", &got, &want, 1e-6, 1e-5);
        let bad = ensemble_scores(Tensor::<B, 2>::ones([2, 3], device), Tensor::<B, 2>::ones([2, 3], device), &[true, false], &w);
        assert!(matches!(bad, Err(DetError::Shape { .. })));
    }
}

backend_test! {
    fn class_embeddings_average_normalised_templates_and_cache<B>(device) {
        type I<B> = <B as AutodiffBackend>::InnerBackend;
        // A tiny text tower (fresh weights) wide enough for the tiny CLIP tokenizer's ids.
        let text_config = || crate::clip::tiny_config(ClipLayout::Hf, EotPooling::ArgMax).text.with_vocab_size(600);
        let clip = text_config().init::<I<B>>(device);
        let tok = TextTokenizer::from_file(fixtures().join("tokenizer_clip_tiny.json"), TokenizerOptions::new(16).with_pad_to_max_len(true)).unwrap();
        let templates = ["a photo of {} in the scene", "itap of the {}."];
        let mut cache = ClassEmbeddings::new(&templates).unwrap();
        let got = cache.get(&clip, &tok, &["cat", "dog", "cat"], device).unwrap();
        assert_eq!(got.dims(), [3, 16]);
        assert_eq!(cache.cached(), 2);
        // By hand: each prompt on its own, normalised, averaged, normalised.
        let one = |prompt: String| {
            let t = tok.encode(&prompt).unwrap();
            let ids = Tensor::<I<B>, 1, Int>::from_data(TensorData::new(t.ids.iter().map(|&v| v as i64).collect::<Vec<_>>(), [t.ids.len()]), device);
            l2_normalize(clip.forward(ids.unsqueeze()).unwrap().text_embeds)
        };
        let dog = l2_normalize((one(templates[0].replace("{}", "dog")) + one(templates[1].replace("{}", "dog"))) / 2.0);
        let rows = to_vec(got.clone());
        assert_close("dog", &rows[16..32], &to_vec(dog), 1e-5, 1e-5);
        assert_eq!(&rows[..16], &rows[32..], "a repeated name is the cached row");
        let norms: Vec<f32> = rows.chunks(16).map(|r| r.iter().map(|v| v * v).sum::<f32>().sqrt()).collect();
        assert_close("unit rows", &norms, &[1.0; 3], 1e-5, 0.0);
        // A cached name is not re-encoded: the cached value is returned even for another tower.
        let other = text_config().init::<I<B>>(device);
        assert_eq!(to_vec(cache.get(&other, &tok, &["dog"], device).unwrap()), rows[16..32].to_vec());
        assert!(ClassEmbeddings::new(&["no placeholder"]).is_err());
        assert!(ClassEmbeddings::new(&[VILD_PROMPT]).is_ok());
        assert!(ClassEmbeddings::new(VILD_TEMPLATES).is_ok());
        let none: [&str; 0] = [];
        assert!(matches!(cache.get(&clip, &tok, &none, device), Err(DetError::InvalidOption { .. })));
    }
}

/// Two 64×64 images with one or two objects each, masks and teacher embeddings.
fn batch<B: Backend>(device: &B::Device) -> (Tensor<B, 4>, Vec<VildTarget<B>>) {
    let images = Tensor::<B, 4>::random(
        [2, 3, 64, 64],
        burn::tensor::Distribution::Normal(0.0, 1.0),
        device,
    );
    let mask = |b: [f32; 4]| {
        let mut m = vec![0.0f32; 64 * 64];
        for y in b[1] as usize..b[3] as usize {
            for x in b[0] as usize..b[2] as usize {
                m[y * 64 + x] = 1.0;
            }
        }
        m
    };
    let target = |boxes: Vec<[f32; 4]>, labels: Vec<usize>| {
        let g = boxes.len();
        let masks: Vec<f32> = boxes.iter().flat_map(|&b| mask(b)).collect();
        let teacher_boxes = vec![
            [4.0, 4.0, 30.0, 30.0],
            [10.0, 20.0, 60.0, 50.0],
            [0.0, 0.0, 64.0, 64.0],
        ];
        VildTarget {
            boxes,
            labels,
            masks: Some(Tensor::from_data(
                TensorData::new(masks, [g, 64, 64]),
                device,
            )),
            teacher: Some(TeacherRegions {
                boxes: teacher_boxes,
                embeddings: l2_normalize(Tensor::random(
                    [3, EMBED],
                    burn::tensor::Distribution::Normal(0.0, 1.0),
                    device,
                )),
            }),
        }
    };
    (
        images,
        vec![
            target(vec![[8.0, 8.0, 40.0, 36.0]], vec![1]),
            target(
                vec![[2.0, 30.0, 20.0, 62.0], [30.0, 4.0, 62.0, 30.0]],
                vec![0, 2],
            ),
        ],
    )
}

backend_test! {
    fn vild_loss_has_every_term_and_trains<B>(device) {
        use burn::optim::{AdamConfig, GradientsParams, Optimizer};
        // A seeded model, one RoI sample for every step and a small step size (a new RoI sample
        // each step at lr 1e-3 made the loss jump and the test fail now and then).
        B::seed(device, 11);
        let mut model = VildConfig::tiny(EMBED).init::<B>(device).unwrap();
        let classes = l2_normalize(Tensor::<B, 2>::random([3, EMBED], burn::tensor::Distribution::Normal(0.0, 1.0), device));
        let (images, targets) = batch::<B>(device);
        let config = VildLossConfig::new();
        let mut optim = AdamConfig::new().init();
        let mut totals = Vec::new();
        for _ in 0..6 {
            let losses = vild_loss(&model, images.clone(), &targets, classes.clone(), &config, &mut SampleRng::new(0)).unwrap();
            for (name, t) in [("text", &losses.text), ("image", &losses.image), ("box", &losses.box_regression), ("mask", &losses.mask), ("rpn_objectness", &losses.rpn_objectness)] {
                let v = to_vec(t.clone())[0];
                assert!(v.is_finite() && v > 0.0, "{name} = {v}");
            }
            let parts: f32 = [&losses.text, &losses.box_regression, &losses.mask, &losses.rpn_objectness, &losses.rpn_box]
                .iter().map(|t| to_vec((*t).clone())[0]).sum::<f32>() + 0.5 * to_vec(losses.image.clone())[0];
            let total = to_vec(losses.total.clone())[0];
            assert!((total - parts).abs() < 1e-4 * total.max(1.0), "total {total} = Σ parts {parts}");
            totals.push(total);
            let grads = GradientsParams::from_grads(losses.total.backward(), &model);
            model = optim.step(2e-4, model, grads);
        }
        // The RPN's proposals, and so the sampled RoIs, move with the model: the objective is not
        // quite fixed, and the last step can sit above an earlier dip. Training must still take
        // the loss below where it started.
        let best = totals[1..].iter().copied().fold(f32::INFINITY, f32::min);
        assert!(best < totals[0], "the loss goes down on a fixed batch: {totals:?}");
        // Without teachers and masks, those terms are zero.
        let bare: Vec<VildTarget<B>> = targets.iter().map(|t| VildTarget { masks: None, teacher: None, ..t.clone() }).collect();
        let losses = vild_loss(&model, images.clone(), &bare, classes.clone(), &config, &mut SampleRng::new(0)).unwrap();
        assert_eq!(to_vec(losses.image)[0], 0.0);
        assert_eq!(to_vec(losses.mask)[0], 0.0);
        // Bad targets are errors.
        let mut wrong = bare.clone();
        wrong[0].labels = vec![3];
        assert!(matches!(vild_loss(&model, images.clone(), &wrong, classes.clone(), &config, &mut SampleRng::new(0)), Err(DetError::InvalidOption { .. })));
        assert!(vild_loss(&model, images, &bare[..1], classes, &config, &mut SampleRng::new(0)).is_err());
    }
}

backend_test! {
    fn vild_ensemble_distils_into_the_image_head_only<B>(device) {
        // With the ensemble, ViLD-image's gradient reaches `image_projection` and not
        // `projection`; without it, the reverse.
        let model = VildConfig::tiny(EMBED).init::<B>(device).unwrap();
        let classes = l2_normalize(Tensor::<B, 2>::random([3, EMBED], burn::tensor::Distribution::Normal(0.0, 1.0), device));
        let (images, targets) = batch::<B>(device);
        for ensemble in [true, false] {
            let config = VildLossConfig::new().with_ensemble(ensemble);
            let losses = vild_loss(&model, images.clone(), &targets, classes.clone(), &config, &mut SampleRng::new(0)).unwrap();
            let grads = losses.image.backward();
            let image_head = model.image_projection.weight.grad(&grads).map(|g| to_vec(g).iter().map(|v| v.abs()).sum::<f32>()).unwrap_or(0.0);
            let text_head = model.projection.weight.grad(&grads).map(|g| to_vec(g).iter().map(|v| v.abs()).sum::<f32>()).unwrap_or(0.0);
            if ensemble {
                assert!(image_head > 0.0 && text_head == 0.0, "ensemble: {image_head} {text_head}");
            } else {
                assert!(image_head == 0.0 && text_head > 0.0, "single head: {image_head} {text_head}");
            }
        }
    }
}

backend_test! {
    fn vild_predicts_base_and_novel_classes_with_per_class_nms<B>(device) {
        type I<B> = <B as AutodiffBackend>::InnerBackend;
        let model = load::<I<B>>(device);
        let io = Fixture::load(fixtures(), "vild_tiny_io.safetensors");
        let images = io.tensor::<I<B>, 4>("images", device);
        let classes = io.tensor::<I<B>, 2>("class_embeddings", device);
        let is_base = [true, true, false, true, false];
        for ensemble in [None, Some(EnsembleWeights::new())] {
            let config = VildPredictConfig::new().with_ensemble(ensemble).with_score_threshold(0.0).with_max_detections(30);
            let dets = predict(&model, images.clone(), classes.clone(), &is_base, &config).unwrap();
            assert_eq!(dets.len(), 2);
            for d in &dets {
                assert!(!d.boxes.is_empty() && d.boxes.len() <= 30);
                assert!(d.scores.windows(2).all(|w| w[0] >= w[1]), "by descending score");
                assert!(d.labels.iter().all(|&l| l < 5));
                assert!(d.boxes.iter().all(|b| b[0] >= 0.0 && b[1] >= 0.0 && b[2] <= 80.0 && b[3] <= 64.0 && b[0] <= b[2]));
                // Per-class NMS: no two kept boxes of one class overlap above the threshold.
                for i in 0..d.boxes.len() {
                    for j in i + 1..d.boxes.len() {
                        if d.labels[i] == d.labels[j] {
                            assert!(detclip_models::vild::host_iou(&d.boxes[i], &d.boxes[j]) <= 0.5);
                        }
                    }
                }
            }
        }
        // Each image's own size inside the padded batch: everything stays inside it (as
        // torchvision clips to `image_sizes`); the padded size gives `predict`'s detections.
        let config = VildPredictConfig::new().with_score_threshold(0.0).with_max_detections(30);
        let sizes = [[40, 50], [64, 33]];
        let within = predict_within(&model, images.clone(), &sizes, classes.clone(), &is_base, &config).unwrap();
        for (d, [h, w]) in within.iter().zip(sizes) {
            assert!(!d.boxes.is_empty());
            assert!(d.boxes.iter().all(|b| b[2] <= w as f32 && b[3] <= h as f32), "a box past its image: {:?}", d.boxes);
        }
        assert_eq!(
            predict_within(&model, images.clone(), &[[64, 80]; 2], classes.clone(), &is_base, &config).unwrap(),
            predict(&model, images.clone(), classes.clone(), &is_base, &config).unwrap()
        );
        let err = predict_within(&model, images.clone(), &[[64, 80]], classes.clone(), &is_base, &config).unwrap_err();
        assert!(matches!(err, DetError::Shape { what: "image sizes", .. }), "{err}");
        let err = predict(&model, images, classes, &[true], &VildPredictConfig::new()).unwrap_err();
        assert!(matches!(err, DetError::Shape { what: "is_base", .. }), "{err}");
    }
}

backend_test! {
    fn vild_r50_matches_torchvision_maskrcnn_resnet50_fpn_layout<B>(device) {
        // Built lazily: none of the ~44M parameters is allocated.
        let manifest = std::fs::read_to_string(fixtures().join("vild_r50_torchvision_shapes.txt")).unwrap();
        let keys = torchvision_keys();
        let ignore: Vec<Regex> = keys.ignore.iter().map(|p| Regex::new(p).unwrap()).collect();
        let mut official: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        let mut ignored = 0;
        for line in manifest.lines() {
            let (key, shape) = line.split_once(' ').unwrap();
            let key = keys.rename.iter().fold(key.to_string(), |k, (p, r)| Regex::new(p).unwrap().replace(&k, r.as_str()).into_owned());
            if ignore.iter().any(|re| re.is_match(&key)) {
                ignored += 1;
                continue;
            }
            let shape = shape.split(',').map(|d| d.parse().unwrap()).collect();
            assert!(official.insert(key.clone(), shape).is_none(), "two official keys map to {key}");
        }
        let mut visitor = LazyShapes::default();
        VildConfig::r50(512).init::<B>(device).unwrap().visit(&mut visitor);
        let vild_own = ["background", "box_regression.", "projection.", "image_projection.", "mask_head.logits."];
        let ours: BTreeMap<String, Vec<usize>> = visitor
            .found
            .iter()
            .filter(|(path, _, _)| !vild_own.iter().any(|p| path.starts_with(p)))
            .map(|(path, container, shape)| {
                let norm = container == "Struct:BatchNorm";
                match path.rsplit_once('.') {
                    Some((_, "weight")) if container == "Struct:Linear" => (path.clone(), shape.iter().rev().copied().collect()),
                    Some((prefix, "gamma")) if norm => (format!("{prefix}.weight"), shape.clone()),
                    Some((prefix, "beta")) if norm => (format!("{prefix}.bias"), shape.clone()),
                    _ => (path.clone(), shape.clone()),
                }
            })
            .collect();
        let only_official: Vec<_> = official.keys().filter(|k| !ours.contains_key(*k)).collect();
        let only_ours: Vec<_> = ours.keys().filter(|k| !official.contains_key(*k)).collect();
        assert!(only_official.is_empty() && only_ours.is_empty(), "only torchvision {only_official:?}, only ours {only_ours:?}");
        for (key, shape) in &official {
            assert_eq!(&ours[key], shape, "{key}");
        }
        // 53 norms' num_batches_tracked, box_predictor's and mask_fcn_logits' weight and bias.
        assert_eq!(ignored, 53 + 4 + 2, "ignored keys");
        eprintln!("ViLD R50: {} tensors match maskrcnn_resnet50_fpn, {ignored} ignored", official.len());
    }
}
