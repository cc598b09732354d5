//! The self-check behind `detclip check`: runs every core op of this crate on the chosen device — the custom
//! CubeCL kernel forward and backward, IoU, the box coder, class-aware NMS, RoIAlign forward
//! and backward, focal loss — on a detector-sized workload, compares each result with the
//! CPU reference backend and reports the error and the time.

use std::time::Instant;

use crate::assign::{AnchorGenerator, AtssOptions, atss_assign};
use crate::backend::{BackendTask, NdArrayBackend};
use crate::ext::{DetclipAutodiffBackend, sigmoid_gate};
use crate::loss::{Reduction, sigmoid_focal_loss};
use crate::ops::{
    DeformConv2dOptions, DeltaBoxCoder, NmsOptions, RoiAlignOptions, box_iou, clip_boxes,
    deform_conv2d, multiclass_nms, roi_align,
};
use burn::prelude::*;
use burn::tensor::{Distribution, TensorData, activation::sigmoid};
use serde::Serialize;

/// One line of the report.
#[derive(Debug, Clone, Serialize)]
pub struct CheckLine {
    /// What was run.
    pub op: String,
    /// Max |device − CPU reference| (0 for exact integer results that agree).
    pub max_abs_err: f32,
    /// Tolerance the error must stay under.
    pub tolerance: f32,
    /// Wall time on the device, milliseconds (includes the read-back).
    pub millis: f64,
}

impl CheckLine {
    /// Whether the error is within tolerance.
    pub fn ok(&self) -> bool {
        self.max_abs_err <= self.tolerance
    }
}

/// The report of [`Check`].
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    /// The backend that ran, as Burn names it.
    pub backend: String,
    /// One line per op.
    pub lines: Vec<CheckLine>,
}

impl CheckReport {
    /// Whether every op agreed with the reference.
    pub fn ok(&self) -> bool {
        self.lines.iter().all(CheckLine::ok)
    }
}

/// The self-check as a [`BackendTask`], so it runs on whichever backend `--device` names.
#[derive(Debug, Clone)]
pub struct Check {
    /// Seed of the random inputs.
    pub seed: u64,
}

fn host<B: Backend, const D: usize>(t: Tensor<B, D>) -> (Vec<f32>, [usize; D]) {
    let dims = t.dims();
    (
        t.into_data().convert::<f32>().to_vec().expect("f32 data"),
        dims,
    )
}

fn to<B: Backend, const D: usize>(v: &(Vec<f32>, [usize; D]), device: &B::Device) -> Tensor<B, D> {
    Tensor::from_data(TensorData::new(v.0.clone(), v.1), device)
}

fn max_err(a: &[f32], b: &[f32]) -> f32 {
    if a.len() != b.len() {
        return f32::INFINITY;
    }
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(
            0.0,
            |m, d| if d.is_nan() { f32::INFINITY } else { m.max(d) },
        )
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, f64) {
    let t0 = Instant::now();
    let out = f();
    (out, t0.elapsed().as_secs_f64() * 1e3)
}

type Cpu = burn::backend::Autodiff<NdArrayBackend>;

/// Output and the gradients of input, offset, mask and weight of a DCN with `sum(y²)` as loss.
fn dcn_outputs<B: DetclipAutodiffBackend>(
    t: [&(Vec<f32>, [usize; 4]); 4],
    o: &DeformConv2dOptions,
    device: &B::Device,
) -> crate::Result<Vec<Vec<f32>>> {
    let ts: Vec<Tensor<B, 4>> = t
        .iter()
        .map(|v| to::<B, 4>(v, device).require_grad())
        .collect();
    let y = deform_conv2d(
        ts[0].clone(),
        ts[1].clone(),
        Some(ts[2].clone()),
        ts[3].clone(),
        None,
        o,
    )?;
    let grads = (y.clone() * y.clone()).sum().backward();
    let mut out = vec![host(y).0];
    out.extend(
        ts.iter()
            .map(|t| host(t.grad(&grads).expect("tracked input")).0),
    );
    Ok(out)
}

impl BackendTask for Check {
    type Output = crate::Result<CheckReport>;

    fn run<B: DetclipAutodiffBackend>(self, device: B::Device) -> Self::Output {
        let cpu = Default::default();
        B::seed(&device, self.seed);
        let mut lines = Vec::new();
        let mut line = |op: &str, err: f32, tolerance: f32, millis: f64| {
            lines.push(CheckLine {
                op: op.into(),
                max_abs_err: err,
                tolerance,
                millis,
            })
        };

        // 1. The custom kernel, forward and backward, against Burn's own ops on the CPU.
        let x = host(Tensor::<B, 4>::random(
            [2, 256, 50, 68],
            Distribution::Normal(0.0, 1.0),
            &device,
        ));
        let g = host(Tensor::<B, 4>::random(
            [2, 256, 50, 68],
            Distribution::Normal(0.0, 2.0),
            &device,
        ));
        let (dev, ms) = timed(|| {
            let (xd, gd) = (
                to::<B, 4>(&x, &device).require_grad(),
                to::<B, 4>(&g, &device).require_grad(),
            );
            let y = sigmoid_gate(xd.clone(), gd.clone())?;
            let grads = y.clone().sum().backward();
            Ok::<_, crate::DetError>((
                host(y),
                host(xd.grad(&grads).expect("x grad")),
                host(gd.grad(&grads).expect("g grad")),
            ))
        });
        let (y, dx, dg) = dev?;
        let (xc, gc) = (
            to::<Cpu, 4>(&x, &cpu).require_grad(),
            to::<Cpu, 4>(&g, &cpu).require_grad(),
        );
        let yc = xc.clone() * sigmoid(gc.clone());
        let grads = yc.clone().sum().backward();
        let err = max_err(&y.0, &host(yc).0)
            .max(max_err(&dx.0, &host(xc.grad(&grads).expect("grad")).0))
            .max(max_err(&dg.0, &host(gc.grad(&grads).expect("grad")).0));
        line("sigmoid_gate kernel fwd+bwd [2,256,50,68]", err, 1e-5, ms);

        // 2. Anchors for an 800×1088 image, random deltas decoded, clipped: a detector's boxes.
        let sizes = [[100, 136], [50, 68], [25, 34], [13, 17], [7, 9]];
        let (anchors, counts) = AnchorGenerator::atss().grid_anchors::<B>(&sizes, &device)?;
        let n = anchors.dims()[0];
        let deltas = host(Tensor::<B, 2>::random(
            [n, 4],
            Distribution::Normal(0.0, 0.3),
            &device,
        ));
        let anchors_h = host(anchors.clone());
        let coder = DeltaBoxCoder::default();
        let (boxes, ms) = timed(|| -> crate::Result<_> {
            Ok(host(clip_boxes(
                coder.decode(to::<B, 2>(&deltas, &device), anchors.clone())?,
                800.0,
                1088.0,
            )?))
        });
        let boxes = boxes?;
        let boxes_cpu = clip_boxes(
            coder.decode(to::<Cpu, 2>(&deltas, &cpu), to::<Cpu, 2>(&anchors_h, &cpu))?,
            800.0,
            1088.0,
        )?;
        line(
            &format!("decode + clip {n} boxes"),
            max_err(&boxes.0, &host(boxes_cpu).0),
            1e-3,
            ms,
        );

        // 3. IoU of 1000 boxes against 100.
        let a = (boxes.0[..4000].to_vec(), [1000, 4]);
        let b = (boxes.0[4000..4400].to_vec(), [100, 4]);
        let (iou, ms) =
            timed(|| box_iou(to::<B, 2>(&a, &device), to::<B, 2>(&b, &device)).map(host));
        let iou_cpu = box_iou(to::<Cpu, 2>(&a, &cpu), to::<Cpu, 2>(&b, &cpu))?;
        line(
            "box_iou 1000×100",
            max_err(&iou?.0, &host(iou_cpu).0),
            1e-5,
            ms,
        );

        // 4. Class-aware NMS with the detector's post-processing options.
        let scores = host(Tensor::<B, 1>::random(
            [n],
            Distribution::Uniform(0.0, 1.0),
            &device,
        ));
        let classes: Vec<i64> = (0..n as i64).map(|i| (i * 7919) % 80).collect();
        let opts = NmsOptions {
            iou_threshold: 0.6,
            score_threshold: 0.05,
            pre_nms_top_k: Some(1000),
            max_detections: Some(100),
        };
        let cls = |d: &_| Tensor::<B, 1, Int>::from_data(TensorData::new(classes.clone(), [n]), d);
        let (keep, ms) = timed(|| {
            multiclass_nms(
                to::<B, 2>(&boxes, &device),
                to::<B, 1>(&scores, &device),
                cls(&device),
                &opts,
            )
        });
        let keep: Vec<i64> = keep?.into_data().convert::<i64>().to_vec().expect("ints");
        let keep_cpu: Vec<i64> = multiclass_nms(
            to::<Cpu, 2>(&boxes, &cpu),
            to::<Cpu, 1>(&scores, &cpu),
            Tensor::from_data(TensorData::new(classes.clone(), [n]), &cpu),
            &opts,
        )?
        .into_data()
        .convert::<i64>()
        .to_vec()
        .expect("ints");
        line(
            &format!("multiclass_nms {n} boxes → {}", keep.len()),
            if keep == keep_cpu { 0.0 } else { f32::INFINITY },
            0.0,
            ms,
        );

        // 5. RoIAlign of the kept boxes on a stride-8 map, forward and input gradient.
        let feats = host(Tensor::<B, 4>::random(
            [1, 64, 100, 136],
            Distribution::Normal(0.0, 1.0),
            &device,
        ));
        let rois: Vec<f32> = keep
            .iter()
            .flat_map(|&k| {
                let k = k as usize;
                [
                    0.0,
                    boxes.0[4 * k],
                    boxes.0[4 * k + 1],
                    boxes.0[4 * k + 2],
                    boxes.0[4 * k + 3],
                ]
            })
            .collect();
        let rois = (rois, [keep.len(), 5]);
        let ropts = RoiAlignOptions::new(7, 1.0 / 8.0);
        let (pooled, ms) = timed(|| -> crate::Result<_> {
            let f = to::<B, 4>(&feats, &device).require_grad();
            let out = roi_align(f.clone(), to::<B, 2>(&rois, &device), &ropts)?;
            let grads = out.clone().sum().backward();
            Ok((host(out), host(f.grad(&grads).expect("grad"))))
        });
        let (pooled, pooled_grad) = pooled?;
        let fc = to::<Cpu, 4>(&feats, &cpu).require_grad();
        let out_cpu = roi_align(fc.clone(), to::<Cpu, 2>(&rois, &cpu), &ropts)?;
        let grads = out_cpu.clone().sum().backward();
        let err = max_err(&pooled.0, &host(out_cpu).0).max(max_err(
            &pooled_grad.0,
            &host(fc.grad(&grads).expect("grad")).0,
        ));
        line(
            &format!("roi_align 7×7 of {} RoIs fwd+bwd", keep.len()),
            err,
            1e-4,
            ms,
        );

        // 6. ATSS on the anchors for three boxes, then the focal loss of the assignment.
        let gt = [
            [100.0f32, 120.0, 400.0, 500.0],
            [600.0, 50.0, 700.0, 90.0],
            [10.0, 600.0, 1000.0, 790.0],
        ];
        let anchor_list: Vec<[f32; 4]> = anchors_h
            .0
            .chunks_exact(4)
            .map(|c| [c[0], c[1], c[2], c[3]])
            .collect();
        let (assign, ms_assign) =
            timed(|| atss_assign(&anchor_list, &counts, &gt, &AtssOptions::default()));
        let assign = assign?;
        let mut targets = vec![0.0f32; n * 3];
        for (i, g) in assign.gt_index.iter().enumerate() {
            if let Some(g) = g {
                targets[i * 3 + g] = 1.0;
            }
        }
        let targets = (targets, [n, 3]);
        let logits = host(Tensor::<B, 2>::random(
            [n, 3],
            Distribution::Normal(-4.0, 1.0),
            &device,
        ));
        let (fl, ms) = timed(|| -> crate::Result<_> {
            let l = to::<B, 2>(&logits, &device).require_grad();
            let loss = sigmoid_focal_loss(
                l.clone(),
                to::<B, 2>(&targets, &device),
                0.25,
                2.0,
                Reduction::Sum,
            )?;
            let grads = loss.clone().backward();
            Ok((host(loss), host(l.grad(&grads).expect("grad"))))
        });
        let (fl, fl_grad) = fl?;
        let lc = to::<Cpu, 2>(&logits, &cpu).require_grad();
        let loss_cpu = sigmoid_focal_loss(
            lc.clone(),
            to::<Cpu, 2>(&targets, &cpu),
            0.25,
            2.0,
            Reduction::Sum,
        )?;
        let grads = loss_cpu.clone().backward();
        let rel = (fl.0[0] - host(loss_cpu).0[0]).abs() / fl.0[0].abs().max(1.0);
        let err = rel.max(max_err(&fl_grad.0, &host(lc.grad(&grads).expect("grad")).0));
        line(
            &format!(
                "ATSS ({} positives, {ms_assign:.1} ms) + focal loss fwd+bwd",
                assign.positives().len()
            ),
            err,
            1e-4,
            ms,
        );

        // 7. Deformable convolution v2 (a DyHead level), forward and all gradients.
        let r = |shape: [usize; 4], s: f64| {
            host(Tensor::<B, 4>::random(
                shape,
                Distribution::Normal(0.0, s),
                &device,
            ))
        };
        let x = r([2, 32, 25, 42], 1.0);
        let off = r([2, 18, 25, 42], 2.0);
        let m = r([2, 9, 25, 42], 1.0);
        let w = r([32, 32, 3, 3], 0.1);
        let dopts = DeformConv2dOptions {
            padding: [1, 1],
            ..Default::default()
        };
        let (dev_out, ms) = timed(|| dcn_outputs::<B>([&x, &off, &m, &w], &dopts, &device));
        let cpu_out = dcn_outputs::<Cpu>([&x, &off, &m, &w], &dopts, &cpu)?;
        let err = dev_out?
            .iter()
            .zip(&cpu_out)
            .map(|(a, b)| max_err(a, b) / b.iter().fold(1.0f32, |m, v| m.max(v.abs())))
            .fold(0.0, f32::max);
        line(
            "deform_conv2d [2,32,25,42] 3×3 fwd + 4 grads (rel)",
            err,
            1e-4,
            ms,
        );

        Ok(CheckReport {
            backend: B::name(&device),
            lines,
        })
    }
}
