//! A MobileNetV2 expand (1×1 conv) fused with the depthwise conv that reads it, so that the wide
//! expanded map never goes through memory.
//!
//! The output is split into one piece per rayon thread, by rows where the images are tall enough and
//! by channels otherwise; each piece walks its rows in bands. For a band, the expanded input rows it
//! reads are computed by one single-threaded GEMM `W[channels, Cin] · X[Cin, rows·W]` into a
//! thread-local scratch sized to stay in L2, then every channel runs the direct depthwise kernel of
//! [`conv2d`](super::conv2d) on those rows with the band's own top and bottom padding, applying the
//! expand bias and activation as it pads them (in L1, in its vector versions, with no separate pass; rows
//! shared between bands get it once per band). Rows shared with the previous band of the same piece
//! are kept (moved to the front of the scratch), so only pieces of rows after the first recompute a
//! halo of `k − stride` expanded rows.

use ndarray::{ArrayView2, ArrayViewMut2, ArrayViewMut3, Axis, ShapeBuilder};
use rayon::prelude::*;

use super::conv::{conv2d, dw_channel, Conv2dDims, DwIn, DwOut, DwPlan};
use super::matmul::{gemm, view2};
use super::Activation;
use super::{vector_isa, with_scratch, Isa, Split};

/// Floats of expanded rows a band holds (768 KB): with the padded band plane and the streamed input
/// rows it about fills one core's 1 MB L2 on the target machines. In A/B runs over 16²–256² pairs,
/// 512 KB and 1 MB were within a few percent of this, and 256 KB lost to the unfused pair on 24→72 +
/// 5×5 (twice the halo re-padding).
pub(super) const BAND_FLOATS: usize = 192 * 1024;

/// Whether [`expand_depthwise`] supports this pair: `expand` is a 1×1 stride-1 unpadded conv with
/// one group, `depthwise` is a depthwise conv on its output with a square 3×3, 5×5 or 7×7 kernel, equal
/// strides of 1 or 2, vertical padding smaller than the kernel, and a last window that reaches the last
/// input row (so every expanded row is read, hence computed; see [`expand_depthwise`]'s MAC count).
pub fn supports_expand_depthwise(expand: &Conv2dDims, depthwise: &Conv2dDims) -> bool {
    let (e, d) = (expand, depthwise);
    let pointwise = e.groups == 1
        && (e.kernel_h, e.kernel_w, e.stride_h, e.stride_w, e.pad_h, e.pad_w) == (1, 1, 1, 1, 0, 0)
        && (e.out_h, e.out_w) == (e.in_h, e.in_w);
    let chained = (d.in_channels, d.in_h, d.in_w) == (e.out_channels, e.out_h, e.out_w);
    let depthwise = d.groups == d.in_channels
        && d.out_channels == d.in_channels
        && d.kernel_h == d.kernel_w
        && d.stride_h == d.stride_w
        && matches!((d.kernel_h, d.stride_h), (3 | 5 | 7, 1 | 2));
    let reads_every_row =
        d.out_h > 0 && d.pad_h < d.kernel_h && (d.out_h - 1) * d.stride_h + d.kernel_h >= d.in_h + d.pad_h;
    pointwise && chained && depthwise && reads_every_row
}

/// A 1×1 expand conv (stride 1, no padding, one group, with bias and optional activation) followed by
/// a depthwise k×k conv (with bias and optional activation), computed in bands of output rows so the
/// expanded map stays in cache instead of going through memory.
///
/// `input` is `[Cin, H, W]`, `expand_weight` `[hidden, Cin]`, `dw_weight` `[hidden, 1, k, k]`, the
/// biases have `hidden` values and `out` (`[hidden, Ho, Wo]`) is fully overwritten. Same result as
/// `conv2d(expand)` then `conv2d(depthwise)` up to float rounding.
///
/// Returns the multiply-accumulates of (expand, depthwise) as the unfused pair counts them:
/// `hidden·H·W·Cin` and `hidden·Ho·Wo·k²`. The expand count is exact in that every expanded pixel is
/// computed at least once (guaranteed by [`supports_expand_depthwise`]); it does not include the
/// halo rows recomputed where a thread's piece of rows starts, `(k − stride)·W·hidden·Cin` per piece
/// after the first. Pieces of rows are only used when that is at most 1/32 of the expand per piece
/// (e.g. one extra row of 256, 0.4 %, for 3×3 stride 2 at 256² on two threads); one thread, or a
/// split by channels, recomputes nothing.
///
/// Pairs that [`supports_expand_depthwise`] rejects are computed unfused, through a temporary buffer.
#[allow(clippy::too_many_arguments)] // the documented kernel signature
pub fn expand_depthwise(
    input: &[f32],
    expand: &Conv2dDims,
    expand_weight: &[f32],
    expand_bias: &[f32],
    expand_act: Option<Activation>,
    depthwise: &Conv2dDims,
    dw_weight: &[f32],
    dw_bias: &[f32],
    dw_act: Option<Activation>,
    out: &mut [f32],
) -> (u64, u64) {
    let (e, d) = (expand, depthwise);
    debug_assert_eq!(input.len(), e.in_channels * e.in_h * e.in_w);
    debug_assert_eq!(expand_weight.len(), e.out_channels * e.in_channels);
    debug_assert_eq!(expand_bias.len(), e.out_channels);
    debug_assert_eq!(dw_weight.len(), d.out_channels * d.kernel_h * d.kernel_w);
    debug_assert_eq!(dw_bias.len(), d.out_channels);
    debug_assert_eq!(out.len(), d.out_channels * d.out_h * d.out_w);
    let pair = Pair {
        input,
        e,
        ew: expand_weight,
        eb: expand_bias,
        eact: expand_act,
        d,
        dw: dw_weight,
        db: dw_bias,
        dact: dw_act,
    };
    let fused = supports_expand_depthwise(e, d).then_some(match (d.kernel_h, d.stride_h) {
        (3, 1) => fused::<3, 1>,
        (3, 2) => fused::<3, 2>,
        (5, 1) => fused::<5, 1>,
        (5, 2) => fused::<5, 2>,
        (7, 1) => fused::<7, 1>,
        _ => fused::<7, 2>,
    });
    match fused {
        Some(kernel) => kernel(&pair, out),
        None => {
            let mut hidden = vec![0.0; e.out_channels * e.out_h * e.out_w];
            let macs = conv2d(input, expand_weight, Some(expand_bias), e, expand_act, &mut hidden);
            (macs, conv2d(&hidden, dw_weight, Some(dw_bias), d, dw_act, out))
        }
    }
}

/// The operands of one expand + depthwise pair.
struct Pair<'a> {
    input: &'a [f32],
    e: &'a Conv2dDims,
    ew: &'a [f32],
    eb: &'a [f32],
    eact: Option<Activation>,
    d: &'a Conv2dDims,
    dw: &'a [f32],
    db: &'a [f32],
    dact: Option<Activation>,
}

/// Band heights of one fused pair: output rows per band and expanded rows the scratch holds per channel.
#[derive(Clone, Copy)]
struct Bands {
    height: usize,
    capacity: usize,
}

impl Bands {
    /// Floats between two channels' rows in the scratch: the `capacity` rows of `w` values, rounded to
    /// whole cache lines, plus one line when that is a multiple of 2 KB, so that the channels do not all
    /// map to the same cache sets (a 16 KB stride made 16→48 @128² + 3×3 about 10 % slower).
    fn channel_stride(self, w: usize) -> usize {
        let len = (self.capacity * w).next_multiple_of(16);
        if len.is_multiple_of(512) {
            len + 16
        } else {
            len
        }
    }
}

/// The pieces the fused pair `(e, d)` is cut into on `threads` threads: whether by output rows (else by
/// channels), and the output rows and channels of each piece. Rows when the halo each extra piece
/// recomputes, `k − stride` expanded rows, is at most 1/32 of the image.
fn pieces(e: &Conv2dDims, d: &Conv2dDims, threads: usize) -> (bool, usize, usize) {
    let (hidden, threads) = (e.out_channels, threads.max(1));
    let by_rows = (d.kernel_h - d.stride_h) * (threads - 1) * 32 <= e.in_h;
    if by_rows {
        (true, d.out_h.div_ceil(threads.min(d.out_h)), hidden)
    } else {
        (false, d.out_h, hidden.div_ceil(threads.min(hidden)))
    }
}

/// How [`expand_depthwise`] divides a pair it fuses among `threads` threads.
pub fn expand_depthwise_split(expand: &Conv2dDims, depthwise: &Conv2dDims, threads: usize) -> Split {
    match pieces(expand, depthwise, threads) {
        (true, piece_h, _) => Split { units: depthwise.out_h, piece: piece_h },
        (false, _, piece_c) => Split { units: expand.out_channels, piece: piece_c },
    }
}

/// The fused pair with a `K × K` depthwise kernel and stride `S`, parallel over pieces of the output:
/// pieces of rows when the halo each extra piece recomputes is small against the image height (at most
/// 1/32 of it per piece), otherwise groups of channels (no halo; every thread re-reads the input).
fn fused<const K: usize, const S: usize>(p: &Pair, out: &mut [f32]) -> (u64, u64) {
    let (e, d) = (p.e, p.d);
    let hidden = e.out_channels;
    let (by_rows, piece_h, piece_c) = pieces(e, d, rayon::current_num_threads());
    // As many output rows per band as keep a piece's expanded rows within budget (at least one).
    let budget_rows = BAND_FLOATS / (piece_c * e.in_w);
    let height = if budget_rows >= K { (budget_rows - K) / S + 1 } else { 1 }.min(piece_h);
    let bands = Bands { height, capacity: (height - 1) * S + K };
    let isa = vector_isa();
    let mut y =
        ArrayViewMut3::from_shape((hidden, d.out_h, d.out_w), out).expect("output length checked by the caller");
    let pieces: Vec<_> = if by_rows {
        y.axis_chunks_iter_mut(Axis(1), piece_h).enumerate().map(|(i, piece)| (0, i * piece_h, piece)).collect()
    } else {
        y.axis_chunks_iter_mut(Axis(0), piece_c).enumerate().map(|(i, piece)| (i * piece_c, 0, piece)).collect()
    };
    pieces.into_par_iter().for_each(|(c0, oy0, piece)| run_piece::<K, S>(p, c0, oy0, piece, bands, isa));
    let macs = |a: usize, b: usize, c: usize, k: usize| (a * b * c * k) as u64;
    (macs(hidden, e.in_h, e.in_w, e.in_channels), macs(hidden, d.out_h, d.out_w, K * K))
}

/// Channels `c0..` and output rows `oy0..` of the output, held in `piece` (`[channels, rows, Wo]`),
/// band after band on this thread.
fn run_piece<const K: usize, const S: usize>(
    p: &Pair,
    c0: usize,
    oy0: usize,
    mut piece: ArrayViewMut3<f32>,
    bands: Bands,
    isa: Isa,
) {
    let (e, d) = (p.e, p.d);
    let (channels, w) = (piece.len_of(Axis(0)), e.in_w);
    let channel_len = bands.channel_stride(w);
    let buf_len = DwPlan::<S>::new::<K>(d, 0, bands.height, isa).buf_len();
    with_scratch(channels * channel_len + buf_len, |scratch| {
        let (expanded, buf) = scratch.split_at_mut(channels * channel_len);
        // Input rows `held.0..held.1` are expanded in rows `0..` of every channel's scratch.
        let mut held = (0, 0);
        for (b, mut band) in piece.axis_chunks_iter_mut(Axis(1), bands.height).enumerate() {
            let band_oy0 = oy0 + b * bands.height;
            let plan = DwPlan::<S>::new::<K>(d, band_oy0, band.len_of(Axis(1)), isa);
            let first = DwPlan::<S>::first_input_row(d, band_oy0);
            let end = ((band_oy0 + band.len_of(Axis(1)) - 1) * S + K).saturating_sub(d.pad_h).min(e.in_h);
            plan.lay_zeros(end - first, buf);
            let keep = if held.0 <= first && first < held.1 { held.1 - first } else { 0 };
            if keep > 0 && first > held.0 {
                for channel in expanded.chunks_exact_mut(channel_len) {
                    channel.copy_within((first - held.0) * w..(held.1 - held.0) * w, 0);
                }
            }
            expand_rows(p, c0, first + keep..end, expanded, keep, channel_len);
            held = (first, end);
            for (c, channel) in (c0..).zip(expanded.chunks_exact(channel_len)) {
                let mut y = band.index_axis_mut(Axis(0), c - c0);
                let y = y.as_slice_mut().expect("one channel's rows of a band are contiguous");
                let x = DwIn { x: &channel[..(end - first) * w], bias: p.eb[c], act: p.eact };
                let out = DwOut { y, bias: p.db[c], act: p.dact };
                dw_channel::<K, S>(x, &p.dw[c * K * K..][..K * K], &plan, buf, out);
            }
        }
    });
}

/// Expands input `rows` for the channels `c0..` that `expanded` holds (`stride` floats apart) into row
/// `slot` onwards, without the expand bias and activation: the depthwise applies those as it pads.
fn expand_rows(p: &Pair, c0: usize, rows: std::ops::Range<usize>, expanded: &mut [f32], slot: usize, stride: usize) {
    let (e, w) = (p.e, p.e.in_w);
    let (channels, n) = (expanded.len() / stride, rows.len() * w);
    if n == 0 {
        return;
    }
    let plane = e.in_h * w;
    let x = ArrayView2::from_shape((e.in_channels, n).strides((plane, 1)), &p.input[rows.start * w..])
        .expect("input rows lie inside every channel's plane");
    let mut y = ArrayViewMut2::from_shape((channels, n).strides((stride, 1)), &mut expanded[slot * w..])
        .expect("expanded rows fit the scratch");
    gemm(&view2(&p.ew[c0 * e.in_channels..], channels, e.in_channels), &x, &mut y);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::test_util::{assert_close, random, with_pools};

    /// The expand `cin → hidden` at `h × w` and the depthwise `k × k`, stride `s`, padding `k / 2` after it.
    fn pair(cin: usize, hidden: usize, h: usize, w: usize, k: usize, s: usize) -> (Conv2dDims, Conv2dDims) {
        let expand = Conv2dDims {
            in_channels: cin,
            in_h: h,
            in_w: w,
            out_channels: hidden,
            kernel_h: 1,
            kernel_w: 1,
            stride_h: 1,
            stride_w: 1,
            pad_h: 0,
            pad_w: 0,
            groups: 1,
            out_h: h,
            out_w: w,
        };
        let p = k / 2;
        let depthwise = Conv2dDims {
            in_channels: hidden,
            out_channels: hidden,
            kernel_h: k,
            kernel_w: k,
            stride_h: s,
            stride_w: s,
            pad_h: p,
            pad_w: p,
            groups: hidden,
            out_h: (h + 2 * p - k) / s + 1,
            out_w: (w + 2 * p - k) / s + 1,
            ..expand
        };
        (expand, depthwise)
    }

    /// Runs the fused pair against two `conv2d` calls for every activation on either side, in every
    /// pool of [`with_pools`]; checks both MAC counts.
    fn check((e, d): (Conv2dDims, Conv2dDims)) {
        assert!(supports_expand_depthwise(&e, &d), "{e:?} {d:?}");
        let x = random(e.in_channels * e.in_h * e.in_w, 21, 2.0);
        let ew = random(e.out_channels * e.in_channels, 22, 1.0);
        let eb = random(e.out_channels, 23, 1.0);
        let dw = random(d.out_channels * d.kernel_h * d.kernel_w, 24, 1.0);
        let db = random(d.out_channels, 25, 1.0);
        let acts: Vec<_> = [None].into_iter().chain(Activation::ALL.map(Some)).collect();
        let want_macs = (
            (e.out_channels * e.in_h * e.in_w * e.in_channels) as u64,
            (d.out_channels * d.out_h * d.out_w * d.kernel_h * d.kernel_w) as u64,
        );
        with_pools(|setup| {
            for (i, &eact) in acts.iter().enumerate() {
                for dact in [acts[i], acts[(i + 1) % acts.len()]] {
                    let mut hidden = vec![f32::NAN; e.out_channels * e.out_h * e.out_w];
                    let mut want = vec![f32::NAN; d.out_channels * d.out_h * d.out_w];
                    conv2d(&x, &ew, Some(&eb), &e, eact, &mut hidden);
                    conv2d(&hidden, &dw, Some(&db), &d, dact, &mut want);
                    let mut got = vec![f32::NAN; want.len()];
                    let macs = expand_depthwise(&x, &e, &ew, &eb, eact, &d, &dw, &db, dact, &mut got);
                    let what = format!("{e:?} {d:?} acts {eact:?} {dact:?} {setup}");
                    assert_close(&got, &want, &what);
                    assert_eq!(macs, want_macs, "{what}");
                }
            }
        });
    }

    #[test]
    fn matches_unfused_on_odd_sizes() {
        for (k, s) in [(3, 1), (3, 2), (5, 1), (5, 2), (7, 1), (7, 2)] {
            for (h, w) in [(7, 11), (1, 1), (13, 37), (2, 3), (8, 4)] {
                for (cin, ratio) in [(3, 1), (4, 2), (5, 3), (2, 4), (3, 5), (4, 6)] {
                    check(pair(cin, cin * ratio, h, w, k, s));
                }
            }
        }
    }

    #[test]
    fn matches_unfused_across_many_bands() {
        // Several bands per piece (the scratch budget is exceeded), held rows moved between bands, and
        // pieces of rows on two and three threads.
        check(pair(16, 64, 256, 256, 3, 2));
        check(pair(4, 24, 301, 160, 5, 2));
        check(pair(4, 24, 150, 161, 5, 1));
        check(pair(3, 18, 200, 200, 7, 1));
        // One band (budget not exceeded), split by rows or by channels.
        check(pair(16, 64, 33, 65, 3, 2));
        check(pair(24, 72, 33, 65, 5, 1));
        // Split by rows on two threads and by (uneven) channels on three.
        check(pair(5, 25, 130, 20, 5, 1));
    }

    #[test]
    fn support_is_limited_to_what_fuses() {
        let (e, d) = pair(4, 8, 8, 8, 3, 2);
        // 8 rows, 3×3 stride 2 with padding 1: the last window reaches row 7.
        assert!(supports_expand_depthwise(&e, &d));
        // Without padding row 7 is never read: not fused (the MAC count would not be exact).
        let unpadded = Conv2dDims { pad_h: 0, pad_w: 0, out_h: 3, out_w: 3, ..d };
        assert!(!supports_expand_depthwise(&e, &unpadded));
        let (e4, d4) = pair(4, 8, 8, 8, 4, 1);
        assert!(!supports_expand_depthwise(&e4, &d4), "even kernel");
        let (e1, d1) = pair(4, 8, 8, 8, 1, 1);
        assert!(!supports_expand_depthwise(&e1, &d1), "1×1 depthwise");
        let strided = Conv2dDims { stride_h: 2, stride_w: 2, out_h: 4, out_w: 4, ..e };
        assert!(!supports_expand_depthwise(&strided, &d), "strided expand");
    }

    #[test]
    fn unsupported_pairs_fall_back_to_unfused() {
        let (e, d) = pair(3, 6, 8, 9, 3, 2);
        let d = Conv2dDims { pad_h: 0, pad_w: 0, out_h: 3, out_w: 4, ..d };
        assert!(!supports_expand_depthwise(&e, &d));
        let x = random(3 * 8 * 9, 1, 1.0);
        let (ew, eb, dw, db) = (random(18, 2, 1.0), random(6, 3, 1.0), random(54, 4, 1.0), random(6, 5, 1.0));
        let mut hidden = vec![0.0; 6 * 8 * 9];
        let mut want = vec![0.0; 6 * 3 * 4];
        let want_macs = (
            conv2d(&x, &ew, Some(&eb), &e, Some(Activation::Relu6), &mut hidden),
            conv2d(&hidden, &dw, Some(&db), &d, None, &mut want),
        );
        let mut got = vec![f32::NAN; want.len()];
        let macs = expand_depthwise(&x, &e, &ew, &eb, Some(Activation::Relu6), &d, &dw, &db, None, &mut got);
        assert_close(&got, &want, "fallback");
        assert_eq!(macs, want_macs);
    }
}
