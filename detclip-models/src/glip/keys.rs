use super::fusion_block_keys;
use crate::import::KeyMap;

/// The released GLIP layout (maskrcnn-benchmark, `GeneralizedVLRCNN` wrapped in
/// `DistributedDataParallel`, saved under the top-level key `model`) onto [`Glip`](super::Glip)
/// with a Swin backbone and `num_layers` fusion/DyHead layers (6 in GLIP-T):
///
/// | official | ours |
/// |---|---|
/// | `module.` prefix | dropped |
/// | `backbone.body.*` (Swin, official detection layout) | `backbone.Swin.*` |
/// | `backbone.fpn.fpn_inner{2,3,4}`, `fpn_layer{2,3,4}` | `fpn.inner_blocks.{0,1,2}`, `fpn.layer_blocks.{0,1,2}` |
/// | `backbone.fpn.top_blocks.p6`, `.p7` | `fpn.extra_blocks.p6`, `.p7` |
/// | `language_backbone.body.model.*` (HF `BertModel`) | `language.*` (as [`hf_bert_keys`](crate::bert::hf_bert_keys)) |
/// | `rpn.head.dyhead_tower.{3i}.b_attn.*` (X-MHA) | `fusions.{i}.*` |
/// | `rpn.head.dyhead_tower.{3i+1}.*` (`BertEncoderLayer`) | `text_layers.{i}.*` |
/// | `rpn.head.dyhead_tower.{3i+2}.*` (`DyConv`) | `dyconvs.{i}.*` (see [`fusion_block_keys`]) |
/// | `rpn.head.{bbox_pred,centerness,scales.{l}.scale}` | `head.*` |
/// | `rpn.head.{dot_product_projection_text,log_scale,bias_lang,bias0}` | `head.*` |
///
/// Ignored: `rpn.head.cls_logits.*` (a classification head the released model builds but
/// never uses when it scores by dot product), `rpn.anchor_generator.*` (anchor buffers; we
/// generate anchors), the `position_ids`, `relative_position_index` and `attn_mask` buffers.
pub fn glip_keys(num_layers: usize) -> KeyMap {
    let body = KeyMap::new().rename(r"^backbone\.body\.", "backbone.Swin.");
    glip_keys_with_body(num_layers, body)
}

/// The released layout of GLIP with a ResNet backbone (maskrcnn-benchmark's `ResNet` of
/// `StemWithFixedBatchNorm` and `BottleneckWithFixedBatchNorm`, `modeling/backbone/resnet.py`)
/// onto [`Glip`](super::Glip) with [`GlipBackboneConfig::ResNet`](super::GlipBackboneConfig):
/// as [`glip_keys`], with the body mapped as
///
/// | official | ours |
/// |---|---|
/// | `backbone.body.stem.{conv1,bn1}.*` | `backbone.ResNet.{conv1,bn1}.*` |
/// | `backbone.body.layer{1..4}.{i}.{conv,bn}{1,2,3}.*` | `backbone.ResNet.layer{1..4}.{i}.*` |
/// | `….downsample.0.*`, `….downsample.1.*` | `….downsample.conv.*`, `….downsample.bn.*` |
///
/// `FrozenBatchNorm2d` stores `weight`, `bias`, `running_mean` and `running_var` (no
/// `num_batches_tracked`). Keys only: maskrcnn-benchmark's bottleneck strides in its first 1×1
/// convolution (`STRIDE_IN_1X1`, MSRA weights), ours in the 3×3 (torchvision v1.5), so the
/// released R50 weights load but their features differ.
pub fn glip_resnet_keys(num_layers: usize) -> KeyMap {
    let body = KeyMap::new()
        .rename(r"^backbone\.body\.stem\.", "backbone.ResNet.")
        .rename(r"^backbone\.body\.", "backbone.ResNet.")
        .rename(r"\.downsample\.0\.", ".downsample.conv.")
        .rename(r"\.downsample\.1\.", ".downsample.bn.");
    glip_keys_with_body(num_layers, body)
}

/// The released layout with `body`'s rules for `backbone.body.*` (applied after the
/// `module.` prefix is dropped).
fn glip_keys_with_body(num_layers: usize, mut body: KeyMap) -> KeyMap {
    let mut keys = KeyMap::new().rename(r"^module\.", "");
    keys.rename.append(&mut body.rename);
    keys.ignore.append(&mut body.ignore);
    let mut keys = keys.rename(r"^backbone\.fpn\.top_blocks\.", "fpn.extra_blocks.");
    for (official, ours) in [(2, 0), (3, 1), (4, 2)] {
        keys = keys
            .rename(
                &format!(r"^backbone\.fpn\.fpn_inner{official}\."),
                &format!("fpn.inner_blocks.{ours}."),
            )
            .rename(
                &format!(r"^backbone\.fpn\.fpn_layer{official}\."),
                &format!("fpn.layer_blocks.{ours}."),
            );
    }
    let lang = r"^language_backbone\.body\.model\.";
    keys = keys
        .rename(
            &format!(r"{lang}embeddings\.LayerNorm\."),
            "language.embeddings.norm.",
        )
        .rename(
            &format!(r"{lang}encoder\.layer\.(\d+)\."),
            "language.layers.$1.",
        )
        // GLIP builds BERT without its pooler (`add_pooling_layer=False`) and never uses it: a
        // file that has one (from an older transformers) imports with it ignored.
        .ignore(r"^language\.pooler\.")
        .rename(lang, "language.");
    for i in 0..num_layers {
        let tower = |k: usize| format!(r"^rpn\.head\.dyhead_tower\.{}\.", 3 * i + k);
        keys = keys
            .rename(&format!("{}b_attn\\.", tower(0)), &format!("fusions.{i}."))
            .rename(&tower(1), &format!("text_layers.{i}."))
            .rename(&tower(2), &format!("dyconvs.{i}."));
    }
    let layer = r"^((?:language\.layers|text_layers)\.\d+)\.";
    keys = keys
        .rename(
            &format!(r"{layer}attention\.self\.(query|key|value)\."),
            "$1.$2.",
        )
        .rename(
            &format!(r"{layer}attention\.output\.dense\."),
            "$1.attention_output.",
        )
        .rename(
            &format!(r"{layer}attention\.output\.LayerNorm\."),
            "$1.attention_norm.",
        )
        .rename(
            &format!(r"{layer}intermediate\.dense\."),
            "$1.intermediate.",
        )
        .rename(&format!(r"{layer}output\.dense\."), "$1.output.")
        .rename(&format!(r"{layer}output\.LayerNorm\."), "$1.output_norm.")
        .rename(r"^rpn\.head\.", "head.");
    let mut blocks = fusion_block_keys();
    keys.rename.append(&mut blocks.rename);
    keys.ignore(r"^head\.cls_logits\.")
        .ignore(r"^rpn\.anchor_generator\.")
        .ignore(r"position_ids$")
        .ignore(r"\.relative_position_index$")
        .ignore(r"\.attn_mask$")
}
