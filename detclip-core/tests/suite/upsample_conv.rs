//! Block transposed convolutions (kernel = stride) as a matrix product, against Burn's direct
//! transposed convolution (itself checked against segment-anything's `ConvTranspose2d` by the
//! SAM mask-decoder fixtures of the detclip-models suite).

use burn::nn::conv::ConvTranspose2dConfig;
use burn::prelude::*;
use burn::tensor::Distribution;
use burn::tensor::module::conv_transpose2d;
use burn::tensor::ops::ConvTransposeOptions;
use detclip_core::ops::{conv_transpose2d_blocks, conv_transpose2d_forward, is_block_transpose};

use crate::harness::{assert_close, to_vec};

backend_test! {
    fn block_transpose_conv_matches_the_direct_one_forward_and_backward<B>(device) {
        // 2×2 stride 2 (SAM, Mask R-CNN) and 3×2 stride (3, 2), odd sizes, with and without bias.
        for (k, with_bias) in [([2, 2], true), ([3, 2], false), ([1, 1], true)] {
            let x = Tensor::<B, 4>::random([2, 5, 3, 7], Distribution::Normal(0.0, 1.0), device).require_grad();
            let w = Tensor::<B, 4>::random([5, 4, k[0], k[1]], Distribution::Normal(0.0, 1.0), device).require_grad();
            let b = Tensor::<B, 1>::random([4], Distribution::Normal(0.0, 1.0), device).require_grad();
            let bias = with_bias.then(|| b.clone());
            let ours = conv_transpose2d_blocks(x.clone(), w.clone(), bias.clone());
            assert_eq!(ours.dims(), [2, 4, 3 * k[0], 7 * k[1]]);
            let opts = ConvTransposeOptions::new(k, [0, 0], [0, 0], [1, 1], 1);
            let direct = conv_transpose2d(x.clone(), w.clone(), bias, opts);
            let name = format!("kernel {k:?}, bias {with_bias}");
            assert_close(&format!("{name} forward"), &to_vec(ours.clone()), &to_vec(direct.clone()), 1e-5, 1e-5);
            // The same upstream gradient through both: equal input, weight and bias gradients.
            let up = Tensor::<B, 4>::random(ours.dims(), Distribution::Normal(0.0, 1.0), device);
            let g1 = (ours * up.clone()).sum().backward();
            let g2 = (direct * up).sum().backward();
            assert_close(&format!("{name} input grad"), &to_vec(x.grad(&g1).unwrap()), &to_vec(x.grad(&g2).unwrap()), 1e-4, 1e-5);
            assert_close(&format!("{name} weight grad"), &to_vec(w.grad(&g1).unwrap()), &to_vec(w.grad(&g2).unwrap()), 1e-4, 1e-5);
            if with_bias {
                assert_close(&format!("{name} bias grad"), &to_vec(b.grad(&g1).unwrap()), &to_vec(b.grad(&g2).unwrap()), 1e-4, 1e-5);
            }
        }
    }
}

backend_test! {
    fn only_block_transpose_convs_take_the_matrix_product<B>(device) {
        let x = Tensor::<B, 4>::random([1, 4, 5, 5], Distribution::Normal(0.0, 1.0), device);
        let block = ConvTranspose2dConfig::new([4, 6], [2, 2]).with_stride([2, 2]).init::<B>(device);
        assert!(is_block_transpose(&block));
        let out = conv_transpose2d_forward(&block, x.clone());
        assert_close("module, block case", &to_vec(out), &to_vec(block.forward(x.clone())), 1e-5, 1e-5);
        // Overlapping kernels, padding, output padding, dilation and groups go to Burn's op.
        let others = [
            ConvTranspose2dConfig::new([4, 6], [3, 3]).with_stride([2, 2]),
            ConvTranspose2dConfig::new([4, 6], [2, 2]).with_stride([2, 2]).with_padding([1, 1]),
            ConvTranspose2dConfig::new([4, 6], [2, 2]).with_stride([2, 2]).with_padding_out([1, 1]),
            ConvTranspose2dConfig::new([4, 6], [2, 2]).with_stride([2, 2]).with_dilation([2, 2]),
            ConvTranspose2dConfig::new([4, 6], [2, 2]).with_stride([2, 2]).with_groups(2),
        ];
        for config in others {
            let conv = config.init::<B>(device);
            assert!(!is_block_transpose(&conv));
            let out = conv_transpose2d_forward(&conv, x.clone());
            assert_eq!(out.dims(), conv.forward(x.clone()).dims());
            assert_close("module, fallback", &to_vec(out), &to_vec(conv.forward(x.clone())), 0.0, 0.0);
        }
    }
}
