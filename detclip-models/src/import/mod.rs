//! Import of official checkpoints: PyTorch `.pth`/`.pt`/`.bin` (zip or legacy pickle) and
//! safetensors, through Burn's store, with a documented key map per model family.
//!
//! A [`KeyMap`] renames the official keys to our module paths (ordered regex rules) and names
//! the official keys that have no counterpart on purpose (e.g. BERT's `position_ids` buffer).
//! [`load_checkpoint`] applies it and checks the result as a whole: every missing, unexpected
//! or mis-shaped key is listed in one [`DetError::Checkpoint`], unless the caller opts into a
//! partial load ([`LoadOptions::allow_partial`]), in which case missing and unexpected keys are
//! reported in the [`LoadReport`] instead (mis-shaped keys are always an error).
//!
//! PyTorch conventions are adapted on the way (Burn's `PyTorchToBurnAdapter`): `Linear`
//! weights are transposed from `[out, in]` to `[in, out]`, norm `weight`/`bias` become
//! `gamma`/`beta`. Scalar (rank-0) parameters, which Burn has no tensor for (CLIP's
//! `logit_scale`), load into `[1]` parameters.

use std::path::Path;
use std::rc::Rc;

use burn::prelude::Backend;
use burn::tensor::Shape;
use burn_store::{
    ApplyResult, ModuleAdapter, ModuleSnapshot, ModuleStore, PyTorchToBurnAdapter, PytorchStore,
    SafetensorsStore, TensorSnapshot,
};
use detclip_core::{DetError, Result};

/// How official key names map onto a module's paths.
#[derive(Debug, Clone, Default)]
pub struct KeyMap {
    /// `(regex, replacement)` applied in order to every official key (`$1`… refer to groups).
    pub rename: Vec<(String, String)>,
    /// Regexes of official keys (after renaming) that are expected to have no counterpart in
    /// the module; they are dropped silently.
    pub ignore: Vec<String>,
}

impl KeyMap {
    /// An empty map: official names are our names.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a rename rule.
    pub fn rename(mut self, pattern: &str, replacement: &str) -> Self {
        self.rename.push((pattern.into(), replacement.into()));
        self
    }

    /// Adds keys to ignore.
    pub fn ignore(mut self, pattern: &str) -> Self {
        self.ignore.push(pattern.into());
        self
    }
}

/// Options of [`load_checkpoint`].
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Load what matches and report the rest instead of failing (explicit opt-in).
    pub allow_partial: bool,
    /// For PyTorch files whose state dict sits under a key (e.g. `model`, `state_dict`).
    pub top_level_key: Option<String>,
}

/// What a load did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoadReport {
    /// Module paths loaded from the checkpoint.
    pub applied: Vec<String>,
    /// Module paths the checkpoint did not provide (only with `allow_partial`).
    pub missing: Vec<String>,
    /// Checkpoint keys (after renaming) with no module path, not covered by the ignore list
    /// (only with `allow_partial`).
    pub unexpected: Vec<String>,
}

/// The file formats [`load_checkpoint`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointFormat {
    /// safetensors.
    Safetensors,
    /// PyTorch `torch.save` output, zip (≥ 1.6) or legacy pickle.
    Pytorch,
}

/// Tells the format from the first bytes: safetensors starts with an 8-byte header length and
/// `{`; anything else is handed to the PyTorch reader (which checks zip / pickle itself).
pub fn detect_format(path: &Path) -> Result<CheckpointFormat> {
    use std::io::Read;
    let io = |e: std::io::Error| DetError::Checkpoint {
        file: path.display().to_string(),
        why: format!("cannot read: {e}"),
    };
    let mut head = [0u8; 9];
    let mut f = std::fs::File::open(path).map_err(io)?;
    let n = f.read(&mut head).map_err(io)?;
    Ok(if n == 9 && head[8] == b'{' {
        CheckpointFormat::Safetensors
    } else {
        CheckpointFormat::Pytorch
    })
}

/// Loads the checkpoint at `path` into `module` through `keys`; see the module docs for the
/// checks.
///
/// # Errors
/// [`DetError::Checkpoint`] when the file cannot be read or parsed, when a key is mis-shaped,
/// and (unless `allow_partial`) when keys are missing or unexpected — all listed at once.
pub fn load_checkpoint<B: Backend, M: ModuleSnapshot<B>>(
    module: &mut M,
    path: &Path,
    keys: &KeyMap,
    options: &LoadOptions,
) -> Result<LoadReport> {
    let file = path.display().to_string();
    let fail = |why: String| DetError::Checkpoint {
        file: file.clone(),
        why,
    };
    if !path.is_file() {
        return Err(fail("no such file".into()));
    }
    for (p, _) in &keys.rename {
        regex::Regex::new(p).map_err(|e| fail(format!("key map rule `{p}`: {e}")))?;
    }
    let ignore = keys
        .ignore
        .iter()
        .map(|p| regex::Regex::new(p).map_err(|e| fail(format!("key map ignore `{p}`: {e}"))))
        .collect::<Result<Vec<_>>>()?;
    // Where the weights were found when not under the expected top-level key (for the error).
    let mut fallback_note = None;
    let snapshots: Vec<TensorSnapshot> = match detect_format(path)? {
        CheckpointFormat::Safetensors => {
            let mut store = SafetensorsStore::from_file(path);
            for (p, r) in &keys.rename {
                store = store.with_key_remapping(p, r.as_str());
            }
            let all = store
                .get_all_snapshots()
                .map_err(|e| fail(format!("{e}")))?;
            all.values().cloned().collect()
        }
        CheckpointFormat::Pytorch => {
            // The expected top-level key first; then where other codebases keep their weights
            // (`model`, `state_dict`) and the file's root. The first error names the keys the
            // file has.
            let mut tops: Vec<Option<&str>> = vec![options.top_level_key.as_deref()];
            if options.top_level_key.is_some() {
                tops.extend([Some("model"), Some("state_dict"), None]);
            }
            tops.dedup();
            let mut first_error = None;
            let mut found = None;
            for top in tops {
                let mut store = PytorchStore::from_file(path);
                if let Some(k) = top {
                    store = store.with_top_level_key(k);
                }
                for (p, r) in &keys.rename {
                    store = store.with_key_remapping(p, r.as_str());
                }
                match store.get_all_snapshots() {
                    Ok(all) if !all.is_empty() => {
                        found = Some(all.values().cloned().collect::<Vec<_>>());
                        if top != options.top_level_key.as_deref() {
                            fallback_note = Some(format!(
                                "read from {} because {}",
                                top.map_or("the file's root".to_string(), |k| format!(
                                    "top-level key `{k}`"
                                )),
                                first_error.clone().unwrap_or_default()
                            ));
                        }
                        break;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        first_error.get_or_insert_with(|| format!("{e}"));
                    }
                }
            }
            match found {
                Some(snapshots) => snapshots,
                None => {
                    return Err(fail(first_error.unwrap_or_else(|| "no tensors".into())));
                }
            }
        }
    };
    let adapter = ScalarAsVector.chain(PyTorchToBurnAdapter);
    let result: ApplyResult = module.apply(snapshots, None, Some(Box::new(adapter)), false);
    let mismatched: Vec<String> = result.errors.iter().map(|e| format!("{e}")).collect();
    let missing: Vec<String> = result.missing.iter().map(|(p, _)| p.clone()).collect();
    let unexpected: Vec<String> = result
        .unused
        .iter()
        .filter(|k| !ignore.iter().any(|r| r.is_match(k)) && !applied_as_norm(k, &result.applied))
        .cloned()
        .collect();
    let mut problems = Vec::new();
    if !mismatched.is_empty() {
        problems.push(format!(
            "mis-shaped or unreadable: {}",
            mismatched.join("; ")
        ));
    }
    if !options.allow_partial {
        if !missing.is_empty() {
            problems.push(format!("missing: {}", missing.join(", ")));
        }
        if !unexpected.is_empty() {
            problems.push(format!("unexpected: {}", unexpected.join(", ")));
        }
    }
    if !problems.is_empty() {
        let hint = if options.allow_partial {
            ""
        } else {
            " (a partial load must be asked for explicitly)"
        };
        if let Some(note) = fallback_note {
            problems.push(note);
        }
        return Err(fail(format!("{}{hint}", problems.join("; "))));
    }
    Ok(LoadReport {
        applied: result.applied,
        missing,
        unexpected,
    })
}

/// Burn's store lists a norm's PyTorch `weight`/`bias` as unused even when it loaded them
/// under Burn's names `gamma`/`beta`; such keys are not unexpected.
fn applied_as_norm(key: &str, applied: &[String]) -> bool {
    let burn_name = key
        .strip_suffix(".weight")
        .map(|p| format!("{p}.gamma"))
        .or_else(|| key.strip_suffix(".bias").map(|p| format!("{p}.beta")));
    burn_name.is_some_and(|n| applied.contains(&n))
}

/// Loads PyTorch scalars (shape `[]`) as `[1]` tensors: Burn's parameters have rank ≥ 1.
#[derive(Debug, Clone, Copy)]
struct ScalarAsVector;

impl ModuleAdapter for ScalarAsVector {
    fn adapt(&self, snapshot: &TensorSnapshot) -> TensorSnapshot {
        if !snapshot.shape.is_empty() {
            return snapshot.clone();
        }
        let data = snapshot.clone_data_fn();
        TensorSnapshot::from_closure(
            Rc::new(move || {
                let mut d = data()?;
                d.shape = Shape::new([1]);
                Ok(d)
            }),
            snapshot.dtype,
            Shape::new([1]),
            snapshot.path_stack.clone().unwrap_or_default(),
            snapshot.container_stack.clone().unwrap_or_default(),
            snapshot.tensor_id.unwrap_or_default(),
        )
    }

    fn clone_box(&self) -> Box<dyn ModuleAdapter> {
        Box::new(*self)
    }
}
