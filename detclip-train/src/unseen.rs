//! Unseen words: the synthetic world's test images prompted with names made of words that no
//! training box, caption or prompt contains — near-synonyms of its colour and shape words —
//! and scored against the same ground truth as the world's own names.
//!
//! A text encoder trained from scratch cannot know such a word (the trigram encoder gives it
//! the embedding of its unrelated character trigrams); a pretrained one may put it near the
//! word it stands for. The AP of these prompts beside the AP of the world's own names measures
//! what the pretrained model brings.
//!
//! **How the synonyms were chosen** (fixed before any run, and not changed after): for each
//! colour and shape word, the first of a short list of common near-synonyms (written down
//! first, in [`SYNONYM_CANDIDATES`]) that is a single token of the bert-base-uncased
//! vocabulary and appears nowhere in what the world writes (concept names; captions' size,
//! texture and relation words); when no candidate is a single token, the first candidate.

use detclip_core::Result;
use detclip_core::ext::DetclipOps;
use serde::Serialize;

use crate::evaluate::{EvalReport, EvalSet, evaluate_set, predict};
use crate::recipe::Recipe;

/// Each world word and its candidate synonyms, in the order they were considered.
pub const SYNONYM_CANDIDATES: [(&str, &[&str]); 13] = [
    ("red", &["crimson", "scarlet"]),
    ("green", &["emerald"]),
    ("blue", &["azure", "navy"]),
    ("yellow", &["golden"]),
    ("purple", &["violet"]),
    ("orange", &["amber", "tangerine"]),
    ("circle", &["disc", "disk"]),
    ("square", &["box", "block"]),
    ("triangle", &["wedge"]),
    ("star", &["pentagram", "asterisk"]),
    ("ring", &["hoop"]),
    ("cross", &["plus"]),
    ("diamond", &["rhombus", "lozenge"]),
];

/// The colour words of the world.
pub const COLOUR_WORDS: [&str; 6] = ["red", "green", "blue", "yellow", "purple", "orange"];

/// Which words of a name are replaced by their synonym.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rewrite {
    /// The colour word (`red circle` → `crimson circle`).
    Colour,
    /// The shape word (`red circle` → `red disc`).
    Shape,
    /// Both (`red circle` → `crimson disc`).
    Both,
}

/// The synonym chosen for `word` (the first candidate; see the module docs), if it has one.
pub fn synonym(word: &str) -> Option<&'static str> {
    SYNONYM_CANDIDATES
        .iter()
        .find(|(w, _)| *w == word)
        .map(|(_, c)| c[0])
}

/// `name` with the words `which` selects replaced by their synonyms.
pub fn rewrite(name: &str, which: Rewrite) -> String {
    name.split_whitespace()
        .map(|w| {
            let colour = COLOUR_WORDS.contains(&w);
            let wanted = match which {
                Rewrite::Colour => colour,
                Rewrite::Shape => !colour,
                Rewrite::Both => true,
            };
            match synonym(w) {
                Some(s) if wanted => s,
                _ => w,
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// AP of one prompt wording.
#[derive(Debug, Clone, Serialize)]
pub struct WordingAp {
    /// `names`, `colour_synonyms`, `shape_synonyms` or `both_synonyms`.
    pub wording: &'static str,
    /// An example name in this wording.
    pub example: String,
    /// AP over all, seen and held-out concepts.
    pub report: EvalReport,
}

/// The evaluation set scored with the world's own names and with each rewrite.
///
/// # Errors
/// As [`predict`] and [`evaluate_set`].
pub fn unseen_word_report<R: Recipe, B: DetclipOps>(
    recipe: &R,
    cx: &R::Context,
    model: &R::Model<B>,
    set: &EvalSet,
    batch_size: usize,
    device: &B::Device,
) -> Result<Vec<WordingAp>> {
    let wordings: [(&'static str, Option<Rewrite>); 4] = [
        ("names", None),
        ("colour_synonyms", Some(Rewrite::Colour)),
        ("shape_synonyms", Some(Rewrite::Shape)),
        ("both_synonyms", Some(Rewrite::Both)),
    ];
    let mut out = Vec::new();
    for (wording, rw) in wordings {
        let prompts: Vec<String> = set
            .vocabulary
            .iter()
            .map(|n| rw.map_or_else(|| n.clone(), |r| rewrite(n, r)))
            .collect();
        // Detections are labelled by vocabulary index, so they are scored against the
        // world's own names' ground truth.
        let dets = predict(
            recipe,
            cx,
            model,
            &set.samples,
            &prompts,
            0.05,
            batch_size,
            device,
        )?;
        out.push(WordingAp {
            wording,
            example: prompts.first().cloned().unwrap_or_default(),
            report: evaluate_set(set, &dets)?,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use detclip_core::data::synthetic::{Color, Shape};

    #[test]
    fn every_world_word_has_a_synonym_the_world_never_writes() {
        let world: Vec<&str> = Color::ALL
            .iter()
            .map(|c| c.name())
            .chain(Shape::ALL.iter().map(|s| s.name()))
            .collect();
        let captions = [
            "small", "large", "striped", "dotted", "left", "right", "of", "above", "below", "a",
            "and",
        ];
        for w in &world {
            let s = synonym(w).unwrap_or_else(|| panic!("{w} has no synonym"));
            assert!(!world.contains(&s) && !captions.contains(&s), "{s}");
        }
        assert_eq!(rewrite("red circle", Rewrite::Colour), "crimson circle");
        assert_eq!(rewrite("red circle", Rewrite::Shape), "red disc");
        assert_eq!(rewrite("purple diamond", Rewrite::Both), "violet rhombus");
    }
}
