//! RegionSpot against `scripts/fixtures/regionspot.py`: the official module re-implemented in
//! PyTorch, the tiny SAM (segment-anything) and the tiny CLIP (transformers), loaded from one
//! checkpoint in the official layout through `regionspot_keys()`.

use burn::module::{ModuleVisitor, Param};
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use detclip_core::DetError;
use detclip_models::clip::{ClipLayout, EotPooling};
use detclip_models::import::LoadReport;
use detclip_models::regionspot::{
    BoxSource, FrozenFeatures, PROMPT_TEMPLATES, RegionSpot, RegionSpotConfig, RegionSpotHead,
    RegionSpotHeadConfig, RegionSpotLossConfig, cache_key, cache_path, cached_frozen_features,
    clean_class_name, load_regionspot, read_frozen_features, regionspot_loss,
};
use detclip_models::tokenizer::{TextTokenizer, TokenizerOptions};

use crate::bert::int_tensor;
use crate::harness::{Fixture, assert_close, fixtures, max_abs_diff, to_vec};

const TOL: f32 = 1e-4;

/// The script's sizes: SAM width 16, CLIP vision width 32, joint space 16, 8 heads, 3 layers,
/// FFN 64.
fn tiny_config() -> RegionSpotConfig {
    RegionSpotConfig::new(
        crate::sam::tiny_config(),
        crate::clip::tiny_config(ClipLayout::OpenAi, EotPooling::ArgMax),
        RegionSpotHeadConfig::new()
            .with_sam_dim(16)
            .with_clip_dim(32)
            .with_text_dim(16)
            .with_ffn_dim(64),
    )
}

fn load<B: Backend>(device: &B::Device) -> (RegionSpot<B>, LoadReport) {
    let model = tiny_config().init::<B>(device).unwrap();
    load_regionspot(model, &fixtures().join("regionspot_tiny.pth"))
        .unwrap_or_else(|e| panic!("{e}"))
}

fn io() -> Fixture {
    Fixture::load(fixtures(), "regionspot_tiny_io.safetensors")
}

/// Asserts parity within [`TOL`] (shapes compared by element count: the reference keeps a
/// singleton mask axis) and prints the max abs diff (the book's parity table).
fn check<B: Backend, const D: usize>(what: &str, got: Tensor<B, D>, f: &Fixture, key: &str) {
    let (got, expected) = (to_vec(got), f.f32s(key));
    eprintln!("{what}: max |diff| {:e}", max_abs_diff(&got, &expected));
    assert_close(what, &got, &expected, TOL, 0.0);
}

/// Every float parameter of a module, in visiting order, as `(path, values)`.
#[derive(Default)]
struct Values {
    path: Vec<String>,
    found: Vec<(String, Vec<f32>)>,
}

impl<B: Backend> ModuleVisitor<B> for Values {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.into());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.found.push((self.path.join("."), to_vec(param.val())));
    }
}

fn values<B: Backend, M: Module<B>>(module: &M) -> Vec<(String, Vec<f32>)> {
    let mut v = Values::default();
    module.visit(&mut v);
    v.found
}

/// Which float parameters require a gradient and which got one, as
/// `(path, requires_gradient && has_gradient, requires_gradient || has_gradient)`.
struct HasGrad<'a, B: AutodiffBackend> {
    grads: &'a B::Gradients,
    path: Vec<String>,
    found: Vec<(String, bool, bool)>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for HasGrad<'_, B> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.into());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let has = param.val().grad(self.grads).is_some();
        let requires = param.val().is_require_grad();
        self.found
            .push((self.path.join("."), requires && has, requires || has));
    }
}

fn has_grad<B: AutodiffBackend, M: Module<B>>(
    module: &M,
    grads: &B::Gradients,
) -> Vec<(String, bool, bool)> {
    let mut v = HasGrad {
        grads,
        path: vec![],
        found: vec![],
    };
    module.visit(&mut v);
    v.found
}

backend_test! {
    fn regionspot_checkpoint_loads_every_key<B>(device) {
        let (model, report) = load::<B::InnerBackend>(device);
        // Every parameter of the model was written from the file, and (load_checkpoint
        // fails otherwise) no key of the file was left over or mis-shaped.
        let params = values::<B::InnerBackend, _>(&model).len();
        assert_eq!(report.applied.len(), params, "{report:?}");
        assert!(report.missing.is_empty() && report.unexpected.is_empty(), "{report:?}");
        for part in ["sam.", "clip.", "head.decoder.layers.2.multihead_attn.in_proj", "head.projector"] {
            assert!(report.applied.iter().any(|k| k.starts_with(part)), "{part} loaded: {report:?}");
        }
    }
}

backend_test! {
    fn regionspot_checkpoint_of_another_config_is_refused<B>(device) {
        let mut config = tiny_config();
        config.head.ffn_dim = 48;
        config.head.layers = 2;
        let model = config.init::<B::InnerBackend>(device).unwrap();
        let err = load_regionspot(model, &fixtures().join("regionspot_tiny.pth")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("head.decoder.layers.0.linear1.weight"), "{msg}");
        assert!(msg.contains("decoder.layers.2."), "{msg}");
    }
}

backend_test! {
    fn regionspot_module_matches_reference<B>(device) {
        let f = io();
        let (model, _) = load::<B::InnerBackend>(device);
        let semantic = model
            .head
            .forward(f.tensor("module_tokens", device), f.tensor("module_clip_feat", device), None)
            .unwrap();
        check("module semantic tokens", semantic.clone(), &f, "module_semantic");
        let logits = model.logits(semantic, f.tensor("module_text", device)).unwrap();
        check("module logits", logits.clone(), &f, "module_logits");
        let labels = int_tensor::<B::InnerBackend>(&f, "module_label", device);
        let loss = regionspot_loss(logits, labels, &RegionSpotLossConfig::new()).unwrap();
        check("focal loss", loss.total(), &f, "module_loss");
        assert_eq!(loss.terms()[0].0, "focal");
    }
}

backend_test! {
    fn regionspot_end_to_end_matches_reference<B>(device) {
        let f = io();
        let (model, _) = load::<B::InnerBackend>(device);
        let boxes = f.tensor::<B::InnerBackend, 2>("e2e_boxes", device).unsqueeze::<3>();
        let features = model
            .frozen_features(f.tensor("e2e_sam_image", device), boxes.clone(), f.tensor("e2e_pixels", device))
            .unwrap();
        assert_eq!(features.region_tokens.dims(), [1, 3, 16]);
        assert_eq!(features.masks.dims(), [1, 3, 32, 32]);
        check("position-aware tokens", features.region_tokens.clone(), &f, "e2e_tokens");
        check("SAM masks", features.masks.clone(), &f, "e2e_masks");
        check("CLIP feature map", features.clip_features.clone(), &f, "e2e_clip_feat");
        let ids = int_tensor::<B::InnerBackend>(&f, "e2e_ids", device);
        let classes = model.class_embeddings_from_ids(ids, 2).unwrap();
        check("class embeddings (template mean)", classes.clone(), &f, "e2e_class_emb");
        let out = model
            .forward(f.tensor("e2e_sam_image", device), boxes, f.tensor("e2e_pixels", device), classes.clone())
            .unwrap();
        check("end-to-end logits", out.logits.clone(), &f, "e2e_logits");
        let cached = model.forward_cached(&features, classes).unwrap();
        assert_eq!(to_vec(cached.logits), to_vec(out.logits));
    }
}

backend_test! {
    fn regionspot_training_step_leaves_sam_and_clip_bit_identical<B>(device) {
        let f = io();
        let (model, _) = load::<B>(device);
        let boxes = f.tensor::<B, 2>("e2e_boxes", device).unsqueeze::<3>();
        let classes = model.class_embeddings_from_ids(int_tensor::<B>(&f, "e2e_ids", device), 2).unwrap();
        let out = model
            .forward(f.tensor("e2e_sam_image", device), boxes, f.tensor("e2e_pixels", device), classes)
            .unwrap();
        let labels = Tensor::<B, 2, Int>::from_data(TensorData::new(vec![0i64, 2, 1], [1, 3]), device);
        let loss = regionspot_loss(out.logits, labels, &RegionSpotLossConfig::new()).unwrap();
        let grads = loss.total().backward();
        let frozen_before = (values::<B, _>(&model.sam), values::<B, _>(&model.clip));
        let head_before = values::<B, _>(&model.head);
        let (sam_grads, clip_grads) = (has_grad(&model.sam, &grads), has_grad(&model.clip, &grads));
        for (path, _, any) in sam_grads.iter().chain(&clip_grads) {
            assert!(!any, "frozen parameter {path} requires or got a gradient");
        }
        let head_grads = has_grad(&model.head, &grads);
        assert!(head_grads.iter().all(|(_, both, _)| *both), "every module parameter learns: {head_grads:?}");

        let grads = GradientsParams::from_grads(grads, &model);
        let mut optim = AdamWConfig::new().init::<B, RegionSpot<B>>();
        let model = optim.step(1e-2, model, grads);
        assert_eq!(values::<B, _>(&model.sam), frozen_before.0, "SAM changed");
        assert_eq!(values::<B, _>(&model.clip), frozen_before.1, "CLIP changed");
        let head_after = values::<B, _>(&model.head);
        let moved = head_after.iter().zip(&head_before).filter(|(a, b)| a.1 != b.1).count();
        assert_eq!(moved, head_before.len(), "every module parameter moves");
    }
}

backend_test! {
    fn regionspot_cache_round_trips_and_checks_its_source<B>(device) {
        let f = io();
        let config = tiny_config();
        let (model, _) = load::<B::InnerBackend>(device);
        let dir = std::env::temp_dir().join(format!("detclip-regionspot-cache-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let image = std::path::Path::new("images/0001.jpg");
        let boxes: Vec<[f32; 4]> = f.f32s("e2e_boxes").chunks(4).map(|c| [c[0], c[1], c[2], c[3]]).collect();
        let run = || {
            cached_frozen_features(
                &model, &config, &dir, image, &boxes,
                f.tensor("e2e_sam_image", device), f.tensor("e2e_pixels", device),
            )
            .unwrap()
        };
        let computed = run();
        let key = cache_key(image, &boxes, &config);
        let path = cache_path(&dir, &key);
        assert!(path.is_file(), "cache written to {}", path.display());
        let stale: Vec<_> = std::fs::read_dir(&dir).unwrap().filter_map(|e| e.ok())
            .filter(|e| e.path() != path).collect();
        assert!(stale.is_empty(), "no temporary file left: {stale:?}");
        let read = run();
        let flat = |x: &FrozenFeatures<B::InnerBackend>| {
            (to_vec(x.region_tokens.clone()), to_vec(x.masks.clone()), to_vec(x.clip_features.clone()))
        };
        assert_eq!(flat(&read), flat(&computed));
        check("cached position-aware tokens", read.region_tokens.clone(), &f, "e2e_tokens");

        // Other boxes, another image or another model: another key.
        let mut moved = boxes.clone();
        moved[0][0] += 1.0;
        assert_ne!(cache_key(image, &moved, &config), key);
        assert_ne!(cache_key(std::path::Path::new("images/0002.jpg"), &boxes, &config), key);
        let mut other = config.clone();
        other.head.layers = 2;
        assert_ne!(cache_key(image, &boxes, &other), key);
        // A file read for the wrong source is refused, a missing one is None.
        let err = read_frozen_features::<B::InnerBackend>(&path, "another image", device).unwrap_err();
        assert!(matches!(err, DetError::Io { .. }), "{err}");
        assert!(read_frozen_features::<B::InnerBackend>(&dir.join("none.safetensors"), "x", device).unwrap().is_none());
        // Cached images batch together.
        let batch = FrozenFeatures::cat(vec![read.clone(), read]).unwrap();
        assert_eq!(batch.region_tokens.dims(), [2, 3, 16]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

backend_test! {
    fn regionspot_rejects_bad_input<B>(device) {
        let f = io();
        let (model, _) = load::<B::InnerBackend>(device);
        type I<B> = <B as AutodiffBackend>::InnerBackend;
        let tokens = f.tensor::<I<B>, 3>("module_tokens", device);
        let feat = f.tensor::<I<B>, 3>("module_clip_feat", device);
        // Wrong SAM width, wrong CLIP width, batch mismatch.
        assert!(matches!(model.head.forward(feat.clone(), feat.clone(), None), Err(DetError::Shape { .. })));
        assert!(matches!(model.head.forward(tokens.clone(), tokens.clone(), None), Err(DetError::Shape { .. })));
        assert!(matches!(model.head.forward(tokens.clone(), feat.clone().narrow(0, 0, 1), None), Err(DetError::Shape { .. })));
        // Class embeddings of the wrong width; labels out of range or mis-shaped.
        let semantic = model.head.forward(tokens, feat, None).unwrap();
        assert!(matches!(model.logits(semantic.clone(), Tensor::zeros([3, 5], device)), Err(DetError::Shape { .. })));
        let logits = model.logits(semantic, f.tensor("module_text", device)).unwrap();
        let bad = Tensor::<I<B>, 2, Int>::from_data(TensorData::new(vec![0i64, 1, 2, 3, 4, 6, 0, 0, 0, 0], [2, 5]), device);
        assert!(matches!(regionspot_loss(logits.clone(), bad, &RegionSpotLossConfig::new()), Err(DetError::InvalidOption { .. })));
        let short = Tensor::<I<B>, 2, Int>::zeros([2, 4], device);
        assert!(matches!(regionspot_loss(logits, short, &RegionSpotLossConfig::new()), Err(DetError::Shape { .. })));
        // Templates must divide the rows; boxes must be [B, N, 4].
        let ids = int_tensor::<I<B>>(&f, "e2e_ids", device);
        assert!(matches!(model.class_embeddings_from_ids(ids, 4), Err(DetError::Shape { .. })));
        let boxes = Tensor::<I<B>, 3>::zeros([1, 3, 3], device);
        let res = model.frozen_features(f.tensor("e2e_sam_image", device), boxes, f.tensor("e2e_pixels", device));
        assert!(matches!(res, Err(DetError::Shape { .. })));
        // A module that does not fit SAM/CLIP is refused at construction.
        let mut config = tiny_config();
        config.head.clip_dim = 24;
        assert!(matches!(config.init::<I<B>>(device), Err(DetError::InvalidOption { .. })));
    }
}

/// The reference's logits turned into the official inference's ranking on the host: softmax
/// over classes, all (box, class) pairs sorted by probability, each probability then times its
/// box's detector score.
fn host_ranking(logits: &[f32], classes: usize, box_scores: &[f32]) -> Vec<(f32, usize, usize)> {
    let mut pairs = Vec::new();
    for (b, row) in logits.chunks(classes).enumerate() {
        let max = row.iter().cloned().fold(f32::MIN, f32::max);
        let sum: f32 = row.iter().map(|v| (v - max).exp()).sum();
        for (c, v) in row.iter().enumerate() {
            pairs.push(((v - max).exp() / sum, b, c));
        }
    }
    // The official order: by class probability, then each times its box's score.
    pairs.sort_by(|x, y| y.0.total_cmp(&x.0));
    pairs
        .into_iter()
        .map(|(p, b, c)| (p * box_scores[b], b, c))
        .collect()
}

backend_test! {
    fn regionspot_recognizes_given_and_detector_boxes<B>(device) {
        type I<B> = <B as AutodiffBackend>::InnerBackend;
        let f = io();
        let (model, _) = load::<I<B>>(device);
        let classes = model.class_embeddings_from_ids(int_tensor::<I<B>>(&f, "e2e_ids", device), 2).unwrap();
        // The 64×64 SAM input is a 96×128 image resized (by 0.5) to 48×64 and padded: boxes
        // in the original image are twice the fixture's, which are in SAM's frame.
        let original = f.tensor::<I<B>, 2>("e2e_boxes", device) * 2.0;
        let recognize = |source, k| {
            model
                .recognize(
                    f.tensor("e2e_sam_image", device), f.tensor("e2e_pixels", device),
                    original.clone(), source, [96, 128], classes.clone(), k,
                )
                .unwrap()
        };
        let logits = f.f32s("e2e_logits");
        for (source, box_scores) in [
            (BoxSource::Given, vec![1.0f32; 3]),
            (BoxSource::Detector(Tensor::from_floats([0.9, 0.2, 0.6], device)), vec![0.9, 0.2, 0.6]),
        ] {
            let p = recognize(source, 5);
            let expected = host_ranking(&logits, 3, &box_scores);
            let scores: Vec<f32> = expected.iter().take(5).map(|e| e.0).collect();
            assert_close("recognize scores", &to_vec(p.scores.clone()), &scores, TOL, 0.0);
            let ints = |t: Tensor<I<B>, 1, Int>| t.into_data().convert::<i64>().to_vec::<i64>().unwrap();
            let (boxes_at, labels) = (ints(p.box_indices.clone()), ints(p.labels.clone()));
            for (i, e) in expected.iter().take(5).enumerate() {
                assert_eq!((boxes_at[i] as usize, labels[i] as usize), (e.1, e.2), "rank {i}");
            }
            let chosen = to_vec(p.boxes.clone());
            let all = to_vec(original.clone());
            for (i, &b) in boxes_at.iter().enumerate() {
                assert_eq!(chosen[i * 4..i * 4 + 4], all[b as usize * 4..b as usize * 4 + 4]);
            }
            // Masks at the original size, the thresholded SAM mask of each prediction's box.
            assert_eq!(p.masks.dims(), [5, 96, 128]);
            let full = model
                .sam
                .postprocess_masks(f.tensor::<I<B>, 4>("e2e_masks", device).swap_dims(0, 1), [48, 64], [96, 128])
                .unwrap()
                .greater_elem(0.0)
                .squeeze_dim::<3>(0);
            let want = full.select(0, p.box_indices.clone());
            assert_eq!(p.masks.int().into_data().convert::<i64>().to_vec::<i64>().unwrap(), want.int().into_data().convert::<i64>().to_vec::<i64>().unwrap());
        }
        // top_k beyond N·C keeps every pair.
        assert_eq!(recognize(BoxSource::Given, 100).scores.dims(), [9]);
        let err = model.recognize(
            f.tensor("e2e_sam_image", device), f.tensor("e2e_pixels", device), original.clone(),
            BoxSource::Detector(Tensor::from_floats([0.9, 0.2], device)), [96, 128], classes.clone(), 5,
        );
        assert!(matches!(err, Err(DetError::Shape { .. })));
        let err = model.recognize(
            f.tensor("e2e_sam_image", device), f.tensor("e2e_pixels", device), original,
            BoxSource::Given, [96, 128], classes, 0,
        );
        assert!(matches!(err, Err(DetError::InvalidOption { .. })));
    }
}

backend_test! {
    fn regionspot_class_names_are_cleaned_and_templates_checked<B>(device) {
        type I<B> = <B as AutodiffBackend>::InnerBackend;
        assert_eq!(clean_class_name("wall-other-merged"), "wall");
        assert_eq!(clean_class_name("grass-stuff"), "grass");
        assert_eq!(PROMPT_TEMPLATES.len(), 81);
        assert!(PROMPT_TEMPLATES.iter().all(|t| t.matches("{}").count() == 1));
        let (model, _) = load::<I<B>>(device);
        let tok = TextTokenizer::from_file(
            fixtures().join("tokenizer_clip_tiny.json"),
            TokenizerOptions::new(16).with_pad_to_max_len(true),
        )
        .unwrap();
        let none: [&str; 0] = [];
        assert!(matches!(model.class_embeddings(&tok, &none, PROMPT_TEMPLATES), Err(DetError::InvalidOption { .. })));
        assert!(matches!(model.class_embeddings(&tok, &["cat"], &["a photo"]), Err(DetError::InvalidOption { .. })));
    }
}

backend_test! {
    fn regionspot_key_positions_are_sams_encoding_and_enter_only_the_keys<B>(device) {
        type I<B> = <B as AutodiffBackend>::InnerBackend;
        let f = io();
        let (official, _) = load::<I<B>>(device);
        let tokens = f.tensor::<I<B>, 3>("module_tokens", device);
        let feat = f.tensor::<I<B>, 3>("module_clip_feat", device);
        let [_, l, _] = feat.dims();
        // SAM's random-Fourier encoding of each patch centre of CLIP's 4 × 4 grid; zeros for
        // the class token; a token count that is not 1 + g² is refused.
        let pe = official.key_positions(l).unwrap();
        assert_eq!(pe.dims(), [1, 17, 16]);
        let values = to_vec(pe.clone());
        assert!(values[..16].iter().all(|v| *v == 0.0));
        let centre = Tensor::<I<B>, 2>::from_floats([[2.5 / 4.0, 1.5 / 4.0]], device);
        let expected = to_vec(official.sam.prompt_encoder.pe_layer.encode(centre));
        let row = 1 + 4 + 2; // class token, then row 1, column 2
        assert_close("patch (1, 2)", &values[row * 16..(row + 1) * 16], &expected, 1e-6, 0.0);
        assert!(matches!(official.key_positions(18), Err(DetError::Shape { .. })));
        // The same module with a key-position projection of chosen weights.
        let with = |weight: Tensor<I<B>, 2>, bias: Tensor<I<B>, 1>| RegionSpotHead {
            key_pos: Some(burn::nn::Linear { weight: Param::from_tensor(weight), bias: Some(Param::from_tensor(bias)) }),
            ..official.head.clone()
        };
        let reference = to_vec(official.head.forward(tokens.clone(), feat.clone(), None).unwrap());
        // Such a module needs the positions, of the right shape.
        let zero = with(Tensor::zeros([16, 32], device), Tensor::zeros([32], device));
        assert!(matches!(zero.forward(tokens.clone(), feat.clone(), None), Err(DetError::Shape { .. })));
        let wrong = pe.clone().narrow(1, 0, 16);
        assert!(matches!(zero.forward(tokens.clone(), feat.clone(), Some(wrong)), Err(DetError::Shape { .. })));
        // Zero weights: the official module exactly.
        let got = to_vec(zero.forward(tokens.clone(), feat.clone(), Some(pe.clone())).unwrap());
        assert_close("zero key positions", &got, &reference, 1e-6, 0.0);
        // The same vector added to every key shifts each query's logits by one constant, which
        // softmax ignores: positions reach the keys only, never the values.
        let shift = Tensor::<I<B>, 1>::random([32], burn::tensor::Distribution::Normal(0.0, 1.0), device);
        let constant = with(Tensor::zeros([16, 32], device), shift);
        let got = to_vec(constant.forward(tokens.clone(), feat.clone(), Some(pe.clone())).unwrap());
        assert_close("constant key shift", &got, &reference, 1e-4, 0.0);
        // Positions that differ between patches change the attention, hence the output.
        let weight = Tensor::<I<B>, 2>::random([16, 32], burn::tensor::Distribution::Normal(0.0, 1.0), device);
        let varying = with(weight, Tensor::zeros([32], device));
        let got = to_vec(varying.forward(tokens, feat, Some(pe)).unwrap());
        assert!(max_abs_diff(&got, &reference) > 1e-3, "key positions left the output unchanged");
        // The options build the projections; official checkpoints have no such keys.
        let mut config = tiny_config();
        config.head.key_positions = true;
        config.head.query_positions = true;
        let model = config.init::<I<B>>(device).unwrap();
        assert_eq!(model.head.key_pos.as_ref().map(|l| l.weight.dims()), Some([16, 32]));
        assert_eq!(model.head.query_pos.as_ref().map(|l| l.weight.dims()), Some([16, 32]));
        assert!(official.head.key_pos.is_none() && official.head.query_pos.is_none());
    }
}

backend_test! {
    fn regionspot_query_positions_encode_box_centres_and_enter_only_the_queries<B>(device) {
        type I<B> = <B as AutodiffBackend>::InnerBackend;
        let f = io();
        let (official, _) = load::<I<B>>(device);
        let tokens = f.tensor::<I<B>, 3>("module_tokens", device);
        let feat = f.tensor::<I<B>, 3>("module_clip_feat", device);
        // SAM's encoding of each box's centre in its 64 × 64 input frame.
        let boxes = Tensor::<I<B>, 3>::from_floats([[[0.0, 0.0, 32.0, 16.0], [40.0, 8.0, 64.0, 64.0]]], device);
        let pe = to_vec(official.box_positions(boxes));
        let centres = Tensor::<I<B>, 2>::from_floats([[16.0 / 64.0, 8.0 / 64.0], [52.0 / 64.0, 36.0 / 64.0]], device);
        let expected = to_vec(official.sam.prompt_encoder.pe_layer.encode(centres));
        assert_close("box centres", &pe, &expected, 1e-6, 0.0);
        // The module's tokens are [2, 5, 16]: query positions of that shape, from 10 boxes.
        let many = Tensor::<I<B>, 3>::random([2, 5, 4], burn::tensor::Distribution::Uniform(0.0, 64.0), device);
        let qp = official.box_positions(many);
        let with = |weight: Tensor<I<B>, 2>| RegionSpotHead {
            query_pos: Some(burn::nn::Linear { weight: Param::from_tensor(weight), bias: None }),
            ..official.head.clone()
        };
        let reference = to_vec(official.head.forward(tokens.clone(), feat.clone(), None).unwrap());
        let zero = with(Tensor::zeros([16, 32], device));
        // Such a module needs the positions, of the right shape.
        assert!(matches!(zero.forward(tokens.clone(), feat.clone(), None), Err(DetError::Shape { .. })));
        let wrong = qp.clone().narrow(1, 0, 4);
        assert!(matches!(zero.forward_with_positions(tokens.clone(), feat.clone(), None, Some(wrong)), Err(DetError::Shape { .. })));
        // Zero weights: the official module exactly; the positions change only the
        // cross-attention's queries, so different positions change the output.
        let got = to_vec(zero.forward_with_positions(tokens.clone(), feat.clone(), None, Some(qp.clone())).unwrap());
        assert_close("zero query positions", &got, &reference, 1e-6, 0.0);
        let weight = Tensor::<I<B>, 2>::random([16, 32], burn::tensor::Distribution::Normal(0.0, 1.0), device);
        let got = to_vec(with(weight).forward_with_positions(tokens, feat, None, Some(qp)).unwrap());
        assert!(max_abs_diff(&got, &reference) > 1e-3, "query positions left the output unchanged");
    }
}

backend_test! {
    fn regionspot_clip_norm_is_a_parameter_free_layer_norm_of_clips_tokens<B>(device) {
        type I<B> = <B as AutodiffBackend>::InnerBackend;
        let f = io();
        let (official, _) = load::<I<B>>(device);
        let tokens = f.tensor::<I<B>, 3>("module_tokens", device);
        let feat = f.tensor::<I<B>, 3>("module_clip_feat", device);
        let normed = RegionSpotHead { clip_norm: true, ..official.head.clone() };
        let got = to_vec(normed.forward(tokens.clone(), feat.clone(), None).unwrap());
        // The official module on features normalised by hand (per token, biased variance).
        let (var, mean) = feat.clone().var_mean_bias(2);
        let by_hand = (feat.clone() - mean) / (var + 1e-5).sqrt();
        let expected = to_vec(official.head.forward(tokens.clone(), by_hand, None).unwrap());
        assert_close("ln_clip", &got, &expected, 1e-5, 0.0);
        // So the module no longer sees a token's scale or offset.
        let rescaled = to_vec(normed.forward(tokens.clone(), feat.clone() * 3.0 + 2.0, None).unwrap());
        assert_close("ln_clip of 3x + 2", &rescaled, &got, 1e-4, 0.0);
        let plain = to_vec(official.head.forward(tokens, feat, None).unwrap());
        assert!(max_abs_diff(&plain, &got) > 1e-3, "ln_clip changed nothing");
        let mut config = tiny_config();
        config.head.clip_norm = true;
        assert!(config.init::<I<B>>(device).unwrap().head.clip_norm);
    }
}
