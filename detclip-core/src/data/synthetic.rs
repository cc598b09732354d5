//! A synthetic world of coloured shapes: images, boxes, concept names and captions with
//! phrase spans, deterministic by seed, with concepts held out of the training split so that
//! open-vocabulary transfer can be measured on a CPU in minutes.
//!
//! Each image (sides uniform in `[min_side, max_side]`) has a uniform grey background and
//! 1..=`max_objects` non-overlapping shapes ([`Shape`]) in one of six colours ([`Color`]), solid,
//! striped or dotted ([`Texture`]). Textures only darken or lighten the shape's colour, so no
//! shape pixel is ever background grey. A box is the tight box of the pixels drawn, in the
//! continuous convention (`[min_x, min_y, max_x + 1, max_y + 1]`).
//!
//! Concepts are `"<colour> <shape>"` ([`Naming::ColorShape`], e.g. `red star`) or the shape
//! alone ([`Naming::Shape`]). The caption names every object, e.g. `"a small red star left
//! of a striped blue ring. a large green cross."`: the first two objects are related by
//! `left of` / `right of` / `above` / `below` from their box centres, and each concept's span
//! points at its name in the caption.
//!
//! [`HeldOut`] concepts (whole shapes, or colour–shape pairs) never appear in
//! [`Split::Train`]; every [`Split::Test`] image has at least one.

use std::sync::Arc;

use image::{Rgb, RgbImage};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::error::{DetError, Result};

use super::sample::{ImageSource, Instance, Sample, SourceKind, Span};

/// The shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Shape {
    /// A filled disc.
    Circle,
    /// A filled square.
    Square,
    /// A triangle, apex up.
    Triangle,
    /// A five-pointed star.
    Star,
    /// An annulus.
    Ring,
    /// A plus sign.
    Cross,
    /// A square standing on a corner.
    Diamond,
}

impl Shape {
    /// Every shape.
    pub const ALL: [Shape; 7] = [
        Shape::Circle,
        Shape::Square,
        Shape::Triangle,
        Shape::Star,
        Shape::Ring,
        Shape::Cross,
        Shape::Diamond,
    ];

    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Shape::Circle => "circle",
            Shape::Square => "square",
            Shape::Triangle => "triangle",
            Shape::Star => "star",
            Shape::Ring => "ring",
            Shape::Cross => "cross",
            Shape::Diamond => "diamond",
        }
    }

    /// Whether the point `(u, v)` of the shape's square `[-1, 1]²` (v down) is inside.
    fn contains(self, u: f32, v: f32) -> bool {
        let r2 = u * u + v * v;
        match self {
            Shape::Circle => r2 <= 1.0,
            Shape::Ring => (0.3..=1.0).contains(&r2),
            Shape::Square => u.abs() <= 0.85 && v.abs() <= 0.85,
            Shape::Triangle => v <= 0.9 && u.abs() <= (v + 1.0) * 0.5,
            Shape::Diamond => u.abs() + v.abs() <= 1.0,
            Shape::Cross => {
                (u.abs() <= 0.3 && v.abs() <= 1.0) || (v.abs() <= 0.3 && u.abs() <= 1.0)
            }
            Shape::Star => in_star(u, v),
        }
    }
}

/// Point-in-polygon for a five-pointed star (outer radius 1, inner 0.42, a point up).
fn in_star(u: f32, v: f32) -> bool {
    let vertex = |k: usize| {
        let r = if k.is_multiple_of(2) { 1.0 } else { 0.42 };
        let a = -std::f32::consts::FRAC_PI_2 + k as f32 * std::f32::consts::PI / 5.0;
        (r * a.cos(), r * a.sin())
    };
    let mut inside = false;
    for k in 0..10 {
        let (x1, y1) = vertex(k);
        let (x2, y2) = vertex((k + 1) % 10);
        if (y1 > v) != (y2 > v) && u < x1 + (v - y1) * (x2 - x1) / (y2 - y1) {
            inside = !inside;
        }
    }
    inside
}

/// The colours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Color {
    /// Red.
    Red,
    /// Green.
    Green,
    /// Blue.
    Blue,
    /// Yellow.
    Yellow,
    /// Purple.
    Purple,
    /// Orange.
    Orange,
}

impl Color {
    /// Every colour.
    pub const ALL: [Color; 6] = [
        Color::Red,
        Color::Green,
        Color::Blue,
        Color::Yellow,
        Color::Purple,
        Color::Orange,
    ];

    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Color::Red => "red",
            Color::Green => "green",
            Color::Blue => "blue",
            Color::Yellow => "yellow",
            Color::Purple => "purple",
            Color::Orange => "orange",
        }
    }

    /// Its RGB value.
    pub fn rgb(self) -> [u8; 3] {
        match self {
            Color::Red => [220, 40, 40],
            Color::Green => [40, 170, 60],
            Color::Blue => [40, 80, 220],
            Color::Yellow => [235, 200, 30],
            Color::Purple => [140, 60, 190],
            Color::Orange => [245, 130, 30],
        }
    }
}

/// Surface patterns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Texture {
    /// One colour.
    Solid,
    /// Diagonal stripes of the colour and a darker shade.
    Stripes,
    /// Lighter dots on the colour.
    Dots,
}

impl Texture {
    const ALL: [Texture; 3] = [Texture::Solid, Texture::Stripes, Texture::Dots];

    /// The caption adjective: `""`, `"striped"`, `"dotted"`.
    pub fn adjective(self) -> &'static str {
        match self {
            Texture::Solid => "",
            Texture::Stripes => "striped",
            Texture::Dots => "dotted",
        }
    }

    fn shade(self, base: [u8; 3], x: u32, y: u32) -> [u8; 3] {
        let darker = base.map(|c| (c as f32 * 0.6) as u8);
        let lighter = base.map(|c| c + ((255 - c) as f32 * 0.6) as u8);
        match self {
            Texture::Solid => base,
            Texture::Stripes if ((x + y) / 3) % 2 == 1 => darker,
            Texture::Dots if (x % 6).abs_diff(3) + (y % 6).abs_diff(3) <= 1 => lighter,
            _ => base,
        }
    }
}

/// How concepts are named.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Naming {
    /// `red star`.
    #[default]
    ColorShape,
    /// `star`.
    Shape,
}

/// Concepts kept out of the training split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldOut {
    /// Shapes never seen in training, in any colour.
    pub shapes: Vec<Shape>,
    /// Colour–shape pairs never seen in training (the colour and the shape are seen apart).
    pub pairs: Vec<(Color, Shape)>,
}

impl Default for HeldOut {
    /// Stars in any colour, red rings and blue triangles.
    fn default() -> Self {
        Self {
            shapes: vec![Shape::Star],
            pairs: vec![(Color::Red, Shape::Ring), (Color::Blue, Shape::Triangle)],
        }
    }
}

/// The split an image belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Split {
    /// No held-out concept.
    Train,
    /// At least one held-out concept per image.
    Test,
}

/// The world's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct WorldConfig {
    /// The seed everything derives from.
    pub seed: u64,
    /// Smallest image side.
    pub min_side: u32,
    /// Largest image side.
    pub max_side: u32,
    /// Most objects per image.
    pub max_objects: usize,
    /// Smallest object side (its square before drawing).
    pub min_object: u32,
    /// Concept naming.
    pub naming: Naming,
    /// Concepts held out of training.
    pub held_out: HeldOut,
}

impl Default for WorldConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            min_side: 128,
            max_side: 320,
            max_objects: 4,
            min_object: 16,
            naming: Naming::ColorShape,
            held_out: HeldOut::default(),
        }
    }
}

/// One drawn object.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Object {
    /// Its shape.
    pub shape: Shape,
    /// Its colour.
    pub color: Color,
    /// Its texture.
    pub texture: Texture,
    /// The tight box of its pixels, xyxy.
    pub bbox: [f32; 4],
    /// The square it was drawn in, `[x, y, side, side]` in pixels.
    pub square: [u32; 4],
}

impl Object {
    /// Whether pixel `(px, py)` belongs to the object (its mask): the same test that drew it.
    /// Objects keep 2 px apart, so an image's masks never overlap.
    pub fn covers(&self, px: u32, py: u32) -> bool {
        let [x0, y0, s, _] = self.square;
        if px < x0 || py < y0 || px >= x0 + s || py >= y0 + s {
            return false;
        }
        let (u, v) = square_coords(px - x0, py - y0, s);
        self.shape.contains(u, v)
    }
}

/// Coordinates in `-1..=1` of the centre of pixel `(dx, dy)` of a square of side `s`.
fn square_coords(dx: u32, dy: u32, s: u32) -> (f32, f32) {
    (
        (dx as f32 + 0.5) / s as f32 * 2.0 - 1.0,
        (dy as f32 + 0.5) / s as f32 * 2.0 - 1.0,
    )
}

/// A generated image and its sample (a [`SourceKind::Grounding`] sample with the image in
/// memory).
#[derive(Debug, Clone, PartialEq)]
pub struct SyntheticImage {
    /// The objects, in caption order.
    pub objects: Vec<Object>,
    /// The sample: boxes, concepts with caption spans, caption.
    pub sample: Sample,
}

/// The world: a pure function from `(seed, split, index)` to an image.
#[derive(Debug, Clone)]
pub struct World {
    config: WorldConfig,
}

impl World {
    /// Checks the settings and makes the world.
    pub fn new(config: WorldConfig) -> Result<Self> {
        let bad = |why: String| Err(DetError::InvalidOption { op: "World", why });
        if config.min_side < 32 || config.min_side > config.max_side {
            return bad(format!(
                "need 32 ≤ min_side ≤ max_side, got {} and {}",
                config.min_side, config.max_side
            ));
        }
        if config.max_objects == 0
            || config.min_object < 4
            || config.min_object * 3 > config.min_side
        {
            return bad(format!(
                "need max_objects ≥ 1 and 4 ≤ min_object ≤ min_side / 3, got {} and {}",
                config.max_objects, config.min_object
            ));
        }
        let world = Self { config };
        if world.pairs(Split::Train).is_empty() {
            return bad("every concept is held out".into());
        }
        Ok(world)
    }

    /// The settings.
    pub fn config(&self) -> &WorldConfig {
        &self.config
    }

    /// Whether `(color, shape)` is held out of training.
    pub fn is_held_out(&self, color: Color, shape: Shape) -> bool {
        let h = &self.config.held_out;
        h.shapes.contains(&shape) || h.pairs.contains(&(color, shape))
    }

    fn all_pairs() -> impl Iterator<Item = (Color, Shape)> {
        Color::ALL
            .into_iter()
            .flat_map(|c| Shape::ALL.into_iter().map(move |s| (c, s)))
    }

    /// The colour–shape pairs a split draws from: the seen ones (train), or all (test).
    fn pairs(&self, split: Split) -> Vec<(Color, Shape)> {
        Self::all_pairs()
            .filter(|&(c, s)| split == Split::Test || !self.is_held_out(c, s))
            .collect()
    }

    fn held_out_pairs(&self) -> Vec<(Color, Shape)> {
        Self::all_pairs()
            .filter(|&(c, s)| self.is_held_out(c, s))
            .collect()
    }

    /// The concept name of a colour–shape pair under the world's naming.
    pub fn concept_name(&self, color: Color, shape: Shape) -> String {
        match self.config.naming {
            Naming::ColorShape => format!("{} {}", color.name(), shape.name()),
            Naming::Shape => shape.name().to_string(),
        }
    }

    /// The vocabulary of a split, sorted: the names of its pairs.
    pub fn vocabulary(&self, split: Split) -> Vec<String> {
        let mut names: Vec<String> = self
            .pairs(split)
            .into_iter()
            .map(|(c, s)| self.concept_name(c, s))
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// The names of the held-out concepts, sorted (empty under [`Naming::Shape`] unless whole
    /// shapes are held out).
    pub fn held_out_vocabulary(&self) -> Vec<String> {
        let train = self.vocabulary(Split::Train);
        let mut names: Vec<String> = self
            .held_out_pairs()
            .into_iter()
            .map(|(c, s)| self.concept_name(c, s))
            .filter(|n| !train.contains(n))
            .collect();
        names.sort();
        names.dedup();
        names
    }

    fn rng(&self, split: Split, index: u64) -> StdRng {
        let tag = match split {
            Split::Train => 0x7472_6169_6e00_0000,
            Split::Test => 0x7465_7374_0000_0000,
        };
        StdRng::seed_from_u64(splitmix64(self.config.seed ^ tag ^ splitmix64(index)))
    }

    /// Image `index` of `split`.
    pub fn image(&self, split: Split, index: u64) -> SyntheticImage {
        let mut rng = self.rng(split, index);
        let c = &self.config;
        let w = rng.random_range(c.min_side..=c.max_side);
        let h = rng.random_range(c.min_side..=c.max_side);
        let grey = rng.random_range(205..=245u8);
        let mut image = RgbImage::from_pixel(w, h, Rgb([grey; 3]));
        let n = rng.random_range(1..=c.max_objects);
        let (pool, held) = (self.pairs(split), self.held_out_pairs());
        let mut placed: Vec<[u32; 4]> = Vec::new();
        let mut objects = Vec::new();
        for k in 0..n {
            let from = if split == Split::Test && k == 0 && !held.is_empty() {
                &held
            } else {
                &pool
            };
            let (color, shape) = from[rng.random_range(0..from.len())];
            let texture = Texture::ALL[rng.random_range(0..Texture::ALL.len())];
            let Some(square) = place(&mut rng, w, h, c.min_object, &placed) else {
                continue;
            };
            let Some(bbox) = draw(&mut image, square, shape, color, texture) else {
                continue;
            };
            placed.push(square);
            objects.push(Object {
                shape,
                color,
                texture,
                bbox,
                square,
            });
        }
        let sample = self.sample_of(split, index, image, &objects);
        SyntheticImage { objects, sample }
    }

    /// Images `0..n` of `split`, as samples.
    pub fn samples(&self, split: Split, n: u64) -> Vec<Sample> {
        (0..n).map(|i| self.image(split, i).sample).collect()
    }

    /// A synthetic sample seen as detection data: the same boxes and concept names, no
    /// caption or spans.
    pub fn as_detection(sample: &Sample) -> Sample {
        let mut s = sample.clone();
        s.kind = SourceKind::Detection;
        s.caption = None;
        for c in &mut s.concepts {
            c.spans.clear();
        }
        s
    }

    fn sample_of(&self, split: Split, index: u64, image: RgbImage, objects: &[Object]) -> Sample {
        let (w, h) = image.dimensions();
        let key = format!("synthetic-{split:?}-{index}").to_lowercase();
        let mut sample = Sample::new(key, ImageSource::Memory(Arc::new(image)), w, h);
        sample.kind = SourceKind::Grounding;
        let short = w.min(h) as f32;
        let mut caption = String::new();
        for (i, obj) in objects.iter().enumerate() {
            match i {
                0 => {}
                1 => caption.push_str(&format!(" {} ", relation(&objects[0], obj))),
                _ => caption.push_str(". "),
            }
            let name = self.concept_name(obj.color, obj.shape);
            let side = (obj.bbox[2] - obj.bbox[0]).max(obj.bbox[3] - obj.bbox[1]);
            let size = if side < 0.2 * short {
                "small "
            } else if side > 0.32 * short {
                "large "
            } else {
                ""
            };
            let texture = match obj.texture.adjective() {
                "" => String::new(),
                t => format!("{t} "),
            };
            caption.push_str(&format!("a {size}{texture}"));
            // Under `Naming::Shape` the colour is still said, before the concept name.
            if self.config.naming == Naming::Shape {
                caption.push_str(obj.color.name());
                caption.push(' ');
            }
            let span = Span::new(caption.len(), caption.len() + name.len());
            caption.push_str(&name);
            let c = sample.concept_index(&name, None);
            sample.concepts[c].spans.push(span);
            sample.instances.push(Instance {
                bbox: obj.bbox,
                concepts: vec![c],
                crowd: false,
                score: None,
            });
        }
        if !objects.is_empty() {
            caption.push('.');
        }
        sample.caption = Some(caption);
        sample
    }
}

/// How `a` lies relative to `b`, from their box centres: the larger of the two offsets wins.
fn relation(a: &Object, b: &Object) -> &'static str {
    let centre = |o: &Object| ((o.bbox[0] + o.bbox[2]) / 2.0, (o.bbox[1] + o.bbox[3]) / 2.0);
    let ((ax, ay), (bx, by)) = (centre(a), centre(b));
    let (dx, dy) = (bx - ax, by - ay);
    if dx.abs() >= dy.abs() {
        if dx > 0.0 { "left of" } else { "right of" }
    } else if dy > 0.0 {
        "above"
    } else {
        "below"
    }
}

/// A square `[x, y, side, side]` that keeps 2 px from the placed ones, or `None` after 50 tries.
fn place(rng: &mut StdRng, w: u32, h: u32, min_side: u32, placed: &[[u32; 4]]) -> Option<[u32; 4]> {
    let max_side = ((w.min(h) as f32) * 0.45) as u32;
    for _ in 0..50 {
        let s = rng.random_range(min_side..=max_side.max(min_side));
        let x = rng.random_range(0..=w - s);
        let y = rng.random_range(0..=h - s);
        let clear = placed.iter().all(|&[px, py, ps, _]| {
            x + s + 2 <= px || px + ps + 2 <= x || y + s + 2 <= py || py + ps + 2 <= y
        });
        if clear {
            return Some([x, y, s, s]);
        }
    }
    None
}

/// Draws a shape in `square`; returns the tight box of the drawn pixels (`None` if none).
fn draw(
    image: &mut RgbImage,
    square: [u32; 4],
    shape: Shape,
    color: Color,
    texture: Texture,
) -> Option<[f32; 4]> {
    let [x0, y0, s, _] = square;
    let mut bounds: Option<[u32; 4]> = None;
    for py in y0..y0 + s {
        for px in x0..x0 + s {
            let (u, v) = square_coords(px - x0, py - y0, s);
            if !shape.contains(u, v) {
                continue;
            }
            image.put_pixel(px, py, Rgb(texture.shade(color.rgb(), px, py)));
            let b = bounds.get_or_insert([px, py, px, py]);
            *b = [b[0].min(px), b[1].min(py), b[2].max(px), b[3].max(py)];
        }
    }
    bounds.map(|[x1, y1, x2, y2]| [x1 as f32, y1 as f32, (x2 + 1) as f32, (y2 + 1) as f32])
}

/// SplitMix64: spreads `(seed, split, index)` over the seed space.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
