//! Model folders as Hugging Face writes them (fixtures from scripts/fixtures/hf_text_models.py):
//! all-MiniLM-L6-v2 from `../shared/models` against transformers and sentence-transformers,
//! a tiny sentence-transformers folder in the v6 format, a tiny `CLIPModel` folder with a
//! padded batch, and every bad folder the loaders must refuse with a message naming the file
//! and the field.

use std::path::{Path, PathBuf};

use burn::prelude::*;
use detclip_core::DetError;
use detclip_models::clip::EotPooling;
use detclip_models::hf::{
    PoolingMode, SentenceEncoder, load_bert, load_clip, load_clip_text, pad_batch,
    read_clip_config, read_sentence_pooling,
};

use crate::harness::{Fixture, assert_close, fixtures, max_abs_diff, shared_model, to_vec};

fn int2<B: Backend>(f: &Fixture, key: &str, device: &B::Device) -> Tensor<B, 2, Int> {
    let s = f.shape(key);
    Tensor::from_data(TensorData::new(f.i64s(key), [s[0], s[1]]), device)
}

fn ints<B: Backend, const D: usize>(t: Tensor<B, D, Int>) -> Vec<i64> {
    t.into_data().convert::<i64>().to_vec().unwrap()
}

backend_test! {
    fn minilm_from_its_folder_matches_transformers_and_sentence_transformers<B>(device) {
        let Some(dir) = shared_model("minilm", "all-MiniLM-L6-v2") else { return };
        let io = Fixture::load(fixtures(), "hf_minilm_io.safetensors");
        let texts: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(fixtures().join("hf_minilm_texts.json")).unwrap(),
        )
        .unwrap();
        let texts: Vec<String> = texts["texts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap().to_string())
            .collect();
        assert!(texts.len() >= 20);
        // transformers' tokenizer and BertModel: the limit is tokenizer_config's 512.
        let bert = load_bert::<B>(&dir, None, false, device).unwrap();
        assert_eq!(bert.tokenizer.options().max_len, 512);
        let (ids, lens) = (io.i64s("ids"), io.i64s("lens"));
        let rows = io.f32s("rows");
        let d = bert.config.hidden_size;
        let (mut at, mut worst) = (0usize, 0f32);
        for (i, text) in texts.iter().enumerate() {
            let n = lens[i] as usize;
            let enc = bert.tokenizer.encode(text).unwrap();
            let want: Vec<i64> = ids[at..at + n].to_vec();
            let got: Vec<i64> = enc.ids.iter().map(|&v| v as i64).collect();
            assert_eq!(got, want, "token ids of text {i} {text:?}");
            at += n;
            let (ids_t, mask, types) = pad_batch::<B>(&[enc], 0, device).unwrap();
            let hidden = bert.model.forward(ids_t, mask, Some(types)).unwrap().last_hidden_state();
            for (k, pos) in [0, 1, n - 2, n - 1].into_iter().enumerate() {
                let got = to_vec(hidden.clone().slice(s![0..1, pos..pos + 1, ..]));
                let want = &rows[(i * 4 + k) * d..(i * 4 + k + 1) * d];
                worst = worst.max(max_abs_diff(&got, want));
                assert_close(&format!("text {i} position {pos}"), &got, want, 1e-4, 0.0);
            }
        }
        assert_eq!(at, ids.len());
        assert_eq!(*lens.last().unwrap(), 512, "the long text is truncated at 512");
        eprintln!("minilm: {} texts, token ids equal, last hidden state max |diff| {worst:e}", texts.len());
        // A padded batch: every position's state, padding included.
        let padded: Vec<String> = serde_json::from_str::<serde_json::Value>(
            &std::fs::read_to_string(fixtures().join("hf_minilm_texts.json")).unwrap(),
        )
        .unwrap()["padded"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap().to_string())
            .collect();
        let enc = bert.tokenizer.encode_batch(&padded).unwrap();
        let (ids_t, mask, types) = pad_batch::<B>(&enc, 0, device).unwrap();
        assert_eq!(ints(ids_t.clone()), io.i64s("padded_ids"));
        assert_eq!(ints(mask.clone()), io.i64s("padded_mask"));
        let hidden = bert.model.forward(ids_t, mask, Some(types)).unwrap().last_hidden_state();
        let got = to_vec(hidden);
        eprintln!("minilm: padded batch max |diff| {:e}", max_abs_diff(&got, &io.f32s("padded_hidden")));
        assert_close("padded batch", &got, &io.f32s("padded_hidden"), 1e-4, 0.0);
        // sentence-transformers: mean pooling, L2 norm, max_seq_length 256.
        let st = SentenceEncoder::<B>::load(&dir, device).unwrap();
        assert_eq!(st.pooling.modes, vec![PoolingMode::Mean]);
        assert!(st.pooling.normalize);
        assert_eq!(st.pooling.max_seq_length, Some(256));
        assert_eq!(st.dim(), 384);
        let got = to_vec(st.encode(&texts, 8).unwrap());
        let want = io.f32s("sentence");
        eprintln!("minilm: sentence embeddings max |diff| {:e}", max_abs_diff(&got, &want));
        assert_close("sentence embeddings", &got, &want, 1e-4, 0.0);
    }
}

backend_test! {
    fn a_sentence_transformers_v6_folder_pools_as_sentence_transformers<B>(device) {
        let dir = fixtures().join("hf_bert_tiny");
        let io = Fixture::load(fixtures(), "hf_bert_tiny_io.safetensors");
        let st = SentenceEncoder::<B>::load(&dir, device).unwrap();
        assert_eq!(
            st.pooling.modes,
            vec![PoolingMode::Cls, PoolingMode::Max, PoolingMode::MeanSqrtLen]
        );
        assert!(!st.pooling.normalize);
        assert_eq!(st.bert.tokenizer.options().max_len, 48);
        let texts = ["the cat", "a red car on the mat", "hotdogs", "person , dog . cat"];
        let (ids, mask, _) = st.tokenize(&texts).unwrap();
        assert_eq!(ints(ids), io.i64s("ids"));
        assert_eq!(ints(mask), io.i64s("mask"));
        let got = to_vec(st.encode(&texts, 3).unwrap());
        eprintln!("tiny sentence folder: max |diff| {:e}", max_abs_diff(&got, &io.f32s("sentence")));
        assert_close("tiny sentence embeddings", &got, &io.f32s("sentence"), 1e-4, 0.0);
    }
}

backend_test! {
    fn a_clip_folder_matches_transformers_with_a_padding_mask<B>(device) {
        let dir = fixtures().join("hf_clip_tiny");
        let io = Fixture::load(fixtures(), "hf_clip_tiny_io.safetensors");
        let clip = load_clip::<B>(&dir, device).unwrap();
        assert_eq!(clip.config.text.pooling, EotPooling::TokenId(535));
        assert_eq!(clip.config.text.embed_dim, 24, "the top-level projection_dim");
        let texts = ["a red car", "the cat on the mat", "dog"];
        let enc = clip.tokenizer.encode_batch(&texts).unwrap();
        let pad = clip.tokenizer.options().pad_id;
        assert_eq!(pad, 535, "tokenizer_config's pad token <|endoftext|>");
        let (ids, mask, _) = pad_batch::<B>(&enc, pad, device).unwrap();
        assert_eq!(ints(ids.clone()), io.i64s("ids"));
        assert_eq!(ints(mask.clone()), io.i64s("mask"));
        let out = clip.model.text.forward_masked(ids.clone(), Some(mask.clone())).unwrap();
        let hidden = to_vec(out.hidden);
        eprintln!("clip text with mask: hidden (padding included) max |diff| {:e}", max_abs_diff(&hidden, &io.f32s("hidden")));
        assert_close("hidden states", &hidden, &io.f32s("hidden"), 1e-4, 0.0);
        assert_close("text embeds", &to_vec(out.text_embeds), &io.f32s("text_embeds"), 1e-4, 0.0);
        // Without the mask the padded positions differ; the pooled embedding does not.
        let unmasked = clip.model.text.forward(ids.clone()).unwrap();
        assert!(max_abs_diff(&to_vec(unmasked.hidden), &io.f32s("hidden")) > 1e-3);
        assert_close("text embeds without mask", &to_vec(unmasked.text_embeds), &io.f32s("text_embeds"), 1e-4, 0.0);
        let image = clip.model.vision.forward(io.tensor::<B, 4>("pixels", device)).unwrap();
        assert_close("image embeds", &to_vec(image.image_embeds), &io.f32s("image_embeds"), 1e-4, 0.0);
        // The text tower alone from the same folder.
        let text = load_clip_text::<B>(&dir, device).unwrap();
        let alone = text.model.forward_masked(ids, Some(mask)).unwrap();
        assert_close("text tower alone", &to_vec(alone.text_embeds), &io.f32s("text_embeds"), 1e-4, 0.0);
        // A bad mask shape is an error.
        let bad = clip.model.text.forward_masked(int2::<B>(&io, "ids", device), Some(Tensor::ones([1, 2], device)));
        assert!(matches!(bad, Err(DetError::Shape { what: "attention_mask", .. })));
    }
}

/// A copy of a fixture folder in a scratch directory, with `edit` applied to its files.
fn edited(name: &str, tag: &str, edit: impl FnOnce(&Path)) -> PathBuf {
    let src = fixtures().join(name);
    let dst = std::env::temp_dir().join(format!("detclip-hf-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dst);
    copy_dir(&src, &dst);
    edit(&dst);
    dst
}

fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let to = dst.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to);
        } else {
            std::fs::copy(e.path(), to).unwrap();
        }
    }
}

/// Rewrites a JSON file of `dir` with `f`.
fn edit_json(dir: &Path, file: &str, f: impl FnOnce(&mut serde_json::Value)) {
    let p = dir.join(file);
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(&p, serde_json::to_string(&v).unwrap()).unwrap();
}

/// A change made to a copied folder.
type Edit = Box<dyn FnOnce(&Path)>;

fn bert_error<B: Backend>(tag: &str, edit: impl FnOnce(&Path), device: &B::Device) -> String {
    let dir = edited("hf_bert_tiny", tag, edit);
    let e = SentenceEncoder::<B>::load(&dir, device)
        .err()
        .map(|e| e.to_string());
    let _ = std::fs::remove_dir_all(&dir);
    e.unwrap_or_else(|| panic!("{tag}: the bad folder was accepted"))
}

fn assert_names(tag: &str, message: &str, words: &[&str]) {
    eprintln!("{tag}: {message}");
    for w in words {
        assert!(
            message.contains(w),
            "{tag}: {message:?} does not name {w:?}"
        );
    }
}

backend_test! {
    fn bad_model_folders_are_refused_naming_the_file_and_field<B>(device) {
        let cases: Vec<(&str, Edit, Vec<&str>)> = vec![
            ("no-config", Box::new(|d: &Path| std::fs::remove_file(d.join("config.json")).unwrap()), vec!["config.json", "no such file"]),
            ("roberta", Box::new(|d: &Path| edit_json(d, "config.json", |v| v["model_type"] = "roberta".into())), vec!["config.json", "model_type", "roberta"]),
            ("relative", Box::new(|d: &Path| edit_json(d, "config.json", |v| v["position_embedding_type"] = "relative_key".into())), vec!["config.json", "position_embedding_type", "relative_key"]),
            ("act", Box::new(|d: &Path| edit_json(d, "config.json", |v| v["hidden_act"] = "relu".into())), vec!["config.json", "hidden_act"]),
            ("heads", Box::new(|d: &Path| edit_json(d, "config.json", |v| v["num_attention_heads"] = 5.into())), vec!["config.json", "num_attention_heads"]),
            ("zero", Box::new(|d: &Path| edit_json(d, "config.json", |v| v["num_hidden_layers"] = 0.into())), vec!["config.json", "num_hidden_layers"]),
            ("huge", Box::new(|d: &Path| edit_json(d, "config.json", |v| v["hidden_size"] = 4096.into())), vec!["config.json", "parameters", "model.safetensors"]),
            ("absurd", Box::new(|d: &Path| edit_json(d, "config.json", |v| v["hidden_size"] = (1u64 << 40).into())), vec!["config.json", "hidden_size"]),
            ("shapes", Box::new(|d: &Path| edit_json(d, "config.json", |v| v["intermediate_size"] = 48.into())), vec!["model.safetensors", "intermediate"]),
            ("layers", Box::new(|d: &Path| edit_json(d, "config.json", |v| v["num_hidden_layers"] = 1.into())), vec!["model.safetensors", "layers.1"]),
            ("vocab", Box::new(|d: &Path| edit_json(d, "config.json", |v| v["vocab_size"] = 30.into())), vec!["tokenizer.json", "vocab_size", "30"]),
            ("no-weights", Box::new(|d: &Path| std::fs::remove_file(d.join("model.safetensors")).unwrap()), vec!["model.safetensors", "no weights"]),
            ("no-tokenizer", Box::new(|d: &Path| std::fs::remove_file(d.join("tokenizer.json")).unwrap()), vec!["tokenizer.json", "no such file"]),
            ("json", Box::new(|d: &Path| std::fs::write(d.join("config.json"), "{\"model_type\": ").unwrap()), vec!["config.json", "line 1"]),
            ("dense", Box::new(|d: &Path| edit_json(d, "modules.json", |v| v.as_array_mut().unwrap().push(serde_json::json!({"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"})))), vec!["modules.json", "Dense"]),
            ("lasttoken", Box::new(|d: &Path| edit_json(d, "1_Pooling/config.json", |v| v["pooling_mode"] = "lasttoken".into())), vec!["config.json", "pooling_mode", "lasttoken"]),
            ("pad", Box::new(|d: &Path| edit_json(d, "tokenizer_config.json", |v| v["pad_token"] = "<pad>".into())), vec!["tokenizer_config.json", "pad_token", "<pad>"]),
        ];
        for (tag, edit, words) in cases {
            let msg = bert_error::<B>(tag, edit, device);
            assert_names(tag, &msg, &words);
        }
        let missing = SentenceEncoder::<B>::load(Path::new("/nonexistent/model"), device).unwrap_err();
        assert_names("folder", &missing.to_string(), &["/nonexistent/model"]);
        // The legacy pooling flags (MiniLM's format) read in sentence-transformers' order.
        let legacy = edited("hf_bert_tiny", "legacy", |d| {
            std::fs::write(d.join("1_Pooling/config.json"), r#"{"word_embedding_dimension": 32, "pooling_mode_mean_tokens": true, "pooling_mode_cls_token": true}"#).unwrap();
        });
        assert_eq!(read_sentence_pooling(&legacy).unwrap().modes, vec![PoolingMode::Cls, PoolingMode::Mean]);
        let _ = std::fs::remove_dir_all(&legacy);
        // CLIP: another architecture, another activation, the old `eos_token_id` 2 rule.
        let clip = |tag: &str, f: Box<dyn FnOnce(&mut serde_json::Value)>| {
            let dir = edited("hf_clip_tiny", tag, |d| edit_json(d, "config.json", f));
            let r = read_clip_config(&dir.join("config.json"));
            let _ = std::fs::remove_dir_all(&dir);
            r
        };
        let e = clip("siglip", Box::new(|v| v["model_type"] = "siglip".into())).unwrap_err();
        assert_names("siglip", &e.to_string(), &["config.json", "model_type", "siglip"]);
        let e = clip("gelu", Box::new(|v| v["text_config"]["hidden_act"] = "gelu".into())).unwrap_err();
        assert_names("gelu", &e.to_string(), &["text_config.hidden_act"]);
        let legacy = clip("eos2", Box::new(|v| v["text_config"]["eos_token_id"] = 2.into())).unwrap();
        assert_eq!(legacy.config.text.pooling, EotPooling::ArgMax);
        let dir = edited("hf_clip_tiny", "clip-vocab", |d| edit_json(d, "config.json", |v| v["text_config"]["vocab_size"] = 600.into()));
        let e = load_clip_text::<B>(&dir, device).unwrap_err();
        let _ = std::fs::remove_dir_all(&dir);
        assert_names("clip vocab", &e.to_string(), &["tokenizer.json", "vocab_size"]);
    }
}
