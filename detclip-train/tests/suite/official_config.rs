//! Official configuration files read into recipes (`detclip import --recipe glip
//! --official-config FILE.yaml --text-model BERT_DIR`), and the official chunked evaluation
//! (LVIS's path: `TEST.CHUNKED_EVALUATION`, `clean_name`, no separator after the last name)
//! against microsoft/GLIP's own run, file in → detections out; RegionSpot sized by its CLIP
//! folder (`--recipe regionspot --text-model CLIP_DIR`).

use std::path::{Path, PathBuf};

use detclip_models::glip::{GlipConfig, GlipPromptConfig};
use detclip_train::commands::AnyRecipe;
use detclip_train::import::import_checkpoint;
use detclip_train::learner::load_trained;
use detclip_train::recipe::Recipe;
use detclip_train::recipes::GlipRecipe;

use crate::harness::{locked, match_reference, photo_sample, scratch};

fn models_fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../detclip-models/tests/fixtures")
        .join(name)
}

/// The 64-piece BERT of `glip_tiny_official.pth` as a Hugging Face folder: the config.json
/// transformers wrote for it and its tokenizer.json.
fn bert64_folder(name: &str) -> PathBuf {
    let dir = scratch(name).join("bert64");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(
        models_fixture("glip_bert64_config.json"),
        dir.join("config.json"),
    )
    .unwrap();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer_bert64.json"),
        dir.join("tokenizer.json"),
    )
    .unwrap();
    dir
}

/// The official code hard-codes X-MHA's 8 heads in a 2048-wide space; the fixture's run
/// patched them to the tiny model's (4, 32) (`glip_official_e2e.py`).
fn with_tiny_fusion(mut r: GlipRecipe) -> GlipRecipe {
    r.model.fusion_heads = 4;
    r.model.fusion_embed_dim = 32;
    r
}

fn json<T: serde::Serialize>(x: &T) -> serde_json::Value {
    serde_json::to_value(x).unwrap()
}

#[test]
fn the_official_yaml_of_the_fixture_model_gives_its_recipe() {
    let bert = bert64_folder("official-yaml");
    let yaml = models_fixture("glip_tiny_official.yaml");
    let r = with_tiny_fusion(
        GlipRecipe::from_official(std::slice::from_ref(&yaml), &[], &bert).unwrap(),
    );
    // Every size the official run built its model with.
    assert_eq!(json(&r.model), json(&GlipConfig::small()));
    assert_eq!(r.text.max_tokens, 32);
    assert_eq!((r.test.short_side, r.test.max_long), (800, Some(1333)));
    assert_eq!(
        (
            r.test.pre_nms_top_k,
            r.test.nms_iou,
            r.test.max_detections,
            r.test.candidate_threshold
        ),
        (1000, 0.6, 100, 0.05)
    );
    assert_eq!(r.test.prompt, GlipPromptConfig::official(". ", None));
    assert_eq!(r.data.size_divisor, 32);
    r.validate().unwrap();

    // Overrides on the command line, as the official tools take them.
    let r = GlipRecipe::from_official(
        std::slice::from_ref(&yaml),
        &[
            "TEST.CHUNKED_EVALUATION=40".into(),
            "MODEL.ATSS.DETECTIONS_PER_IMG=300".into(),
            "INPUT.MIN_SIZE_TEST=600".into(),
        ],
        &bert,
    )
    .unwrap();
    assert_eq!(r.test.prompt.chunk_classes, Some(40));
    assert_eq!((r.test.max_detections, r.test.short_side), (300, 600));

    // A second file over the first (a task config after the model's).
    let task = scratch("official-yaml-task").join("task.yaml");
    std::fs::write(
        &task,
        "MODEL:\n  ATSS:\n    NUM_CLASSES: 8\nDATASETS:\n  TEST: (\"lvis_evaluation_mini_val\",)\n\
         INPUT:\n  MIN_SIZE_TEST: 640\n  MAX_SIZE_TEST: 1000\nTEST:\n  IMS_PER_BATCH: 8\n",
    )
    .unwrap();
    let r = GlipRecipe::from_official(&[yaml, task], &[], &bert).unwrap();
    assert_eq!((r.test.short_side, r.test.max_long), (640, Some(1000)));

    // What `detclip import` builds from the same options.
    let any = AnyRecipe::for_import(
        "glip",
        None,
        &[models_fixture("glip_tiny_official.yaml")],
        &[],
        Some(&bert),
    )
    .unwrap();
    let AnyRecipe::Glip(g) = any else {
        panic!("not a glip recipe")
    };
    assert_eq!(g.model.num_layers, 2);
}

/// GLIP-T's yaml as the official repository writes it (tuples as Python literals, `True`),
/// over `bert-base-uncased`'s sizes, gives the GLIP-T preset that `detclip import` uses when
/// no yaml is given.
#[test]
fn glip_t_yaml_gives_the_glip_t_preset() {
    let Some(minilm) = detclip_core::testing::shared_model(
        "glip_t_yaml_gives_the_glip_t_preset",
        "all-MiniLM-L6-v2",
    ) else {
        return;
    };
    // bert-base-uncased's config.json with its 30,522-piece tokenizer (MiniLM's is the same
    // vocabulary).
    let bert = scratch("glip-t-yaml").join("bert-base-uncased");
    std::fs::create_dir_all(&bert).unwrap();
    std::fs::copy(minilm.join("tokenizer.json"), bert.join("tokenizer.json")).unwrap();
    std::fs::write(
        bert.join("config.json"),
        r#"{"architectures": ["BertForMaskedLM"], "attention_probs_dropout_prob": 0.1,
            "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "hidden_size": 768,
            "initializer_range": 0.02, "intermediate_size": 3072, "layer_norm_eps": 1e-12,
            "max_position_embeddings": 512, "model_type": "bert", "num_attention_heads": 12,
            "num_hidden_layers": 12, "pad_token_id": 0, "type_vocab_size": 2,
            "vocab_size": 30522}"#,
    )
    .unwrap();
    let yaml = bert.parent().unwrap().join("glip_t.yaml");
    std::fs::write(&yaml, GLIP_T_YAML).unwrap();
    let from_yaml = GlipRecipe::from_official(&[yaml], &[], &bert).unwrap();
    let preset = GlipRecipe::released(&bert).unwrap();
    assert_eq!(json(&from_yaml.model), json(&preset.model));
    assert_eq!(json(&from_yaml.test), json(&preset.test));
    assert_eq!(from_yaml.text, preset.text);
    assert_eq!(
        json(&from_yaml.model.backbone),
        json(&GlipConfig::glip_t().backbone)
    );
}

/// The keys of `configs/pretrain/glip_Swin_T_O365_GoldG.yaml` that decide the model and its
/// test-time behaviour, in that file's notation.
const GLIP_T_YAML: &str = r#"
MODEL:
  META_ARCHITECTURE: "GeneralizedVLRCNN"
  WEIGHT: "swin_tiny_patch4_window7_224.pth"
  RPN_ONLY: True
  RPN_ARCHITECTURE: "VLDYHEAD"
  BACKBONE:
    CONV_BODY: "SWINT-FPN-RETINANET"
    OUT_CHANNELS: 256
    FREEZE_CONV_BODY_AT: -1
  LANGUAGE_BACKBONE:
    FREEZE: False
    MODEL_TYPE: "bert-base-uncased" # "roberta-base", "clip"
    MASK_SPECIAL: False
  RPN:
    USE_FPN: True
    ANCHOR_SIZES: (64, 128, 256, 512, 1024)
    ANCHOR_STRIDE: (8, 16, 32, 64, 128)
    ASPECT_RATIOS: (1.0,)
    SCALES_PER_OCTAVE: 1
  DYHEAD:
    CHANNELS: 256
    NUM_CONVS: 6
    USE_GN: True
    USE_DYRELU: True
    USE_DFCONV: True
    USE_DYFUSE: True
    TOPK: 9
    SCORE_AGG: "MEAN"
    LOG_SCALE: 0.0
    FUSE_CONFIG:
      EARLY_FUSE_ON: True
      TYPE: "MHA-B"
      USE_CLASSIFICATION_LOSS: False
      USE_TOKEN_LOSS: False
      USE_CONTRASTIVE_ALIGN_LOSS: False
      CONTRASTIVE_HIDDEN_DIM: 64
      USE_DOT_PRODUCT_TOKEN_LOSS: True
      USE_FUSED_FEATURES_DOT_PRODUCT: True
      USE_LAYER_SCALE: True
      CLAMP_MIN_FOR_UNDERFLOW: True
      CLAMP_MAX_FOR_OVERFLOW: True
      CLAMP_BERTATTN_MIN_FOR_UNDERFLOW: True
      CLAMP_BERTATTN_MAX_FOR_OVERFLOW: True
      CLAMP_DOT_PRODUCT: True
    USE_CHECKPOINT: True
TEST:
  DURING_TRAINING: False
  IMS_PER_BATCH: 64
DATASETS:
  TRAIN: ("object365_dt_train", "mixed_train_no_coco", "flickr30k_train", )
  TEST: ("coco_2017_val", )
  DISABLE_SHUFFLE: False
  ADD_DET_PROMPT: False
  RANDOM_SAMPLE_NEG: 85
  CONTROL_PROB: (0.0, 0.0, 0.5, 0.0)
  SEPARATION_TOKENS: ". "
INPUT:
  PIXEL_MEAN: [ 103.530, 116.280, 123.675 ]
  PIXEL_STD: [ 57.375, 57.120, 58.395 ]
  MIN_SIZE_TRAIN: 800
  MAX_SIZE_TRAIN: 1333
  MIN_SIZE_TEST: 800
  MAX_SIZE_TEST: 1333
AUGMENT:
  MULT_MIN_SIZE_TRAIN: (480,560,640,720,800)
DATALOADER:
  SIZE_DIVISIBILITY: 32
SOLVER:
  OPTIMIZER: ADAMW
  BASE_LR: 0.0001
  LANG_LR: 0.00001
  WEIGHT_DECAY: 0.0001
  STEPS: (0.67, 0.89)
"#;

#[test]
fn official_yaml_values_we_do_not_reproduce_are_refused_by_key() {
    let bert = bert64_folder("official-yaml-bad");
    let yaml = models_fixture("glip_tiny_official.yaml");
    let err = |overrides: &[&str]| {
        let o: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
        GlipRecipe::from_official(std::slice::from_ref(&yaml), &o, &bert)
            .unwrap_err()
            .to_string()
    };
    for (set, key) in [
        ("MODEL.DYHEAD.FUSE_CONFIG.TYPE=MHA-S", "FUSE_CONFIG.TYPE"),
        ("MODEL.BACKBONE.CONV_BODY=R-50-FPN-RETINANET", "CONV_BODY"),
        ("INPUT.PIXEL_STD=[1.0, 1.0, 1.0]", "INPUT.PIXEL_STD"),
        (
            "MODEL.DYHEAD.FUSE_CONFIG.USE_CONTRASTIVE_ALIGN_LOSS=True",
            "CONTRASTIVE",
        ),
        ("MODEL.LANGUAGE_BACKBONE.LANG_DIM=768", "LANG_DIM"),
        ("MODEL.LANGUAGE_BACKBONE.MAX_QUERY_LEN=256", "MAX_QUERY_LEN"),
        (
            "MODEL.RPN.ANCHOR_SIZES=(64, 128, 256, 512, 2048)",
            "ANCHOR_SIZES",
        ),
        ("MODEL.RPN.ASPECT_RATIOS=(0.5, 1.0, 2.0)", "ASPECT_RATIOS"),
        ("TEST.CHUNKED_EVALUATION=0", "CHUNKED_EVALUATION"),
        ("TEST.USE_MULTISCALE=True", "USE_MULTISCALE"),
        ("MODEL.DYHEAD.NUM_CONVS=zero", "NUM_CONVS"),
        ("MODEL.SWINT.DEPTHS=(1, 1, 1)", "DEPTHS"),
        ("DATASETS.USE_CAPTION_PROMPT=True", "CAPTION_PROMPT"),
    ] {
        let e = err(&[set]);
        assert!(e.contains(key) && e.contains("an override"), "{set}: {e}");
    }
    let e = err(&["TEST.CHUNKED_EVALUATION"]);
    assert!(e.contains("KEY=VALUE"), "{e}");

    let dir = scratch("official-yaml-files");
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    for (file, text, want) in [
        ("list.yaml", "- a\n- b\n", "not a mapping"),
        ("bad.yaml", "MODEL: [unclosed\n", "not YAML"),
        ("base.yaml", "_BASE_: other.yaml\n", "_BASE_"),
        ("two.yaml", "A: 1\n---\nB: 2\n", "several YAML documents"),
    ] {
        let p = write(file, text);
        let e = GlipRecipe::from_official(&[p], &[], &bert)
            .unwrap_err()
            .to_string();
        assert!(e.contains(want) && e.contains(file), "{file}: {e}");
    }
    let e = GlipRecipe::from_official(&[dir.join("missing.yaml")], &[], &bert)
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing.yaml"), "{e}");

    // Options of `detclip import` that do not go together.
    let y = [models_fixture("glip_tiny_official.yaml")];
    let refused =
        |name: &str, config: Option<&Path>, y: &[PathBuf], sets: &[String], t: Option<&Path>| {
            AnyRecipe::for_import(name, config, y, sets, t)
                .map(|_| ())
                .expect_err("refused")
                .to_string()
        };
    assert!(refused("glip", None, &y, &[], None).contains("--text-model"));
    assert!(refused("glip", Some(&yaml), &y, &[], Some(&bert)).contains("--config"));
    assert!(refused("regionspot", None, &y, &[], None).contains("`regionspot`"));
    assert!(
        refused(
            "glip",
            None,
            &[],
            &["TEST.CHUNKED_EVALUATION=40".into()],
            Some(&bert)
        )
        .contains("--official-set")
    );
}

backend_test! {
    /// The official chunked evaluation, as GLIP evaluates LVIS, against microsoft/GLIP's own
    /// run (`glip_official_e2e.py --chunked`): the recipe read from the model's official yaml
    /// and the evaluation command's overrides (`TEST.CHUNKED_EVALUATION 3`, 300 detections,
    /// 400/667), the released layout imported, then `predict` on three COCO photos with seven
    /// LVIS-style names (`bow_(weapon)`, sparse ids). The prompts are the official queries
    /// character for character, each class's tokens the official positive map, and the
    /// detections the official ones.
    fn official_chunked_evaluation_gives_the_official_detections<B>(device) {
        let Some(data) = detclip_core::testing::shared_data("official_chunked_evaluation_gives_the_official_detections") else {
            return;
        };
        let want: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(models_fixture("glip_official_chunked.json"))
                .expect("run scripts/fixtures/glip_official_e2e.py --chunked"),
        )
        .unwrap();
        let bert = bert64_folder("official-chunked");
        let overrides: Vec<String> = want["overrides"].as_array().unwrap().iter().map(|o| o.as_str().unwrap().to_string()).collect();
        let recipe = with_tiny_fusion(
            GlipRecipe::from_official(&[models_fixture("glip_tiny_official.yaml")], &overrides, &bert).unwrap(),
        );
        let cats = want["categories"].as_array().unwrap();
        let names: Vec<String> = cats.iter().map(|c| c["name"].as_str().unwrap().to_string()).collect();
        let ids: Vec<u64> = cats.iter().map(|c| c["id"].as_u64().unwrap()).collect();

        // The prompts and each class's tokens, as the official code builds them.
        let cx = recipe.context().unwrap();
        let prompts = recipe
            .test
            .prompt
            .prompts(&names, &recipe.test.descriptions, recipe.text.max_tokens, |t| {
                cx.test.encode(t).map_or(usize::MAX, |e| e.attention_mask.iter().filter(|&&m| m == 1).count())
            })
            .unwrap();
        let queries: Vec<&str> = want["queries"].as_array().unwrap().iter().map(|q| q.as_str().unwrap()).collect();
        assert_eq!(prompts.iter().map(|p| p.text.as_str()).collect::<Vec<_>>(), queries);
        for (p, official) in prompts.iter().zip(want["positive_tokens"].as_array().unwrap()) {
            let encoded = cx.test.encode(&p.text).unwrap();
            for e in &p.entries {
                let tokens = detclip_models::glip::phrase_tokens(&encoded, &[e.span]);
                let id = ids[e.source].to_string();
                let theirs: Vec<usize> = official[&id].as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as usize).collect();
                assert_eq!(tokens, theirs, "tokens of `{}` in `{}`", names[e.source], p.text);
            }
        }

        let out = scratch("import-glip-chunked").join("run");
        let path = locked(|| import_checkpoint::<_, B>(&recipe, &[models_fixture("glip_tiny_official.pth")], &out, device)).unwrap();
        let (_, model) = locked(|| load_trained::<GlipRecipe, B::InnerBackend>(&path, device)).unwrap();
        let (mut worst_iou, mut worst_score, mut matched, mut total) = (1.0f32, 0.0f32, 0usize, 0usize);
        for img in want["images"].as_array().unwrap() {
            let file = img["file"].as_str().unwrap();
            let sample = photo_sample(&data, file);
            let dets = detclip_train::evaluate::predict(&recipe, &cx, &model, &[sample], &names, 0.0, 1, device).unwrap().remove(0);
            let (m, official) = match_reference(&dets, img, |l| ids[l]);
            // The rows in groups of two (bounded memory) give the same detections.
            let mut grouped = recipe.clone();
            grouped.test.max_rows = 2;
            let again = detclip_train::evaluate::predict(&grouped, &cx, &model, &[photo_sample(&data, file)], &names, 0.0, 1, device).unwrap().remove(0);
            assert_eq!(
                again.iter().map(|d| (d.label, d.score, d.bbox)).collect::<Vec<_>>(),
                dets.iter().map(|d| (d.label, d.score, d.bbox)).collect::<Vec<_>>(),
                "{file}: max_rows 2"
            );
            let here = m.count;
            worst_iou = worst_iou.min(m.worst_iou);
            worst_score = worst_score.max(m.worst_score);
            // What is left unmatched sits at a chunk's 300-detection cut, where this random
            // model's scores crowd within 1e-4 of 0.5068 and the JPEG decoder's grey levels
            // reorder them (as in the photo test above).
            eprintln!("{file}: official {} detections over {} chunks, ours {}, matched {here}", official, queries.len(), dets.len());
            assert!(here * 100 >= official * 95, "{file}: {here} of {} matched", official);
            matched += here;
            total += official.max(dets.len());
        }
        assert!(matched * 100 >= total * 97, "{matched} of {total} matched");
        eprintln!("GLIP chunked evaluation vs official: {matched}/{total} matched; worst matched IoU {worst_iou:.6}, worst score diff {worst_score:.2e}");
    }
}

/// `detclip import --recipe regionspot --text-model CLIP_DIR`: the released RegionSpot of the
/// folder's CLIP. `openai/clip-vit-base-patch16`'s config.json gives RegionSpot-BB's sizes.
#[test]
fn regionspot_is_sized_by_its_clip_folder() {
    use detclip_models::regionspot::RegionSpotConfig;
    use detclip_train::recipes::RegionSpotRecipe;
    let dir = scratch("regionspot-clip-b16").join("clip-vit-base-patch16");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("config.json"),
        r#"{"architectures": ["CLIPModel"], "model_type": "clip", "projection_dim": 512,
            "logit_scale_init_value": 2.6592, "initializer_factor": 1.0,
            "text_config": {"hidden_size": 512, "intermediate_size": 2048,
              "num_attention_heads": 8, "num_hidden_layers": 12, "max_position_embeddings": 77,
              "vocab_size": 49408, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-05,
              "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1, "projection_dim": 512},
            "vision_config": {"hidden_size": 768, "intermediate_size": 3072,
              "num_attention_heads": 12, "num_hidden_layers": 12, "patch_size": 16,
              "image_size": 224, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-05,
              "projection_dim": 512}}"#,
    )
    .unwrap();
    let r = RegionSpotRecipe::released_from_clip_folder(&dir).unwrap();
    assert_eq!(json(&r.model), json(&RegionSpotConfig::vit_b_16()));
    assert_eq!(
        json(&r),
        json(&RegionSpotRecipe::released(
            RegionSpotConfig::vit_b_16(),
            dir.join("tokenizer.json")
        ))
    );

    // Through `detclip import`'s options, with a folder whose tokenizer is there.
    let tiny = models_fixture("hf_clip_tiny");
    let AnyRecipe::RegionSpot(r) =
        AnyRecipe::for_import("regionspot", None, &[], &[], Some(&tiny)).unwrap()
    else {
        panic!("not a regionspot recipe")
    };
    assert_eq!(r.model.head.clip_dim, r.model.clip.vision.width);
    // A text tower alone cannot size RegionSpot.
    let text_only = scratch("regionspot-clip-text").join("clip-text");
    std::fs::create_dir_all(&text_only).unwrap();
    std::fs::write(
        text_only.join("config.json"),
        r#"{"model_type": "clip_text_model", "hidden_size": 32, "intermediate_size": 64,
            "num_attention_heads": 4, "num_hidden_layers": 2, "max_position_embeddings": 16,
            "vocab_size": 100, "hidden_act": "quick_gelu", "projection_dim": 16}"#,
    )
    .unwrap();
    let e = RegionSpotRecipe::released_from_clip_folder(&text_only)
        .unwrap_err()
        .to_string();
    assert!(e.contains("text tower only"), "{e}");
}
