use crate::import::KeyMap;

/// torchvision's `maskrcnn_resnet50_fpn` state-dict layout onto the shared parts of
/// [`Vild`](super::Vild):
///
/// | torchvision | ours |
/// |---|---|
/// | `backbone.body.*` | `backbone.*` (then [`crate::resnet::torchvision_keys`]' rules) |
/// | `backbone.fpn.{inner,layer}_blocks.{i}[.0].*` | `fpn.{inner,layer}_blocks.{i}.*` |
/// | `rpn.head.conv[.0.0].*`, `rpn.head.{cls_logits,bbox_pred}.*` | `rpn.conv.*`, `rpn.{cls_logits,bbox_pred}.*` |
/// | `roi_heads.box_head.fc{6,7}.*` | `box_head.fc{6,7}.*` |
/// | `roi_heads.mask_head.{i}.0.*` (or the older `mask_fcn{i+1}.*`) | `mask_head.convs.{i}.*` |
/// | `roi_heads.mask_predictor.conv5_mask.*` | `mask_head.deconv.*` |
/// | `roi_heads.box_predictor.*`, `roi_heads.mask_predictor.mask_fcn_logits.*` | ignored: per-class, ViLD's are class-agnostic |
///
/// Both the current torchvision names and the older ones of the released COCO checkpoints
/// are accepted. ViLD's own parameters (`box_regression`, `projection`, `image_projection`,
/// `background`, `mask_head.logits`) are not in such a checkpoint: load it with
/// [`LoadOptions::allow_partial`](crate::import::LoadOptions) and check that
/// [`LoadReport::missing`](crate::import::LoadReport) lists only those.
pub fn torchvision_keys() -> KeyMap {
    KeyMap::new()
        .rename(r"^backbone\.body\.", "backbone.")
        .rename(r"\.downsample\.0\.", ".downsample.conv.")
        .rename(r"\.downsample\.1\.", ".downsample.bn.")
        .rename(
            r"^backbone\.fpn\.(inner|layer)_blocks\.(\d+)\.0\.",
            "fpn.${1}_blocks.$2.",
        )
        .rename(r"^backbone\.fpn\.", "fpn.")
        .rename(r"^rpn\.head\.conv\.0\.0\.", "rpn.conv.")
        .rename(r"^rpn\.head\.", "rpn.")
        .rename(r"^roi_heads\.box_head\.", "box_head.")
        .rename(r"^roi_heads\.mask_head\.(\d+)\.0\.", "mask_head.convs.$1.")
        .rename(r"^roi_heads\.mask_head\.mask_fcn1\.", "mask_head.convs.0.")
        .rename(r"^roi_heads\.mask_head\.mask_fcn2\.", "mask_head.convs.1.")
        .rename(r"^roi_heads\.mask_head\.mask_fcn3\.", "mask_head.convs.2.")
        .rename(r"^roi_heads\.mask_head\.mask_fcn4\.", "mask_head.convs.3.")
        .rename(
            r"^roi_heads\.mask_predictor\.conv5_mask\.",
            "mask_head.deconv.",
        )
        .ignore(r"\.num_batches_tracked$")
        .ignore(r"^backbone\.body\.fc\.|^backbone\.fc\.")
        .ignore(r"^roi_heads\.box_predictor\.")
        .ignore(r"^roi_heads\.mask_predictor\.mask_fcn_logits\.")
}
