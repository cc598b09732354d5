//! AdamW with parameter groups: a learning rate per group (backbone, language, new layers),
//! no weight decay on norms and biases, frozen groups, and clipping by the global gradient
//! norm.
//!
//! Built on Burn's `AdamW` through two `OptimizerAdaptor`s (one with decay, one without);
//! each group is stepped with its own learning rate by handing the adaptor only that group's
//! gradients. Burn's own `GradientClipping` clips each tensor by its own norm; detectors clip
//! by the norm of all gradients together (PyTorch `clip_grad_norm_`), which is done here.

use std::collections::HashMap;

use burn::module::{AutodiffModule, ModuleVisitor, Param, ParamId};
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{AdamW, AdamWConfig, GradientsParams, Optimizer};
use burn::prelude::*;
use burn::record::{BinBytesRecorder, FullPrecisionSettings, Recorder};
use burn::tensor::backend::AutodiffBackend;
use detclip_core::{DetError, Result};
use serde::{Deserialize, Serialize};

use crate::recipe::ParamGroup;

/// Learning-rate multipliers per group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupMultipliers {
    /// The backbone (GLIP, DetCLIPv2: 0.1).
    pub backbone: f64,
    /// The language side (GLIP: 0.1 for BERT).
    pub language: f64,
    /// New layers.
    pub new: f64,
}

impl GroupMultipliers {
    /// The multiplier of `group`: the finer groups (prompt, output) take the multiplier of
    /// the coarse group they belong to (language, new).
    pub fn of(&self, group: ParamGroup) -> f64 {
        match group {
            ParamGroup::Backbone => self.backbone,
            ParamGroup::Language | ParamGroup::Prompt => self.language,
            ParamGroup::New | ParamGroup::Output => self.new,
        }
    }
}

/// The optimiser's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimConfig {
    /// The base learning rate.
    pub lr: f64,
    /// Per-group multipliers of `lr`.
    pub lr_mult: GroupMultipliers,
    /// AdamW's decoupled weight decay, for weights of rank ≥ 2 (no decay on biases and norm
    /// parameters, as mmdetection's `norm_decay_mult = 0, bias_decay_mult = 0`).
    pub weight_decay: f32,
    /// Adam's `(β1, β2)`.
    pub betas: [f32; 2],
    /// Adam's ε.
    pub eps: f32,
    /// Clip the global gradient norm to this value.
    pub clip_grad_norm: Option<f32>,
    /// Groups that are not trained.
    pub frozen: Vec<ParamGroup>,
}

impl OptimConfig {
    /// Checks the values.
    pub fn validate(&self) -> Result<()> {
        let bad = |why: String| Err(DetError::InvalidOption { op: "optim", why });
        let m = &self.lr_mult;
        let positive = |v: f64| v.is_finite() && v > 0.0;
        let non_negative = |v: f64| v.is_finite() && v >= 0.0;
        if !positive(self.lr)
            || ![m.backbone, m.language, m.new]
                .into_iter()
                .all(non_negative)
        {
            return bad("lr must be positive and the multipliers non-negative".into());
        }
        if self.clip_grad_norm.is_some_and(|c| !positive(c as f64)) {
            return bad("clip_grad_norm must be positive".into());
        }
        if !(non_negative(self.weight_decay as f64) && positive(self.eps as f64)) {
            return bad("weight_decay must be ≥ 0 and eps > 0".into());
        }
        Ok(())
    }

    fn adamw(&self, weight_decay: f32) -> AdamWConfig {
        AdamWConfig::new()
            .with_beta_1(self.betas[0])
            .with_beta_2(self.betas[1])
            .with_epsilon(self.eps)
            .with_weight_decay(weight_decay)
    }
}

/// Which group each parameter belongs to, and whether it is decayed.
#[derive(Debug, Clone, Default)]
pub struct ParamLayout {
    entries: HashMap<ParamId, (ParamGroup, bool)>,
    /// Per group, how many scalars it has.
    pub counts: HashMap<ParamGroup, usize>,
}

impl ParamLayout {
    /// Walks the module: the group from the recipe's path rule, decay for rank ≥ 2.
    pub fn of<B: Backend, M: Module<B>>(module: &M, rule: fn(&[String]) -> ParamGroup) -> Self {
        let mut v = LayoutVisitor {
            path: Vec::new(),
            rule,
            layout: ParamLayout::default(),
        };
        module.visit(&mut v);
        v.layout
    }

    /// The group of a parameter and whether it is decayed.
    pub fn get(&self, id: &ParamId) -> Option<(ParamGroup, bool)> {
        self.entries.get(id).copied()
    }

    /// The parameter ids of `group`.
    pub fn ids(&self, group: ParamGroup) -> Vec<ParamId> {
        self.entries
            .iter()
            .filter(|(_, (g, _))| *g == group)
            .map(|(id, _)| *id)
            .collect()
    }
}

struct LayoutVisitor {
    path: Vec<String>,
    rule: fn(&[String]) -> ParamGroup,
    layout: ParamLayout,
}

impl<B: Backend> ModuleVisitor<B> for LayoutVisitor {
    fn enter_module(&mut self, name: &str, _container: &str) {
        self.path.push(name.to_string());
    }
    fn exit_module(&mut self, _name: &str, _container: &str) {
        self.path.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let group = (self.rule)(&self.path);
        self.layout.entries.insert(param.id, (group, D >= 2));
        *self.layout.counts.entry(group).or_default() += param.val().shape().num_elements();
    }
}

/// Moves each gradient into the set of its (group, decay) pair, drops frozen ones, and sums
/// squares for the global norm.
struct Splitter<'a, B: AutodiffBackend> {
    layout: &'a ParamLayout,
    frozen: &'a [ParamGroup],
    from: GradientsParams,
    sets: HashMap<(ParamGroup, bool), GradientsParams>,
    sum_sq: Option<Tensor<B::InnerBackend, 1>>,
    want_norm: bool,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Splitter<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let Some(grad) = self.from.remove::<B::InnerBackend, D>(param.id) else {
            return;
        };
        let Some((group, decay)) = self.layout.get(&param.id) else {
            return;
        };
        if self.frozen.contains(&group) {
            return;
        }
        if self.want_norm {
            let sq = grad.clone().powi_scalar(2).sum();
            self.sum_sq = Some(match self.sum_sq.take() {
                Some(s) => s + sq,
                None => sq,
            });
        }
        self.sets
            .entry((group, decay))
            .or_default()
            .register(param.id, grad);
    }
}

struct Scaler<'a> {
    sets: &'a mut HashMap<(ParamGroup, bool), GradientsParams>,
    scale: f32,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Scaler<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        for set in self.sets.values_mut() {
            if let Some(g) = set.remove::<B::InnerBackend, D>(param.id) {
                set.register(param.id, g.mul_scalar(self.scale));
            }
        }
    }
}

/// What one optimiser step did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepInfo {
    /// The global gradient norm before clipping (when clipping is on).
    pub grad_norm: Option<f64>,
}

/// AdamW over parameter groups.
pub struct GroupedAdamW<B: AutodiffBackend, M: AutodiffModule<B>> {
    config: OptimConfig,
    layout: ParamLayout,
    decayed: OptimizerAdaptor<AdamW, M, B>,
    plain: OptimizerAdaptor<AdamW, M, B>,
}

type Rec = BinBytesRecorder<FullPrecisionSettings>;

impl<B: AutodiffBackend, M: AutodiffModule<B>> GroupedAdamW<B, M> {
    /// An optimiser for `model`, whose parameters are grouped by `rule`.
    pub fn new(config: OptimConfig, model: &M, rule: fn(&[String]) -> ParamGroup) -> Self {
        Self {
            layout: ParamLayout::of::<B, M>(model, rule),
            decayed: config.adamw(config.weight_decay).init(),
            plain: config.adamw(0.0).init(),
            config,
        }
    }

    /// The parameter layout.
    pub fn layout(&self) -> &ParamLayout {
        &self.layout
    }

    /// The learning rate of `group` at schedule factor `factor`.
    pub fn lr(&self, group: ParamGroup, factor: f64) -> f64 {
        self.config.lr * self.config.lr_mult.of(group) * factor
    }

    /// One update from `grads` at schedule factor `factor`.
    pub fn step(&mut self, model: M, grads: GradientsParams, factor: f64) -> (M, StepInfo) {
        let mut splitter = Splitter::<B> {
            layout: &self.layout,
            frozen: &self.config.frozen,
            from: grads,
            sets: HashMap::new(),
            sum_sq: None,
            want_norm: self.config.clip_grad_norm.is_some(),
        };
        model.visit(&mut splitter);
        let (mut sets, sum_sq) = (splitter.sets, splitter.sum_sq);
        let mut info = StepInfo { grad_norm: None };
        if let (Some(max), Some(sq)) = (self.config.clip_grad_norm, sum_sq) {
            let norm = (sq.into_scalar().elem::<f64>()).sqrt();
            info.grad_norm = Some(norm);
            let scale = max as f64 / (norm + 1e-6);
            if scale < 1.0 {
                model.visit(&mut Scaler {
                    sets: &mut sets,
                    scale: scale as f32,
                });
            }
        }
        let mut model = model;
        let mut keys: Vec<(ParamGroup, bool)> = sets.keys().copied().collect();
        keys.sort();
        for key in keys {
            let set = sets.remove(&key).expect("key from the map");
            let lr = self.lr(key.0, factor);
            model = if key.1 {
                self.decayed.step(lr, model, set)
            } else {
                self.plain.step(lr, model, set)
            };
        }
        (model, info)
    }

    /// The optimiser state (both adaptors' moments) as bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let rec = Rec::default();
        let encode = |r| {
            Recorder::<B>::record(&rec, r, ()).map_err(|e| DetError::Checkpoint {
                file: "<optimizer>".into(),
                why: e.to_string(),
            })
        };
        let a: Vec<u8> = encode(self.decayed.to_record())?;
        let b: Vec<u8> = encode(self.plain.to_record())?;
        let mut out = (a.len() as u64).to_le_bytes().to_vec();
        out.extend(a);
        out.extend(b);
        Ok(out)
    }

    /// Restores the state written by [`GroupedAdamW::to_bytes`].
    pub fn load_bytes(mut self, bytes: &[u8], device: &B::Device) -> Result<Self> {
        let err = |why: String| DetError::Checkpoint {
            file: "<optimizer>".into(),
            why,
        };
        let n = bytes
            .get(..8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")) as usize)
            .filter(|&n| 8 + n <= bytes.len())
            .ok_or_else(|| err("optimizer state is cut short".into()))?;
        let rec = Rec::default();
        let a = Recorder::<B>::load(&rec, bytes[8..8 + n].to_vec(), device)
            .map_err(|e| err(e.to_string()))?;
        let b = Recorder::<B>::load(&rec, bytes[8 + n..].to_vec(), device)
            .map_err(|e| err(e.to_string()))?;
        self.decayed = self.decayed.load_record(a);
        self.plain = self.plain.load_record(b);
        Ok(self)
    }
}
