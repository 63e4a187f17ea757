//! Matrix products: the direct register-blocked kernels of [`direct`](super::direct) for row-major
//! weights times rows of pixels, `ndarray::linalg::general_mat_mul` (matrixmultiply's sgemm) for the
//! rest and on the portable path; a block-parallel GEMM shared with the convolutions, and the batched
//! matmul of attention.

use ndarray::linalg::general_mat_mul;
use ndarray::{ArrayView2, ArrayViewMut2, Axis};
use rayon::prelude::*;

use super::{direct, vector_isa, Split};

/// Below this many multiply-accumulates a GEMM is not worth splitting across threads.
const PAR_MIN_MACS: usize = 1 << 15;

/// A `rows × cols` row-major view of the first `rows · cols` elements of `data`.
pub(super) fn view2(data: &[f32], rows: usize, cols: usize) -> ArrayView2<'_, f32> {
    ArrayView2::from_shape((rows, cols), &data[..rows * cols]).expect("an exact-length slice fits its shape")
}

/// A mutable `rows × cols` row-major view of the first `rows · cols` elements of `data`.
pub(super) fn view2_mut(data: &mut [f32], rows: usize, cols: usize) -> ArrayViewMut2<'_, f32> {
    ArrayViewMut2::from_shape((rows, cols), &mut data[..rows * cols]).expect("an exact-length slice fits its shape")
}

/// Single-threaded `c ← a · b`: the direct register-blocked kernels where the instruction set and the
/// layouts allow, matrixmultiply otherwise; returns the multiply-accumulates performed.
pub(super) fn gemm(a: &ArrayView2<f32>, b: &ArrayView2<f32>, c: &mut ArrayViewMut2<f32>) -> u64 {
    if !direct::try_gemm(a, b, c, vector_isa()) {
        general_mat_mul(1.0, a, b, 0.0, c);
    }
    (a.nrows() * a.ncols() * b.ncols()) as u64
}

/// Output elements per column block of [`par_gemm`]: small enough that the epilogue finds the block
/// in L2, wide enough that repacking `a` for every block costs nothing.
const BLOCK_FLOATS: usize = 32 * 1024;

/// How [`par_gemm`] blocks an `m × k · k × n` product on `threads` threads: `None` for one block, else
/// whether the blocks are of columns (else rows) and how many columns (rows) each holds.
fn gemm_blocks(m: usize, k: usize, n: usize, threads: usize) -> Option<(bool, usize)> {
    if m * k * n < PAR_MIN_MACS || (threads == 1 && m * n <= BLOCK_FLOATS) {
        return None;
    }
    // Enough blocks to keep each in L2, and a multiple of the thread count so all threads get equal work.
    let blocks = (m * n).div_ceil(BLOCK_FLOATS).next_multiple_of(threads);
    Some(if n >= m {
        (true, n.div_ceil(blocks).max(64).next_multiple_of(16))
    } else {
        (false, m.div_ceil(blocks).max(16).next_multiple_of(8))
    })
}

/// How [`par_gemm`] divides an `m × k · k × n` product among `threads` threads.
pub(super) fn gemm_split(m: usize, k: usize, n: usize, threads: usize) -> Split {
    match gemm_blocks(m, k, n, threads) {
        None => Split::SERIAL,
        Some((true, width)) => Split { units: n, piece: width },
        Some((false, height)) => Split { units: m, piece: height },
    }
}

/// Whether [`batched_matmul`] runs its products in parallel (else each product is split in blocks).
fn batches_in_parallel(batch: usize, threads: usize) -> bool {
    batch > 1 && threads > 1
}

/// How [`batched_matmul`] divides `batch` products of `m × k · k × n` among `threads` threads.
pub fn batched_matmul_split(batch: usize, m: usize, k: usize, n: usize, threads: usize) -> Split {
    if batches_in_parallel(batch, threads) {
        Split { units: batch, piece: 1 }
    } else {
        gemm_split(m, k, n, threads)
    }
}

/// `c ← a · b` in blocks of output columns (or of rows, when `c` is taller than wide), each a
/// single-threaded GEMM followed by `epilogue(first_row, block)` while the block is still in cache.
/// Blocks run in parallel on the current rayon pool, each a job of its own, so that a thread that finishes
/// early takes the blocks another has not started. Returns the multiply-accumulates performed.
pub(super) fn par_gemm<F>(a: ArrayView2<f32>, b: ArrayView2<f32>, mut c: ArrayViewMut2<f32>, epilogue: &F) -> u64
where
    F: Fn(usize, ArrayViewMut2<f32>) + Sync,
{
    let (m, k) = a.dim();
    let n = b.ncols();
    let Some((columns, size)) = gemm_blocks(m, k, n, rayon::current_num_threads()) else {
        let macs = gemm(&a, &b, &mut c);
        epilogue(0, c);
        return macs;
    };
    if columns {
        // Column blocks: every block reads all of `a` (weights, small) and its own share of `b`.
        let width = size;
        let blocks: Vec<_> = b.axis_chunks_iter(Axis(1), width).zip(c.axis_chunks_iter_mut(Axis(1), width)).collect();
        blocks
            .into_par_iter()
            .with_max_len(1)
            .map(|(b_block, mut c_block)| {
                let macs = gemm(&a, &b_block, &mut c_block);
                epilogue(0, c_block);
                macs
            })
            .sum()
    } else {
        let height = size;
        let blocks: Vec<_> = a.axis_chunks_iter(Axis(0), height).zip(c.axis_chunks_iter_mut(Axis(0), height)).collect();
        blocks
            .into_par_iter()
            .with_max_len(1)
            .enumerate()
            .map(|(i, (a_block, mut c_block))| {
                let macs = gemm(&a_block, &b, &mut c_block);
                epilogue(i * height, c_block);
                macs
            })
            .sum()
    }
}

/// `out[i] = op(a[i]) · op(b[i])` for each of `batch` matrices, where `op` transposes when its flag is set.
///
/// `a` holds `batch` matrices of `m × k` (`k × m` when `trans_a`), `b` holds `batch` matrices of `k × n`
/// (`n × k` when `trans_b`), and `out` receives `batch` matrices of `m × n`, overwritten. Batches run in
/// parallel when there are several; a single product is split into blocks instead. Returns the
/// multiply-accumulates performed, `batch · m · k · n`.
#[allow(clippy::too_many_arguments)] // the documented kernel signature
pub fn batched_matmul(
    a: &[f32],
    b: &[f32],
    batch: usize,
    m: usize,
    k: usize,
    n: usize,
    trans_a: bool,
    trans_b: bool,
    out: &mut [f32],
) -> u64 {
    debug_assert_eq!(a.len(), batch * m * k);
    debug_assert_eq!(b.len(), batch * k * n);
    debug_assert_eq!(out.len(), batch * m * n);
    if m * n == 0 {
        return 0;
    }
    let lhs = |i: usize| {
        let s = &a[i * m * k..];
        if trans_a {
            view2(s, k, m).reversed_axes()
        } else {
            view2(s, m, k)
        }
    };
    let rhs = |i: usize| {
        let s = &b[i * k * n..];
        if trans_b {
            view2(s, n, k).reversed_axes()
        } else {
            view2(s, k, n)
        }
    };
    let out = &mut out[..batch * m * n];
    if batches_in_parallel(batch, rayon::current_num_threads()) {
        out.par_chunks_mut(m * n).enumerate().map(|(i, o)| gemm(&lhs(i), &rhs(i), &mut view2_mut(o, m, n))).sum()
    } else {
        out.chunks_mut(m * n).enumerate().map(|(i, o)| par_gemm(lhs(i), rhs(i), view2_mut(o, m, n), &|_, _| {})).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::test_util::{assert_close, random, with_pools};

    /// Triple-loop reference with explicit index arithmetic for the transposed layouts.
    #[allow(clippy::too_many_arguments)]
    fn naive(a: &[f32], b: &[f32], batch: usize, m: usize, k: usize, n: usize, ta: bool, tb: bool) -> Vec<f32> {
        let mut out = vec![0.0; batch * m * n];
        for bi in 0..batch {
            for i in 0..m {
                for j in 0..n {
                    let mut sum = 0.0f64;
                    for p in 0..k {
                        let av = if ta { a[bi * m * k + p * m + i] } else { a[bi * m * k + i * k + p] };
                        let bv = if tb { b[bi * k * n + j * k + p] } else { b[bi * k * n + p * n + j] };
                        sum += av as f64 * bv as f64;
                    }
                    out[bi * m * n + i * n + j] = sum as f32;
                }
            }
        }
        out
    }

    #[test]
    fn matches_naive_for_all_transpositions_and_splits() {
        // Small (serial), wide (column split), tall (row split), attention-like, degenerate shapes.
        let shapes =
            [(1, 5, 7, 3), (3, 5, 7, 3), (1, 40, 33, 70), (1, 90, 20, 40), (4, 64, 16, 64), (2, 1, 1, 1), (2, 3, 0, 4)];
        with_pools(|setup| {
            for (batch, m, k, n) in shapes {
                for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                    let a = random(batch * m * k, 1, 1.0);
                    let b = random(batch * k * n, 2, 1.0);
                    let mut out = vec![f32::NAN; batch * m * n];
                    let macs = batched_matmul(&a, &b, batch, m, k, n, ta, tb, &mut out);
                    let what = format!("{setup} batch {batch} {m}x{k}x{n} ta {ta} tb {tb}");
                    assert_close(&out, &naive(&a, &b, batch, m, k, n, ta, tb), &what);
                    assert_eq!(macs, (batch * m * k * n) as u64, "{what}");
                }
            }
        });
    }

    #[test]
    fn gemm_splits_in_column_or_row_blocks() {
        // Too small to split; column blocks; row blocks; an odd block count leaves one thread more.
        assert_eq!(gemm_split(8, 8, 64, 2), Split::SERIAL);
        assert_eq!(gemm_split(64, 64, 64 * 64, 2).busiest_share(2), 0.5);
        assert_eq!(gemm_split(4096, 64, 16, 2).busiest_share(2), 0.5);
        assert_eq!(Split { units: 3, piece: 1 }.busiest_share(2), 2.0 / 3.0);
        assert_eq!(batched_matmul_split(4, 256, 16, 256, 2), Split { units: 4, piece: 1 });
    }

    #[test]
    fn par_gemm_epilogue_sees_every_row_once_with_its_offset() {
        with_pools(|_| {
            for (m, k, n) in [(100, 40, 20), (20, 40, 100)] {
                let a = random(m * k, 3, 1.0);
                let b = random(k * n, 4, 1.0);
                let mut out = vec![f32::NAN; m * n];
                let epilogue = |row0: usize, mut block: ArrayViewMut2<f32>| {
                    for (r, mut row) in block.rows_mut().into_iter().enumerate() {
                        row += (row0 + r) as f32 * 1000.0;
                    }
                };
                par_gemm(view2(&a, m, k), view2(&b, k, n), view2_mut(&mut out, m, n), &epilogue);
                let mut want = naive(&a, &b, 1, m, k, n, false, false);
                for (i, w) in want.iter_mut().enumerate() {
                    *w += (i / n) as f32 * 1000.0;
                }
                assert_close(&out, &want, &format!("{m}x{k}x{n}"));
            }
        });
    }
}
