//! CLIP's pixel normalisation, and the conversion from the detectors' ImageNet-normalised
//! batches to it (ViLD crops its proposals from the detector's batch; RegionSpot feeds the
//! batch to CLIP).

use burn::prelude::*;
use burn::tensor::TensorData;
use detclip_core::data::Normalize;

/// CLIP's per-channel mean (OpenAI), RGB in `0..=1` ([`Normalize::clip`]).
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// CLIP's per-channel standard deviation ([`Normalize::clip`]).
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_6, 0.275_777_1];

/// ImageNet-normalised RGB pixels (the data pipeline's [`Normalize::imagenet`]) re-normalised
/// as CLIP expects: `x · σ_in/σ_clip + (μ_in − μ_clip)/σ_clip` per channel.
///
/// # Shapes
/// - `x`: `[N, 3, H, W]` → `[N, 3, H, W]`
pub fn imagenet_to_clip<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 4> {
    let imagenet = Normalize::imagenet();
    let device = x.device();
    let per_channel = |f: &dyn Fn(usize) -> f32| {
        Tensor::<B, 1>::from_data(
            TensorData::new((0..3).map(f).collect::<Vec<_>>(), [3]),
            &device,
        )
        .reshape([1, 3, 1, 1])
    };
    let a = per_channel(&|c| imagenet.std[c] / CLIP_STD[c]);
    let b = per_channel(&|c| (imagenet.mean[c] - CLIP_MEAN[c]) / CLIP_STD[c]);
    x * a + b
}
