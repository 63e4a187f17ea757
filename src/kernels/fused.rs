//! A MobileNetV2 expand (1×1 conv) fused with the depthwise conv that reads it, and optionally with the
//! projection (1×1 conv) and residual add after that, so that the wide expanded map (and the depthwise
//! output) never goes through memory.
//!
//! The output is split into one piece per rayon thread, by rows where the images are tall enough and
//! by channels otherwise (never with a projection, which reads every channel); each piece walks its rows
//! in bands, and a thread done with its piece of rows takes the back half of the rows another has left.
//! For a band, the expanded input rows it reads are computed by one single-threaded GEMM
//! `W[channels, Cin] · X[Cin, rows·W]` into a thread-local scratch sized to stay in L2, then every channel
//! runs the direct depthwise kernel of [`conv2d`](super::conv2d) on those rows with the band's own top and
//! bottom padding, applying the expand bias and activation as it pads them (in L1, in its vector versions,
//! with no separate pass; rows shared between bands get it once per band). Rows shared with the previous
//! band of the same thread are kept (moved to the front of the scratch), so only pieces of rows after the
//! first (and rows a thread takes over from another) recompute a halo of `k − stride` expanded rows. With a
//! projection, the depthwise rows of the band go to the scratch and are projected from there into the
//! output rows, as in [`depthwise_project`].
//!
//! On one thread, pairs without a projection whose 5×5 or 7×7 stride-2 depthwise writes rows of at most 32
//! columns run channels-last instead ([`channels_last`]), where those per-channel rows are too short to
//! vectorise well.

use ndarray::{ArrayView2, ArrayViewMut2, ArrayViewMut3, Axis, ShapeBuilder};
use rayon::prelude::*;

use super::channels_last;
use super::conv::{dw_channel, is_square_depthwise, Conv2dDims, DwIn, DwOut, DwPlan, FUSED_KERNELS};
use super::matmul::{gemm, view2};
use super::separable::{depthwise_project, is_pointwise, project_band, ConvLayer, Projection};
use super::steal::for_each_band;
use super::{vector_isa, Isa, ScratchGuard, Split};

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
    let chained = (d.in_channels, d.in_h, d.in_w) == (e.out_channels, e.out_h, e.out_w);
    let reads_every_row =
        d.out_h > 0 && d.pad_h < d.kernel_h && (d.out_h - 1) * d.stride_h + d.kernel_h >= d.in_h + d.pad_h;
    is_pointwise(e) && chained && is_square_depthwise(d, &FUSED_KERNELS) && reads_every_row
}

/// Whether [`expand_depthwise`] also fuses the projection `project` after the pair `(expand, depthwise)`:
/// the pair fuses, `project` is a 1×1 conv on the depthwise output, and the map is tall enough that a split
/// of the rows between two threads recomputes at most 1/[`HALO_SHARE`] of the expand (the whole block runs
/// in pieces of rows, since the projection reads every channel; see [`expand_depthwise_split`]). On smaller
/// maps the fused block measured no faster than the pair and the projection apart, on one thread or two.
pub fn supports_expand_depthwise_project(expand: &Conv2dDims, depthwise: &Conv2dDims, project: &Conv2dDims) -> bool {
    let chained =
        (project.in_channels, project.in_h, project.in_w) == (depthwise.out_channels, depthwise.out_h, depthwise.out_w);
    supports_expand_depthwise(expand, depthwise)
        && is_pointwise(project)
        && chained
        && row_pieces(expand, depthwise, 2) == 2
}

/// Pieces of rows are cut only while each extra piece recomputes at most this share (1/32) of the expand.
const HALO_SHARE: usize = 32;

/// A 1×1 expand conv (stride 1, no padding, one group, with bias and optional activation) followed by
/// a depthwise k×k conv (with bias and optional activation), and optionally by a 1×1 projection (and its
/// residual add), computed in bands of output rows so the expanded map (and the depthwise output) stays in
/// cache instead of going through memory.
///
/// `input` is `[Cin, H, W]`, `expand.weight` `[hidden, Cin]`, `depthwise.weight` `[hidden, 1, k, k]`; `out`
/// is `[hidden, Ho, Wo]`, or `[Cout, Ho, Wo]` with a projection, and is fully overwritten. Same result as
/// `conv2d(expand)`, `conv2d(depthwise)` (and `conv2d(project)` and the add) up to float rounding.
///
/// Returns the multiply-accumulates of (expand, depthwise, projection) as the unfused convs count them
/// (0 for an absent projection): `hidden·H·W·Cin`, `hidden·Ho·Wo·k²` and `Cout·Ho·Wo·hidden`. The expand
/// count is exact in that every expanded pixel is computed at least once (guaranteed by
/// [`supports_expand_depthwise`]); it does not include the halo rows recomputed where a thread's piece of
/// rows starts, `(k − stride)·W·hidden·Cin` per piece after the first and per range of rows a thread takes
/// over from another (one halo per take: none when the threads keep pace). Pieces of rows are only used
/// when that is at most 1/32 of the expand per piece (e.g. one extra row of 256, 0.4 %, for 3×3 stride 2
/// at 256² on two threads); one thread, or a split by channels, recomputes nothing.
///
/// Pairs that [`supports_expand_depthwise`] rejects (and projections that
/// [`supports_expand_depthwise_project`] rejects) are computed unfused, through temporary buffers.
pub fn expand_depthwise(
    input: &[f32],
    expand: ConvLayer,
    depthwise: ConvLayer,
    project: Option<Projection>,
    out: &mut [f32],
) -> [u64; 3] {
    let (e, d) = (expand.dims, depthwise.dims);
    debug_assert_eq!(input.len(), e.in_channels * e.in_h * e.in_w);
    debug_assert_eq!(expand.weight.len(), e.out_channels * e.in_channels);
    debug_assert_eq!(expand.bias.len(), e.out_channels);
    debug_assert_eq!(depthwise.weight.len(), d.out_channels * d.kernel_h * d.kernel_w);
    debug_assert_eq!(depthwise.bias.len(), d.out_channels);
    debug_assert_eq!(out.len(), project.map_or(d.out_channels, |p| p.layer.dims.out_channels) * d.out_h * d.out_w);
    let pair = Pair { input, expand, depthwise, project };
    let fuses = supports_expand_depthwise(e, d)
        && project.is_none_or(|p| supports_expand_depthwise_project(e, d, p.layer.dims));
    let fused = fuses.then_some(per_kernel_and_stride!(fused, d));
    if let Some(kernel) = fused {
        return kernel(&pair, out);
    }
    let mut hidden = vec![0.0; e.out_channels * e.out_h * e.out_w];
    let expand_macs = expand.conv(input, &mut hidden);
    let Some(project) = project else {
        let dw_macs = depthwise.conv(&hidden, out);
        return [expand_macs, dw_macs, 0];
    };
    let (dw_macs, project_macs) = depthwise_project(&hidden, depthwise, project, out);
    [expand_macs, dw_macs, project_macs]
}

/// The operands of one fused expand + depthwise (+ projection).
struct Pair<'a> {
    input: &'a [f32],
    expand: ConvLayer<'a>,
    depthwise: ConvLayer<'a>,
    project: Option<Projection<'a>>,
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

/// Pieces of rows the fused pair `(e, d)` is cut into on `threads` threads: as many as threads while the
/// halo each extra piece recomputes, `k − stride` expanded rows, stays at most 1/[`HALO_SHARE`] of the image
/// (at least 1).
fn row_pieces(e: &Conv2dDims, d: &Conv2dDims, threads: usize) -> usize {
    let halo = d.kernel_h - d.stride_h;
    threads.clamp(1, 1 + e.in_h / (halo * HALO_SHARE)).min(d.out_h)
}

/// The pieces the fused pair `(e, d)` (with a projection when `projected`) is cut into on `threads` threads:
/// whether by output rows (else by channels), and the output rows and channels of each piece. By rows when
/// every thread gets a piece of rows ([`row_pieces`]), and always with a projection (which reads every
/// channel), then in as many pieces as the halo allows.
fn pieces(e: &Conv2dDims, d: &Conv2dDims, projected: bool, threads: usize) -> (bool, usize, usize) {
    let (hidden, threads) = (e.out_channels, threads.max(1));
    let rows = row_pieces(e, d, threads);
    if rows == threads.min(d.out_h) || projected {
        (true, d.out_h.div_ceil(rows), hidden)
    } else {
        (false, d.out_h, hidden.div_ceil(threads.min(hidden)))
    }
}

/// How [`expand_depthwise`] divides a pair it fuses (with a projection when `projected`) among `threads`
/// threads: in pieces of rows or of channels (one piece on one thread, also channels-last).
pub fn expand_depthwise_split(expand: &Conv2dDims, depthwise: &Conv2dDims, projected: bool, threads: usize) -> Split {
    match pieces(expand, depthwise, projected, threads) {
        (true, piece_h, _) => Split { units: depthwise.out_h, piece: piece_h },
        (false, _, piece_c) => Split { units: expand.out_channels, piece: piece_c },
    }
}

/// The fused pair (or block) with a `K × K` depthwise kernel and stride `S`, parallel over the pieces of
/// the output that [`pieces`] cuts: of rows, each thread taking bands of its piece and then the back half
/// of whatever piece has most left ([`for_each_band`]); or of channels (no halo; every thread re-reads the
/// input).
fn fused<const K: usize, const S: usize>(p: &Pair, out: &mut [f32]) -> [u64; 3] {
    let (e, d) = (p.expand.dims, p.depthwise.dims);
    let hidden = e.out_channels;
    let out_channels = p.project.map_or(hidden, |pr| pr.layer.dims.out_channels);
    let macs = |a: usize, b: usize, c: usize, k: usize| (a * b * c * k) as u64;
    let counts = [
        macs(hidden, e.in_h, e.in_w, e.in_channels),
        macs(hidden, d.out_h, d.out_w, K * K),
        p.project.map_or(0, |_| macs(out_channels, d.out_h, d.out_w, hidden)),
    ];
    if p.project.is_none() && channels_last::applies(e, d, rayon::current_num_threads()) {
        channels_last::expand_depthwise::<K, S>(p.input, p.expand, p.depthwise, out);
        return counts;
    }
    let (by_rows, piece_h, piece_c) = pieces(e, d, p.project.is_some(), rayon::current_num_threads());
    // As many output rows per band as keep a piece's expanded rows (and its depthwise and projected rows)
    // within budget (at least one).
    let per_row = piece_c * e.in_w * S + p.project.map_or(0, |_| (hidden + out_channels) * d.out_w);
    let height = (BAND_FLOATS.saturating_sub(piece_c * e.in_w * (K - S)) / per_row).clamp(1, piece_h);
    let bands = Bands { height, capacity: (height - 1) * S + K };
    let isa = vector_isa();
    if by_rows {
        let band_channels = if p.project.is_some() { hidden } else { piece_c };
        let new_bander = || Bander::<K, S>::new(p, 0, band_channels, bands, isa);
        let dims = (out_channels, d.out_h, d.out_w);
        for_each_band(out, dims, d.out_h.div_ceil(piece_h), height, new_bander, Bander::band);
    } else {
        let mut y = ArrayViewMut3::from_shape((out_channels, d.out_h, d.out_w), out)
            .expect("output length checked by the caller");
        let pieces: Vec<_> = y.axis_chunks_iter_mut(Axis(0), piece_c).enumerate().collect();
        pieces.into_par_iter().for_each(|(i, mut piece)| {
            let mut bander = Bander::<K, S>::new(p, i * piece_c, piece.len_of(Axis(0)), bands, isa);
            for (b, band) in piece.axis_chunks_iter_mut(Axis(1), height).enumerate() {
                bander.band(b * height, band);
            }
        });
    }
    counts
}

/// One thread's bands of a fused pair for the expanded channels `c0..c0 + channels` (every channel with a
/// projection): its scratch of expanded rows, padded band plane and (with a projection) depthwise rows,
/// and the input rows whose expansion the scratch holds, which the next band reuses when it overlaps them.
struct Bander<'p, const K: usize, const S: usize> {
    p: &'p Pair<'p>,
    c0: usize,
    channels: usize,
    channel_len: usize,
    buf_len: usize,
    scratch: ScratchGuard,
    /// Input rows `held.0..held.1` are expanded in rows `0..` of every channel's scratch.
    held: (usize, usize),
    isa: Isa,
}

impl<'p, const K: usize, const S: usize> Bander<'p, K, S> {
    fn new(p: &'p Pair<'p>, c0: usize, channels: usize, bands: Bands, isa: Isa) -> Self {
        let d = p.depthwise.dims;
        let channel_len = bands.channel_stride(p.expand.dims.in_w);
        let buf_len = DwPlan::<S>::new::<K>(d, 0, bands.height, isa).buf_len();
        let projected_len = p.project.map_or(0, |_| channels * bands.height * d.out_w);
        let scratch = ScratchGuard::take(channels * channel_len + buf_len + projected_len);
        Bander { p, c0, channels, channel_len, buf_len, scratch, held: (0, 0), isa }
    }

    /// Output rows `band_oy0..` held in `band` (`[channels, rows, Wo]`; with a projection, every output
    /// channel).
    fn band(&mut self, band_oy0: usize, mut band: ArrayViewMut3<f32>) {
        let (p, c0, channels, channel_len) = (self.p, self.c0, self.channels, self.channel_len);
        let (e, d, w) = (p.expand.dims, p.depthwise.dims, p.expand.dims.in_w);
        let rows = band.len_of(Axis(1));
        let (expanded, rest) = self.scratch.as_mut_slice().split_at_mut(channels * channel_len);
        let (buf, depthwise_rows) = rest.split_at_mut(self.buf_len);
        let plan = DwPlan::<S>::new::<K>(d, band_oy0, rows, self.isa);
        let first = DwPlan::<S>::first_input_row(d, band_oy0);
        let end = ((band_oy0 + rows - 1) * S + K).saturating_sub(d.pad_h).min(e.in_h);
        plan.lay_zeros(end - first, buf);
        let held = self.held;
        let keep = if held.0 <= first && first < held.1 { held.1 - first } else { 0 };
        if keep > 0 && first > held.0 {
            for channel in expanded.chunks_exact_mut(channel_len) {
                channel.copy_within((first - held.0) * w..(held.1 - held.0) * w, 0);
            }
        }
        expand_rows(p, c0, first + keep..end, expanded, keep, channel_len);
        self.held = (first, end);
        let n = rows * d.out_w;
        for (c, channel) in (c0..).zip(expanded.chunks_exact(channel_len)) {
            let mut plane;
            let y = match p.project {
                Some(_) => &mut depthwise_rows[(c - c0) * n..][..n],
                None => {
                    plane = band.index_axis_mut(Axis(0), c - c0);
                    plane.as_slice_mut().expect("one channel's rows of a band are contiguous")
                }
            };
            let x = DwIn { x: &channel[..(end - first) * w], bias: p.expand.bias[c], act: p.expand.act };
            let out = DwOut { y, bias: p.depthwise.bias[c], act: p.depthwise.act };
            dw_channel::<K, S>(x, &p.depthwise.weight[c * K * K..][..K * K], &plan, buf, out);
        }
        if let Some(project) = p.project {
            project_band(&depthwise_rows[..channels * n], project, band_oy0, band);
        }
    }
}

/// Expands input `rows` for the channels `c0..` that `expanded` holds (`stride` floats apart) into row
/// `slot` onwards, without the expand bias and activation: the depthwise applies those as it pads.
fn expand_rows(p: &Pair, c0: usize, rows: std::ops::Range<usize>, expanded: &mut [f32], slot: usize, stride: usize) {
    let (e, w) = (p.expand.dims, p.expand.dims.in_w);
    let (channels, n) = (expanded.len() / stride, rows.len() * w);
    if n == 0 {
        return;
    }
    let plane = e.in_h * w;
    let x = ArrayView2::from_shape((e.in_channels, n).strides((plane, 1)), &p.input[rows.start * w..])
        .expect("input rows lie inside every channel's plane");
    let mut y = ArrayViewMut2::from_shape((channels, n).strides((stride, 1)), &mut expanded[slot * w..])
        .expect("expanded rows fit the scratch");
    gemm(&view2(&p.expand.weight[c0 * e.in_channels..], channels, e.in_channels), &x, &mut y);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::test_util::{assert_close, depthwise_dims, pointwise_dims, random, unfused, with_pools};
    use crate::kernels::Activation;

    /// The expand `cin → hidden` at `h × w` and the depthwise `k × k`, stride `s`, padding `k / 2` after it.
    fn pair(cin: usize, hidden: usize, h: usize, w: usize, k: usize, s: usize) -> (Conv2dDims, Conv2dDims) {
        (pointwise_dims(cin, h, w, hidden), depthwise_dims(hidden, h, w, k, s))
    }

    /// A 1×1 projection to `cout` channels after the depthwise conv `d`.
    fn projection(d: &Conv2dDims, cout: usize) -> Conv2dDims {
        pointwise_dims(d.out_channels, d.out_h, d.out_w, cout)
    }

    /// Runs the fused pair against two `conv2d` calls for every activation on either side, in every
    /// pool of [`with_pools`]; checks the MAC counts. With `project` (`Cout`), the block with a 1×1
    /// projection after it (and, when `Cout` equals the input channels at stride 1, its residual add) against
    /// the unfused convs.
    fn check((e, d): (Conv2dDims, Conv2dDims), project: Option<usize>) {
        assert!(supports_expand_depthwise(&e, &d), "{e:?} {d:?}");
        let x = random(e.in_channels * e.in_h * e.in_w, 21, 2.0);
        let ew = random(e.out_channels * e.in_channels, 22, 1.0);
        let eb = random(e.out_channels, 23, 1.0);
        let dw = random(d.out_channels * d.kernel_h * d.kernel_w, 24, 1.0);
        let db = random(d.out_channels, 25, 1.0);
        let p = project.map(|cout| projection(&d, cout));
        let cout = project.unwrap_or(d.out_channels);
        let (pw, pb) = (random(cout * d.out_channels, 26, 1.0), random(cout, 27, 1.0));
        let residual = (cout * d.out_h * d.out_w == x.len()).then_some(&x[..]);
        let acts: Vec<_> = [None].into_iter().chain(Activation::ALL.map(Some)).collect();
        let macs = |a: usize, b: usize, c: usize, k: usize| (a * b * c * k) as u64;
        let want_macs = [
            macs(e.out_channels, e.in_h, e.in_w, e.in_channels),
            macs(d.out_channels, d.out_h, d.out_w, d.kernel_h * d.kernel_w),
            p.map_or(0, |p| macs(p.out_channels, p.out_h, p.out_w, p.in_channels)),
        ];
        with_pools(|setup| {
            for (i, &eact) in acts.iter().enumerate() {
                for dact in [acts[i], acts[(i + 1) % acts.len()]] {
                    let expand = ConvLayer { dims: &e, weight: &ew, bias: &eb, act: eact };
                    let depthwise = ConvLayer { dims: &d, weight: &dw, bias: &db, act: dact };
                    let projection = p.as_ref().map(|p| Projection {
                        layer: ConvLayer { dims: p, weight: &pw, bias: &pb, act: eact },
                        residual,
                    });
                    let layers: Vec<ConvLayer> =
                        [expand, depthwise].into_iter().chain(projection.map(|p| p.layer)).collect();
                    let (want, _) = unfused(&x, &layers, projection.and_then(|p| p.residual));
                    let mut got = vec![f32::NAN; want.len()];
                    let macs = expand_depthwise(&x, expand, depthwise, projection, &mut got);
                    let what = format!("{e:?} {d:?} {p:?} acts {eact:?} {dact:?} {setup}");
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
                    check(pair(cin, cin * ratio, h, w, k, s), None);
                }
            }
        }
    }

    #[test]
    fn matches_unfused_across_many_bands() {
        // Several bands per piece (the scratch budget is exceeded), held rows moved between bands, and
        // pieces of rows on two and three threads.
        check(pair(16, 64, 256, 256, 3, 2), None);
        check(pair(4, 24, 301, 160, 5, 2), None);
        check(pair(4, 24, 150, 161, 5, 1), None);
        check(pair(3, 18, 200, 200, 7, 1), None);
        // One band (budget not exceeded), split by rows or by channels.
        check(pair(16, 64, 33, 65, 3, 2), None);
        check(pair(24, 72, 33, 65, 5, 1), None);
        // Split by rows on two threads and by (uneven) channels on three.
        check(pair(5, 25, 130, 20, 5, 1), None);
    }

    #[test]
    fn whole_blocks_match_unfused() {
        // With the projection (and the residual where the shapes allow): several bands, pieces of rows on
        // two threads and fewer pieces than the three threads on a short map; a stride-2 block without residual.
        check(pair(16, 64, 256, 256, 3, 2), Some(24));
        check(pair(8, 48, 128, 131, 3, 1), Some(8));
        check(pair(6, 36, 70, 33, 3, 1), Some(6));
        check(pair(5, 30, 130, 20, 5, 1), Some(7));
        check(pair(4, 24, 97, 160, 5, 2), Some(4));
        // 63 rows of 3×3 stride 1: two pieces would recompute 2 rows of 63, more than 1/32.
        let (e, d) = pair(4, 16, 63, 40, 3, 1);
        assert!(!supports_expand_depthwise_project(&e, &d, &projection(&d, 4)));
        let (e, d) = pair(4, 16, 64, 40, 3, 1);
        assert!(supports_expand_depthwise_project(&e, &d, &projection(&d, 4)));
        assert!(!supports_expand_depthwise_project(&e, &d, &Conv2dDims { stride_h: 2, ..projection(&d, 4) }));
    }

    /// A thread's bands may come in any order and start at any row (a range taken over from another thread
    /// starts mid-piece, after rows the scratch does not hold): every order gives the unfused result.
    #[test]
    fn bands_run_in_any_order_from_any_row() {
        let (e, d) = pair(6, 24, 41, 19, 5, 1);
        let p = projection(&d, 6);
        let x = random(e.in_channels * e.in_h * e.in_w, 41, 2.0);
        let (ew, eb) = (random(e.out_channels * e.in_channels, 42, 1.0), random(e.out_channels, 43, 1.0));
        let (dw, db) = (random(d.out_channels * 25, 44, 1.0), random(d.out_channels, 45, 1.0));
        let (pw, pb) = (random(p.out_channels * p.in_channels, 46, 1.0), random(p.out_channels, 47, 1.0));
        let act = Some(Activation::Relu6);
        let expand = ConvLayer { dims: &e, weight: &ew, bias: &eb, act };
        let depthwise = ConvLayer { dims: &d, weight: &dw, bias: &db, act };
        let project =
            Projection { layer: ConvLayer { dims: &p, weight: &pw, bias: &pb, act: None }, residual: Some(&x) };
        let (want, _) = unfused(&x, &[expand, depthwise, project.layer], Some(&x));
        for projected in [false, true] {
            let pair = Pair { input: &x, expand, depthwise, project: projected.then_some(project) };
            let (want, channels) = match projected {
                true => (want.clone(), p.out_channels),
                false => (unfused(&x, &[expand, depthwise], None).0, d.out_channels),
            };
            // Six output rows per band read (6 − 1)·1 + 5 input rows.
            let bands = Bands { height: 6, capacity: 10 };
            // Rows 0..41 in chunks of at most 6, in an order that jumps back and forth.
            let chunks = [(30, 36), (0, 6), (6, 12), (36, 41), (17, 23), (12, 17), (23, 29), (29, 30)];
            let mut got = vec![f32::NAN; want.len()];
            let mut y = ArrayViewMut3::from_shape((channels, d.out_h, d.out_w), &mut got[..]).unwrap();
            let mut bander = Bander::<5, 1>::new(&pair, 0, d.out_channels, bands, vector_isa());
            for (start, end) in chunks {
                bander.band(start, y.slice_mut(ndarray::s![.., start..end, ..]));
            }
            assert_close(&got, &want, &format!("bands out of order, projected {projected}"));
        }
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
        let expand = ConvLayer { dims: &e, weight: &ew, bias: &eb, act: Some(Activation::Relu6) };
        let depthwise = ConvLayer { dims: &d, weight: &dw, bias: &db, act: None };
        let (want, want_macs) = unfused(&x, &[expand, depthwise], None);
        let mut got = vec![f32::NAN; want.len()];
        let macs = expand_depthwise(&x, expand, depthwise, None, &mut got);
        assert_close(&got, &want, "fallback");
        assert_eq!(macs, [want_macs[0], want_macs[1], 0]);
    }
}
