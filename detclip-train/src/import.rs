//! `detclip import`: an official checkpoint turned into a run folder of ours.
//!
//! The recipe's model is built from its config (seeded as `train` seeds it), the released
//! weights are read into it by the recipe's [`Recipe::import_official`] (each recipe with a
//! released format implements it through its model family's key map), and the folder gets
//! `config.json` and a `checkpoint.bin` at step 0 (the model, a fresh optimiser state, the
//! sampler at its start) — the files `train` writes. So `detclip detect --checkpoint
//! RUN/checkpoint.bin` runs the released model, `detclip train --config RUN/config.json --out
//! RUN --resume` trains on from it, and `learner.init_from` starts a fine-tuning run from
//! it.
//!
//! Bad input — a recipe without a released format, a missing file, a missing, unexpected or
//! mis-shaped key, a folder that already holds a run — is one error, and nothing is written.

use std::fs;
use std::path::{Path, PathBuf};

use burn::module::AutodiffModule;
use detclip_core::ext::DetclipAutodiffBackend;
use detclip_core::{DetError, Result};

use crate::data::SamplerState;
use crate::learner::{
    Checkpoint, GroupedAdamW, Header, RunFiles, init_model, model_bytes, write_atomic,
};
use crate::recipe::Recipe;

/// Imports `checkpoints` (the released files the recipe's [`Recipe::import_official`]
/// documents) into a new run folder `out`; returns its checkpoint's path.
pub fn import_checkpoint<R: Recipe, B: DetclipAutodiffBackend>(
    recipe: &R,
    checkpoints: &[PathBuf],
    out: &Path,
    device: &B::Device,
) -> Result<PathBuf>
where
    R::Model<B>: AutodiffModule<B, InnerModule = R::Model<B::InnerBackend>>,
{
    recipe.validate()?;
    let files = RunFiles::of(out);
    if files.checkpoint.exists() || files.log.exists() {
        return Err(DetError::InvalidOption {
            op: "import",
            why: format!(
                "{} already holds a run; choose another --out",
                out.display()
            ),
        });
    }
    if checkpoints.is_empty() {
        return Err(DetError::InvalidOption {
            op: "import",
            why: "no --checkpoint given".into(),
        });
    }
    for path in checkpoints {
        if !path.is_file() {
            return Err(DetError::Io {
                path: path.display().to_string(),
                msg: "the checkpoint to import does not exist".into(),
            });
        }
    }
    let model = init_model::<R, B>(recipe, device)?;
    let model = recipe.import_official(model, checkpoints, device)?;
    let optim =
        GroupedAdamW::<B, R::Model<B>>::new(recipe.learner().optim.clone(), &model, R::param_group);
    let checkpoint = Checkpoint {
        header: Header {
            recipe: R::NAME.to_string(),
            config: serde_json::to_value(recipe).expect("a recipe serialises"),
            step: 0,
            sampler: SamplerState {
                step: 0,
                cursors: vec![0; recipe.data().sources.len()],
            },
            model_len: 0,
            optim_len: 0,
            loss_scaler: None,
        },
        model: model_bytes::<B, _>(&model)?,
        optim: optim.to_bytes()?,
    };
    fs::create_dir_all(out).map_err(|e| DetError::Io {
        path: out.display().to_string(),
        msg: e.to_string(),
    })?;
    let json = serde_json::to_string_pretty(recipe).expect("a recipe serialises");
    write_atomic(&files.config, json.as_bytes())?;
    checkpoint.write(&files.checkpoint)?;
    Ok(files.checkpoint)
}
