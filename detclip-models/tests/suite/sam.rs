//! Segment Anything against `segment_anything.modeling` (a tiny SAM with seeded random
//! weights, `scripts/fixtures/sam.py`), loaded from its state dict through `sam_keys()`.

use std::collections::BTreeMap;

use burn::prelude::*;
use burn::tensor::TensorData;
use detclip_core::DetError;
use detclip_models::import::{LoadOptions, load_checkpoint};
use detclip_models::sam::{
    ImageEncoderViTConfig, MaskDecoderConfig, PointPrompts, PromptEncoderConfig, ResizeLongestSide,
    Sam, SamConfig, TwoWayTransformerConfig, get_rel_pos, preprocess, sam_keys,
};
use regex::Regex;

use crate::harness::{Fixture, LazyShapes, assert_close, fixtures, max_abs_diff, to_vec};

const TOL: f32 = 1e-4;

/// The script's tiny config: 64×64 input, 8×8 patches, window 3 (the grid pads 8 → 9), one
/// global block, width 32 → 16.
pub(crate) fn tiny_config() -> SamConfig {
    let encoder = ImageEncoderViTConfig::new()
        .with_img_size(64)
        .with_patch_size(8)
        .with_embed_dim(32)
        .with_depth(3)
        .with_num_heads(2)
        .with_out_chans(16)
        .with_window_size(3)
        .with_global_attn_indexes(vec![1]);
    SamConfig::new(
        encoder,
        PromptEncoderConfig::new()
            .with_embed_dim(16)
            .with_image_embedding_size([8, 8])
            .with_input_image_size([64, 64])
            .with_mask_in_chans(8),
        MaskDecoderConfig::new()
            .with_transformer_dim(16)
            .with_transformer(
                TwoWayTransformerConfig::new()
                    .with_embedding_dim(16)
                    .with_num_heads(2)
                    .with_mlp_dim(32),
            )
            .with_iou_head_hidden_dim(16),
    )
}

fn tiny_sam<B: Backend>(device: &B::Device) -> Sam<B> {
    let mut sam = tiny_config().init::<B>(device);
    let path = fixtures().join("sam_tiny.pth");
    let report = load_checkpoint(&mut sam, &path, &sam_keys(), &LoadOptions::default())
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        report.applied.len(),
        188,
        "every key of the state dict: {report:?}"
    );
    sam
}

fn io() -> Fixture {
    Fixture::load(fixtures(), "sam_tiny_io.safetensors")
}

/// Asserts parity within [`TOL`] and prints the max abs diff (the book's parity table).
fn check<B: Backend, const D: usize>(what: &str, got: Tensor<B, D>, f: &Fixture, key: &str) {
    assert_eq!(got.dims().to_vec(), f.shape(key), "{what}: shape");
    let (got, expected) = (to_vec(got), f.f32s(key));
    eprintln!("{what}: max |diff| {:e}", max_abs_diff(&got, &expected));
    assert_close(what, &got, &expected, TOL, 0.0);
}

fn labels<B: Backend>(f: &Fixture, key: &str, device: &B::Device) -> Tensor<B, 2, Int> {
    Tensor::from_data(TensorData::new(f.i64s(key), f.shape(key)), device)
}

backend_test! {
    fn sam_preprocess_and_box_resize_match<B>(device) {
        let f = io();
        let raw = f.tensor::<B, 4>("image_raw", device);
        check("preprocess", preprocess(raw, 64).unwrap(), &f, "image_pre");
        let boxes = f.tensor::<B, 2>("boxes_orig", device);
        let resize = ResizeLongestSide::new(64);
        assert_eq!(resize.preprocess_shape(480, 640), [48, 64]);
        check("ResizeLongestSide boxes", resize.apply_boxes(boxes, [480, 640]).unwrap(), &f, "boxes_resized");
    }
}

backend_test! {
    fn sam_get_rel_pos_matches_with_and_without_interpolation<B>(device) {
        let f = io();
        for (q, k, len) in [(3, 3, 5), (4, 4, 9), (3, 6, 7), (6, 3, 5)] {
            let table = f.tensor::<B, 2>(&format!("relpos_{q}_{k}_{len}_table"), device);
            let out = get_rel_pos(q, k, table);
            check(&format!("get_rel_pos q={q} k={k} len={len}"), out, &f, &format!("relpos_{q}_{k}_{len}_out"));
        }
    }
}

backend_test! {
    fn sam_image_encoder_matches<B>(device) {
        let f = io();
        let sam = tiny_sam::<B>(device);
        let kinds: Vec<usize> = sam.image_encoder.blocks.iter().map(|b| b.window_size()).collect();
        assert_eq!(kinds, [3, 0, 3], "windowed, global, windowed");
        let pre = sam.preprocess(f.tensor::<B, 4>("image_raw", device)).unwrap();
        check("image embeddings", sam.embed_images(pre).unwrap(), &f, "image_embeddings");
    }
}

backend_test! {
    fn sam_prompt_encoder_matches<B>(device) {
        let f = io();
        let pe = tiny_sam::<B>(device).prompt_encoder;
        check("dense pe", pe.get_dense_pe(), &f, "dense_pe");

        let (sparse, dense) = pe.forward(None, Some(f.tensor("boxes", device)), None).unwrap();
        check("boxes sparse", sparse, &f, "boxes_sparse");
        check("boxes dense (no mask)", dense, &f, "boxes_dense");

        let points = PointPrompts { coords: f.tensor("points", device), labels: labels(&f, "point_labels", device) };
        let (sparse, dense) = pe.forward(Some(points), None, None).unwrap();
        check("points sparse (padded)", sparse, &f, "points_sparse");
        check("points dense", dense, &f, "points_dense");

        let points = PointPrompts { coords: f.tensor("points2", device), labels: labels(&f, "point_labels2", device) };
        let (sparse, dense) = pe
            .forward(Some(points), Some(f.tensor("boxes2", device)), Some(f.tensor("mask_inputs", device)))
            .unwrap();
        check("points + boxes sparse", sparse, &f, "points_boxes_sparse");
        check("mask prompt dense", dense, &f, "mask_dense");
    }
}

backend_test! {
    fn sam_mask_decoder_matches_with_output_tokens<B>(device) {
        let f = io();
        let sam = tiny_sam::<B>(device);
        let embeddings = f.tensor::<B, 4>("image_embeddings", device).narrow(0, 0, 1);
        let cases = [
            ("dec_boxes_multi", "boxes_sparse", "boxes_dense", true),
            ("dec_boxes_single", "boxes_sparse", "boxes_dense", false),
            ("dec_mixed_multi", "points_boxes_sparse", "mask_dense", true),
        ];
        for (tag, sparse, dense, multimask) in cases {
            let out = sam
                .mask_decoder
                .forward(
                    embeddings.clone(),
                    sam.prompt_encoder.get_dense_pe(),
                    f.tensor(sparse, device),
                    f.tensor(dense, device),
                    multimask,
                )
                .unwrap();
            check(&format!("{tag} masks"), out.masks.clone(), &f, &format!("{tag}_masks"));
            check(&format!("{tag} iou"), out.iou_predictions.clone(), &f, &format!("{tag}_iou"));
            check(&format!("{tag} tokens"), out.tokens.clone(), &f, &format!("{tag}_tokens"));
            // The accessors are views of `tokens`: row 0 per prompt set, then rows 1..=4.
            let [b, t, c] = out.tokens.dims();
            let hs = to_vec(out.tokens.clone());
            let rows = |start: usize, n: usize| -> Vec<f32> {
                (0..b).flat_map(|i| hs[(i * t + start) * c..(i * t + start + n) * c].to_vec()).collect()
            };
            assert_eq!(to_vec(out.iou_token()), rows(0, 1));
            assert_eq!(to_vec(out.mask_tokens()), rows(1, 4));
        }
    }
}

backend_test! {
    fn sam_end_to_end_box_prompts_match<B>(device) {
        let f = io();
        let sam = tiny_sam::<B>(device);
        let pre = sam.preprocess(f.tensor::<B, 4>("image_raw", device)).unwrap();
        let embeddings = sam.embed_images(pre).unwrap().narrow(0, 0, 1);
        let out = sam.decode(embeddings, None, Some(f.tensor("boxes", device)), None, true).unwrap();
        check("end-to-end masks", out.masks, &f, "dec_boxes_multi_masks");
        check("end-to-end iou", out.iou_predictions, &f, "dec_boxes_multi_iou");
        check("end-to-end tokens", out.tokens, &f, "dec_boxes_multi_tokens");
        let low_res = f.tensor::<B, 4>("postprocess_in", device);
        let masks = sam.postprocess_masks(low_res, [48, 64], [60, 80]).unwrap();
        check("postprocess masks", masks, &f, "postprocess_out");
        // No prompt at all: only the output tokens, the no-mask dense embedding.
        let embeddings = f.tensor::<B, 4>("image_embeddings", device).narrow(0, 0, 1);
        let out = sam.decode(embeddings, None, None, None, true).unwrap();
        check("no-prompt masks", out.masks, &f, "dec_empty_multi_masks");
        check("no-prompt tokens", out.tokens, &f, "dec_empty_multi_tokens");
    }
}

backend_test! {
    fn sam_checkpoint_of_another_config_is_refused<B>(device) {
        // Two blocks where the checkpoint has three, and a wider decoder MLP: both listed.
        let mut config = tiny_config();
        config.image_encoder.depth = 2;
        config.mask_decoder.transformer.mlp_dim = 48;
        let mut sam = config.init::<B>(device);
        let path = fixtures().join("sam_tiny.pth");
        let err = load_checkpoint(&mut sam, &path, &sam_keys(), &LoadOptions::default()).unwrap_err();
        let DetError::Checkpoint { why, .. } = &err else { panic!("wrong error kind: {err}") };
        for needle in ["image_encoder.blocks.2.attn.qkv", "mask_decoder.transformer.layers.0.mlp.lin1"] {
            assert!(why.contains(needle), "`{needle}` not in: {why}");
        }
    }
}

backend_test! {
    fn sam_rejects_bad_input<B>(device) {
        let sam = tiny_config().init::<B>(device);
        let is_shape = |r: Result<(), DetError>, what: &str| {
            assert!(matches!(r, Err(DetError::Shape { .. })), "{what}: {r:?}");
        };
        let image = |c, h, w| Tensor::<B, 4>::zeros([1, c, h, w], device);
        is_shape(sam.embed_images(image(3, 32, 64)).map(drop), "image of the wrong size");
        is_shape(sam.embed_images(image(1, 64, 64)).map(drop), "image with one channel");
        is_shape(sam.preprocess(image(4, 48, 64)).map(drop), "RGBA image");
        is_shape(sam.preprocess(image(3, 65, 64)).map(drop), "image larger than the input");
        let pe = &sam.prompt_encoder;
        let boxes = |n, k| Some(Tensor::<B, 2>::zeros([n, k], device));
        is_shape(pe.forward(None, boxes(3, 5), None).map(drop), "boxes [3, 5]");
        let points = |n, k, l: [usize; 2]| PointPrompts {
            coords: Tensor::<B, 3>::zeros([n, k, 2], device),
            labels: Tensor::<B, 2, Int>::zeros(l, device),
        };
        is_shape(pe.forward(Some(points(2, 3, [2, 2])), None, None).map(drop), "labels [2, 2] for 3 points");
        is_shape(pe.forward(Some(points(2, 3, [2, 3])), boxes(3, 4), None).map(drop), "2 point sets, 3 boxes");
        let mask = Some(Tensor::<B, 4>::zeros([1, 1, 16, 16], device));
        is_shape(pe.forward(None, boxes(1, 4), mask).map(drop), "mask at the wrong size");
        let resize = ResizeLongestSide::new(64);
        is_shape(resize.apply_boxes(Tensor::<B, 2>::zeros([2, 2], device), [10, 10]).map(drop), "resize boxes [2, 2]");
        let low_res = Tensor::<B, 4>::zeros([1, 3, 32, 32], device);
        let bad_crop = sam.postprocess_masks(low_res, [65, 64], [60, 80]);
        assert!(matches!(bad_crop, Err(DetError::InvalidOption { .. })), "{bad_crop:?}");
        let dec = &sam.mask_decoder;
        let (sparse, dense) = pe.forward(None, boxes(2, 4), None).unwrap();
        let emb = |n| Tensor::<B, 4>::zeros([n, 16, 8, 8], device);
        is_shape(dec.forward(emb(3), pe.get_dense_pe(), sparse.clone(), dense.clone(), true).map(drop), "3 embeddings for 2 prompt sets");
        is_shape(dec.forward(emb(1), pe.get_dense_pe(), sparse.clone(), dense.clone().narrow(0, 0, 1), true).map(drop), "dense of batch 1");
        assert!(dec.forward(emb(2), pe.get_dense_pe(), sparse, dense, true).is_ok(), "one embedding per prompt set");
    }
}

#[test]
fn sam_released_configs_have_the_official_shapes() {
    for (config, width, depth, heads, global) in [
        (SamConfig::vit_b(), 768, 12, 12, vec![2, 5, 8, 11]),
        (SamConfig::vit_l(), 1024, 24, 16, vec![5, 11, 17, 23]),
        (SamConfig::vit_h(), 1280, 32, 16, vec![7, 15, 23, 31]),
    ] {
        let e = &config.image_encoder;
        assert_eq!((e.embed_dim, e.depth, e.num_heads), (width, depth, heads));
        assert_eq!(e.global_attn_indexes, global);
        assert_eq!(
            (e.img_size, e.patch_size, e.window_size, e.out_chans),
            (1024, 16, 14, 256)
        );
        assert_eq!(config.prompt_encoder.image_embedding_size, [64, 64]);
        assert_eq!(config.prompt_encoder.mask_in_chans, 16);
        assert_eq!(config.mask_decoder.transformer.mlp_dim, 2048);
        assert_eq!(config.mask_decoder.transformer.num_heads, 8);
    }
}

/// The official key and shape our parameter loads from: Linear weights are stored `[out, in]`,
/// LayerNorm's `gamma`/`beta` are `weight`/`bias`.
fn as_official(path: &str, container: &str, shape: &[usize]) -> (String, Vec<usize>) {
    match (container, path.rsplit_once('.')) {
        ("Struct:Linear", Some((_, "weight"))) => {
            (path.into(), shape.iter().rev().copied().collect())
        }
        ("Struct:LayerNorm", Some((prefix, "gamma"))) => {
            (format!("{prefix}.weight"), shape.to_vec())
        }
        ("Struct:LayerNorm", Some((prefix, "beta"))) => (format!("{prefix}.bias"), shape.to_vec()),
        _ => (path.into(), shape.to_vec()),
    }
}

backend_test! {
    fn sam_released_presets_match_the_official_state_dicts<B>(device) {
        // Built lazily: nothing of ViT-H's 2.5 GB is allocated.
        let manifest = std::fs::read_to_string(fixtures().join("sam_official_shapes.txt")).unwrap();
        let keys = sam_keys();
        for (name, config) in [("vit_b", SamConfig::vit_b()), ("vit_l", SamConfig::vit_l()), ("vit_h", SamConfig::vit_h())] {
            let mut official: BTreeMap<String, Vec<usize>> = BTreeMap::new();
            for line in manifest.lines().filter(|l| l.starts_with(&format!("{name} "))) {
                let mut parts = line.split(' ').skip(1);
                let key = parts.next().unwrap();
                let key = keys.rename.iter().fold(key.to_string(), |k, (p, r)| {
                    Regex::new(p).unwrap().replace(&k, r.as_str()).into_owned()
                });
                let shape = parts.next().unwrap().split(',').map(|d| d.parse().unwrap()).collect();
                official.insert(key, shape);
            }
            let mut visitor = LazyShapes::default();
            config.init::<B>(device).visit(&mut visitor);
            let ours: BTreeMap<String, Vec<usize>> = visitor
                .found
                .iter()
                .map(|(path, container, shape)| as_official(path, container, shape))
                .collect();
            let only_official: Vec<_> = official.keys().filter(|k| !ours.contains_key(*k)).collect();
            let only_ours: Vec<_> = ours.keys().filter(|k| !official.contains_key(*k)).collect();
            assert!(only_official.is_empty() && only_ours.is_empty(), "{name}: only official {only_official:?}, only ours {only_ours:?}");
            for (key, shape) in &official {
                assert_eq!(&ours[key], shape, "{name}: {key}");
            }
            eprintln!("{name}: {} tensors match the official layout", official.len());
        }
    }
}
