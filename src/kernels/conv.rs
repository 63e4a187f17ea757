//! 2-D convolution with PyTorch semantics (zero padding, dilation 1), in four strategies:
//!
//! - 1×1, stride 1, no padding, one group: a single GEMM `Y[Cout, HW] = W[Cout, Cin] · X[Cin, HW]` over
//!   the buffers as they are, parallel over output blocks;
//! - depthwise 1×1 without padding: a per-channel scale;
//! - depthwise with a square kernel of 1, 3, 5 or 7 and stride 1 or 2: a direct kernel per channel that
//!   pads the plane once (split into stride phases so every tap is a contiguous load), with kernel size
//!   and stride as const generics and up to 8 vectors of outputs accumulated in registers;
//! - everything else (the stem, grouped or strided convs): im2col on cache-sized pixel tiles, one GEMM
//!   per group and tile, parallel over tiles.
//!
//! Bias and activation are fused into one pass over each finished output block.

use ndarray::{s, ArrayViewMut2, Axis};
use rayon::prelude::*;

use super::matmul::gemm_split;
use super::matmul::{gemm, par_gemm, view2, view2_mut};
use super::simd::{bias_activate, F32x8, Vector};
use super::Activation;
use super::{bias_act, bias_act_from, vector_isa, with_scratch, Isa, ScratchGuard, Split};

/// Dimensions of one 2-D convolution (PyTorch semantics: zero padding, dilation 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dDims {
    /// Input channels `Cin`.
    pub in_channels: usize,
    /// Input height.
    pub in_h: usize,
    /// Input width.
    pub in_w: usize,
    /// Output channels `Cout`.
    pub out_channels: usize,
    /// Kernel height `kh`.
    pub kernel_h: usize,
    /// Kernel width `kw`.
    pub kernel_w: usize,
    /// Vertical stride.
    pub stride_h: usize,
    /// Horizontal stride.
    pub stride_w: usize,
    /// Zero padding added above and below.
    pub pad_h: usize,
    /// Zero padding added left and right.
    pub pad_w: usize,
    /// Groups; both channel counts are multiples of it (`groups == Cin == Cout` is depthwise).
    pub groups: usize,
    /// Output height, `(in_h + 2·pad_h − kh) / stride_h + 1`.
    pub out_h: usize,
    /// Output width, `(in_w + 2·pad_w − kw) / stride_w + 1`.
    pub out_w: usize,
}

/// `out = act(conv(input, weight) + bias)`.
///
/// `input` is `[Cin, in_h, in_w]`, `weight` is `[Cout, Cin/groups, kh, kw]`, `bias` has `Cout` values and
/// `out` (`[Cout, out_h, out_w]`) is fully overwritten. Returns the multiply-accumulates performed,
/// `Cout · out_h · out_w · (Cin/groups) · kh · kw` (padded positions included).
pub fn conv2d(
    input: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    dims: &Conv2dDims,
    act: Option<Activation>,
    out: &mut [f32],
) -> u64 {
    let d = dims;
    debug_assert!(d.groups > 0 && d.in_channels.is_multiple_of(d.groups) && d.out_channels.is_multiple_of(d.groups));
    debug_assert!(d.stride_h > 0 && d.stride_w > 0 && d.out_h > 0 && d.out_w > 0);
    debug_assert_eq!(d.out_h, (d.in_h + 2 * d.pad_h - d.kernel_h) / d.stride_h + 1);
    debug_assert_eq!(d.out_w, (d.in_w + 2 * d.pad_w - d.kernel_w) / d.stride_w + 1);
    debug_assert_eq!(input.len(), d.in_channels * d.in_h * d.in_w);
    debug_assert_eq!(weight.len(), d.out_channels * (d.in_channels / d.groups) * d.kernel_h * d.kernel_w);
    debug_assert!(bias.is_none_or(|b| b.len() == d.out_channels));
    debug_assert_eq!(out.len(), d.out_channels * d.out_h * d.out_w);

    match Strategy::of(d) {
        Strategy::Pointwise => pointwise(input, weight, bias, d, act, out),
        Strategy::ChannelScale => channel_scale(input, weight, bias, d, act, out),
        Strategy::Depthwise => {
            let kernel: DepthwiseFn = match (d.kernel_h, d.stride_h) {
                (1, 1) => depthwise::<1, 1>,
                (1, 2) => depthwise::<1, 2>,
                _ => per_kernel_and_stride!(depthwise, d),
            };
            kernel(input, weight, bias, d, act, out)
        }
        Strategy::Im2col => im2col_conv(input, weight, bias, d, act, out),
    }
}

/// How [`conv2d`] divides the convolution `d` among `threads` threads.
pub fn conv2d_split(d: &Conv2dDims, threads: usize) -> Split {
    let (in_plane, out_plane) = (d.in_h * d.in_w, d.out_h * d.out_w);
    match Strategy::of(d) {
        Strategy::Pointwise => gemm_split(d.out_channels, d.in_channels, in_plane, threads),
        Strategy::ChannelScale => Split::rayon(d.out_channels, scale_min_channels(in_plane), threads),
        Strategy::Depthwise => {
            Split::rayon(d.out_channels, depthwise_min_channels(out_plane, d.kernel_h * d.kernel_w), threads)
        }
        Strategy::Im2col => {
            let kdim = d.in_channels / d.groups * d.kernel_h * d.kernel_w;
            Split { units: out_plane, piece: im2col_tile(kdim, out_plane, threads) }
        }
    }
}

/// The four ways [`conv2d`] computes a convolution.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Strategy {
    /// 1×1, stride 1, unpadded, one group: one GEMM.
    Pointwise,
    /// Depthwise 1×1 without padding: a per-channel scale.
    ChannelScale,
    /// Depthwise with a square kernel of 1, 3, 5 or 7 and equal strides of 1 or 2: the direct kernel.
    Depthwise,
    /// Everything else: im2col tiles and GEMMs.
    Im2col,
}

impl Strategy {
    fn of(d: &Conv2dDims) -> Strategy {
        let unit = |k: usize, s: usize, p: usize| k == 1 && s == 1 && p == 0;
        let depthwise = is_square_depthwise(d, &[1, 3, 5, 7]);
        if d.groups == 1 && unit(d.kernel_h, d.stride_h, d.pad_h) && unit(d.kernel_w, d.stride_w, d.pad_w) {
            Strategy::Pointwise
        } else if depthwise && (d.kernel_h, d.stride_h, d.pad_h, d.pad_w) == (1, 1, 0, 0) {
            Strategy::ChannelScale
        } else if depthwise {
            Strategy::Depthwise
        } else {
            Strategy::Im2col
        }
    }
}

/// Kernel sizes the fused kernels instantiate (with strides 1 and 2).
pub(super) const FUSED_KERNELS: [usize; 3] = [3, 5, 7];

/// Whether `d` is a depthwise conv with a square kernel of one of `sizes` and equal strides of 1 or 2.
pub(super) fn is_square_depthwise(d: &Conv2dDims, sizes: &[usize]) -> bool {
    d.groups == d.in_channels
        && d.groups == d.out_channels
        && d.kernel_h == d.kernel_w
        && d.stride_h == d.stride_w
        && sizes.contains(&d.kernel_h)
        && matches!(d.stride_h, 1 | 2)
}

/// Fewest channels per parallel piece of a per-channel scale of `plane` values.
fn scale_min_channels(plane: usize) -> usize {
    (16384 / plane.max(1)).max(1)
}

/// Fewest channels per parallel piece of a depthwise conv with `taps` taps onto `out_plane` outputs.
fn depthwise_min_channels(out_plane: usize, taps: usize) -> usize {
    (4096 / (out_plane * taps).max(1)).max(1)
}

/// Signature shared by [`conv2d`] and its depthwise specialisations.
type DepthwiseFn = fn(&[f32], &[f32], Option<&[f32]>, &Conv2dDims, Option<Activation>, &mut [f32]) -> u64;

/// Applies bias and activation to every row of an output block whose first row is channel `row0`.
fn bias_act_block(mut block: ArrayViewMut2<f32>, row0: usize, bias: Option<&[f32]>, act: Option<Activation>) {
    if bias.is_none() && act.is_none() {
        return;
    }
    for (r, mut row) in block.rows_mut().into_iter().enumerate() {
        bias_act(row.iter_mut(), bias.map_or(0.0, |b| b[row0 + r]), act);
    }
}

/// 1×1 stride-1 convolution as one GEMM over the unmodified buffers.
fn pointwise(
    input: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    d: &Conv2dDims,
    act: Option<Activation>,
    out: &mut [f32],
) -> u64 {
    let hw = d.in_h * d.in_w;
    let w = view2(weight, d.out_channels, d.in_channels);
    let x = view2(input, d.in_channels, hw);
    let y = view2_mut(out, d.out_channels, hw);
    par_gemm(w, x, y, &|row0, block| bias_act_block(block, row0, bias, act))
}

/// Output pixels per im2col tile: the tile's columns (`kdim` values each) should stay in L2, and the
/// number of tiles should be a multiple of the thread count so that all threads get equal work.
fn im2col_tile(kdim: usize, pixels: usize, threads: usize) -> usize {
    const TILE_FLOATS: usize = 48 * 1024;
    let cache_tile = (TILE_FLOATS / kdim.max(1)).clamp(64, 4096);
    let tiles = pixels.div_ceil(cache_tile).next_multiple_of(threads.max(1));
    pixels.div_ceil(tiles).next_multiple_of(16)
}

/// Output positions `o < out_len` whose input position `o·stride + k − pad` lies inside `[0, in_len)`:
/// a range `lo..hi` (empty when `hi <= lo`).
fn valid_range(k: usize, pad: usize, stride: usize, in_len: usize, out_len: usize) -> (usize, usize) {
    let lo = if pad > k { (pad - k).div_ceil(stride) } else { 0 };
    let hi = if in_len + pad > k { (in_len + pad - k).div_ceil(stride) } else { 0 };
    (lo.min(out_len), hi.min(out_len))
}

/// Writes the im2col matrix `[cin_g · kh · kw, n]` of output pixels `p0..p0 + n` for the input channels
/// starting at `c0` into `col`; `isa` as for [`gather`].
fn im2col(input: &[f32], d: &Conv2dDims, c0: usize, p0: usize, n: usize, col: &mut [f32], isa: Isa) {
    let cin_g = d.in_channels / d.groups;
    let plane = d.in_h * d.in_w;
    let mut rows = col.chunks_exact_mut(n);
    for ci in 0..cin_g {
        let x = &input[(c0 + ci) * plane..][..plane];
        for ky in 0..d.kernel_h {
            for kx in 0..d.kernel_w {
                let Some(row) = rows.next() else { return };
                let (lo, hi) = valid_range(kx, d.pad_w, d.stride_w, d.in_w, d.out_w);
                let mut done = 0;
                while done < n {
                    let (oy, ox0) = ((p0 + done) / d.out_w, (p0 + done) % d.out_w);
                    let len = (d.out_w - ox0).min(n - done);
                    let seg = &mut row[done..done + len];
                    done += len;
                    let iy = oy * d.stride_h + ky;
                    if iy < d.pad_h || iy - d.pad_h >= d.in_h {
                        seg.fill(0.0);
                        continue;
                    }
                    let src = &x[(iy - d.pad_h) * d.in_w..][..d.in_w];
                    let a = lo.clamp(ox0, ox0 + len);
                    let b = hi.clamp(a, ox0 + len);
                    let (head, rest) = seg.split_at_mut(a - ox0);
                    let (mid, tail) = rest.split_at_mut(b - a);
                    head.fill(0.0);
                    tail.fill(0.0);
                    gather(mid, &src[a * d.stride_w + kx - d.pad_w..], d.stride_w, isa);
                }
            }
        }
    }
}

/// General convolution: im2col of a pixel tile, then one GEMM per group, parallel over tiles.
fn im2col_conv(
    input: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    d: &Conv2dDims,
    act: Option<Activation>,
    out: &mut [f32],
) -> u64 {
    let (cin_g, cout_g) = (d.in_channels / d.groups, d.out_channels / d.groups);
    let kdim = cin_g * d.kernel_h * d.kernel_w;
    let pixels = d.out_h * d.out_w;
    let tile = im2col_tile(kdim, pixels, rayon::current_num_threads());
    let isa = vector_isa();
    let mut y = view2_mut(out, d.out_channels, pixels);
    let tiles: Vec<_> = y.axis_chunks_iter_mut(Axis(1), tile).enumerate().collect();
    tiles
        .into_par_iter()
        .map(|(t, mut block)| {
            let n = block.ncols();
            with_scratch(kdim * n, |col| {
                let mut macs = 0;
                for g in 0..d.groups {
                    im2col(input, d, g * cin_g, t * tile, n, col, isa);
                    let w = view2(&weight[g * cout_g * kdim..], cout_g, kdim);
                    let mut y_g = block.slice_mut(s![g * cout_g..(g + 1) * cout_g, ..]);
                    macs += gemm(&w, &view2(col, kdim, n), &mut y_g);
                    bias_act_block(y_g, g * cout_g, bias, act);
                }
                macs
            })
        })
        .sum()
}

/// Depthwise 1×1 convolution without padding: a per-channel scale, parallel over channels.
fn channel_scale(
    input: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    d: &Conv2dDims,
    act: Option<Activation>,
    out: &mut [f32],
) -> u64 {
    let plane = d.in_h * d.in_w;
    out.par_chunks_mut(plane)
        .zip(input.par_chunks(plane))
        .enumerate()
        .with_min_len(scale_min_channels(plane))
        .map(|(c, (y, x))| {
            for (o, &v) in y.iter_mut().zip(x) {
                *o = weight[c] * v;
            }
            bias_act(y.iter_mut(), bias.map_or(0.0, |b| b[c]), act);
            plane as u64
        })
        .sum()
}

/// Geometry of one depthwise plane, or of a band of its output rows, padded once into stride phases.
///
/// Padded column `xp` is stored in phase `xp % S` at position `xp / S`, so tap `kx` of output column
/// `ox` is element `ox + kx / S` of phase `kx % S`: a contiguous load for every stride. Each padded row
/// holds `S` phases of `phase_w` elements; there are `rows` padded rows (only those the outputs read),
/// of which the first `pad_h` are zero and the rest come from the input rows the caller passes.
pub(super) struct DwPlan<const S: usize> {
    in_w: usize,
    pad_h: usize,
    out_h: usize,
    out_w: usize,
    phase_w: usize,
    rows: usize,
    /// The instruction set the plane is computed with.
    isa: Isa,
    /// Output columns per vector of the register tiles: 16 with AVX-512 on planes wider than 8, else 8.
    lanes: usize,
    /// Per phase: the positions `lo..hi` that hold input columns, and the first such column.
    spans: [(usize, usize, usize); S],
}

/// The input rows of one depthwise channel, with a bias and activation still to apply to them (the
/// producer's epilogue, applied to the real input values as they are padded; padding stays zero).
pub(super) struct DwIn<'a> {
    /// The input rows, `in_w` values each.
    pub(super) x: &'a [f32],
    /// Bias added to every input value.
    pub(super) bias: f32,
    /// Activation applied after the bias.
    pub(super) act: Option<Activation>,
}

/// One output plane of a depthwise convolution with the bias and activation to apply to it.
pub(super) struct DwOut<'a> {
    /// The output rows, `out_w` values each.
    pub(super) y: &'a mut [f32],
    /// Bias added to every output.
    pub(super) bias: f32,
    /// Activation applied after the bias.
    pub(super) act: Option<Activation>,
}

/// Output columns per vector of the AVX2 and portable tiles (and of AVX-512 tiles on narrow planes).
const LANES: usize = 8;
/// Output columns per vector of the AVX-512 tiles.
const LANES_512: usize = 16;
/// Vectors per register tile in the wide part of a row.
const WIDE: usize = 4;

impl<const S: usize> DwPlan<S> {
    /// Plan for output rows `oy0..oy0 + out_h` of the depthwise convolution `d` with a `K × K` kernel.
    ///
    /// The band reads padded rows `oy0·S..oy0·S + rows`, that is input rows from
    /// [`first_input_row`](Self::first_input_row) on; the caller passes those that exist. The plane
    /// is computed with `isa` (at most [`vector_isa`]).
    pub(super) fn new<const K: usize>(d: &Conv2dDims, oy0: usize, out_h: usize, isa: Isa) -> Self {
        let lanes = if isa == Isa::Avx512 && d.out_w > LANES { LANES_512 } else { LANES };
        let phase_w = d.out_w.next_multiple_of(lanes) + (K - 1) / S;
        let spans = std::array::from_fn(|phase| {
            let (lo, hi) = valid_range(phase, d.pad_w, S, d.in_w, phase_w);
            let hi = hi.max(lo);
            (lo, hi, (lo * S + phase).saturating_sub(d.pad_w))
        });
        DwPlan {
            in_w: d.in_w,
            pad_h: d.pad_h.saturating_sub(oy0 * S),
            out_h,
            out_w: d.out_w,
            phase_w,
            rows: (out_h - 1) * S + K,
            isa,
            lanes,
            spans,
        }
    }

    /// The first input row the band starting at output row `oy0` reads (padding aside).
    pub(super) fn first_input_row(d: &Conv2dDims, oy0: usize) -> usize {
        (oy0 * S).saturating_sub(d.pad_h)
    }

    /// Scratch floats [`dw_channel`] needs for this plan.
    pub(super) fn buf_len(&self) -> usize {
        self.rows * S * self.phase_w
    }

    /// Writes the zeros of the padded copy into `buf` (the plan's [`buf_len`](Self::buf_len) floats) for
    /// `input_rows` input rows: the rows above and below them, and the columns left and right of each. They
    /// are the same for every channel, so [`dw_channel`] writes only the input values over them.
    pub(super) fn lay_zeros(&self, input_rows: usize, buf: &mut [f32]) {
        for (ry, row) in buf[..self.buf_len()].chunks_exact_mut(S * self.phase_w).enumerate() {
            if ry < self.pad_h || ry >= self.pad_h + input_rows {
                row.fill(0.0);
                continue;
            }
            for (phase, &(lo, hi, _)) in row.chunks_exact_mut(self.phase_w).zip(&self.spans) {
                phase[..lo].fill(0.0);
                phase[hi.max(lo)..].fill(0.0);
            }
        }
    }
}

/// Depthwise convolution with a `K × K` kernel and stride `S`, parallel over channels.
fn depthwise<const K: usize, const S: usize>(
    input: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    d: &Conv2dDims,
    act: Option<Activation>,
    out: &mut [f32],
) -> u64 {
    let plan = DwPlan::<S>::new::<K>(d, 0, d.out_h, vector_isa());
    let (in_plane, out_plane) = (d.in_h * d.in_w, d.out_h * d.out_w);
    // Each run of channels on a thread lays the padding's zeros once and then writes only input values.
    let padded_plane = || {
        let mut scratch = ScratchGuard::take(plan.buf_len());
        plan.lay_zeros(d.in_h, scratch.as_mut_slice());
        scratch
    };
    out.par_chunks_mut(out_plane)
        .enumerate()
        .with_min_len(depthwise_min_channels(out_plane, K * K))
        .map_init(padded_plane, |scratch, (c, y)| {
            let x = DwIn { x: &input[c * in_plane..][..in_plane], bias: 0.0, act: None };
            let w = &weight[c * K * K..][..K * K];
            let out = DwOut { y, bias: bias.map_or(0.0, |b| b[c]), act };
            dw_channel::<K, S>(x, w, &plan, scratch.as_mut_slice(), out);
            (out_plane * K * K) as u64
        })
        .sum()
}

/// One depthwise channel (or band of it): copies the input rows `x` (applying their pending bias and
/// activation) into `buf` (at least [`DwPlan::buf_len`] floats, holding the zeros
/// [`DwPlan::lay_zeros`] laid for as many input rows) and writes `out`, with the plan's instruction set.
#[inline]
pub(super) fn dw_channel<const K: usize, const S: usize>(
    x: DwIn,
    w: &[f32],
    plan: &DwPlan<S>,
    buf: &mut [f32],
    out: DwOut,
) {
    let buf = &mut buf[..plan.buf_len()];
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{__m256, __m512};
        match (plan.isa, plan.lanes) {
            // SAFETY: plans name an instruction set only after `vector_isa` detected it on this CPU.
            (Isa::Avx512, LANES_512) => return unsafe { dw_plane_avx512::<K, S, __m512>(x, w, plan, buf, out) },
            (Isa::Avx512, _) => return unsafe { dw_plane_avx512::<K, S, __m256>(x, w, plan, buf, out) },
            (Isa::Avx2Fma, _) => return unsafe { dw_plane_avx2::<K, S>(x, w, plan, buf, out) },
            (Isa::Portable, _) => {}
        }
    }
    dw_plane::<K, S, F32x8>(x, w, plan, buf, out);
}

/// [`dw_plane`] compiled for AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn dw_plane_avx2<const K: usize, const S: usize>(x: DwIn, w: &[f32], p: &DwPlan<S>, buf: &mut [f32], y: DwOut) {
    dw_plane::<K, S, std::arch::x86_64::__m256>(x, w, p, buf, y);
}

/// [`dw_plane`] compiled for AVX-512F, with tiles of `V` (512- or, on narrow planes, 256-bit vectors).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
fn dw_plane_avx512<const K: usize, const S: usize, V: Vector>(
    x: DwIn,
    w: &[f32],
    p: &DwPlan<S>,
    buf: &mut [f32],
    y: DwOut,
) {
    dw_plane::<K, S, V>(x, w, p, buf, y);
}

/// One depthwise channel: copies `x` into the padded `buf`, then computes the output two rows at a time in
/// tiles of `V` vectors.
#[inline(always)]
fn dw_plane<const K: usize, const S: usize, V: Vector>(
    x: DwIn,
    w: &[f32],
    p: &DwPlan<S>,
    buf: &mut [f32],
    mut y: DwOut,
) {
    dw_copy_in::<S>(x, p, buf);
    let mut oy = 0;
    debug_assert_eq!(p.lanes, V::LANES);
    if p.out_w <= 2 * V::LANES {
        // Narrow planes have too few columns for independent accumulators: take four rows at once.
        while oy + 4 <= p.out_h {
            dw_rows::<K, S, V, 4>(buf, p, w, oy, &mut y);
            oy += 4;
        }
    }
    while oy + 2 <= p.out_h {
        dw_rows::<K, S, V, 2>(buf, p, w, oy, &mut y);
        oy += 2;
    }
    if oy < p.out_h {
        dw_rows::<K, S, V, 1>(buf, p, w, oy, &mut y);
    }
}

/// Writes the input rows `x` (with their pending bias and activation applied) into their places in the
/// phase-split padded copy `buf`, whose zeros [`DwPlan::lay_zeros`] laid.
#[inline(always)]
fn dw_copy_in<const S: usize>(x: DwIn, p: &DwPlan<S>, buf: &mut [f32]) {
    let row_stride = S * p.phase_w;
    // Decided once per plane: deciding per row made 16² planes 20 % slower.
    let pending = x.bias != 0.0 || x.act.is_some();
    let rows = buf[p.pad_h * row_stride..p.buf_len()].chunks_exact_mut(row_stride);
    for (src, dst) in x.x.chunks_exact(p.in_w).zip(rows) {
        for (dst, &(lo, hi, first)) in dst.chunks_exact_mut(p.phase_w).zip(&p.spans) {
            if hi <= lo {
                continue;
            }
            let mid = &mut dst[lo..hi];
            if pending && S == 1 {
                // One pass that copies and applies: at stride 1 the gather is a plain copy.
                bias_act_from(mid, &src[first..first + mid.len()], x.bias, x.act);
                continue;
            }
            if S == 2 && p.isa >= Isa::Avx2Fma {
                even_lanes_bias_act(mid, &src[first..], x.bias, x.act, p.isa);
                continue;
            }
            gather(mid, &src[first..], S, p.isa);
            if pending {
                bias_act(mid.iter_mut(), x.bias, x.act);
            }
        }
    }
}

/// `dst[i] = src[i·stride]` for every `i` of `dst` (`src` holds at least `(dst.len() − 1)·stride + 1`
/// values), with vector code for stride 2 on AVX2 and AVX-512 (pass only an `isa` this CPU has).
#[inline(always)]
fn gather(dst: &mut [f32], src: &[f32], stride: usize, isa: Isa) {
    match stride {
        1 => dst.copy_from_slice(&src[..dst.len()]),
        2 if isa >= Isa::Avx2Fma => even_lanes_bias_act(dst, src, 0.0, None, isa),
        _ => dst.iter_mut().enumerate().for_each(|(i, d)| *d = src[i * stride]),
    }
}

/// `dst[i] = act(src[2·i] + bias)` for every `i` of `dst` (`src` holds at least `2·(dst.len() − 1) + 1`
/// values) in one vector pass, under `isa`: AVX-512 or AVX2 (only pass one this CPU has).
#[inline(always)]
fn even_lanes_bias_act(dst: &mut [f32], src: &[f32], bias: f32, act: Option<Activation>, isa: Isa) {
    debug_assert!(dst.is_empty() || src.len() > 2 * (dst.len() - 1));
    #[cfg(target_arch = "x86_64")]
    // SAFETY: callers name AVX-512 or AVX2 only after `vector_isa` detected it on this CPU.
    unsafe {
        if isa == Isa::Avx512 {
            even_lanes_bias_act_avx512(dst, src, bias, act);
        } else {
            even_lanes_bias_act_avx2(dst, src, bias, act);
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("{isa:?} is an x86-64 instruction set");
}

/// [`even_lanes_bias_act`] eight at a time: one shuffle and one permute per eight values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn even_lanes_bias_act_avx2(dst: &mut [f32], src: &[f32], bias: f32, act: Option<Activation>) {
    use std::arch::x86_64::{
        __m256, _mm256_castpd_ps, _mm256_castps_pd, _mm256_cmpgt_epi32, _mm256_maskload_ps, _mm256_maskstore_ps,
        _mm256_permute4x64_pd, _mm256_set1_epi32, _mm256_setr_epi32, _mm256_shuffle_ps,
    };
    // Lanes `0..n` of an eight-lane mask.
    let mask = |n: usize| {
        _mm256_cmpgt_epi32(_mm256_set1_epi32(n.min(LANES) as i32), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7))
    };
    // SAFETY: AVX2 is enabled on this function; the masked loads and stores touch only the lanes they are given,
    // which `even_lanes_in_chunks` keeps inside `src` and `dst`.
    unsafe {
        even_lanes_in_chunks::<__m256>(
            dst,
            src,
            bias,
            act,
            // [lo0 lo2 hi0 hi2 | lo4 lo6 hi4 hi6], then the middle 64-bit pairs swapped.
            |lo, hi| {
                let even = _mm256_shuffle_ps::<0b10_00_10_00>(lo, hi);
                _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(even)))
            },
            |at, n| _mm256_maskload_ps(at, mask(n)),
            |at, n, v| _mm256_maskstore_ps(at, mask(n), v),
        );
    }
}

/// [`even_lanes_bias_act`] sixteen at a time: one two-source permute per sixteen values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
fn even_lanes_bias_act_avx512(dst: &mut [f32], src: &[f32], bias: f32, act: Option<Activation>) {
    use std::arch::x86_64::{
        __m512, _mm512_mask_storeu_ps, _mm512_maskz_loadu_ps, _mm512_permutex2var_ps, _mm512_setr_epi32,
    };
    let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    // Lanes `0..n` of a 16-lane mask.
    let mask = |n: usize| ((1u32 << n.min(LANES_512)) - 1) as u16;
    // SAFETY: AVX-512F is enabled on this function; the masked loads and stores touch only the lanes they are
    // given, which `even_lanes_in_chunks` keeps inside `src` and `dst`.
    unsafe {
        even_lanes_in_chunks::<__m512>(
            dst,
            src,
            bias,
            act,
            |lo, hi| _mm512_permutex2var_ps(lo, even, hi),
            |at, n| _mm512_maskz_loadu_ps(mask(n), at),
            |at, n, v| _mm512_mask_storeu_ps(at, mask(n), v),
        );
    }
}

/// The loop of the vector versions of [`even_lanes_bias_act`], over vectors `V`: whole chunks (`V::LANES`
/// values of `dst` from twice as many readable values of `src`) with plain loads and stores, then the row's
/// last, partial chunk with masked ones, so that its end needs no scalar loop; the bias and activation are
/// applied in registers. `even(lo, hi)` takes the even lanes of `lo` then `hi`; `load(at, n)` reads lanes
/// `0..n` from `at` and no others, `store(at, n, v)` writes lanes `0..n` of `v` to `at` and no others.
///
/// # Safety
///
/// Only from a function compiled for `V`'s instruction set, with `load` and `store` as described.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn even_lanes_in_chunks<V: Vector>(
    dst: &mut [f32],
    src: &[f32],
    bias: f32,
    act: Option<Activation>,
    even: impl Fn(V, V) -> V,
    load: impl Fn(*const f32, usize) -> V,
    store: impl Fn(*mut f32, usize, V),
) {
    let l = V::LANES;
    let bias = V::splat(bias);
    let whole = (dst.len() / l).min(src.len() / (2 * l));
    for i in 0..whole {
        // Chunk `i < whole` reads `src[2l·i..2l·(i + 1)]` and writes `dst[l·i..l·(i + 1)]`, in bounds.
        let at = src.as_ptr().add(2 * l * i);
        let values = bias_activate(even(V::load_ptr(at), V::load_ptr(at.add(l))), bias, act);
        values.store(&mut dst[l * i..]);
    }
    let (dst, src) = (&mut dst[l * whole..], &src[2 * l * whole..]);
    if dst.is_empty() {
        return;
    }
    // At most `l` values of `dst` remain (`src` holds about twice as many); each load reads only lanes inside
    // `src`, the store only the `dst.len()` lanes of `dst`.
    debug_assert!(dst.len() <= l);
    let (lo, hi) = (load(src.as_ptr(), src.len()), load(src.as_ptr().wrapping_add(l), src.len().saturating_sub(l)));
    store(dst.as_mut_ptr(), dst.len(), bias_activate(even(lo, hi), bias, act));
}

/// Output rows `oy..oy + R` of one depthwise channel, in register tiles of `WIDE`, 2 and 1 vectors
/// `V`, each adding its bias and applying its activation before it stores.
#[inline(always)]
fn dw_rows<const K: usize, const S: usize, V: Vector, const R: usize>(
    buf: &[f32],
    p: &DwPlan<S>,
    w: &[f32],
    oy: usize,
    y: &mut DwOut,
) {
    let l = V::LANES;
    let padded_w = p.out_w.next_multiple_of(l);
    let mut x0 = 0;
    // At most 8 accumulator registers: wide tiles only when taking at most two rows.
    while R <= 2 && x0 + WIDE * l <= padded_w {
        dw_tile::<K, S, V, WIDE, R>(buf, p, w, oy, x0, y);
        x0 += WIDE * l;
    }
    while x0 + 2 * l <= padded_w {
        dw_tile::<K, S, V, 2, R>(buf, p, w, oy, x0, y);
        x0 += 2 * l;
    }
    while x0 < padded_w {
        dw_tile::<K, S, V, 1, R>(buf, p, w, oy, x0, y);
        x0 += l;
    }
}

/// Computes the `R × N` vectors of outputs starting at row `oy`, column `x0` in registers, adds the bias,
/// applies the activation and stores the values that lie inside the plane.
#[inline(always)]
fn dw_tile<const K: usize, const S: usize, V: Vector, const N: usize, const R: usize>(
    buf: &[f32],
    p: &DwPlan<S>,
    w: &[f32],
    oy: usize,
    x0: usize,
    y: &mut DwOut,
) {
    let (phase_w, row_stride, l) = (p.phase_w, S * p.phase_w, V::LANES);
    let w = &w[..K * K];
    // SAFETY (every `Vector` call below): `V` is the portable type or an AVX type whose kernels are
    // only entered through `dw_channel`, after `vector_isa` detected its instruction set.
    let mut acc = [[unsafe { V::splat(0.0) }; N]; R];
    // Padded row `oy·S + t` feeds output row `oy + r` through kernel row `t − r·S`: each vector of input is
    // loaded once and used by every output row of the tile that reads it.
    let first = oy * S * row_stride + x0;
    assert!(first + ((R - 1) * S + K - 1) * row_stride + (S - 1) * phase_w + (K - 1) / S + N * l <= buf.len());
    for t in 0..(R - 1) * S + K {
        for kx in 0..K {
            let start = first + t * row_stride + (kx % S) * phase_w + kx / S;
            // SAFETY: inside `buf` by the assertion above (the largest `t`, phase and `kx / S`).
            let v: [V; N] = std::array::from_fn(|n| unsafe { V::load_ptr(buf.as_ptr().add(start + n * l)) });
            for (r, acc_r) in acc.iter_mut().enumerate() {
                let Some(ky) = t.checked_sub(r * S).filter(|&ky| ky < K) else { continue };
                let wk = unsafe { V::splat(w[ky * K + kx]) };
                for (a, &v) in acc_r.iter_mut().zip(&v) {
                    *a = unsafe { v.mul_add(wk, *a) };
                }
            }
        }
    }
    // Bias and activation in registers (nested loops over the rows: a flattened iterator over `acc` would
    // keep it in memory).
    let bias = unsafe { V::splat(y.bias) };
    for acc_r in &mut acc {
        for a in acc_r.iter_mut() {
            *a = unsafe { bias_activate(*a, bias, y.act) };
        }
    }
    for (r, acc_r) in acc.iter().enumerate() {
        let row = &mut y.y[(oy + r) * p.out_w..][..p.out_w];
        for (n, &values) in acc_r.iter().enumerate() {
            let x = x0 + n * l;
            if x + l <= p.out_w {
                unsafe { values.store(&mut row[x..]) };
            } else if x < p.out_w {
                unsafe { values.store_prefix(&mut row[x..]) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::test_util::{assert_close, random, with_pools};

    /// Dimensions with PyTorch's output-size formula.
    #[allow(clippy::too_many_arguments)]
    fn dims(
        cin: usize,
        h: usize,
        w: usize,
        cout: usize,
        k: (usize, usize),
        s: usize,
        p: usize,
        g: usize,
    ) -> Conv2dDims {
        Conv2dDims {
            in_channels: cin,
            in_h: h,
            in_w: w,
            out_channels: cout,
            kernel_h: k.0,
            kernel_w: k.1,
            stride_h: s,
            stride_w: s,
            pad_h: p,
            pad_w: p,
            groups: g,
            out_h: (h + 2 * p - k.0) / s + 1,
            out_w: (w + 2 * p - k.1) / s + 1,
        }
    }

    /// Direct seven-loop convolution with bounds checks on every tap.
    fn naive(x: &[f32], wt: &[f32], bias: Option<&[f32]>, d: &Conv2dDims, act: Option<Activation>) -> Vec<f32> {
        let (cin_g, cout_g) = (d.in_channels / d.groups, d.out_channels / d.groups);
        let mut out = Vec::new();
        for co in 0..d.out_channels {
            let g = co / cout_g;
            for oy in 0..d.out_h {
                for ox in 0..d.out_w {
                    let mut sum = bias.map_or(0.0, |b| b[co] as f64);
                    for ci in 0..cin_g {
                        for ky in 0..d.kernel_h {
                            for kx in 0..d.kernel_w {
                                let iy = (oy * d.stride_h + ky) as isize - d.pad_h as isize;
                                let ix = (ox * d.stride_w + kx) as isize - d.pad_w as isize;
                                if iy < 0 || ix < 0 || iy >= d.in_h as isize || ix >= d.in_w as isize {
                                    continue;
                                }
                                let xv = x[((g * cin_g + ci) * d.in_h + iy as usize) * d.in_w + ix as usize];
                                let wv = wt[((co * cin_g + ci) * d.kernel_h + ky) * d.kernel_w + kx];
                                sum += xv as f64 * wv as f64;
                            }
                        }
                    }
                    let v = sum as f32;
                    out.push(act.map_or(v, |a| a.apply(v)));
                }
            }
        }
        out
    }

    /// Runs `conv2d` on random data for every activation, with and without bias, in 1-, 2- and
    /// 3-thread pools, against [`naive`]; checks the MAC count.
    fn check(d: Conv2dDims) {
        let x = random(d.in_channels * d.in_h * d.in_w, 11, 2.0);
        let wt = random(d.out_channels * d.in_channels / d.groups * d.kernel_h * d.kernel_w, 12, 1.0);
        let b = random(d.out_channels, 13, 2.0);
        let want_macs =
            (d.out_channels * d.out_h * d.out_w * d.in_channels / d.groups * d.kernel_h * d.kernel_w) as u64;
        with_pools(|setup| {
            for act in [None].into_iter().chain(Activation::ALL.map(Some)) {
                for bias in [None, Some(b.as_slice())] {
                    let mut out = vec![f32::NAN; d.out_channels * d.out_h * d.out_w];
                    let macs = conv2d(&x, &wt, bias, &d, act, &mut out);
                    let what = format!("{d:?} act {act:?} bias {} {setup}", bias.is_some());
                    assert_close(&out, &naive(&x, &wt, bias, &d, act), &what);
                    assert_eq!(macs, want_macs, "{what}");
                }
            }
        });
    }

    #[test]
    fn pointwise_matches_naive() {
        check(dims(5, 7, 11, 6, (1, 1), 1, 0, 1));
        check(dims(4, 1, 1, 3, (1, 1), 1, 0, 1));
        // Large enough to split across threads: by columns, then by rows.
        check(dims(16, 24, 40, 24, (1, 1), 1, 0, 1));
        check(dims(32, 7, 5, 64, (1, 1), 1, 0, 1));
        // Several cache blocks even on one thread: by columns, then by rows.
        check(dims(8, 30, 37, 40, (1, 1), 1, 0, 1));
        check(dims(8, 7, 19, 300, (1, 1), 1, 0, 1));
    }

    #[test]
    fn dense_and_strided_match_naive() {
        check(dims(3, 7, 11, 4, (3, 3), 1, 1, 1));
        check(dims(3, 9, 13, 8, (3, 3), 2, 1, 1)); // the stem, odd sizes
        check(dims(3, 40, 52, 16, (3, 3), 2, 1, 1)); // several im2col tiles
        check(dims(6, 9, 7, 5, (1, 1), 2, 0, 1)); // strided 1×1
        check(dims(4, 6, 5, 3, (2, 3), 1, 0, 1)); // rectangular kernel, no padding
        check(dims(2, 1, 1, 3, (3, 3), 1, 1, 1)); // 1×1 input, all but the centre tap padded
        check(dims(2, 3, 3, 2, (3, 3), 1, 3, 1)); // padding wider than the kernel reach
    }

    #[test]
    fn grouped_matches_naive() {
        check(dims(4, 7, 11, 6, (3, 3), 1, 1, 2));
        check(dims(4, 9, 7, 6, (5, 5), 2, 2, 2));
        check(dims(6, 5, 5, 3, (1, 1), 1, 0, 3));
        check(dims(3, 7, 11, 6, (3, 3), 1, 1, 3)); // depthwise with channel multiplier 2
    }

    #[test]
    fn depthwise_matches_naive() {
        for (k, s) in [(1, 1), (1, 2), (3, 1), (3, 2), (5, 1), (5, 2), (7, 1), (7, 2)] {
            for (h, w) in [(7, 11), (1, 1), (13, 37), (8, 8), (16, 70), (8, 16), (5, 33), (3, 64)] {
                for p in [k / 2, 0] {
                    if h + 2 * p >= k && w + 2 * p >= k {
                        check(dims(3, h, w, 3, (k, k), s, p, 3));
                    }
                }
            }
        }
        // Specialisations not covered (stride 3, even or rectangular kernel) go through im2col.
        check(dims(3, 11, 9, 3, (3, 3), 3, 1, 3));
        check(dims(3, 7, 11, 3, (2, 2), 1, 0, 3));
        check(dims(3, 7, 11, 3, (3, 1), 1, 1, 3));
        // Padding beyond the kernel's reach (a padded 1×1 depthwise conv is not a plain channel scale).
        check(dims(3, 7, 11, 3, (1, 1), 1, 1, 3));
        check(dims(3, 7, 11, 3, (1, 1), 2, 2, 3));
        check(dims(3, 5, 6, 3, (3, 3), 1, 2, 3));
        check(dims(3, 5, 6, 3, (3, 3), 2, 3, 3));
        // Many channels, so channels are spread over threads.
        check(dims(40, 9, 9, 40, (3, 3), 2, 1, 40));
    }

    #[test]
    fn stride_two_copies_match_scalar_on_every_isa_and_length() {
        let src = random(2 * 40 + 1, 9, 3.0);
        for isa in Isa::ALL.into_iter().filter(|isa| isa.available()) {
            for n in 0..=40usize {
                // The tightest source a row end leaves (`2·(n − 1) + 1` values), and one with room to spare.
                for src in [&src[..(2 * n).saturating_sub(1)], &src[..]] {
                    let mut plain = vec![f32::NAN; n + 1];
                    gather(&mut plain[..n], src, 2, isa);
                    let mut applied = vec![f32::NAN; n + 1];
                    if isa >= Isa::Avx2Fma {
                        even_lanes_bias_act(&mut applied[..n], src, 0.5, Some(Activation::Relu6), isa);
                    } else {
                        gather(&mut applied[..n], src, 2, isa);
                        bias_act(applied[..n].iter_mut(), 0.5, Some(Activation::Relu6));
                    }
                    for i in 0..n {
                        assert_eq!(plain[i], src[2 * i], "{isa:?} n={n} i={i}");
                        assert_eq!(applied[i], Activation::Relu6.apply(src[2 * i] + 0.5), "{isa:?} n={n} i={i}");
                    }
                    assert!(plain[n].is_nan() && applied[n].is_nan(), "{isa:?} n={n}: wrote past the end");
                }
            }
        }
    }

    #[test]
    fn valid_range_bounds_every_tap() {
        for (k, pad, stride, in_len, out_len) in [(0, 1, 1, 5, 5), (2, 1, 1, 5, 5), (0, 2, 2, 7, 4), (4, 2, 2, 7, 4)] {
            let (lo, hi) = valid_range(k, pad, stride, in_len, out_len);
            for o in 0..out_len {
                let inside = (o * stride + k) >= pad && (o * stride + k - pad) < in_len;
                assert_eq!(inside, (lo..hi).contains(&o), "k {k} pad {pad} stride {stride} o {o}");
            }
        }
    }
}
