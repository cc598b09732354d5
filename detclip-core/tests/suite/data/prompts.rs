//! Prompts: spans point at the names, chunks respect the budget and cover every name once,
//! negative sampling is seeded and keeps the box-to-name mapping.

use std::collections::HashSet;

use detclip_core::data::{
    Concept, ImageSource, Instance, NegativeSampling, Prompt, PromptFormat, Sample, Span,
    chunk_prompts, detection_prompt, fixed_chunk_prompts, glip_clean_name, read_vocabulary,
    token_range, training_prompt,
};
use rand::SeedableRng;
use rand::rngs::StdRng;

use crate::harness::shared_data;

fn names_of(p: &Prompt) -> Vec<&str> {
    (0..p.entries.len()).map(|i| p.name(i)).collect()
}

#[test]
fn detection_prompt_spans_point_at_the_names() {
    let names = ["person", "bicycle", "traffic light", "crème brûlée"];
    let p = detection_prompt(&names, &PromptFormat::default());
    assert_eq!(p.text, "person. bicycle. traffic light. crème brûlée.");
    let spans: Vec<(usize, usize)> = p
        .entries
        .iter()
        .map(|e| (e.span.start, e.span.end))
        .collect();
    assert_eq!(spans, [(0, 6), (8, 15), (17, 30), (32, 47)]);
    assert_eq!(names_of(&p), names);
    // Character offsets for Python-side tokenizers.
    assert_eq!(p.entries[3].span.to_chars(&p.text), Some((32, 44)));
    let gd = PromptFormat {
        separator: " . ".into(),
        end: " .".into(),
    };
    let p = detection_prompt(&names[..2], &gd);
    assert_eq!(p.text, "person . bicycle .");
    assert_eq!(names_of(&p), ["person", "bicycle"]);
    assert_eq!(detection_prompt(&[] as &[&str], &gd).text, "");
}

#[test]
fn token_range_maps_spans_through_offsets() {
    // A BERT-like encoding of "person. traffic light.": [CLS] person . traffic light . [SEP]
    let offsets = [(0, 0), (0, 6), (6, 7), (8, 15), (16, 21), (21, 22), (0, 0)];
    assert_eq!(token_range(&offsets, Span::new(0, 6)), Some(1..2));
    assert_eq!(token_range(&offsets, Span::new(8, 21)), Some(3..5));
    // Word pieces: "traffic" split as "traf" "##fic".
    let pieces = [(0, 0), (8, 12), (12, 15), (16, 21)];
    assert_eq!(token_range(&pieces, Span::new(8, 15)), Some(1..3));
    assert_eq!(token_range(&offsets, Span::new(22, 22)), None);
}

fn check_chunks(names: &[String], chunks: &[Prompt], budget: usize, len: &dyn Fn(&str) -> usize) {
    let mut next = 0;
    for (k, chunk) in chunks.iter().enumerate() {
        assert!(len(&chunk.text) <= budget, "chunk {k} is over budget");
        for (i, e) in chunk.entries.iter().enumerate() {
            assert_eq!(e.source, next, "every name once, in order");
            assert_eq!(chunk.name(i), names[next]);
            next += 1;
        }
        if let Some(following) = chunks.get(k + 1) {
            // Greedy: the next chunk's first name would not have fitted.
            let mut with_next: Vec<&str> = names_of(chunk);
            with_next.push(following.name(0));
            assert!(len(&detection_prompt(&with_next, &PromptFormat::default()).text) > budget);
        }
    }
    assert_eq!(next, names.len());
}

#[test]
fn chunks_fit_the_budget_and_cover_every_name_once() {
    let names: Vec<String> = (0..300).map(|i| format!("class number {i}")).collect();
    let words = |t: &str| t.split_whitespace().count() + t.matches('.').count();
    for (budget, len) in [
        (256usize, &str::len as &dyn Fn(&str) -> usize),
        (40, &words),
    ] {
        let chunks = chunk_prompts(&names, &PromptFormat::default(), budget, len).unwrap();
        assert!(chunks.len() > 1);
        check_chunks(&names, &chunks, budget, len);
    }
    let err = chunk_prompts(&["a very long name"], &PromptFormat::default(), 5, str::len);
    assert!(err.is_err(), "a name over the budget is an error");
}

/// GLIP's official evaluation prompts (`create_queries_and_maps_from_dataset` with
/// `TEST.CHUNKED_EVALUATION 2` and `SEPARATION_TOKENS ". "`): names cleaned by `clean_name`,
/// chunks of a fixed number of names, no separator after the last; expected strings from
/// Python's `re` on the same names.
#[test]
fn official_glip_chunks_and_clean_names() {
    for (raw, clean) in [
        ("bow_(weapon)", "bow "),
        ("aerosol_can", "aerosol can"),
        ("a___b", "a  b"),
        ("a____b", "a  b"),
        ("x(y)z(w)v", "xv"),
        ("a) b (c", "a) b (c"),
        ("a (b) c", "a c"),
        ("plain", "plain"),
    ] {
        assert_eq!(glip_clean_name(raw), clean, "{raw}");
    }
    let names: Vec<String> = ["bow_(weapon)", "aerosol_can", "dog", "alarm_clock", "cat"]
        .iter()
        .map(|n| glip_clean_name(n))
        .collect();
    let format = PromptFormat {
        separator: ". ".into(),
        end: String::new(),
    };
    let chunks = fixed_chunk_prompts(&names, &format, 2).unwrap();
    let texts: Vec<&str> = chunks.iter().map(|c| c.text.as_str()).collect();
    assert_eq!(texts, ["bow . aerosol can", "dog. alarm clock", "cat"]);
    assert_eq!(names_of(&chunks[0]), ["bow ", "aerosol can"]);
    let sources: Vec<usize> = chunks
        .iter()
        .flat_map(|c| c.entries.iter().map(|e| e.source))
        .collect();
    assert_eq!(sources, [0, 1, 2, 3, 4]);
    assert!(fixed_chunk_prompts(&names, &format, 0).is_err());
}

#[test]
fn lvis_vocabulary_chunks_into_prompts() {
    let Some(root) = shared_data("lvis_vocabulary_chunks_into_prompts") else {
        return;
    };
    let cats = read_vocabulary(&root.join("vocab/lvis_v1_categories.json")).unwrap();
    let names: Vec<String> = cats.iter().map(|c| c.concept_name()).collect();
    // A crude token count: words plus separators, against GLIP's 256-token budget.
    let tokens = |t: &str| {
        t.split(|c: char| c.is_whitespace() || c == '_')
            .filter(|w| !w.is_empty())
            .count()
            + t.matches('.').count()
            + 2
    };
    let chunks = chunk_prompts(&names, &PromptFormat::default(), 256, tokens).unwrap();
    check_chunks(&names, &chunks, 256, &tokens);
    eprintln!(
        "LVIS 1203 names → {} prompts of ≤ 256 crude tokens",
        chunks.len()
    );
    assert!(chunks.len() >= 1203 * 2 / 256);
}

fn detection_sample() -> Sample {
    let mut s = Sample::new("s", ImageSource::File("x.jpg".into()), 100, 100);
    for (name, crowd) in [
        ("dog", false),
        ("cat", false),
        ("dog", false),
        ("crowd thing", true),
    ] {
        let c = s.concept_index(name, None);
        s.instances.push(Instance {
            bbox: [0.0, 0.0, 10.0, 10.0],
            concepts: vec![c],
            crowd,
            score: None,
        });
    }
    let concept = |n: &str| Concept {
        name: n.into(),
        category_id: None,
        spans: Vec::new(),
    };
    s.negatives = vec![concept("zebra")];
    s.not_exhaustive = vec![concept("bowl")];
    s
}

#[test]
fn training_prompt_keeps_positives_and_maps_boxes_to_their_names() {
    let s = detection_sample();
    let pool: Vec<String> = ["bowl", "dog", "crowd thing"]
        .into_iter()
        .map(String::from)
        .chain((0..40).map(|i| format!("other {i}")))
        .collect();
    let sampling = NegativeSampling { max_names: 12 };
    let mut counts = HashSet::new();
    let mut zebra = 0;
    for seed in 0..200 {
        let run = || {
            training_prompt(
                &s,
                &pool,
                sampling,
                &PromptFormat::default(),
                &mut StdRng::seed_from_u64(seed),
            )
        };
        let t = run();
        assert_eq!(t, run(), "seeded");
        let names = names_of(&t.prompt);
        assert!(names.len() <= 12);
        counts.insert(names.len());
        let set: HashSet<&str> = names.iter().copied().collect();
        assert_eq!(set.len(), names.len(), "no name twice");
        assert!(set.contains("dog") && set.contains("cat"));
        assert!(
            !set.contains("bowl"),
            "not-exhaustive classes are present, never negatives"
        );
        assert!(
            !set.contains("crowd thing"),
            "a class seen only in crowd is not a negative"
        );
        zebra += usize::from(set.contains("zebra"));
        for (i, inst) in s.instances.iter().enumerate() {
            let want = &s.concepts[inst.concepts[0]].name;
            if inst.crowd {
                assert!(t.instance_entries[i].is_empty());
                continue;
            }
            assert_eq!(t.instance_entries[i].len(), 1);
            assert_eq!(t.prompt.name(t.instance_entries[i][0]), want);
        }
        for (e, &pos) in t.positive.iter().enumerate() {
            assert_eq!(pos, ["dog", "cat"].contains(&t.prompt.name(e)));
        }
    }
    assert_eq!(counts, (2..=12).collect(), "0..=10 negatives are all drawn");
    assert!(zebra > 0, "known negatives are in the pool");
    // Positives beyond max_names are dropped, their boxes left without an entry.
    let t = training_prompt(
        &s,
        &pool,
        NegativeSampling { max_names: 1 },
        &PromptFormat::default(),
        &mut StdRng::seed_from_u64(1),
    );
    assert_eq!(t.prompt.entries.len(), 1);
    assert_eq!(
        t.instance_entries.iter().filter(|e| e.is_empty()).count(),
        if t.prompt.name(0) == "dog" { 2 } else { 3 }
    );
}
