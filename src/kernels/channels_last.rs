//! The fused expand + depthwise pair on narrow maps with a 5×5 or 7×7 stride-2 depthwise, computed
//! channels-last.
//!
//! On a map a few dozen pixels wide the per-channel kernels of [`fused`](super::fused) spend more time
//! padding each channel and splitting its short rows into stride phases than multiplying (a 768-channel 5×5
//! stride-2 depthwise on 32² took over three times as long as onnxruntime's channel-blocked kernel). Here
//! the vectors run across channels instead: the input is transposed once to pixels × input channels, and
//! the expanded channels are taken in blocks that keep a block's whole expanded map in L2.
//! For a block, one GEMM `Xᵀ[pixels, Cin] · Wᵀ[Cin, block]` writes the expanded pixels (channels
//! contiguous) below the zero rows of the top padding, and one pass adds their bias and applies their
//! activation; the depthwise then reads each tap of a tile of output pixels as one vector of channels (only
//! the few output columns at the left and right edges check their taps), and every output row goes back to
//! channel planes through a small tile. Blocks recompute nothing. The fused kernel takes this path on one
//! thread only ([`applies`]), so it runs serially.

use std::cell::Cell;

use super::conv::Conv2dDims;
use super::fused::BAND_FLOATS;
use super::matmul::{gemm, view2, view2_mut};
use super::separable::ConvLayer;
use super::simd::{bias_activate, F32x8, Vector};
use super::{vector_isa, Isa, ScratchGuard};

/// Widest depthwise output row computed channels-last; wider maps keep the per-channel kernels, which
/// vectorise along their rows.
const MAX_OUT_W: usize = 32;

thread_local! {
    /// Per-thread buffer for the transposed input, apart from the kernels' scratch, which the blocks take.
    static TRANSPOSED: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

/// Lanes of the vectors the kernels run on under `isa`.
fn lanes(isa: Isa) -> usize {
    if isa == Isa::Avx512 {
        16
    } else {
        8
    }
}

/// Rows of the expanded map the depthwise of `(e, d)` reads, zero padding above and below included
/// (at least every input row).
fn padded_rows(e: &Conv2dDims, d: &Conv2dDims) -> usize {
    ((d.out_h - 1) * d.stride_h + d.kernel_h).max(d.pad_h + e.in_h)
}

/// The output columns `lo..hi` of the depthwise `d` whose taps all lie inside the input row: the others
/// ([`Taps::edge_pixel`]) check every tap.
fn inner_columns(d: &Conv2dDims) -> (usize, usize) {
    let lo = d.pad_w.div_ceil(d.stride_w).min(d.out_w);
    let hi = match (d.in_w + d.pad_w).checked_sub(d.kernel_w) {
        Some(last) => (last / d.stride_w + 1).min(d.out_w),
        None => 0,
    };
    (lo, hi.max(lo))
}

/// Expanded channels per block under `isa`: whole vectors, few enough that a block's expanded map stays
/// within [`BAND_FLOATS`], in blocks as equal as whole vectors allow; `None` for a pair not computed
/// channels-last (not a 5×5 or 7×7 kernel at stride 2, rows too wide, or one vector of channels over the
/// budget).
fn block_channels(e: &Conv2dDims, d: &Conv2dDims, isa: Isa) -> Option<usize> {
    let l = lanes(isa);
    let fit = BAND_FLOATS / (padded_rows(e, d) * e.in_w) / l * l;
    if d.stride_w != 2 || d.kernel_w < 5 || d.out_w > MAX_OUT_W || fit < l {
        return None;
    }
    let blocks = e.out_channels.div_ceil(fit);
    Some(e.out_channels.div_ceil(blocks).next_multiple_of(l))
}

/// Whether [`expand_depthwise`] computes this pair (one that [`fused`](super::fused) supports) channels-last
/// on `threads` threads under the current instruction set: on one thread only. On two, the per-channel
/// kernels split by channels measured 6–13 % faster than these blocks on TopFormer's shapes (and 18–27 %
/// slower on one).
pub(super) fn applies(e: &Conv2dDims, d: &Conv2dDims, threads: usize) -> bool {
    threads == 1 && block_channels(e, d, vector_isa()).is_some()
}

/// Floats of the transposed input the pair `(expand, depthwise)` (one that
/// [`supports_expand_depthwise`](super::supports_expand_depthwise) accepts) needs when it runs channels-last
/// on `threads` threads under the current instruction set, else 0: what
/// [`reserve_scratch`](super::reserve_scratch) reserves.
pub fn channels_last_input_len(expand: &Conv2dDims, depthwise: &Conv2dDims, threads: usize) -> usize {
    match applies(expand, depthwise, threads) {
        true => expand.in_channels * expand.in_h * expand.in_w,
        false => 0,
    }
}

/// Grows this thread's buffer for transposed inputs to `len` floats, faulting its pages in.
pub(super) fn reserve_transposed(len: usize) {
    drop(ScratchGuard::take_from(&TRANSPOSED, len));
}

/// The expand `expand` (1×1, stride 1, unpadded) and the depthwise `k × k`, stride `S` conv `depthwise`
/// after it, for a pair whose shapes [`applies`] accepts, on the calling thread, block after block: `input` is `[Cin, H, W]`, `out` `[hidden, Ho, Wo]`, fully overwritten. The caller counts the MACs: every
/// expanded pixel and every output is computed once.
pub(super) fn expand_depthwise<const K: usize, const S: usize>(
    input: &[f32],
    expand: ConvLayer,
    depthwise: ConvLayer,
    out: &mut [f32],
) {
    let (e, d) = (expand.dims, depthwise.dims);
    let isa = vector_isa();
    let block = block_channels(e, d, isa).expect("the caller checked `applies`");
    let pixels = e.in_h * e.in_w;
    // Pixels × input channels, the layout the expand's GEMM reads its rows of `A` in.
    let mut transposed = ScratchGuard::take_from(&TRANSPOSED, pixels * e.in_channels);
    let xt = transposed.as_mut_slice();
    transpose(&input[..e.in_channels * pixels], e.in_channels, pixels, xt);
    let xt = &*xt;
    let plane = d.out_h * d.out_w;
    for (b, out) in out.chunks_mut(block * plane).enumerate() {
        let blk = Block { xt, expand, depthwise, c0: b * block, channels: out.len() / plane };
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `isa` is what `vector_isa` detected on this CPU (or less).
        unsafe {
            match isa {
                Isa::Avx512 => {
                    block_avx512::<K, S>(&blk, out);
                    continue;
                }
                Isa::Avx2Fma => {
                    block_avx2::<K, S>(&blk, out);
                    continue;
                }
                Isa::Portable => {}
            }
        }
        blk.run::<K, S, F32x8>(out);
    }
}

/// `dst[j · rows + i] = src[i · cols + j]`: the `rows × cols` row-major `src` transposed into the first
/// `rows · cols` values of `dst`, in tiles of 8 × 8 (whole tiles with fixed bounds, which the compiler unrolls).
fn transpose(src: &[f32], rows: usize, cols: usize, dst: &mut [f32]) {
    const T: usize = 8;
    let (src, dst) = (&src[..rows * cols], &mut dst[..rows * cols]);
    for i0 in (0..rows).step_by(T) {
        for j0 in (0..cols).step_by(T) {
            if i0 + T <= rows && j0 + T <= cols {
                let mut tile = [[0.0f32; T]; T];
                for (i, row) in tile.iter_mut().enumerate() {
                    row.copy_from_slice(&src[(i0 + i) * cols + j0..][..T]);
                }
                for j in 0..T {
                    for (i, o) in dst[(j0 + j) * rows + i0..][..T].iter_mut().enumerate() {
                        *o = tile[i][j];
                    }
                }
                continue;
            }
            for i in i0..(i0 + T).min(rows) {
                for j in j0..(j0 + T).min(cols) {
                    dst[j * rows + i] = src[i * cols + j];
                }
            }
        }
    }
}

/// One block of expanded channels `c0..c0 + channels` of a pair, with the transposed input it reads.
struct Block<'a> {
    xt: &'a [f32],
    expand: ConvLayer<'a>,
    depthwise: ConvLayer<'a>,
    c0: usize,
    channels: usize,
}

/// [`Block::run`] compiled for AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
fn block_avx512<const K: usize, const S: usize>(blk: &Block, out: &mut [f32]) {
    blk.run::<K, S, std::arch::x86_64::__m512>(out);
}

/// [`Block::run`] compiled for AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn block_avx2<const K: usize, const S: usize>(blk: &Block, out: &mut [f32]) {
    blk.run::<K, S, std::arch::x86_64::__m256>(out);
}

/// Output pixels of a row computed together: as many independent accumulators.
const TILE_PIXELS: usize = 8;

impl Block<'_> {
    /// Expands the block's channels into its map and runs the depthwise on it into `out`
    /// (`[channels, Ho, Wo]`), with vectors `V`.
    #[inline(always)]
    fn run<const K: usize, const S: usize, V: Vector>(&self, out: &mut [f32]) {
        let (e, d, l) = (self.expand.dims, self.depthwise.dims, V::LANES);
        let width = self.channels.next_multiple_of(l);
        let map_len = padded_rows(e, d) * e.in_w * width;
        let (cin, taps) = (e.in_channels, K * K);
        let mut scratch = ScratchGuard::take(map_len + (cin + taps + 2) * width + d.out_w * width);
        let (map, rest) = scratch.as_mut_slice().split_at_mut(map_len);
        let (expand_w, rest) = rest.split_at_mut(cin * width);
        let (depthwise_w, rest) = rest.split_at_mut(taps * width);
        let (biases, tile) = rest.split_at_mut(2 * width);
        let (expand_b, depthwise_b) = biases.split_at_mut(width);
        // Weights and biases channels-last, zero past the block's channels.
        let chans = self.c0..self.c0 + self.channels;
        for (dst, src, k) in
            [(&mut *expand_w, self.expand.weight, cin), (&mut *depthwise_w, self.depthwise.weight, taps)]
        {
            transpose(&src[chans.start * k..chans.end * k], self.channels, k, dst);
            spread_rows(dst, self.channels, width, k);
        }
        for (dst, src) in [(&mut *expand_b, self.expand.bias), (&mut *depthwise_b, self.depthwise.bias)] {
            dst[..self.channels].copy_from_slice(&src[chans.clone()]);
            dst[self.channels..].fill(0.0);
        }
        self.expand_into::<V>(map, expand_w, expand_b, width);
        let taps = Taps { map, weight: depthwise_w, bias: depthwise_b, in_w: e.in_w, width, act: self.depthwise.act };
        let plane = d.out_h * d.out_w;
        let (lo, hi) = inner_columns(d);
        for oy in 0..d.out_h {
            for ox in (0..lo).chain(hi..d.out_w) {
                taps.edge_pixel::<K, S, V>(d, oy, ox, tile);
            }
            let mut ox = lo;
            for n in [TILE_PIXELS, 4, 2, 1] {
                while ox + n <= hi {
                    match n {
                        TILE_PIXELS => taps.pixels::<K, S, V, TILE_PIXELS>(d, oy, ox, tile),
                        4 => taps.pixels::<K, S, V, 4>(d, oy, ox, tile),
                        2 => taps.pixels::<K, S, V, 2>(d, oy, ox, tile),
                        _ => taps.pixels::<K, S, V, 1>(d, oy, ox, tile),
                    }
                    ox += n;
                }
            }
            // The row back to channel planes.
            for (c, channel) in out.chunks_exact_mut(plane).enumerate() {
                for (ox, y) in channel[oy * d.out_w..][..d.out_w].iter_mut().enumerate() {
                    *y = tile[ox * width + c];
                }
            }
        }
    }

    /// Writes the expanded map: `pad_h` rows of zeros, the input rows as `act(Xᵀ · Wᵀ + bias)` (one GEMM),
    /// and zeros below.
    #[inline(always)]
    fn expand_into<V: Vector>(&self, map: &mut [f32], weight: &[f32], bias: &[f32], width: usize) {
        let (e, d) = (self.expand.dims, self.depthwise.dims);
        let row_len = e.in_w * width;
        let (top, rest) = map.split_at_mut(d.pad_h * row_len);
        top.fill(0.0);
        let (inside, bottom) = rest.split_at_mut(e.in_h * row_len);
        bottom.fill(0.0);
        let pixels = e.in_h * e.in_w;
        let a = view2(self.xt, pixels, e.in_channels);
        gemm(&a, &view2(weight, e.in_channels, width), &mut view2_mut(inside, pixels, width));
        for pixel in inside.chunks_exact_mut(width) {
            for (v, bias) in pixel.chunks_exact_mut(V::LANES).zip(bias.chunks_exact(V::LANES)) {
                // SAFETY: `V` is the instruction set this code was compiled and dispatched for.
                unsafe { bias_activate(V::load(v), V::load(bias), self.expand.act).store(v) };
            }
        }
    }
}

/// Moves the `k` rows of `channels` values that [`transpose`] packed together to rows `width` apart, zero
/// past `channels`.
fn spread_rows(buf: &mut [f32], channels: usize, width: usize, k: usize) {
    for row in (0..k).rev() {
        buf.copy_within(row * channels..(row + 1) * channels, row * width);
        buf[row * width + channels..(row + 1) * width].fill(0.0);
    }
}

/// What the depthwise of a block reads and writes: the expanded map (`in_w` pixels a row, vertical padding
/// stored, `width` channels a pixel), its channels-last weights and bias, and the activation after it.
struct Taps<'a> {
    map: &'a [f32],
    weight: &'a [f32],
    bias: &'a [f32],
    in_w: usize,
    width: usize,
    act: Option<super::Activation>,
}

impl Taps<'_> {
    /// Output pixels `ox..ox + N` of row `oy`, whose taps all lie inside the input row ([`inner_columns`]),
    /// every vector of channels, into `tile[pixel · width..]`.
    #[inline(always)]
    fn pixels<const K: usize, const S: usize, V: Vector, const N: usize>(
        &self,
        d: &Conv2dDims,
        oy: usize,
        ox: usize,
        tile: &mut [f32],
    ) {
        let (l, width) = (V::LANES, self.width);
        // The first column of the tile's taps; the last lies inside the row by `inner_columns`.
        let x0 = ox * S - d.pad_w;
        let last = ((oy * S + K - 1) * self.in_w + x0 + (N - 1) * S + K - 1) * width + width;
        assert!(last <= self.map.len() && K * K * width <= self.weight.len() && (ox + N) * width <= tile.len());
        for v in (0..width).step_by(l) {
            // SAFETY (every `Vector` call): `V` is the instruction set this code was compiled and dispatched
            // for; every pointer lies below the bounds asserted above.
            let mut acc = [unsafe { V::splat(0.0) }; N];
            for ky in 0..K {
                let row = (oy * S + ky) * self.in_w + x0;
                for kx in 0..K {
                    let w = unsafe { V::load_ptr(self.weight.as_ptr().add((ky * K + kx) * width + v)) };
                    for (n, a) in acc.iter_mut().enumerate() {
                        let at = (row + n * S + kx) * width + v;
                        *a = unsafe { V::load_ptr(self.map.as_ptr().add(at)).mul_add(w, *a) };
                    }
                }
            }
            let bias = unsafe { V::load_ptr(self.bias.as_ptr().add(v)) };
            for (n, a) in acc.iter().enumerate() {
                unsafe { bias_activate(*a, bias, self.act).store(&mut tile[(ox + n) * width + v..]) };
            }
        }
    }

    /// Output pixel `ox` of row `oy`, skipping the taps left or right of the input row.
    #[inline(always)]
    fn edge_pixel<const K: usize, const S: usize, V: Vector>(
        &self,
        d: &Conv2dDims,
        oy: usize,
        ox: usize,
        tile: &mut [f32],
    ) {
        let width = self.width;
        for v in (0..width).step_by(V::LANES) {
            // SAFETY: as in `pixels`, with every index checked by the slices.
            let mut acc = unsafe { V::splat(0.0) };
            for ky in 0..K {
                let row = (oy * S + ky) * self.in_w;
                for kx in 0..K {
                    let Some(x) = (ox * S + kx).checked_sub(d.pad_w).filter(|&x| x < self.in_w) else { continue };
                    let w = unsafe { V::load(&self.weight[(ky * K + kx) * width + v..]) };
                    acc = unsafe { V::load(&self.map[(row + x) * width + v..]).mul_add(w, acc) };
                }
            }
            let bias = unsafe { V::load(&self.bias[v..]) };
            unsafe { bias_activate(acc, bias, self.act).store(&mut tile[ox * width + v..]) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::test_util::{assert_close, depthwise_dims, pointwise_dims, random, unfused, with_pools};
    use crate::kernels::Activation;

    #[test]
    fn applies_to_narrow_stride_2_pairs_on_one_thread() {
        let pair = |cin, hidden, h, w, k, s| (pointwise_dims(cin, h, w, hidden), depthwise_dims(hidden, h, w, k, s));
        for isa in [Isa::Portable, Isa::Avx512] {
            let (e, d) = pair(128, 768, 32, 32, 5, 2);
            let block = block_channels(&e, &d, isa).expect("a narrow stride-2 pair");
            // Whole vectors, within the budget.
            assert_eq!(block % lanes(isa), 0);
            assert!(padded_rows(&e, &d) * e.in_w * block <= BAND_FLOATS);
            let (e, d) = pair(128, 768, 32, 32, 5, 1);
            assert_eq!(block_channels(&e, &d, isa), None, "stride 1");
            let (e, d) = pair(16, 64, 130, 130, 5, 2);
            assert_eq!(block_channels(&e, &d, isa), None, "65 output columns");
            let (e, d) = pair(64, 192, 64, 64, 3, 2);
            assert_eq!(block_channels(&e, &d, isa), None, "3×3");
        }
        let (e, d) = pair(128, 768, 32, 32, 5, 2);
        assert!(applies(&e, &d, 1));
        assert!(!applies(&e, &d, 2), "two threads keep the per-channel kernels");
        assert_eq!(channels_last_input_len(&e, &d, 1), 128 * 32 * 32);
        assert_eq!(channels_last_input_len(&e, &d, 2), 0);
    }

    #[test]
    fn inner_columns_read_only_inside_the_row() {
        for (w, k) in [(1, 3), (2, 5), (7, 3), (16, 5), (31, 7), (32, 5)] {
            let d = depthwise_dims(4, 4, w, k, 2);
            let (lo, hi) = inner_columns(&d);
            for ox in 0..d.out_w {
                let inside = ox * 2 >= d.pad_w && ox * 2 + k - d.pad_w <= w;
                assert_eq!((lo..hi).contains(&ox), inside, "width {w}, kernel {k}, column {ox}");
            }
        }
    }

    /// Several blocks (the budget exceeded), channels that fill no whole vector, edge columns on both sides,
    /// odd sizes and every activation, on every instruction set and thread count, against the unfused convs.
    #[test]
    fn matches_unfused() {
        let cases = [(24, 200, 64, 63, 5), (5, 40, 9, 13, 7), (3, 17, 31, 2, 7), (7, 30, 1, 1, 5), (16, 96, 20, 32, 5)];
        with_pools(|setup| {
            for (i, &(cin, hidden, h, w, k)) in cases.iter().enumerate() {
                let (e, d) = (pointwise_dims(cin, h, w, hidden), depthwise_dims(hidden, h, w, k, 2));
                assert!(applies(&e, &d, 1), "{e:?} {d:?}");
                let x = random(cin * h * w, 1, 2.0);
                let (ew, eb) = (random(hidden * cin, 2, 1.0), random(hidden, 3, 1.0));
                let (dw, db) = (random(hidden * k * k, 4, 1.0), random(hidden, 5, 1.0));
                let acts = [None, Some(Activation::Relu6), Some(Activation::Hswish), Some(Activation::Relu)];
                let (eact, dact) = (acts[i % acts.len()], acts[(i + 1) % acts.len()]);
                let expand = ConvLayer { dims: &e, weight: &ew, bias: &eb, act: eact };
                let depthwise = ConvLayer { dims: &d, weight: &dw, bias: &db, act: dact };
                let (want, _) = unfused(&x, &[expand, depthwise], None);
                let mut got = vec![f32::NAN; want.len()];
                match k {
                    5 => expand_depthwise::<5, 2>(&x, expand, depthwise, &mut got),
                    _ => expand_depthwise::<7, 2>(&x, expand, depthwise, &mut got),
                }
                assert_close(&got, &want, &format!("{e:?} {d:?} {setup}"));
            }
        });
    }
}
