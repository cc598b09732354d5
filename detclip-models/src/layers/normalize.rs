use burn::prelude::*;

/// `x / max(‖x‖₂, eps)` along the last axis: PyTorch's `F.normalize(x, dim=-1, eps=eps)`.
/// CLIP divides by the norm itself (`eps = 0`); the region and concept embeddings of the
/// detectors keep a floor (DetCLIPv2 and the `shapes` detector `1e-6`, GLIP's text `1e-12`).
pub fn l2_normalize_eps<B: Backend, const D: usize>(x: Tensor<B, D>, eps: f64) -> Tensor<B, D> {
    let norm = x.clone().powi_scalar(2).sum_dim(D - 1).sqrt();
    if eps > 0.0 {
        x / norm.clamp_min(eps)
    } else {
        x / norm
    }
}

/// `x / ‖x‖₂` along the last axis, as CLIP normalises its embeddings
/// ([`l2_normalize_eps`] with no floor).
pub fn l2_normalize<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    l2_normalize_eps(x, 0.0)
}
