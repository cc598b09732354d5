//! Word–region alignment (DetCLIPv2 §3.2): both aggregations and the text-to-image contrastive
//! loss against values worked by hand, their gradients against central finite differences,
//! and proposal selection.

use burn::prelude::*;
use burn::tensor::TensorData;
use detclip_core::DetError;
use detclip_models::align::{
    Aggregation, ProposalOptions, cross_scores, image_caption_similarity, paired_similarity,
    select_proposals, text_to_image_contrastive,
};

use crate::harness::{assert_close, to_vec};

fn t<B: Backend, const D: usize>(v: &[f32], shape: [usize; D], device: &B::Device) -> Tensor<B, D> {
    Tensor::from_data(TensorData::new(v.to_vec(), shape), device)
}

/// One caption against one image, `M = 3` concepts and `K = 3` proposals, the last concept
/// and the last proposal padding (their 9s and 7s must not count):
///
/// ```text
///            p0   p1   p2(pad)
/// c0         1    2    9
/// c1         0   -1    9
/// c2(pad)    7    7    7
/// ```
fn padded_scores<B: Backend>(device: &B::Device) -> (Tensor<B, 4>, Tensor<B, 2>, Tensor<B, 2>) {
    let scores = t(&[1., 2., 9., 0., -1., 9., 7., 7., 7.], [1, 1, 3, 3], device);
    let concept_mask = t(&[1., 1., 0.], [1, 3], device);
    let proposal_mask = t(&[1., 1., 0.], [1, 3], device);
    (scores, concept_mask, proposal_mask)
}

backend_test! {
    fn max_aggregation_matches_hand_worked<B>(device) {
        let (scores, cm, pm) = padded_scores::<B>(device);
        // max_k: c0 → 2, c1 → 0; mean over the two real concepts: 1.
        let sim = image_caption_similarity(scores, cm, pm, Aggregation::Max).unwrap();
        assert_close("max", &to_vec(sim), &[1.0], 1e-6, 0.0);
    }
}

backend_test! {
    fn softmax_aggregation_matches_hand_worked<B>(device) {
        // τ_t = 1: c0: softmax(1, 2) = (1/(1+e), e/(1+e)) = (0.268941, 0.731059),
        //   Σ w·s = 0.268941 + 2·0.731059 = 1.731059;
        // c1: softmax(0, −1) = (0.731059, 0.268941), Σ w·s = −0.268941;
        // mean = (1.731059 − 0.268941) / 2 = 0.731059 (= σ(1)).
        let (scores, cm, pm) = padded_scores::<B>(device);
        let sim = image_caption_similarity(scores, cm, pm, Aggregation::Softmax { tau: 1.0 }).unwrap();
        assert_close("softmax τ=1", &to_vec(sim), &[0.731_058_6], 1e-5, 0.0);
        // τ_t = 0.5 doubles the logits: c0: softmax(2, 4) = (0.119203, 0.880797) → 1.880797;
        // c1: softmax(0, −2) = (0.880797, 0.119203) → −0.119203; mean 0.880797 (= σ(2)).
        let (scores, cm, pm) = padded_scores::<B>(device);
        let sim = image_caption_similarity(scores, cm, pm, Aggregation::Softmax { tau: 0.5 }).unwrap();
        assert_close("softmax τ=0.5", &to_vec(sim), &[0.880_797], 1e-5, 0.0);
        // A small temperature approaches max matching.
        let (scores, cm, pm) = padded_scores::<B>(device);
        let sim = image_caption_similarity(scores, cm, pm, Aggregation::Softmax { tau: 0.01 }).unwrap();
        assert_close("softmax τ→0", &to_vec(sim), &[1.0], 1e-5, 0.0);
    }
}

backend_test! {
    fn cross_scores_and_paired_similarity_agree_with_hand_worked<B>(device) {
        // Caption 0: concepts c0 = (1, 0), c1 = (0, 1).
        // Image 0: p0 = (1, 2), p1 = (3, −1): c0·p = (1, 3), c1·p = (2, −1) → max (3 + 2)/2 = 2.5.
        // Image 1: p0 = (.5, .5), p1 = (−1, 1): c0·p = (.5, −1), c1·p = (.5, 1) → (.5 + 1)/2 = .75.
        let concepts = t::<B, 3>(&[1., 0., 0., 1.], [1, 2, 2], device);
        let proposals = t::<B, 3>(&[1., 2., 3., -1., 0.5, 0.5, -1., 1.], [2, 2, 2], device);
        let cm = t::<B, 2>(&[1., 1.], [1, 2], device);
        let pm = t::<B, 2>(&[1., 1., 1., 1.], [2, 2], device);
        let scores = cross_scores(concepts.clone(), proposals.clone()).unwrap();
        assert_eq!(scores.dims(), [1, 2, 2, 2]);
        let sim = image_caption_similarity(scores, cm, pm.clone(), Aggregation::Max).unwrap();
        assert_close("cross", &to_vec(sim), &[2.5, 0.75], 1e-6, 0.0);
        // Paired: caption b with image b only. Two copies of caption 0 against images 0 and 1
        // give the two entries above; the second caption's second concept is padding, so it
        // keeps c0's 0.5 alone.
        let concepts2 = Tensor::cat(vec![concepts.clone(), concepts], 0);
        let cm2 = t::<B, 2>(&[1., 1., 1., 0.], [2, 2], device);
        let sim = paired_similarity(concepts2, cm2, proposals, pm, Aggregation::Max).unwrap();
        assert_close("paired", &to_vec(sim), &[2.5, 0.5], 1e-6, 0.0);
    }
}

backend_test! {
    fn contrastive_loss_matches_hand_worked<B>(device) {
        // sim[i, j] = caption i vs image j = [[1, 0], [0.5, 2]], τ = 0.5:
        // row 0: logits (2, 0) → −log softmax₀ = log(1 + e^−2) = 0.126928
        // row 1: logits (1, 4) → −log softmax₁ = log(1 + e^−3) = 0.048587
        // L = (0.126928 + 0.048587) / 2 = 0.087758.
        let sim = t::<B, 2>(&[1., 0., 0.5, 2.], [2, 2], device);
        let loss = text_to_image_contrastive(sim.clone(), 0.5).unwrap();
        assert_close("L_cts", &to_vec(loss), &[0.087_757_68], 1e-6, 0.0);
        // Text-to-image only: normalising over captions (columns) would give
        // (log(1 + e^−1) + log(1 + e^−4)) / 2 = 0.165706, a different value.
        let image_to_text = text_to_image_contrastive(sim.transpose(), 0.5).unwrap();
        assert!((to_vec(image_to_text)[0] - 0.165_706).abs() < 1e-5);
        assert!(matches!(
            text_to_image_contrastive(t::<B, 2>(&[1., 2.], [1, 2], device), 0.5),
            Err(DetError::Shape { .. })
        ));
        assert!(text_to_image_contrastive(t::<B, 2>(&[1.], [1, 1], device), 0.0).is_err());
    }
}

/// Scores without ties (so max matching is differentiable here), from a fixed formula.
fn smooth_values(n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i as f32) * 1.737 + 0.3).sin() * 1.5)
        .collect()
}

/// The loss as a function of the scores: 2 captions × 2 images, 3 concepts (caption 1 has
/// two), 4 proposals (image 1 has three).
fn loss_of<B: Backend>(scores: Tensor<B, 4>, aggregation: Aggregation) -> Tensor<B, 1> {
    let device = scores.device();
    let cm = t::<B, 2>(&[1., 1., 1., 1., 1., 0.], [2, 3], &device);
    let pm = t::<B, 2>(&[1., 1., 1., 1., 1., 1., 1., 0.], [2, 4], &device);
    let sim = image_caption_similarity(scores, cm, pm, aggregation).unwrap();
    text_to_image_contrastive(sim, 0.5).unwrap()
}

backend_test! {
    fn aggregation_gradients_match_finite_differences<B>(device) {
        let shape = [2, 2, 3, 4];
        let values = smooth_values(48);
        for aggregation in [Aggregation::Max, Aggregation::Softmax { tau: 0.7 }] {
            let x = t::<B, 4>(&values, shape, device).require_grad();
            let grads = loss_of(x.clone(), aggregation).backward();
            let analytic = to_vec(x.grad(&grads).unwrap());
            let eps = 1e-2f32;
            let numeric: Vec<f32> = (0..values.len())
                .map(|i| {
                    let at = |d: f32| {
                        let mut v = values.clone();
                        v[i] += d;
                        let x = t::<B::InnerBackend, 4>(&v, shape, device);
                        to_vec(loss_of(x, aggregation))[0]
                    };
                    (at(eps) - at(-eps)) / (2.0 * eps)
                })
                .collect();
            assert_close(&format!("{aggregation:?} gradient"), &analytic, &numeric, 2e-3, 1e-2);
            // Padding gets no gradient: proposal 3 of image 1 and concept 2 of caption 1.
            for tt in 0..2 {
                for m in 0..3 {
                    assert_eq!(analytic[((tt * 2 + 1) * 3 + m) * 4 + 3], 0.0, "padded proposal");
                }
            }
            for i in 0..2 {
                for k in 0..4 {
                    assert_eq!(analytic[((2 + i) * 3 + 2) * 4 + k], 0.0, "padded concept");
                }
            }
            assert!(analytic.iter().any(|g| g.abs() > 1e-3));
        }
    }
}

backend_test! {
    fn contrastive_gradient_matches_finite_differences<B>(device) {
        let values = smooth_values(9);
        let x = t::<B, 2>(&values, [3, 3], device).require_grad();
        let grads = text_to_image_contrastive(x.clone(), 0.5).unwrap().backward();
        let analytic = to_vec(x.grad(&grads).unwrap());
        let eps = 1e-2f32;
        let numeric: Vec<f32> = (0..9)
            .map(|i| {
                let at = |d: f32| {
                    let mut v = values.clone();
                    v[i] += d;
                    let x = t::<B::InnerBackend, 2>(&v, [3, 3], device);
                    to_vec(text_to_image_contrastive(x, 0.5).unwrap())[0]
                };
                (at(eps) - at(-eps)) / (2.0 * eps)
            })
            .collect();
        assert_close("L_cts gradient", &analytic, &numeric, 1e-3, 1e-2);
    }
}

backend_test! {
    fn proposals_are_chosen_by_objectness_nms_and_top_k<B>(device) {
        // Objectness = max over the concepts (1, 0) and (0, 1): (1, 0.9, 0.5, 0.1).
        // Region 1 overlaps region 0 with IoU 0.81 and is suppressed.
        let regions = t::<B, 3>(&[1., 0., 0.9, 0., 0., 0.5, 0., 0.1], [1, 4, 2], device);
        let boxes = t::<B, 3>(
            &[0., 0., 10., 10., 1., 1., 10., 10., 20., 20., 30., 30., 40., 40., 50., 50.],
            [1, 4, 4],
            device,
        );
        let concepts = t::<B, 2>(&[1., 0., 0., 1.], [2, 2], device);
        let options = ProposalOptions::new().with_top_k(2);
        let sel = select_proposals(regions.clone(), boxes.clone(), concepts.clone(), &options).unwrap();
        assert_eq!(sel.index.clone().into_data().convert::<i64>().to_vec::<i64>().unwrap(), [0, 2]);
        assert_eq!(to_vec(sel.mask.clone()), [1.0, 1.0]);
        let options = ProposalOptions::new().with_top_k(10);
        let sel = select_proposals(regions.clone(), boxes.clone(), concepts.clone(), &options).unwrap();
        assert_eq!(sel.kept, [3]);
        assert_eq!(sel.index.clone().into_data().convert::<i64>().to_vec::<i64>().unwrap(), [0, 2, 3, 0]);
        assert_eq!(to_vec(sel.mask.clone()), [1.0, 1.0, 1.0, 0.0]);
        let gathered = sel.gather(regions.clone());
        assert_eq!(to_vec(gathered), [1., 0., 0., 0.5, 0., 0.1, 1., 0.]);
        let err = select_proposals(regions, boxes.narrow(1, 0, 3), concepts, &options).unwrap_err();
        assert!(matches!(err, DetError::Shape { what: "boxes", .. }), "{err}");
    }
}

backend_test! {
    fn similarity_refuses_mismatched_masks<B>(device) {
        let (scores, cm, _) = padded_scores::<B>(device);
        let bad = t::<B, 2>(&[1., 1.], [1, 2], device);
        let err = image_caption_similarity(scores.clone(), cm.clone(), bad, Aggregation::Max).unwrap_err();
        assert!(matches!(err, DetError::Shape { what: "proposal_mask", .. }), "{err}");
        let pm = t::<B, 2>(&[1., 1., 1.], [1, 3], device);
        let err = image_caption_similarity(scores, cm, pm, Aggregation::Softmax { tau: -1.0 }).unwrap_err();
        assert!(matches!(err, DetError::InvalidOption { .. }), "{err}");
    }
}
