//! DetCLIPv2: output shapes, input errors, the concept cache, the tokenizer, and the losses'
//! gradient paths. (No official weights exist, so there is no key map to check.)

use burn::prelude::*;
use burn::tensor::Distribution;
use detclip_core::DetError;
use detclip_core::assign::LevelAnchors;
use detclip_models::detclipv2::{
    BackboneConfig, DetClipV2Config, DetClipV2LossConfig, HashedWordTokenizer, ImageBoxes,
};
use detclip_models::fpn::ExtraLevels;
use detclip_models::swin::SwinConfig;

use crate::harness::{assert_close, max_abs_diff, to_vec};

fn names(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

backend_test! {
    fn small_model_output_shapes<B>(device) {
        let model = DetClipV2Config::small().init::<B::InnerBackend>(device).unwrap();
        let images = Tensor::random([2, 3, 64, 96], Distribution::Normal(0.0, 1.0), device);
        let out = model.forward_image(images).unwrap();
        // P3–P5 of 64×96: 8×12 + 4×6 + 2×3 = 126 locations.
        assert_eq!(out.sizes, [[8, 12], [4, 6], [2, 3]]);
        assert_eq!(out.regions.dims(), [2, 126, 32]);
        assert_eq!(out.bbox.dims(), [2, 126, 4]);
        assert_eq!(out.centerness.dims(), [2, 126]);
        let norms = to_vec(out.regions.clone().powi_scalar(2).sum_dim(2).sqrt());
        assert_close("unit regions", &norms, &vec![1.0; 252], 1e-4, 0.0);
        let cache = model.concept_cache(&names(&["red ring", "blue star", "circle"])).unwrap();
        let logits = model.logits(out.regions, cache.embeddings).unwrap();
        assert_eq!(logits.dims(), [2, 126, 3]);
        let anchors = LevelAnchors::new(&out.sizes, 4.0).unwrap();
        assert_eq!((anchors.len(), anchors.counts.clone()), (126, vec![96, 24, 6]));
    }
}

backend_test! {
    fn swin_backbone_variant_builds_and_runs<B>(device) {
        let swin = SwinConfig::new(16, [1, 1, 1, 1], [1, 2, 2, 4])
            .with_out_indices(vec![1, 2, 3])
            .with_drop_path_rate(0.0);
        let mut config = DetClipV2Config::small();
        config.backbone = BackboneConfig::Swin(swin.clone());
        config.extra = ExtraLevels::P6P7FromP5;
        let model = config.init::<B::InnerBackend>(device).unwrap();
        let out = model.forward_image(Tensor::zeros([1, 3, 128, 128], device)).unwrap();
        // P3–P7: 16² + 8² + 4² + 2² + 1².
        assert_eq!(out.regions.dims(), [1, 256 + 64 + 16 + 4 + 1, 32]);
        config.backbone = BackboneConfig::Swin(swin.with_out_indices(vec![0, 1, 2, 3]));
        let err = config.init::<B::InnerBackend>(device).unwrap_err();
        assert!(matches!(err, DetError::InvalidOption { .. }), "{err}");
        let t = DetClipV2Config::swin_t();
        assert_eq!((t.levels(), t.backbone.out_channels()), (5, vec![192, 384, 768]));
    }
}

backend_test! {
    fn bad_input_is_an_error<B>(device) {
        let model = DetClipV2Config::small().init::<B::InnerBackend>(device).unwrap();
        for shape in [[1, 4, 64, 64], [1, 3, 60, 64], [1, 1, 64, 64]] {
            let err = model.forward_image(Tensor::zeros(shape, device)).unwrap_err();
            assert!(matches!(err, DetError::Shape { what: "images", .. }), "{shape:?}: {err}");
        }
        let err = model.concept_cache(&[]).unwrap_err();
        assert!(matches!(err, DetError::InvalidOption { .. }), "{err}");
        let err = model.concept_cache(&names(&["red", "--"])).unwrap_err();
        assert!(matches!(err, DetError::InvalidOption { .. }), "{err}");
        let regions = Tensor::zeros([1, 5, 32], device);
        let err = model.logits(regions, Tensor::zeros([3, 16], device)).unwrap_err();
        assert!(matches!(err, DetError::Shape { what: "concepts", .. }), "{err}");
        let mut bad = DetClipV2Config::small();
        bad.prior_prob = 1.5;
        assert!(bad.init::<B::InnerBackend>(device).is_err());
    }
}

backend_test! {
    fn concept_cache_gives_the_scores_of_recomputing<B>(device) {
        let model = DetClipV2Config::small().init::<B::InnerBackend>(device).unwrap();
        let vocabulary = names(&["red ring", "blue star", "green cross", "circle"]);
        let cache = model.concept_cache(&vocabulary).unwrap();
        for seed in 0..2 {
            let images = Tensor::random([1, 3, 64, 64], Distribution::Normal(seed as f64, 1.0), device);
            let (out, cached) = model.forward_cached(images, &cache).unwrap();
            let fresh = model
                .logits(out.regions.clone(), model.encode_concepts(&vocabulary).unwrap())
                .unwrap();
            assert_eq!(max_abs_diff(&to_vec(cached.clone()), &to_vec(fresh)), 0.0);
            // A concept's scores do not depend on the rest of the vocabulary (no fusion): the
            // same column, encoded alone in a padded batch of one.
            let alone = model
                .logits(out.regions, model.encode_concepts(&names(&["blue star"])).unwrap())
                .unwrap();
            let column = cached.narrow(2, 1, 1);
            assert_close("blue star alone", &to_vec(alone), &to_vec(column), 1e-5, 1e-5);
        }
        assert_eq!(cache.index_of("green cross"), Some(2));
    }
}

backend_test! {
    fn hashed_words_are_shared_between_names<B>(device) {
        let tok = HashedWordTokenizer { vocab: 512, context: 6 };
        let ids = tok
            .encode::<B::InnerBackend>(&names(&["red ring", "Red star", "blue ring", "a b c d e f g"]), device)
            .unwrap();
        assert_eq!(ids.dims(), [4, 6]);
        let v: Vec<i64> = ids.into_data().convert::<i64>().to_vec().unwrap();
        let row = |r: usize| &v[r * 6..r * 6 + 6];
        // [start, word, word, end, pad, pad]; start = 510, end = 511 (the largest id).
        assert_eq!((row(0)[0], row(0)[3], row(0)[4]), (510, 511, 0));
        assert_eq!(row(0)[1], row(1)[1], "red");
        assert_eq!(row(0)[2], row(2)[2], "ring");
        assert_ne!(row(0)[1], row(0)[2]);
        // Truncated to context − 2 words.
        assert_eq!(row(3)[5], 511);
    }
}

backend_test! {
    fn losses_train_the_shared_tower_from_image_text_pairs<B>(device) {
        let model = DetClipV2Config::small().init::<B>(device).unwrap();
        let loss = DetClipV2LossConfig::new();
        let images = Tensor::<B, 4>::random([2, 3, 64, 64], Distribution::Normal(0.0, 1.0), device);
        let out = model.forward_image(images).unwrap();
        let anchors = LevelAnchors::new(&out.sizes, 4.0).unwrap();
        // Detection: every term, finite.
        let vocabulary = names(&["red ring", "blue star", "circle"]);
        let concepts = model.encode_concepts(&vocabulary).unwrap();
        let logits = model.logits(out.regions.clone(), concepts.clone()).unwrap();
        let gts = vec![
            ImageBoxes { boxes: vec![[8., 8., 40., 40.]], labels: vec![Some(0)] },
            ImageBoxes { boxes: vec![[20., 10., 60., 50.], [0., 40., 20., 62.]], labels: vec![Some(2), None] },
        ];
        let terms = loss.detection_terms(&out, logits, &anchors, &gts).unwrap();
        let named: Vec<_> = terms.iter().map(|(n, _)| *n).collect();
        assert_eq!(named, ["align", "reg", "centerness"]);
        for (n, v) in &terms {
            let x = to_vec(v.clone())[0];
            assert!(x.is_finite() && x > 0.0, "{n} = {x}");
        }
        // Image-text: the contrastive term reaches the tower (which the regression reads)
        // through the DCN, but not the regression conv itself.
        let captions = Tensor::stack::<3>(vec![concepts.clone().narrow(0, 0, 2), concepts.clone().narrow(0, 1, 2)], 0);
        let mask = Tensor::<B, 2>::from_floats([[1.0, 1.0], [1.0, 0.0]], device);
        let terms = loss.image_text_terms(&out, &anchors, captions, mask, concepts).unwrap();
        assert_eq!(terms[0].0, "contrastive");
        let grads = terms[0].1.clone().backward();
        let tower = model.head.tower[0].conv.weight.grad(&grads).expect("tower gradient");
        assert!(to_vec(tower.abs()).iter().any(|&g| g > 0.0));
        assert!(model.head.bbox.weight.grad(&grads).is_none());
        let err = loss
            .image_text_terms(&out, &anchors, Tensor::zeros([3, 2, 32], device), Tensor::ones([3, 2], device), Tensor::zeros([1, 32], device))
            .unwrap_err();
        assert!(matches!(err, DetError::Shape { .. }), "{err}");
    }
}
