//! Row softmax for attention, with a vectorisable polynomial `exp`.

use rayon::prelude::*;

use super::{has_avx2_fma, madd, Split};

/// Fewest rows per parallel piece of [`softmax_rows`]: about 8 K values.
fn min_rows(row_len: usize) -> usize {
    (8192 / row_len.max(1)).max(1)
}

/// How [`softmax_rows`] divides `rows` rows of `row_len` values among `threads` threads.
pub fn softmax_rows_split(rows: usize, row_len: usize, threads: usize) -> Split {
    Split::rayon(rows, min_rows(row_len), threads)
}

/// Softmax over each contiguous row of `row_len` elements of `data`, in place.
///
/// Numerically stable like PyTorch: the row maximum is subtracted before exponentiating. `exp` is a
/// Cephes-style polynomial (about 2 ulp), computed eight lanes at a time. Parallel over rows.
pub fn softmax_rows(data: &mut [f32], row_len: usize) {
    if row_len == 0 {
        return;
    }
    debug_assert_eq!(data.len() % row_len, 0);
    let fma = has_avx2_fma();
    data.par_chunks_mut(row_len).with_min_len(min_rows(row_len)).for_each(|row| {
        #[cfg(target_arch = "x86_64")]
        if fma {
            // SAFETY: `fma` is true only when AVX2 and FMA were detected on this CPU.
            unsafe { softmax_row_avx2(row) };
            return;
        }
        let _ = fma;
        softmax_row::<false>(row);
    });
}

/// [`softmax_row`] compiled for AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn softmax_row_avx2(row: &mut [f32]) {
    softmax_row::<true>(row);
}

/// Lanes of the vectorised reductions.
const LANES: usize = 8;

/// Softmax of one row.
#[inline(always)]
fn softmax_row<const FMA: bool>(row: &mut [f32]) {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (m, &x) in lanes.iter_mut().zip(chunk) {
            *m = m.max(x);
        }
    }
    let max = chunks.remainder().iter().chain(&lanes).fold(f32::NEG_INFINITY, |m, &x| m.max(x));

    let mut sums = [0.0f32; LANES];
    let mut chunks = row.chunks_exact_mut(LANES);
    for chunk in &mut chunks {
        for (s, x) in sums.iter_mut().zip(chunk) {
            *x = exp::<FMA>(*x - max);
            *s += *x;
        }
    }
    let mut sum: f32 = sums.iter().sum();
    for x in chunks.into_remainder() {
        *x = exp::<FMA>(*x - max);
        sum += *x;
    }
    let inv = 1.0 / sum;
    for x in row {
        *x *= inv;
    }
}

/// Below this, `e^x` is subnormal in `f32`; [`exp`] flushes it to zero.
const EXP_MIN: f32 = -87.3;
/// Above this, [`exp`] clamps (`e^88.3` is near `f32::MAX`).
const EXP_MAX: f32 = 88.3;

/// `e^x`, accurate to a few ulp for `x` in `[EXP_MIN, EXP_MAX]`, zero below, clamped above:
/// `x = n·ln 2 + r` with `|r| ≤ ln 2 / 2`, a degree-7 polynomial for `e^r` (Cephes `expf`
/// coefficients) and `2^n` assembled in the exponent bits.
#[inline(always)]
fn exp<const FMA: bool>(x: f32) -> f32 {
    let underflow = x < EXP_MIN;
    let x = x.clamp(EXP_MIN, EXP_MAX);
    let n = madd::<FMA>(x, std::f32::consts::LOG2_E, 0.5).floor();
    let r = madd::<FMA>(n, -0.693_359_4, x);
    let r = madd::<FMA>(n, 2.121_944_4e-4, r);
    let mut p = 1.987_569_1e-4;
    for c in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5] {
        p = madd::<FMA>(p, r, c);
    }
    let e_r = madd::<FMA>(p, r * r, r) + 1.0;
    // 2^n without a float-to-int conversion (which does not vectorise): `n + 127` lands in the low
    // mantissa bits of `n + 127 + 2^23`, and shifting by 23 moves them into the exponent field.
    let biased = n + (127.0 + 8_388_608.0);
    let e = e_r * f32::from_bits(biased.to_bits() << 23);
    if underflow {
        0.0
    } else {
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::test_util::{random, with_pools};

    /// Max-subtracted softmax in `f64`.
    fn naive(row: &[f32]) -> Vec<f32> {
        let max = row.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64));
        let e: Vec<f64> = row.iter().map(|&x| (x as f64 - max).exp()).collect();
        let sum: f64 = e.iter().sum();
        e.iter().map(|v| (v / sum) as f32).collect()
    }

    #[test]
    fn matches_naive_on_odd_and_attention_rows() {
        with_pools(|setup| {
            for (rows, len) in [(3, 1), (5, 7), (4, 8), (3, 19), (1024, 256)] {
                for scale in [1.0, 30.0] {
                    let mut data = random(rows * len, 9, scale);
                    let want: Vec<f32> = data.chunks(len).flat_map(naive).collect();
                    softmax_rows(&mut data, len);
                    for (i, (&g, &w)) in data.iter().zip(&want).enumerate() {
                        // Relative accuracy of the polynomial exp, plus an absolute floor for tiny values.
                        assert!((g - w).abs() <= 1e-5 * w + 1e-7, "{setup} {rows}x{len} #{i}: {g} vs {w}");
                    }
                    for row in data.chunks(len) {
                        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
                    }
                }
            }
        });
    }

    #[test]
    fn large_values_do_not_overflow() {
        let mut row = [1000.0, 1001.0, -1000.0];
        softmax_rows(&mut row, 3);
        let e = (-1.0f32).exp();
        assert!((row[0] - e / (1.0 + e)).abs() < 1e-6 && (row[1] - 1.0 / (1.0 + e)).abs() < 1e-6, "{row:?}");
        assert_eq!(row[2], 0.0);
    }

    #[test]
    fn exp_flushes_underflow_and_clamps_overflow() {
        assert_eq!(exp::<false>(-100.0), 0.0);
        assert_eq!(exp::<false>(f32::NEG_INFINITY), 0.0);
        assert!(exp::<false>(1000.0).is_finite());
    }

    #[test]
    fn exp_is_accurate_over_its_range() {
        for i in -873..=882 {
            let x = i as f32 * 0.1 + 0.013;
            let (got, want) = (exp::<false>(x), (x as f64).exp());
            assert!(((got as f64 - want) / want).abs() < 5e-7, "exp({x}) = {got}, want {want}");
        }
    }
}
