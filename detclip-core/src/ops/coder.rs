//! The delta box coder `(dx, dy, dw, dh)` of R-CNN, RetinaNet, ATSS and GLIP
//! (torchvision `BoxCoder`, mmdetection `DeltaXYWHBBoxCoder` with means 0 and
//! stds `1/weights`).

use burn::prelude::*;

use crate::error::{Result, ensure_shape};

/// Encodes boxes as offsets from reference boxes and back.
///
/// `dx = wx·(gx − ax)/aw`, `dy = wy·(gy − ay)/ah`, `dw = ww·ln(gw/aw)`, `dh = wh·ln(gh/ah)`,
/// with centres and sizes of xyxy boxes (`w = x2 − x1`, no +1). With `plus_one`, GLIP's
/// released coder (`vldyhead.BoxCoder`, maskrcnn-benchmark's integer-pixel convention):
/// `w = x2 − x1 + 1`, centre `(x1 + x2) / 2`, and a decoded box spans `centre ± (w − 1) / 2`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DeltaBoxCoder {
    /// `(wx, wy, ww, wh)`: `(1, 1, 1, 1)` for ATSS/GLIP, `(10, 10, 5, 5)` for Faster R-CNN heads.
    pub weights: [f32; 4],
    /// Upper clamp of `dw`, `dh` before `exp` when decoding (torchvision: `ln(1000/16)`).
    pub clip: f32,
    /// The `w = x2 − x1 + 1` convention (GLIP, maskrcnn-benchmark).
    #[serde(default)]
    pub plus_one: bool,
}

impl Default for DeltaBoxCoder {
    fn default() -> Self {
        Self::new([1.0; 4])
    }
}

impl DeltaBoxCoder {
    /// A coder with the given weights and torchvision's clamp `ln(1000/16)`.
    pub fn new(weights: [f32; 4]) -> Self {
        Self {
            weights,
            clip: (1000.0f32 / 16.0).ln(),
            plus_one: false,
        }
    }

    /// GLIP's released coder: weights `(10, 10, 5, 5)` in the `plus_one` convention.
    pub fn glip() -> Self {
        Self {
            plus_one: true,
            ..Self::new([10.0, 10.0, 5.0, 5.0])
        }
    }

    /// `(centre x, centre y, w, h)` of xyxy boxes in this coder's convention.
    #[allow(clippy::type_complexity)]
    fn centre_size<B: Backend>(
        &self,
        b: &Tensor<B, 2>,
    ) -> (Tensor<B, 2>, Tensor<B, 2>, Tensor<B, 2>, Tensor<B, 2>) {
        let c = |i| b.clone().narrow(1, i, 1);
        let (x1, y1, x2, y2) = (c(0), c(1), c(2), c(3));
        if self.plus_one {
            (
                (x1.clone() + x2.clone()) * 0.5,
                (y1.clone() + y2.clone()) * 0.5,
                x2 - x1 + 1.0,
                y2 - y1 + 1.0,
            )
        } else {
            let w = x2 - x1.clone();
            let h = y2 - y1.clone();
            (x1 + w.clone() * 0.5, y1 + h.clone() * 0.5, w, h)
        }
    }

    fn check(op: &'static str, what: &'static str, a: &[usize; 2], b: &[usize; 2]) -> Result<()> {
        ensure_shape(a[1] == 4, op, what, a, "[N, 4]")?;
        ensure_shape(
            a == b,
            op,
            what,
            a,
            format!("{b:?} (one per reference box)"),
        )
    }

    /// Offsets of `boxes` from `reference` (torchvision `encode_single(boxes, reference)`).
    ///
    /// # Shapes
    /// - `boxes`, `reference`: `[N, 4]` xyxy; output `[N, 4]`
    pub fn encode<B: Backend>(
        &self,
        boxes: Tensor<B, 2>,
        reference: Tensor<B, 2>,
    ) -> Result<Tensor<B, 2>> {
        Self::check(
            "DeltaBoxCoder::encode",
            "boxes",
            &boxes.dims(),
            &reference.dims(),
        )?;
        let [wx, wy, ww, wh] = self.weights;
        let (ax, ay, aw, ah) = self.centre_size(&reference);
        let (gx, gy, gw, gh) = self.centre_size(&boxes);
        let dx = (gx - ax) / aw.clone() * wx;
        let dy = (gy - ay) / ah.clone() * wy;
        let dw = (gw / aw).log() * ww;
        let dh = (gh / ah).log() * wh;
        Ok(Tensor::cat(vec![dx, dy, dw, dh], 1))
    }

    /// Boxes from offsets `deltas` applied to `reference` (torchvision `decode_single`).
    ///
    /// # Shapes
    /// - `deltas`, `reference`: `[N, 4]`; output `[N, 4]` xyxy
    pub fn decode<B: Backend>(
        &self,
        deltas: Tensor<B, 2>,
        reference: Tensor<B, 2>,
    ) -> Result<Tensor<B, 2>> {
        Self::check(
            "DeltaBoxCoder::decode",
            "deltas",
            &deltas.dims(),
            &reference.dims(),
        )?;
        let [wx, wy, ww, wh] = self.weights;
        let (ax, ay, aw, ah) = self.centre_size(&reference);
        let c = |t: &Tensor<B, 2>, i| t.clone().narrow(1, i, 1);
        let dx = c(&deltas, 0) / wx;
        let dy = c(&deltas, 1) / wy;
        let dw = (c(&deltas, 2) / ww).clamp_max(self.clip);
        let dh = (c(&deltas, 3) / wh).clamp_max(self.clip);
        let px = dx * aw.clone() + ax;
        let py = dy * ah.clone() + ay;
        let mut pw = dw.exp() * aw;
        let mut ph = dh.exp() * ah;
        if self.plus_one {
            pw = pw - 1.0;
            ph = ph - 1.0;
        }
        let (hw, hh) = (pw * 0.5, ph * 0.5);
        Ok(Tensor::cat(
            vec![
                px.clone() - hw.clone(),
                py.clone() - hh.clone(),
                px + hw,
                py + hh,
            ],
            1,
        ))
    }
}
