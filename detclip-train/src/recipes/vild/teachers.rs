//! ViLD-image's targets for a batch: the precomputed shards of `detclip vild precompute`, or
//! CLIP's embeddings of the detector's current proposals, cropped from the batch.

use std::path::Path;

use burn::module::AutodiffModule;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use detclip_core::data::Batch;
use detclip_core::data::sample::{ImageSource, Sample};
use detclip_core::{DetError, Result};
use detclip_models::vild::{HostBox, TeacherRegions, VildModel, batch_region_teacher, scale_box};

use super::{VildContext, VildRecipe};
use crate::vild::load_teachers;

impl VildRecipe {
    /// The ViLD-image targets of every image of the batch: precomputed ones when
    /// [`VildRecipe::teacher_dir`] is set, else computed on the fly by CLIP's image tower.
    ///
    /// # Errors
    /// Unreadable shards, an image missing from them; model errors.
    pub fn teacher_regions<B: AutodiffBackend>(
        &self,
        cx: &VildContext,
        model: &VildModel<B>,
        batch: &Batch<B>,
    ) -> Result<Vec<TeacherRegions<B>>> {
        match &self.teacher_dir {
            Some(dir) => self.stored_teachers(cx, dir, batch),
            None => self.live_teachers(model, batch),
        }
    }

    fn stored_teachers<B: Backend>(
        &self,
        cx: &VildContext,
        dir: &Path,
        batch: &Batch<B>,
    ) -> Result<Vec<TeacherRegions<B>>> {
        if cx.teachers.get().is_none() {
            let _ = cx.teachers.set(load_teachers(dir)?);
        }
        let all = cx.teachers.get().expect("set above");
        let device = batch.images.device();
        batch
            .samples
            .iter()
            .map(|s| {
                let t = all.get(&s.key).ok_or_else(|| DetError::InvalidOption {
                    op: "vild",
                    why: format!(
                        "image `{}` has no precomputed teacher in {}",
                        s.key,
                        dir.display()
                    ),
                })?;
                let (ow, oh) = original_size(cx, s)?;
                let (sx, sy) = (s.width as f32 / ow as f32, s.height as f32 / oh as f32);
                let boxes: Vec<HostBox> = t
                    .boxes
                    .iter()
                    .map(|b| [b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy])
                    .collect();
                let m = boxes.len();
                let embeddings = Tensor::from_data(
                    TensorData::new(t.embeddings.clone(), [m, if m == 0 { 0 } else { t.dim }]),
                    &device,
                );
                Ok(TeacherRegions { boxes, embeddings })
            })
            .collect()
    }

    /// The on-the-fly teacher: the best `M` current proposals of each image (no gradient),
    /// cropped at each scale, embedded by CLIP's image tower, summed and normalised.
    fn live_teachers<B: AutodiffBackend>(
        &self,
        model: &VildModel<B>,
        batch: &Batch<B>,
    ) -> Result<Vec<TeacherRegions<B>>> {
        let detector = model.detector.valid();
        let clip = model.clip.valid();
        let images = batch.images.clone().inner();
        let [_, _, h, w] = images.dims();
        let features = detector.features(images.clone())?;
        let proposals = detector.proposals(&detector.rpn_outputs(&features), [h, w], false)?;
        let boxes: Vec<Vec<HostBox>> = proposals
            .into_iter()
            .zip(&batch.image_sizes)
            .map(|(p, &(ih, iw))| {
                p.boxes
                    .into_iter()
                    .map(|b| scale_box(b, 1.0, ih, iw))
                    .filter(|b| b[2] - b[0] >= 2.0 && b[3] - b[1] >= 2.0)
                    .take(self.loss.proposals)
                    .collect()
            })
            .collect();
        let embeddings = batch_region_teacher(
            &clip,
            &self.clip.vision,
            images,
            &boxes,
            &batch.image_sizes,
            &self.loss.crop_scales,
        )?;
        let mut start = 0;
        Ok(boxes
            .into_iter()
            .map(|b| {
                let m = b.len();
                let rows = embeddings.clone().narrow(0, start, m);
                start += m;
                TeacherRegions {
                    boxes: b,
                    embeddings: Tensor::from_inner(rows),
                }
            })
            .collect())
    }
}

/// The size of a sample's image before the training transform (precomputed boxes are in
/// its pixels).
fn original_size(cx: &VildContext, s: &Sample) -> Result<(u32, u32)> {
    if let Some(&size) = cx.sizes.lock().expect("poisoned").get(&s.key) {
        return Ok(size);
    }
    let size = match &s.image {
        ImageSource::Memory(img) => img.dimensions(),
        ImageSource::File(path) => image::image_dimensions(path).map_err(|e| DetError::Io {
            path: path.display().to_string(),
            msg: e.to_string(),
        })?,
    };
    cx.sizes
        .lock()
        .expect("poisoned")
        .insert(s.key.clone(), size);
    Ok(size)
}
