use burn::nn::Linear;
use burn::prelude::*;

/// `linear` applied to the rows of `x` (`[…, in]` → `[…, out]`) as one matrix product.
///
/// Burn's `Linear::forward` on a rank-3 input broadcasts the weight to `[1, in, out]` and
/// runs a batched product; the ndarray backend runs that as one small product per batch
/// entry (`[L, in] · [in, out]`, L the sequence length), which for short sequences — a
/// vocabulary of class names, 8 tokens each — wastes most of the time. Reshaping to
/// `[N·L, in]` gives one large product on every backend (forward and backward).
pub fn linear_rows<B: Backend, const D: usize>(
    linear: &Linear<B>,
    x: Tensor<B, D>,
) -> Tensor<B, D> {
    if D <= 2 {
        return linear.forward(x);
    }
    let dims = x.dims();
    let d_in = dims[D - 1];
    let d_out = linear.weight.dims()[1];
    let rows = dims[..D - 1].iter().product::<usize>();
    let mut out = dims;
    out[D - 1] = d_out;
    linear.forward(x.reshape([rows, d_in])).reshape(out)
}
