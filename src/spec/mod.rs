//! Declarative network specs: the TOML schema, its validation and `extends`.
//!
//! Specs are the only source of architecture numbers: widths, depths, heads, ratios, strides, classes and
//! activations all come from here; the graph compiler only knows how TopFormer's modules are wired.

mod load;
mod locate;
mod overrides;

pub use load::{
    embedded_specs, load_embedded, load_file, load_reference, parse_resolution, Document, EmbeddedSpec, LoadedSpec,
    SpecTemplate, MAX_SIDE,
};
pub use overrides::{parse_value, KeyPath, Override};

use crate::kernels::Activation;
use serde::Deserialize;

/// A whole network spec after `extends` has been resolved.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// The spec's name, e.g. `topformer-small`.
    pub name: String,
    /// One line saying what the network is.
    #[serde(default)]
    pub description: String,
    /// The dataset it is configured for (`ADE20K`, `Cityscapes`…), as `toparch list` groups specs.
    #[serde(default)]
    pub dataset: String,
    /// Default input resolution (`"512"` or `"HxW"`), used when no `--res` is given.
    pub res: Option<String>,
    /// Stem and MobileNetV2 blocks.
    pub token_pyramid: TokenPyramidSpec,
    /// Pyramid pool aggregation and transformer blocks.
    pub semantics_extractor: SemanticsSpec,
    /// Semantic injection modules (segmentation).
    pub injection: Option<InjectionSpec>,
    /// SimpleHead (segmentation).
    pub head: Option<HeadSpec>,
    /// Global pool, BatchNorm1d and Linear (image classification).
    pub classifier: Option<ClassifierSpec>,
    /// Published figures to show beside the computed ones.
    #[serde(default)]
    pub published: Vec<PublishedFigure>,
}

/// One MobileNetV2 inverted residual block: `[kernel, expand ratio, out channels, stride]`.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq)]
pub struct MbBlock(pub usize, pub f64, pub usize, pub usize);

impl MbBlock {
    /// Depthwise kernel size.
    pub fn kernel(&self) -> usize {
        self.0
    }
    /// Expansion ratio of the hidden width.
    pub fn expand(&self) -> f64 {
        self.1
    }
    /// Output channels as written (rounded by [`make_divisible`] when built).
    pub fn out(&self) -> usize {
        self.2
    }
    /// Depthwise stride.
    pub fn stride(&self) -> usize {
        self.3
    }
}

/// The token pyramid module.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenPyramidSpec {
    /// Channels of the 3×3 stride-2 stem conv.
    pub stem_channels: usize,
    /// Activation of the stem and the MB blocks.
    pub activation: Activation,
    /// The MB blocks in order.
    pub blocks: Vec<MbBlock>,
    /// 0-based indices of the blocks whose outputs form the pyramid.
    pub out_indices: Vec<usize>,
    /// Channels of each pyramid output (their sum is the token dimension).
    pub channels: Vec<usize>,
}

/// The semantics extractor (transformer over pooled tokens).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SemanticsSpec {
    /// Number of transformer blocks.
    pub depth: usize,
    /// Attention heads.
    pub num_heads: usize,
    /// Query/key width per head.
    pub key_dim: usize,
    /// Value width per head = int(attn_ratio · key_dim).
    pub attn_ratio: f64,
    /// MLP hidden width = int(dim · mlp_ratio).
    pub mlp_ratio: f64,
    /// Tokens are pooled to ((H−1)//s+1, (W−1)//s+1) of the last pyramid output.
    pub c2t_stride: usize,
    /// Activation of attention output and MLP.
    pub activation: Activation,
}

/// The semantic injection module variant (`injection_type` in the official code).
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
pub enum InjectionType {
    /// `InjectionMultiSum`: local·h_sigmoid(global) + global (the default).
    #[serde(rename = "muli_sum")]
    MultiSum,
    /// `InjectionMultiSumCBR`: as `muli_sum` with ReLU after the embeddings and a plain biased conv for the gate.
    #[serde(rename = "muli_sum_cbr")]
    MultiSumCbr,
    /// `FuseBlockSum`: local + global.
    #[serde(rename = "fuse_sum")]
    FuseSum,
    /// `FuseBlockMulti`: local·h_sigmoid(global).
    #[serde(rename = "fuse_multi")]
    FuseMulti,
}

/// Semantic injection modules on chosen pyramid levels.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InjectionSpec {
    /// Which module joins local tokens and global semantics.
    #[serde(rename = "type")]
    pub kind: InjectionType,
    /// Pyramid levels that get an injection module (`decode_out_indices`).
    pub indices: Vec<usize>,
    /// Output channels of every injection module.
    pub channels: usize,
}

/// How SimpleHead's 1×1 fuse conv connects channels.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FuseConv {
    /// groups = channels (`is_dw=True`).
    Depthwise,
    /// An ordinary 1×1 conv.
    Dense,
}

/// SimpleHead: sum of the injected maps, fuse conv, classifier conv, final resize to the input.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadSpec {
    /// Head channels (must equal the injection channels).
    pub channels: usize,
    /// Fuse conv connectivity.
    pub fuse: FuseConv,
    /// Activation after the fuse conv.
    pub activation: Activation,
    /// Segmentation classes.
    pub num_classes: usize,
}

/// Image classifier on the transformer tokens.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassifierSpec {
    /// Classes.
    pub num_classes: usize,
}

/// How a published figure was rounded from the true value.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Rounding {
    /// Round half away from zero (the usual).
    #[default]
    Nearest,
    /// Cut the digits off.
    Truncate,
}

/// A published figure for this network at one resolution, as printed (e.g. `"1.2G"`, `"3.1M"`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishedFigure {
    /// The resolution it was measured at (`"512"` or `"HxW"`).
    pub res: String,
    /// Published parameter count, e.g. `"1.4M"`.
    pub params: Option<String>,
    /// Published FLOPs (mmcv MACs) e.g. `"0.6G"`.
    pub flops: Option<String>,
    /// How the publication rounded.
    #[serde(default)]
    pub rounding: Rounding,
    /// Where the figure was published.
    pub source: String,
}

/// A published number as printed: `1.2G` is 1.2 with scale 1e9, unit `G` and one decimal.
#[derive(Clone, Debug, PartialEq)]
pub struct PublishedValue {
    /// The number before the unit.
    pub value: f64,
    /// What the unit multiplies by.
    pub scale: f64,
    /// The unit letter: `K`, `M` or `G`.
    pub unit: char,
    /// Decimals printed.
    pub decimals: usize,
}

impl PublishedValue {
    /// Parses `1.2G`, `126M`, `3.11M`, `512K`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = || format!("'{text}' is not a published figure such as 1.2G, 3.1M or 512K");
        let unit = text.chars().last().ok_or_else(bad)?;
        let scale = match unit {
            'K' => 1e3,
            'M' => 1e6,
            'G' => 1e9,
            _ => return Err(bad()),
        };
        let number = &text[..text.len() - unit.len_utf8()];
        let value: f64 = number.parse().ok().filter(|v: &f64| v.is_finite() && *v >= 0.0).ok_or_else(bad)?;
        let decimals = number.split_once('.').map_or(0, |(_, d)| d.len());
        Ok(PublishedValue { value, scale, unit, decimals })
    }
}

/// Rounds channels as the official TopFormer code does (`_make_divisible(v, 8)`).
pub fn make_divisible(v: usize, divisor: usize) -> usize {
    let rounded = ((v + divisor / 2) / divisor * divisor).max(divisor);
    if (rounded as f64) < 0.9 * v as f64 {
        rounded + divisor
    } else {
        rounded
    }
}

/// Python's `round()` (half to even) of a non-negative value, as used for MB block hidden widths.
pub fn round_half_even(x: f64) -> usize {
    let r = x.round();
    let r = if (x - x.trunc() - 0.5).abs() < f64::EPSILON && r % 2.0 != 0.0 { r - 1.0 } else { r };
    r.max(0.0) as usize
}

/// What the network predicts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Task {
    /// Per-pixel classes (injection + SimpleHead).
    Segmentation,
    /// One class per image.
    Classification,
}

/// Largest width (written or derived), depth or class count a spec may ask for: far beyond any mobile network;
/// with the graph's `MAX_ELEMENTS` it keeps every count within 64 bits.
pub const MAX_SIZE: usize = 1 << 16;
/// Most transformer blocks, or token-pyramid blocks, a spec may stack: far beyond any mobile network, and small
/// enough that a count stays interactive.
pub const MAX_DEPTH: usize = 1024;
/// Largest expansion or MLP ratio.
pub const MAX_RATIO: f64 = 64.0;
/// Largest kernel size.
pub const MAX_KERNEL: usize = 31;

impl Spec {
    /// Keeps every size within the limits above, so that counting and execution stay exact.
    fn check_sizes(&self) -> Result<(), (String, String)> {
        let (tp, se) = (&self.token_pyramid, &self.semantics_extractor);
        let mut sizes = vec![
            ("token_pyramid.stem_channels".to_string(), tp.stem_channels),
            ("semantics_extractor.depth".into(), se.depth),
            ("semantics_extractor.num_heads".into(), se.num_heads),
            ("semantics_extractor.key_dim".into(), se.key_dim),
            ("semantics_extractor.c2t_stride".into(), se.c2t_stride),
        ];
        sizes.extend(tp.blocks.iter().enumerate().map(|(i, b)| (format!("token_pyramid.blocks[{i}]"), b.out())));
        sizes.extend(tp.channels.iter().map(|&c| ("token_pyramid.channels".to_string(), c)));
        sizes.extend(self.injection.iter().map(|i| ("injection.channels".to_string(), i.channels)));
        sizes.extend(self.head.iter().flat_map(|h| {
            [("head.channels".to_string(), h.channels), ("head.num_classes".to_string(), h.num_classes)]
        }));
        sizes.extend(self.classifier.iter().map(|c| ("classifier.num_classes".to_string(), c.num_classes)));
        if let Some((key, value)) = sizes.into_iter().find(|&(_, v)| v > MAX_SIZE) {
            return Err((key, format!("{value} is larger than the supported {MAX_SIZE}")));
        }
        let depths = [("semantics_extractor.depth", se.depth), ("token_pyramid.blocks", tp.blocks.len())];
        if let Some((key, depth)) = depths.into_iter().find(|&(_, d)| d > MAX_DEPTH) {
            return Err((key.to_string(), format!("{depth} blocks are more than the supported {MAX_DEPTH}")));
        }
        let mut channels = tp.stem_channels;
        for (i, b) in tp.blocks.iter().enumerate() {
            let key = format!("token_pyramid.blocks[{i}]");
            if b.kernel() > MAX_KERNEL || b.expand() > MAX_RATIO {
                let msg = format!("kernel at most {MAX_KERNEL} and expand ratio at most {MAX_RATIO}");
                return Err((key, msg));
            }
            let hidden = round_half_even(channels as f64 * b.expand());
            if hidden == 0 || hidden > MAX_SIZE {
                return Err((
                    key,
                    format!("hidden width {channels}·{} = {hidden} must be from 1 to {MAX_SIZE}", b.expand()),
                ));
            }
            channels = make_divisible(b.out(), 8);
        }
        let dim = self.token_dim();
        let derived = [
            ("num_heads", se.num_heads * se.key_dim),
            ("attn_ratio", se.num_heads * (se.attn_ratio * se.key_dim as f64) as usize),
            ("mlp_ratio", (se.mlp_ratio * dim as f64) as usize),
        ];
        if dim > MAX_SIZE {
            return Err(("token_pyramid.channels".into(), format!("the token dim {dim} is larger than {MAX_SIZE}")));
        }
        for (key, ratio) in [("attn_ratio", se.attn_ratio), ("mlp_ratio", se.mlp_ratio)] {
            if ratio > MAX_RATIO {
                return Err((format!("semantics_extractor.{key}"), format!("{ratio} is larger than {MAX_RATIO}")));
            }
        }
        if let Some((key, width)) = derived.into_iter().find(|&(_, w)| w > MAX_SIZE) {
            return Err((
                format!("semantics_extractor.{key}"),
                format!("gives a width of {width}, more than {MAX_SIZE}"),
            ));
        }
        Ok(())
    }

    /// Segmentation or classification, from the sections present (validated at load).
    pub fn task(&self) -> Task {
        if self.classifier.is_some() {
            Task::Classification
        } else {
            Task::Segmentation
        }
    }

    /// Output classes of the head or classifier.
    pub fn num_classes(&self) -> usize {
        match (&self.head, &self.classifier) {
            (Some(h), _) => h.num_classes,
            (_, Some(c)) => c.num_classes,
            _ => 0,
        }
    }

    /// Overrides the number of classes (`--classes N`). Published figures are of the published class count,
    /// so they are dropped when it changes.
    pub fn set_num_classes(&mut self, classes: usize) {
        if classes != self.num_classes() {
            self.published.clear();
        }
        if let Some(h) = &mut self.head {
            h.num_classes = classes;
        }
        if let Some(c) = &mut self.classifier {
            c.num_classes = classes;
        }
    }

    /// The resolution to use when none is asked for: `res`, else the first published figure's, else 512².
    pub fn default_resolution(&self) -> (usize, usize) {
        let written = self.res.as_deref().or(self.published.first().map(|p| p.res.as_str()));
        written.and_then(|r| parse_resolution(r).ok()).unwrap_or((512, 512))
    }

    /// The token dimension: the sum of the pyramid channels.
    pub fn token_dim(&self) -> usize {
        self.token_pyramid.channels.iter().sum()
    }

    /// Checks every cross-field rule. Errors are `(key, message)` so the caller can name the line.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let err = |key: &str, msg: String| Err((key.to_string(), msg));
        self.check_sizes()?;
        if let Some(Err(e)) = self.res.as_deref().map(parse_resolution) {
            return err("res", e.to_string());
        }
        for (i, figure) in self.published.iter().enumerate() {
            if let Err(e) = parse_resolution(&figure.res) {
                return err(&format!("published[{i}].res"), e.to_string());
            }
            for (key, text) in [("params", &figure.params), ("flops", &figure.flops)] {
                if let Some(Err(e)) = text.as_deref().map(PublishedValue::parse) {
                    return err(&format!("published[{i}].{key}"), e);
                }
            }
        }
        let tp = &self.token_pyramid;
        if tp.stem_channels == 0 {
            return err("token_pyramid.stem_channels", "must be positive".into());
        }
        if tp.blocks.is_empty() {
            return err("token_pyramid.blocks", "needs at least one block".into());
        }
        for (i, b) in tp.blocks.iter().enumerate() {
            let key = format!("token_pyramid.blocks[{i}]");
            if b.kernel() == 0 || b.kernel() % 2 == 0 {
                return err(&key, format!("kernel {} must be odd and positive", b.kernel()));
            }
            if b.stride() != 1 && b.stride() != 2 {
                return err(&key, format!("stride {} must be 1 or 2", b.stride()));
            }
            if b.expand().is_nan() || b.expand() <= 0.0 {
                return err(&key, format!("expand ratio {} must be positive", b.expand()));
            }
            if b.out() == 0 {
                return err(&key, "output channels must be positive".into());
            }
        }
        if tp.out_indices.is_empty() || tp.out_indices.len() != tp.channels.len() {
            return err(
                "token_pyramid.channels",
                format!("lists {} channels for {} out_indices", tp.channels.len(), tp.out_indices.len()),
            );
        }
        for (i, &idx) in tp.out_indices.iter().enumerate() {
            if idx >= tp.blocks.len() {
                return err(
                    "token_pyramid.out_indices",
                    format!("index {idx} is out of range: there are {} blocks (0-based)", tp.blocks.len()),
                );
            }
            if i > 0 && idx <= tp.out_indices[i - 1] {
                return err("token_pyramid.out_indices", "must be strictly increasing".into());
            }
            let built = make_divisible(tp.blocks[idx].out(), 8);
            if tp.channels[i] != built {
                return err(
                    "token_pyramid.channels",
                    format!(
                        "pyramid output {i} taps block {idx}, which outputs {built} channels, not {}",
                        tp.channels[i]
                    ),
                );
            }
        }
        let se = &self.semantics_extractor;
        for (key, value) in [("num_heads", se.num_heads), ("key_dim", se.key_dim), ("c2t_stride", se.c2t_stride)] {
            if value == 0 {
                return err(&format!("semantics_extractor.{key}"), "must be positive".into());
            }
        }
        let value_dim = se.attn_ratio * se.key_dim as f64;
        if value_dim.is_nan() || value_dim < 1.0 {
            return err("semantics_extractor.attn_ratio", "attn_ratio·key_dim must be at least 1".into());
        }
        let mlp_hidden = se.mlp_ratio * self.token_dim() as f64;
        if mlp_hidden.is_nan() || mlp_hidden < 1.0 {
            return err("semantics_extractor.mlp_ratio", "mlp_ratio·token dim must be at least 1".into());
        }
        match (&self.injection, &self.head, &self.classifier) {
            (Some(inj), Some(head), None) => {
                if inj.channels == 0 {
                    return err("injection.channels", "must be positive".into());
                }
                if inj.indices.is_empty() || inj.indices.windows(2).any(|w| w[0] >= w[1]) {
                    return err("injection.indices", "must be a non-empty, strictly increasing list".into());
                }
                if let Some(&bad) = inj.indices.iter().find(|&&i| i >= tp.channels.len()) {
                    return err(
                        "injection.indices",
                        format!("index {bad} is out of range: the pyramid has {} outputs", tp.channels.len()),
                    );
                }
                if head.channels != inj.channels {
                    return err(
                        "head.channels",
                        format!("must equal injection.channels ({}): the head sums the injected maps", inj.channels),
                    );
                }
                if head.num_classes == 0 {
                    return err("head.num_classes", "must be positive".into());
                }
            }
            (None, None, Some(cls)) => {
                if cls.num_classes == 0 {
                    return err("classifier.num_classes", "must be positive".into());
                }
            }
            _ => {
                return err(
                    "classifier",
                    "a spec needs either [injection] and [head] (segmentation) or [classifier] (classification)".into(),
                )
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn make_divisible_matches_official() {
        assert_eq!(make_divisible(16, 8), 16);
        assert_eq!(make_divisible(12, 8), 16);
        assert_eq!(make_divisible(20, 8), 24);
        assert_eq!(make_divisible(3, 8), 8);
        assert_eq!(make_divisible(100, 8), 104);
    }

    #[test]
    fn python_rounding() {
        assert_eq!(round_half_even(2.5), 2);
        assert_eq!(round_half_even(3.5), 4);
        assert_eq!(round_half_even(48.0), 48);
        assert_eq!(round_half_even(40.2), 40);
    }
}
