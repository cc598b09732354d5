//! Checkpoints: one file with the recipe (name and config JSON), the step, the sampler state,
//! the model record and the optimiser state, written atomically and checked on reading.
//!
//! Layout: `DETCLIP-CKPT\x01` · header length (u64 LE) · header JSON · model bytes ·
//! optimiser bytes · CRC-32 of everything before it (u32 LE). The header states the byte
//! lengths, so a file cut short is recognised before the checksum is even computed.
//!
//! Writing: a temporary file in the same folder, `fsync`, rename over the target, `fsync` of
//! the folder. A process killed at any moment leaves either the old checkpoint or the new one,
//! never a mixture.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use detclip_core::{DetError, Result};
use serde::{Deserialize, Serialize};

use crate::data::SamplerState;

const MAGIC: &[u8; 13] = b"DETCLIP-CKPT\x01";

/// What a checkpoint says about itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    /// The recipe's name.
    pub recipe: String,
    /// The recipe's config, as JSON.
    pub config: serde_json::Value,
    /// Steps done.
    pub step: u64,
    /// The joint sampler's state.
    pub sampler: SamplerState,
    /// Byte length of the model record.
    pub model_len: u64,
    /// Byte length of the optimiser state (0 in an inference-only checkpoint).
    pub optim_len: u64,
    /// The loss scaler's state, when the run scales its loss (half precision).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_scaler: Option<crate::learner::LossScaler>,
}

/// A checkpoint in memory.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    /// The header.
    pub header: Header,
    /// The model record (Burn's `BinBytesRecorder`, full precision).
    pub model: Vec<u8>,
    /// The optimiser state.
    pub optim: Vec<u8>,
}

fn ckpt_err(path: &Path, why: impl Into<String>) -> DetError {
    DetError::Checkpoint {
        file: path.display().to_string(),
        why: why.into(),
    }
}

fn io_err(path: &Path, e: std::io::Error) -> DetError {
    DetError::Io {
        path: path.display().to_string(),
        msg: e.to_string(),
    }
}

impl Checkpoint {
    /// The file's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut header = self.header.clone();
        header.model_len = self.model.len() as u64;
        header.optim_len = self.optim.len() as u64;
        let json = serde_json::to_vec(&header).expect("a header serialises");
        let mut out = Vec::with_capacity(MAGIC.len() + 8 + json.len() + header.model_len as usize);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&(json.len() as u64).to_le_bytes());
        out.extend_from_slice(&json);
        out.extend_from_slice(&self.model);
        out.extend_from_slice(&self.optim);
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Parses and checks a file's bytes; `path` names it in errors.
    pub fn decode(bytes: &[u8], path: &Path) -> Result<Self> {
        if bytes.len() < MAGIC.len() + 8 || &bytes[..MAGIC.len()] != MAGIC {
            return Err(ckpt_err(
                path,
                "not a detclip training checkpoint (bad magic bytes)",
            ));
        }
        let mut at = MAGIC.len();
        let hlen = u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes")) as usize;
        at += 8;
        let json = bytes.get(at..at.saturating_add(hlen)).ok_or_else(|| {
            ckpt_err(
                path,
                format!(
                    "truncated: {} bytes, the header alone needs more",
                    bytes.len()
                ),
            )
        })?;
        let header: Header = serde_json::from_slice(json)
            .map_err(|e| ckpt_err(path, format!("unreadable header: {e}")))?;
        at += hlen;
        let expected = at as u64 + header.model_len + header.optim_len + 4;
        if bytes.len() as u64 != expected {
            return Err(ckpt_err(
                path,
                format!(
                    "truncated or padded: the file has {} bytes, its header says {expected}; \
                     it was not written completely — use an earlier checkpoint",
                    bytes.len()
                ),
            ));
        }
        let body_end = bytes.len() - 4;
        let stored = u32::from_le_bytes(bytes[body_end..].try_into().expect("4 bytes"));
        if crc32fast::hash(&bytes[..body_end]) != stored {
            return Err(ckpt_err(
                path,
                "checksum mismatch: the file is corrupt; use an earlier checkpoint",
            ));
        }
        let model_end = at + header.model_len as usize;
        Ok(Self {
            model: bytes[at..model_end].to_vec(),
            optim: bytes[model_end..body_end].to_vec(),
            header,
        })
    }

    /// Reads and checks a checkpoint file.
    pub fn read(path: &Path) -> Result<Self> {
        let bytes = fs::read(path).map_err(|e| io_err(path, e))?;
        Self::decode(&bytes, path)
    }

    /// Writes the checkpoint atomically (temporary file, fsync, rename, fsync of the folder).
    pub fn write(&self, path: &Path) -> Result<()> {
        write_atomic(path, &self.encode())
    }

    /// Checks that the checkpoint was made by recipe `name`.
    pub fn expect_recipe(&self, name: &str, path: &Path) -> Result<()> {
        if self.header.recipe == name {
            Ok(())
        } else {
            Err(ckpt_err(
                path,
                format!(
                    "made by recipe `{}`, but recipe `{name}` was asked for",
                    self.header.recipe
                ),
            ))
        }
    }
}

/// Writes `bytes` to `path` so that `path` holds either its old content or all of `bytes`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp: PathBuf = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        // Make the rename itself durable.
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    result.map_err(|e: std::io::Error| {
        let _ = fs::remove_file(&tmp);
        io_err(path, e)
    })
}
