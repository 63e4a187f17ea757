//! A depthwise conv fused with the 1×1 projection that reads it (a depthwise-separable conv, as in a
//! MobileNetV2 block of expand ratio 1), optionally with the residual add after the projection, so that
//! the depthwise output never goes through memory.
//!
//! The output rows are split into one piece per rayon thread; each piece walks its rows in bands. For a
//! band, every channel runs the direct depthwise kernel of [`conv2d`](super::conv2d) on the input rows the
//! band reads into a thread-local scratch, one single-threaded GEMM `W[Cout, C] · D[C, rows·Wo]` projects
//! them into the output rows, and the projection's bias, activation and the residual are applied while
//! those rows are still in cache. Bands share no computed rows, so nothing is recomputed.

use ndarray::{ArrayViewMut3, Axis};
use rayon::prelude::*;

use super::conv::{conv2d, dw_channel, is_square_depthwise, Conv2dDims, DwIn, DwOut, DwPlan, FUSED_KERNELS};
use super::fused::BAND_FLOATS;
use super::matmul::{gemm, view2};
use super::{add_into, bias_act, vector_isa, with_scratch, Activation, Isa, Split};

/// One convolution of a fused kernel: its dimensions, weight (`[Cout, Cin/groups, kh, kw]`), bias (`Cout`
/// values) and the activation after the bias.
#[derive(Clone, Copy)]
pub struct ConvLayer<'a> {
    /// Dimensions.
    pub dims: &'a Conv2dDims,
    /// Weight.
    pub weight: &'a [f32],
    /// Bias.
    pub bias: &'a [f32],
    /// Activation applied after the bias.
    pub act: Option<Activation>,
}

impl ConvLayer<'_> {
    /// `out = act(conv(input) + bias)` with [`conv2d`]; returns its multiply-accumulates.
    pub fn conv(&self, input: &[f32], out: &mut [f32]) -> u64 {
        conv2d(input, self.weight, Some(self.bias), self.dims, self.act, out)
    }
}

/// The 1×1 projection that ends a fused kernel, with the residual added after it (`[Cout, Ho, Wo]`, as the
/// output).
#[derive(Clone, Copy)]
pub struct Projection<'a> {
    /// The 1×1 conv.
    pub layer: ConvLayer<'a>,
    /// Added to its output, after its activation.
    pub residual: Option<&'a [f32]>,
}

/// Whether `p` is a 1×1 stride-1 unpadded conv with one group, as fused kernels project with.
pub(super) fn is_pointwise(p: &Conv2dDims) -> bool {
    p.groups == 1
        && (p.kernel_h, p.kernel_w, p.stride_h, p.stride_w, p.pad_h, p.pad_w) == (1, 1, 1, 1, 0, 0)
        && (p.out_h, p.out_w) == (p.in_h, p.in_w)
}

/// Whether [`depthwise_project`] fuses this pair: `depthwise` is a depthwise conv with a square 3×3, 5×5
/// or 7×7 kernel and equal strides of 1 or 2, and `project` a 1×1 stride-1 unpadded conv with one group on
/// its output.
pub fn supports_depthwise_project(depthwise: &Conv2dDims, project: &Conv2dDims) -> bool {
    let (d, p) = (depthwise, project);
    let chained = (p.in_channels, p.in_h, p.in_w) == (d.out_channels, d.out_h, d.out_w);
    is_square_depthwise(d, &FUSED_KERNELS) && is_pointwise(p) && chained
}

/// `out = act_p(project(act_d(depthwise(input)))) (+ residual)`, in bands of output rows so that the
/// depthwise output stays in cache.
///
/// `input` is `[C, H, W]`, `out` and `residual` (when given) `[Cout, Ho, Wo]`; `out` is fully overwritten.
/// Same result as two [`conv2d`] calls and an add, up to float rounding. Returns the multiply-accumulates
/// of (depthwise, projection) as the unfused pair counts them; nothing is recomputed. Pairs that
/// [`supports_depthwise_project`] rejects are computed unfused, through a temporary buffer.
pub fn depthwise_project(input: &[f32], depthwise: ConvLayer, project: Projection, out: &mut [f32]) -> (u64, u64) {
    let (d, p) = (depthwise.dims, project.layer.dims);
    let residual = project.residual;
    debug_assert_eq!(input.len(), d.in_channels * d.in_h * d.in_w);
    debug_assert_eq!(depthwise.weight.len(), d.out_channels * d.kernel_h * d.kernel_w);
    debug_assert_eq!(project.layer.weight.len(), p.out_channels * p.in_channels);
    debug_assert_eq!(out.len(), p.out_channels * p.out_h * p.out_w);
    debug_assert!(residual.is_none_or(|r| r.len() == out.len()));
    let fused = supports_depthwise_project(d, p).then_some(per_kernel_and_stride!(fused, d));
    match fused {
        Some(kernel) => kernel(input, depthwise, project, out),
        None => {
            let mut hidden = vec![0.0; d.out_channels * d.out_h * d.out_w];
            let dw_macs = depthwise.conv(input, &mut hidden);
            let pw_macs = project.layer.conv(&hidden, out);
            if let Some(r) = residual {
                add_into(out, r);
            }
            (dw_macs, pw_macs)
        }
    }
}

/// Output rows per piece of a fused pair on `threads` threads.
fn piece_rows(d: &Conv2dDims, threads: usize) -> usize {
    d.out_h.div_ceil(threads.clamp(1, d.out_h))
}

/// How [`depthwise_project`] divides a pair it fuses among `threads` threads: by output rows.
pub fn depthwise_project_split(depthwise: &Conv2dDims, threads: usize) -> Split {
    Split { units: depthwise.out_h, piece: piece_rows(depthwise, threads) }
}

/// The fused pair with a `K × K` depthwise kernel and stride `S`, parallel over pieces of output rows.
fn fused<const K: usize, const S: usize>(
    input: &[f32],
    depthwise: ConvLayer,
    project: Projection,
    out: &mut [f32],
) -> (u64, u64) {
    let (d, p) = (depthwise.dims, project.layer.dims);
    let piece_h = piece_rows(d, rayon::current_num_threads());
    // As many output rows per band as keep the depthwise rows and the projected rows within budget.
    let height = (BAND_FLOATS / 2 / ((d.out_channels + p.out_channels) * d.out_w)).clamp(1, piece_h);
    let isa = vector_isa();
    let mut y = ArrayViewMut3::from_shape((p.out_channels, p.out_h, p.out_w), out)
        .expect("output length checked by the caller");
    let pieces: Vec<_> =
        y.axis_chunks_iter_mut(Axis(1), piece_h).enumerate().map(|(i, piece)| (i * piece_h, piece)).collect();
    pieces
        .into_par_iter()
        .for_each(|(oy0, piece)| run_piece::<K, S>(input, depthwise, project, oy0, piece, height, isa));
    let macs = |a: usize, b: usize, c: usize, k: usize| (a * b * c * k) as u64;
    (macs(d.out_channels, d.out_h, d.out_w, K * K), macs(p.out_channels, p.out_h, p.out_w, p.in_channels))
}

/// Output rows `oy0..` of every channel, held in `piece` (`[Cout, rows, Wo]`), band after band on this
/// thread.
fn run_piece<const K: usize, const S: usize>(
    input: &[f32],
    depthwise: ConvLayer,
    project: Projection,
    oy0: usize,
    mut piece: ArrayViewMut3<f32>,
    height: usize,
    isa: Isa,
) {
    let d = depthwise.dims;
    let (channels, w, out_w) = (d.in_channels, d.in_w, d.out_w);
    let in_plane = d.in_h * w;
    let buf_len = DwPlan::<S>::new::<K>(d, 0, height, isa).buf_len();
    with_scratch(channels * height * out_w + buf_len, |scratch| {
        let (hidden, buf) = scratch.split_at_mut(channels * height * out_w);
        for (b, band) in piece.axis_chunks_iter_mut(Axis(1), height).enumerate() {
            let (band_oy0, rows) = (oy0 + b * height, band.len_of(Axis(1)));
            let n = rows * out_w;
            let plan = DwPlan::<S>::new::<K>(d, band_oy0, rows, isa);
            let first = DwPlan::<S>::first_input_row(d, band_oy0);
            let end = ((band_oy0 + rows - 1) * S + K).saturating_sub(d.pad_h).min(d.in_h);
            plan.lay_zeros(end - first, buf);
            for (c, y) in hidden[..channels * n].chunks_exact_mut(n).enumerate() {
                let x = DwIn { x: &input[c * in_plane + first * w..c * in_plane + end * w], bias: 0.0, act: None };
                let out = DwOut { y, bias: depthwise.bias[c], act: depthwise.act };
                dw_channel::<K, S>(x, &depthwise.weight[c * K * K..][..K * K], &plan, buf, out);
            }
            project_band(&hidden[..channels * n], project, band_oy0, band);
        }
    });
}

/// Projects the depthwise rows of a band (`hidden`: one row of the band's pixels per channel) into the band's
/// output rows `band` (`[Cout, rows, Wo]`, starting at output row `oy0`), then applies the projection's bias,
/// activation and residual while they are in cache.
pub(super) fn project_band(hidden: &[f32], project: Projection, oy0: usize, mut band: ArrayViewMut3<f32>) {
    let (p, n) = (project.layer.dims, band.len_of(Axis(1)) * band.len_of(Axis(2)));
    let x = view2(hidden, p.in_channels, n);
    // The band's rows of every output channel, one row of `n` values per channel.
    assert!(band.merge_axes(Axis(1), Axis(2)), "a band's rows are contiguous within each channel");
    let mut y = band.index_axis_move(Axis(1), 0);
    gemm(&view2(project.layer.weight, p.out_channels, p.in_channels), &x, &mut y);
    let out_plane = p.out_h * p.out_w;
    for (co, mut row) in y.outer_iter_mut().enumerate() {
        let row = row.as_slice_mut().expect("a channel's band rows are contiguous");
        bias_act(row.iter_mut(), project.layer.bias[co], project.layer.act);
        if let Some(r) = project.residual {
            let r = &r[co * out_plane + oy0 * p.out_w..][..n];
            row.iter_mut().zip(r).for_each(|(y, r)| *y += r);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::test_util::{assert_close, depthwise_dims, pointwise_dims, random, unfused, with_pools};

    /// A depthwise `k × k` conv of stride `s` and padding `k / 2` on `[c, h, w]`, then a 1×1 `c → cout`.
    fn pair(c: usize, cout: usize, h: usize, w: usize, k: usize, s: usize) -> (Conv2dDims, Conv2dDims) {
        let depthwise = depthwise_dims(c, h, w, k, s);
        (depthwise, pointwise_dims(c, depthwise.out_h, depthwise.out_w, cout))
    }

    /// Runs the fused pair against two `conv2d` calls and an add, with and without the residual, for every
    /// activation on either side, in every pool of [`with_pools`]; checks both MAC counts.
    fn check((d, p): (Conv2dDims, Conv2dDims)) {
        assert!(supports_depthwise_project(&d, &p), "{d:?} {p:?}");
        let x = random(d.in_channels * d.in_h * d.in_w, 31, 2.0);
        let (dw, db) = (random(d.out_channels * d.kernel_h * d.kernel_w, 32, 1.0), random(d.out_channels, 33, 1.0));
        let (pw, pb) = (random(p.out_channels * p.in_channels, 34, 1.0), random(p.out_channels, 35, 1.0));
        let residual = random(p.out_channels * p.out_h * p.out_w, 36, 1.0);
        let acts: Vec<_> = [None].into_iter().chain(Activation::ALL.map(Some)).collect();
        let want_macs = (
            (d.out_channels * d.out_h * d.out_w * d.kernel_h * d.kernel_w) as u64,
            (p.out_channels * p.out_h * p.out_w * p.in_channels) as u64,
        );
        with_pools(|setup| {
            for (i, &dact) in acts.iter().enumerate() {
                let pact = acts[(i + 1) % acts.len()];
                for add in [false, true] {
                    let depthwise = ConvLayer { dims: &d, weight: &dw, bias: &db, act: dact };
                    let layer = ConvLayer { dims: &p, weight: &pw, bias: &pb, act: pact };
                    let project = Projection { layer, residual: add.then_some(&residual[..]) };
                    let (want, _) = unfused(&x, &[depthwise, layer], project.residual);
                    let mut got = vec![f32::NAN; want.len()];
                    let macs = depthwise_project(&x, depthwise, project, &mut got);
                    let what = format!("{d:?} {p:?} acts {dact:?} {pact:?} residual {add} {setup}");
                    assert_close(&got, &want, &what);
                    assert_eq!(macs, want_macs, "{what}");
                }
            }
        });
    }

    #[test]
    fn matches_unfused_on_odd_sizes() {
        for (k, s) in [(3, 1), (3, 2), (5, 1), (5, 2), (7, 1), (7, 2)] {
            for (h, w) in [(7, 11), (1, 1), (13, 37), (2, 3)] {
                for (c, cout) in [(3, 3), (4, 7), (16, 16), (5, 2)] {
                    check(pair(c, cout, h, w, k, s));
                }
            }
        }
    }

    #[test]
    fn matches_unfused_across_many_bands() {
        // TopFormer's first block at 512² (several bands per piece), and uneven pieces on three threads.
        check(pair(16, 16, 256, 256, 3, 1));
        check(pair(8, 24, 131, 70, 5, 2));
    }

    #[test]
    fn unsupported_pairs_fall_back_to_unfused() {
        let (d, p) = pair(4, 6, 9, 8, 3, 1);
        let strided = Conv2dDims { stride_h: 2, stride_w: 2, out_h: 5, out_w: 4, ..p };
        assert!(!supports_depthwise_project(&d, &strided));
        let even = Conv2dDims { kernel_h: 4, kernel_w: 4, pad_h: 0, pad_w: 0, out_h: 6, out_w: 5, ..d };
        let after_even = Conv2dDims { in_h: 6, in_w: 5, out_h: 6, out_w: 5, ..p };
        assert!(!supports_depthwise_project(&even, &after_even));
        let x = random(4 * 9 * 8, 1, 1.0);
        let (dw, db, pw, pb) = (random(64, 2, 1.0), random(4, 3, 1.0), random(24, 4, 1.0), random(6, 5, 1.0));
        let depthwise = ConvLayer { dims: &even, weight: &dw, bias: &db, act: Some(Activation::Relu) };
        let layer = ConvLayer { dims: &after_even, weight: &pw, bias: &pb, act: None };
        let (want, want_macs) = unfused(&x, &[depthwise, layer], None);
        let mut got = vec![f32::NAN; want.len()];
        let macs = depthwise_project(&x, depthwise, Projection { layer, residual: None }, &mut got);
        assert_eq!(macs, (want_macs[0], want_macs[1]));
        assert_close(&got, &want, "fallback");
    }
}
