use burn::nn::conv::{Conv2d, Conv2dConfig, ConvTranspose2d, ConvTranspose2dConfig};
use burn::nn::{Linear, LinearConfig, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::activation::relu;
use detclip_core::nn::conv2d;
use detclip_core::ops::conv_transpose2d_forward;

/// torchvision's `TwoMLPHead`: the pooled RoI flattened, then two fully connected layers with
/// ReLU (1024 wide in Mask R-CNN and ViLD).
#[derive(Module, Debug)]
pub struct TwoMlpHead<B: Backend> {
    /// First layer, `C·s² → R`.
    pub fc6: Linear<B>,
    /// Second layer, `R → R`.
    pub fc7: Linear<B>,
}

impl<B: Backend> TwoMlpHead<B> {
    /// A head for `in_features = C·s²` inputs and `representation` outputs.
    pub fn new(in_features: usize, representation: usize, device: &B::Device) -> Self {
        Self {
            fc6: LinearConfig::new(in_features, representation).init(device),
            fc7: LinearConfig::new(representation, representation).init(device),
        }
    }

    /// # Shapes
    /// `[K, C, s, s]` → `[K, R]`
    pub fn forward(&self, pooled: Tensor<B, 4>) -> Tensor<B, 2> {
        let x = pooled.flatten::<2>(1, 3);
        relu(self.fc7.forward(relu(self.fc6.forward(x))))
    }
}

/// The class-agnostic mask head: torchvision's `MaskRCNNHeads` (3×3 convs with ReLU) and
/// `MaskRCNNPredictor`'s 2×2 stride-2 deconvolution with ReLU, then one 1×1 output channel
/// (one mask per RoI, whatever its class).
#[derive(Module, Debug)]
pub struct MaskHead<B: Backend> {
    /// The 3×3 convs (`mask_fcn1..4`).
    pub convs: Vec<Conv2d<B>>,
    /// The upsampling deconvolution (`conv5_mask`).
    pub deconv: ConvTranspose2d<B>,
    /// The single mask logit channel.
    pub logits: Conv2d<B>,
}

impl<B: Backend> MaskHead<B> {
    /// A head over `in_channels`-wide pooled RoIs with the given conv widths (`[256; 4]` in
    /// Mask R-CNN); the deconvolution keeps the last width.
    pub fn new(in_channels: usize, layers: &[usize], device: &B::Device) -> Self {
        let mut c = in_channels;
        let convs = layers
            .iter()
            .map(|&out| {
                let conv = Conv2dConfig::new([c, out], [3, 3])
                    .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                    .init(device);
                c = out;
                conv
            })
            .collect();
        Self {
            convs,
            deconv: ConvTranspose2dConfig::new([c, c], [2, 2])
                .with_stride([2, 2])
                .init(device),
            logits: Conv2dConfig::new([c, 1], [1, 1]).init(device),
        }
    }

    /// # Shapes
    /// `[K, C, s, s]` → mask logits `[K, 1, 2s, 2s]`
    pub fn forward(&self, pooled: Tensor<B, 4>) -> Tensor<B, 4> {
        let x = self.convs.iter().fold(pooled, |x, c| relu(conv2d(c, x)));
        conv2d(
            &self.logits,
            relu(conv_transpose2d_forward(&self.deconv, x)),
        )
    }
}
