//! Register-blocked GEMM without packing, for the 1×1 convolutions of the token pyramid: `C = A · B`
//! with `A` row-major (`m × k`, the weights, small) and `B`, `C` with unit column stride (rows of
//! pixels, any row stride). Each micro-tile keeps `MR × NV` vectors of `C` in registers and streams
//! `k` rows of `B`, broadcasting one weight per row and vector of `B`; small `k` and `m` waste nothing
//! on packing. Compiled for AVX-512F (8 rows × 2 × 16 columns) and AVX2+FMA (6 rows × 2 × 8 columns).

use ndarray::{ArrayView2, ArrayViewMut2};

use super::simd::Vector;
use super::Isa;

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
    gemm_rows::<std::arch::x86_64::__m512, 8>(ops);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn gemm_avx2(ops: &mut Operands) {
    gemm_rows::<std::arch::x86_64::__m256, 6>(ops);
}

/// Column tile by column tile (so the tile's rows of `B` stay in L1 while every row block uses them),
/// blocks of `MR` rows of `C`, then 4, 2 and 1 for the remainder.
#[inline(always)]
fn gemm_rows<V: Vector, const MR: usize>(ops: &mut Operands) {
    let l = V::LANES;
    let mut j = 0;
    while j < ops.n {
        // Two whole vectors, one, or a last partial one.
        let width = if j + 2 * l <= ops.n { 2 * l } else { (ops.n - j).min(l) };
        let mut i = 0;
        while i + MR <= ops.m {
            tile_at::<V, MR>(ops, i, j, width);
            i += MR;
        }
        for rows in [4, 2, 1] {
            while rows < MR && i + rows <= ops.m {
                match rows {
                    4 => tile_at::<V, 4>(ops, i, j, width),
                    2 => tile_at::<V, 2>(ops, i, j, width),
                    _ => tile_at::<V, 1>(ops, i, j, width),
                }
                i += rows;
            }
        }
        j += width;
    }
}

/// The tile of `R` rows at row `i`, column `j`, `width` columns wide (two vectors, or at most one).
#[inline(always)]
fn tile_at<V: Vector, const R: usize>(ops: &mut Operands, i: usize, j: usize, width: usize) {
    if width == 2 * V::LANES {
        tile::<V, R, 2>(ops, i, j, width);
    } else {
        tile::<V, R, 1>(ops, i, j, width);
    }
}

/// `C[i..i + R, j..j + width] = A[i..i + R, :] · B[:, j..j + width]` with `R × N` vectors in registers;
/// `width` is `N` whole vectors, or fewer columns in a single partial vector.
#[inline(always)]
fn tile<V: Vector, const R: usize, const N: usize>(ops: &mut Operands, i: usize, j: usize, width: usize) {
    let l = V::LANES;
    let full = width == N * l;
    // SAFETY (every `Vector` call below): `V` is an AVX type, and this code only runs inside the
    // `#[target_feature]` function of its instruction set, entered after detection.
    let mut acc = [[unsafe { V::splat(0.0) }; N]; R];
    let (k, b_stride) = (ops.k, ops.b_stride);
    // Bounds checked once here rather than per row of `B`: the `R` rows of `A` and, for every `p < k`,
    // the `width` values of `B` from `p · b_stride + j` on (whole vectors read only when `full`).
    let a = &ops.a[i * k..][..R * k];
    assert!((k - 1) * b_stride + j + width <= ops.b.len(), "B's rows lie inside its slice");
    let mut partial = [0.0f32; 16];
    for p in 0..k {
        // SAFETY: in bounds by the assertion above.
        let row = unsafe { ops.b.as_ptr().add(p * b_stride + j) };
        let mut b = [unsafe { V::splat(0.0) }; N];
        if full {
            for (v, b_v) in b.iter_mut().enumerate() {
                // SAFETY: `full` means the `N · LANES` values from `row` are the tile's, in bounds.
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
        if full {
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
            for (m, k, n) in [(1, 1, 1), (13, 5, 37), (9, 16, 64), (7, 3, 33), (17, 40, 15), (6, 96, 48)] {
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
