//! Register-blocked GEMM without packing, for the 1×1 convolutions of the token pyramid: `C = A · B`
//! with `A` row-major (`m × k`, the weights, small) and `B`, `C` with unit column stride (rows of
//! pixels, any row stride). Each micro-tile keeps `MR × NV` vectors of `C` in registers and streams
//! `k` rows of `B`, broadcasting one weight per row and vector of `B`; small `k` and `m` waste nothing
//! on packing. Compiled for AVX-512F (8 rows × 2 × 16 columns) and AVX2+FMA (6 rows × 2 × 8 columns).

use ndarray::{ArrayView2, ArrayViewMut2};

use super::simd::Vector;
use super::{Isa, ScratchGuard};

/// The row strides and sizes of one product, with raw row starts taken from the views.
struct Operands<'a> {
    a: &'a [f32],
    k: usize,
    b: &'a [f32],
    b_stride: usize,
    c: &'a mut [f32],
    c_stride: usize,
    m: usize,
    n: usize,
}

/// `c ← a · b` with the direct kernels when `isa` has them and the layouts fit (`a` in standard layout,
/// `b` and `c` with unit column stride); returns false, leaving `c` untouched, otherwise.
pub(super) fn try_gemm(a: &ArrayView2<f32>, b: &ArrayView2<f32>, c: &mut ArrayViewMut2<f32>, isa: Isa) -> bool {
    let (m, k) = a.dim();
    let n = b.ncols();
    // Strides of axes of length one are never used (ndarray may report anything for them).
    let unit_columns = |stride: isize| stride == 1 || n == 1;
    let row_stride = |stride: isize, rows: usize| match rows {
        1 => Some(0),
        _ => usize::try_from(stride).ok().filter(|&s| s >= n),
    };
    let (Some(b_stride), Some(c_stride)) = (row_stride(b.strides()[0], k), row_stride(c.strides()[0], m)) else {
        return false;
    };
    if isa < Isa::Avx2Fma
        || m == 0
        || n == 0
        || k == 0
        || !a.is_standard_layout()
        || !unit_columns(b.strides()[1])
        || !unit_columns(c.strides()[1])
    {
        return false;
    }
    let a = a.as_slice().expect("standard layout");
    // SAFETY: the views hold `k` (`m`) rows of `n` values `b_stride` (`c_stride`) apart, so these spans
    // lie inside their allocations; `c` is borrowed mutably for the whole call.
    let b = unsafe { std::slice::from_raw_parts(b.as_ptr(), (k - 1) * b_stride + n) };
    let c = unsafe { std::slice::from_raw_parts_mut(c.as_mut_ptr(), (m - 1) * c_stride + n) };
    let mut ops = Operands { a, k, b, b_stride, c, c_stride, m, n };
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `isa` is at least AVX2+FMA here and at most what `vector_isa` detected on this CPU.
    unsafe {
        if isa == Isa::Avx512 {
            gemm_avx512(&mut ops);
        } else {
            gemm_avx2(&mut ops);
        }
    }
    cfg!(target_arch = "x86_64")
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
fn gemm_avx512(ops: &mut Operands) {
    gemm_rows::<std::arch::x86_64::__m512, 8, 16>(ops);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn gemm_avx2(ops: &mut Operands) {
    gemm_rows::<std::arch::x86_64::__m256, 6, 12>(ops);
}

/// Columns of `B` packed at a time when several row blocks share them: a chunk of `k` rows this wide
/// (64 KB at `k = 64`) stays in L2 while every row block of `C` streams it from there.
const PACK_COLS: usize = 256;

/// Row blocks of `C` that must share the tiles of `B` before they are packed: with fewer, copying costs
/// more than it saves (M = 16 and 24 lost 10–40 % with packing, M = 128 and 150 gained 10–25 %).
const PACK_MIN_ROW_BLOCKS: usize = 4;

/// Reserves this thread's buffer for packed chunks of `B` with up to `rows` rows (the widest 1×1 conv's input
/// channels), writing it so that its pages are faulted in now rather than in a first product.
pub(super) fn reserve_packed(rows: usize) {
    drop(ScratchGuard::take_from(&PACKED, rows * PACK_COLS));
}

thread_local! {
    /// Per-thread buffer for packed chunks of `B`, apart from the kernels' scratch so that a GEMM
    /// called on a band held in that scratch does not allocate.
    static PACKED: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Column tile by column tile (two vectors wide, one, or a last partial one), blocks of `MR` rows of
/// `C`, then 4, 2 and 1 for the remainder. When enough row blocks read each tile, the tiles
/// are first copied out of `B` chunk by chunk, each into a contiguous zero-padded panel: the rows of
/// `B` lie a whole image plane apart (often a power of two of bytes), so without the copy the rows of
/// one tile compete for the same cache sets and every row block fetches them again.
///
/// A product of exactly `TALL` rows (16 output channels under AVX-512, as the token pyramid's widest maps
/// have) instead takes tiles of all its rows and one vector, so every tile of `B` is read once.
#[inline(always)]
fn gemm_rows<V: Vector, const MR: usize, const TALL: usize>(ops: &mut Operands) {
    let l = V::LANES;
    let n = ops.n;
    let tile_width = |j: usize| if j + 2 * l <= n { 2 * l } else { (n - j).min(l) };
    let tall = ops.m == TALL;
    if tall || ops.m < PACK_MIN_ROW_BLOCKS * MR {
        let (b, stride) = (ops.b, ops.b_stride);
        let mut j = 0;
        while j < n {
            let panel = Panel { b, stride, col: j, zero_padded: false };
            let width = if tall { l.min(n - j) } else { tile_width(j) };
            if tall {
                tile::<V, TALL, 1>(ops, panel, 0, j, width);
            } else {
                row_blocks::<V, MR>(ops, panel, j, width);
            }
            j += width;
        }
        return;
    }
    let mut guard = ScratchGuard::take_from(&PACKED, ops.k * PACK_COLS.next_multiple_of(2 * l));
    let packed = guard.as_mut_slice();
    let mut j0 = 0;
    while j0 < ops.n {
        let end = (j0 + PACK_COLS).min(ops.n);
        // Tiles of the chunk: (first column, width, panel offset); each panel holds `k` rows of
        // `padded` values, the last vector zero-filled past `width`.
        let mut tiles = [(0, 0, 0); PACK_COLS / 8 + 2];
        let (mut count, mut j, mut offset) = (0, j0, 0);
        while j < end {
            let width = tile_width(j).min(end - j);
            tiles[count] = (j, width, offset);
            offset += ops.k * width.next_multiple_of(l);
            count += 1;
            j += width;
        }
        for p in 0..ops.k {
            let row = &ops.b[p * ops.b_stride..];
            for &(j, width, offset) in &tiles[..count] {
                let padded = width.next_multiple_of(l);
                let dst = &mut packed[offset + p * padded..][..padded];
                dst[..width].copy_from_slice(&row[j..j + width]);
                dst[width..].fill(0.0);
            }
        }
        // Row block by row block over the chunk's tiles: each block writes its rows of `C` in one run of
        // columns (rather than every block's rows for one tile, as many pages as rows), and keeps its rows of
        // `A` in L1 while the panels come from L2 (10-15 % faster on the head's 1×1 convs).
        each_row_block::<MR>(ops.m, |i, rows| {
            for &(j, width, offset) in &tiles[..count] {
                let padded = width.next_multiple_of(l);
                let b = &packed[offset..offset + ops.k * padded];
                tile_rows::<V, MR>(ops, rows, Panel { b, stride: padded, col: 0, zero_padded: true }, i, j, width);
            }
        });
        j0 = end;
    }
}

/// Where a tile reads its `k` rows of `B`: `stride` floats apart from column `col` of `b`.
#[derive(Clone, Copy)]
struct Panel<'a> {
    b: &'a [f32],
    stride: usize,
    col: usize,
    /// A packed panel: every row holds whole vectors, zero past the tile's width.
    zero_padded: bool,
}

/// Every row block of `C` at columns `j..j + width`, reading `B`'s tile from `panel`.
#[inline(always)]
fn row_blocks<V: Vector, const MR: usize>(ops: &mut Operands, panel: Panel, j: usize, width: usize) {
    each_row_block::<MR>(ops.m, |i, rows| tile_rows::<V, MR>(ops, rows, panel, i, j, width));
}

/// Calls `block(i, rows)` for the row blocks of an `m`-row `C`: `MR` rows at a time, then 4, 2 and 1 for
/// the remainder.
#[inline(always)]
fn each_row_block<const MR: usize>(m: usize, mut block: impl FnMut(usize, usize)) {
    let mut i = 0;
    for rows in [MR, 4, 2, 1] {
        while rows <= MR && i + rows <= m {
            block(i, rows);
            i += rows;
        }
    }
}

/// The tile of `rows` rows (`MR`, 4, 2 or 1) at row `i`, column `j`.
#[inline(always)]
fn tile_rows<V: Vector, const MR: usize>(
    ops: &mut Operands,
    rows: usize,
    panel: Panel,
    i: usize,
    j: usize,
    width: usize,
) {
    match rows {
        r if r == MR => tile_at::<V, MR>(ops, panel, i, j, width),
        4 => tile_at::<V, 4>(ops, panel, i, j, width),
        2 => tile_at::<V, 2>(ops, panel, i, j, width),
        _ => tile_at::<V, 1>(ops, panel, i, j, width),
    }
}

/// How far ahead of a tile, in floats, its rows of `B` are prefetched: the rows lie a whole image plane
/// apart, too many streams for the hardware prefetchers to follow.
const PREFETCH_AHEAD: usize = 64;

/// Hints the cache line holding `at` into L1 (never faults, whatever the address).
#[inline(always)]
fn prefetch(at: *const f32) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch only hints the cache; it does not access memory architecturally.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(at.cast());
    }
}

/// The tile of `R` rows at row `i`, column `j`, `width` columns wide (two vectors, or at most one).
#[inline(always)]
fn tile_at<V: Vector, const R: usize>(ops: &mut Operands, panel: Panel, i: usize, j: usize, width: usize) {
    if width == 2 * V::LANES {
        tile::<V, R, 2>(ops, panel, i, j, width);
    } else {
        tile::<V, R, 1>(ops, panel, i, j, width);
    }
}

/// `C[i..i + R, j..j + width] = A[i..i + R, :] · B[:, tile]` with `R × N` vectors in registers;
/// `width` is `N` whole vectors, or fewer columns in a single partial vector (read whole from a
/// zero-padded panel, else copied out first).
#[inline(always)]
fn tile<V: Vector, const R: usize, const N: usize>(ops: &mut Operands, panel: Panel, i: usize, j: usize, width: usize) {
    let l = V::LANES;
    let whole = width == N * l || panel.zero_padded;
    // SAFETY (every `Vector` call below): `V` is an AVX type, and this code only runs inside the
    // `#[target_feature]` function of its instruction set, entered after detection.
    let mut acc = [[unsafe { V::splat(0.0) }; N]; R];
    let k = ops.k;
    let read = if whole { N * l } else { width };
    // Bounds checked once here rather than per row of `B`: the `R` rows of `A` and, for every `p < k`,
    // the `read` values of the panel from `p · stride + col` on.
    let a = &ops.a[i * k..][..R * k];
    assert!((k - 1) * panel.stride + panel.col + read <= panel.b.len(), "B's rows lie inside its slice");
    let mut partial = [0.0f32; 16];
    for p in 0..k {
        // SAFETY: in bounds by the assertion above.
        let row = unsafe { panel.b.as_ptr().add(p * panel.stride + panel.col) };
        if !panel.zero_padded {
            prefetch(row.wrapping_add(PREFETCH_AHEAD));
            prefetch(row.wrapping_add(PREFETCH_AHEAD + 16));
        }
        let mut b = [unsafe { V::splat(0.0) }; N];
        if whole {
            for (v, b_v) in b.iter_mut().enumerate() {
                // SAFETY: `whole` means the `N · LANES` values from `row` are readable, in bounds.
                *b_v = unsafe { V::load_ptr(row.add(v * l)) };
            }
        } else {
            // SAFETY: `width` values from `row` are in bounds (the assertion above).
            partial[..width].copy_from_slice(unsafe { std::slice::from_raw_parts(row, width) });
            b[0] = unsafe { V::load(&partial) };
        }
        for (r, acc_r) in acc.iter_mut().enumerate() {
            // SAFETY: `a` holds `R · k` values and `r < R`, `p < k`.
            let w = unsafe { V::splat(*a.get_unchecked(r * k + p)) };
            for (acc_v, &b_v) in acc_r.iter_mut().zip(&b) {
                *acc_v = unsafe { b_v.mul_add(w, *acc_v) };
            }
        }
    }
    for (r, acc_r) in acc.iter().enumerate() {
        let row = &mut ops.c[(i + r) * ops.c_stride + j..];
        if width == N * l {
            for (v, acc_v) in acc_r.iter().enumerate() {
                unsafe { acc_v.store(&mut row[v * l..]) };
            }
        } else {
            unsafe { acc_r[0].store_prefix(&mut row[..width]) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::test_util::{assert_close, random};
    use crate::kernels::vector_isa;
    use ndarray::{s, Array2};

    #[test]
    fn matches_naive_on_remainders_and_strided_views() {
        for isa in Isa::ALL.into_iter().filter(|isa| isa.available()) {
            // 16 and 12 rows take the tall tiles (AVX-512, AVX2), 16 × 11 with rows 16 apart a partial one;
            // the last two are tall enough to be packed, in several chunks with a partial last tile.
            let shapes = [
                (1, 1, 1),
                (13, 5, 37),
                (9, 16, 64),
                (7, 3, 33),
                (17, 40, 15),
                (6, 96, 48),
                (16, 16, 70),
                (16, 3, 11),
                (12, 5, 40),
                (33, 3, 70),
                (40, 9, 531),
            ];
            for (m, k, n) in shapes {
                let a = Array2::from_shape_vec((m, k), random(m * k, 1, 1.0)).unwrap();
                // Rows of `b` and `c` are wider than the product: only the first `n` columns are used.
                let b_full = Array2::from_shape_vec((k, n + 5), random(k * (n + 5), 2, 1.0)).unwrap();
                let b = b_full.slice(s![.., ..n]);
                let mut c_full = Array2::from_elem((m, n + 3), f32::NAN);
                let done = try_gemm(&a.view(), &b, &mut c_full.slice_mut(s![.., ..n]), isa);
                assert_eq!(done, isa >= Isa::Avx2Fma, "{isa:?}");
                if !done {
                    continue;
                }
                let want: Vec<f32> = a.dot(&b).iter().copied().collect();
                let got: Vec<f32> = c_full.slice(s![.., ..n]).iter().copied().collect();
                assert_close(&got, &want, &format!("{isa:?} {m}x{k}x{n}"));
                assert!(c_full.slice(s![.., n..]).iter().all(|v| v.is_nan()), "{isa:?}: wrote past the view");
            }
        }
        assert!(vector_isa().available());
    }

    #[test]
    fn declines_layouts_it_does_not_handle() {
        let a = Array2::from_shape_vec((4, 3), random(12, 1, 1.0)).unwrap();
        let b = Array2::from_shape_vec((3, 5), random(15, 2, 1.0)).unwrap();
        let mut c = Array2::zeros((4, 5));
        let isa = vector_isa();
        // Row-major storage of the transposes, viewed transposed: column-major operands.
        let a_t = Array2::from_shape_vec((3, 4), random(12, 1, 1.0)).unwrap();
        assert!(!try_gemm(&a_t.t(), &b.view(), &mut c.view_mut(), isa), "column-major a");
        let b_t = Array2::from_shape_vec((5, 3), random(15, 2, 1.0)).unwrap();
        assert!(!try_gemm(&a.view(), &b_t.t(), &mut c.view_mut(), isa), "column-major b");
        assert!(!try_gemm(&a.view(), &b.view(), &mut c.view_mut(), Isa::Portable), "portable");
    }
}
