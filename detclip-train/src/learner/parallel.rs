//! Data parallelism over the devices of one machine: the gradients of one optimiser step.
//!
//! A step with `D` devices and `accumulate = A` trains on `A × D` micro-batches, drawn by the
//! joint sampler in order: round `r` gives micro-batch `r·D + i` to device `i`. Every device
//! holds a replica of the model (`Module::fork`, a fresh autodiff leaf per parameter, the same
//! `ParamId`s); the `D` forward and backward passes of a round run at the same time, one thread
//! per device; each replica's gradients are moved to the main device (the first) and summed
//! there, in device order. The sum is exactly what one device accumulating the same `A × D`
//! micro-batches computes, so `--devices a,b` with `accumulate = A` trains like one device
//! with `accumulate = 2A` — same losses, same parameters up to the order of float sums — and a
//! run is as reproducible and resumable as a one-device run: the sampler stays on the main
//! thread and its state is one cursor per source, whatever the device count.
//!
//! The optimiser then steps once on the main device (Burn's `MultiDeviceOptim::OptimMainDevice`
//! strategy), with everything [`GroupedAdamW`](super::GroupedAdamW) does for one device:
//! groups, frozen groups, global-norm clipping. Burn's `Optimizer::step_multi` is not used: it
//! sums each parameter's gradients on a device picked per parameter and moves the parameter
//! there (sharding the optimiser state), which our groups and global clipping would have to be
//! rewritten for, and which buys nothing when one device holds the whole model.

use std::collections::BTreeMap;

use burn::module::{AutodiffModule, Module};
use burn::optim::{GradientsAccumulator, GradientsParams};
use detclip_core::data::Batch;
use detclip_core::ext::DetclipAutodiffBackend;
use detclip_core::{DetError, Result};

use crate::data::JointSampler;
use crate::recipe::Recipe;

/// The gradients of one optimiser step, summed on the main device, and what to log of it.
pub struct StepGrads {
    /// The gradients of `loss_scale · Σ total / (A·D)` over the step's micro-batches.
    pub grads: GradientsParams,
    /// The source of each micro-batch, in drawing order.
    pub sources: Vec<String>,
    /// Per loss term: the sum of its (unscaled) values and how many micro-batches had it.
    pub terms: BTreeMap<String, (f64, usize)>,
    /// The sum over micro-batches of the (unscaled) total loss.
    pub loss_sum: f64,
    /// How many micro-batches the step trained on (`A × D`).
    pub micro_batches: usize,
}

/// What one micro-batch gave: its terms' values, their sum, its gradients.
type Micro = (BTreeMap<String, f64>, f64, GradientsParams);

/// The loss of one micro-batch on one replica and its gradients. The backward pass runs on
/// `total / micro_batches · loss_scale`, so that summed gradients are the mean's gradients
/// (times the loss scale, when half precision scales the loss).
fn micro_grads<R: Recipe, B: DetclipAutodiffBackend>(
    recipe: &R,
    cx: &R::Context,
    model: &R::Model<B>,
    batch: &Batch<B>,
    vocabulary: &[String],
    micro_batches: usize,
    loss_scale: f32,
) -> Result<Micro>
where
    R::Model<B>: AutodiffModule<B>,
{
    let terms = recipe.loss(cx, model, batch, vocabulary)?;
    let mut total = terms.total()? / micro_batches as f32;
    if loss_scale != 1.0 {
        total = total * loss_scale;
    }
    let (values, sum) = terms.values();
    let grads = GradientsParams::from_grads(total.backward(), model);
    Ok((values, sum, grads))
}

/// Runs one round: micro-batch `i` of `batches` on replica `i`, all at once, one thread each;
/// the results in device order.
fn round<R: Recipe, B: DetclipAutodiffBackend>(
    recipe: &R,
    cx: &R::Context,
    replicas: &[R::Model<B>],
    batches: Vec<(Batch<B>, Vec<String>)>,
    micro_batches: usize,
    loss_scale: f32,
) -> Result<Vec<Micro>>
where
    R::Model<B>: AutodiffModule<B>,
{
    std::thread::scope(|scope| {
        let handles: Vec<_> = replicas
            .iter()
            .zip(batches)
            .map(|(replica, (batch, vocabulary))| {
                // The recipe (not `Sync`) and the replica (cheap: shared tensor handles) go to
                // the thread by value.
                let (recipe, replica) = (recipe.clone(), replica.clone());
                scope.spawn(move || {
                    micro_grads(
                        &recipe,
                        cx,
                        &replica,
                        &batch,
                        &vocabulary,
                        micro_batches,
                        loss_scale,
                    )
                })
            })
            .collect();
        handles
            .into_iter()
            .enumerate()
            .map(|(i, h)| {
                h.join().unwrap_or_else(|_| {
                    Err(DetError::InvalidOption {
                        op: "train",
                        why: format!("the worker of device {i} panicked during its training step"),
                    })
                })
            })
            .collect()
    })
}

/// Draws the step's `accumulate × devices.len()` micro-batches, computes their loss and
/// gradients (on all devices at once when there are several) and sums the gradients on the
/// main device, `devices[0]`, where `model` lives.
pub fn step_grads<R: Recipe, B: DetclipAutodiffBackend>(
    recipe: &R,
    cx: &R::Context,
    model: &R::Model<B>,
    sampler: &mut JointSampler,
    devices: &[B::Device],
    accumulate: usize,
    loss_scale: f32,
) -> Result<StepGrads>
where
    R::Model<B>: AutodiffModule<B>,
{
    let main = devices.first().ok_or_else(|| DetError::InvalidOption {
        op: "train",
        why: "no device to train on".into(),
    })?;
    let micro_batches = accumulate * devices.len();
    // One replica per device for the whole step: the main device trains `model` itself.
    let replicas: Vec<R::Model<B>> = devices
        .iter()
        .enumerate()
        .map(|(i, d)| match i {
            0 => model.clone(),
            _ => model.clone().fork(d),
        })
        .collect();
    let mut acc = GradientsAccumulator::<R::Model<B>>::new();
    let mut out = StepGrads {
        grads: GradientsParams::new(),
        sources: Vec::with_capacity(micro_batches),
        terms: BTreeMap::new(),
        loss_sum: 0.0,
        micro_batches,
    };
    for _ in 0..accumulate {
        let mut batches = Vec::with_capacity(devices.len());
        for device in devices {
            let drawn = sampler.next_batch::<B>(device)?;
            let source = &sampler.sources()[drawn.source];
            out.sources.push(source.config.name.clone());
            batches.push((drawn.batch, source.vocabulary.clone()));
        }
        let results = if devices.len() == 1 {
            let (batch, vocabulary) = batches.pop().expect("one batch");
            vec![micro_grads(
                recipe,
                cx,
                model,
                &batch,
                &vocabulary,
                micro_batches,
                loss_scale,
            )?]
        } else {
            round(recipe, cx, &replicas, batches, micro_batches, loss_scale)?
        };
        for (i, (values, sum, grads)) in results.into_iter().enumerate() {
            for (k, v) in values {
                let e = out.terms.entry(k).or_default();
                e.0 += v;
                e.1 += 1;
            }
            out.loss_sum += sum;
            let grads = match i {
                0 => grads,
                _ => grads.to_device(main, model),
            };
            acc.accumulate(model, grads);
        }
    }
    out.grads = acc.grads();
    Ok(out)
}
