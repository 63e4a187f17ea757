//! Adaptive average pooling (PyTorch `adaptive_avg_pool2d`).

use rayon::prelude::*;

use super::{with_scratch, Split};

/// The input range `[floor(i·In/Out), ceil((i+1)·In/Out))` that output bin `i` averages (bins may overlap).
pub fn adaptive_bin(i: usize, in_len: usize, out_len: usize) -> (usize, usize) {
    (i * in_len / out_len, ((i + 1) * in_len).div_ceil(out_len))
}

/// Fewest channels per parallel piece of [`adaptive_avg_pool2d`]: about 4 K input values.
fn min_channels(in_h: usize, in_w: usize) -> usize {
    (4096 / (in_h * in_w).max(1)).max(1)
}

/// How [`adaptive_avg_pool2d`] divides `channels` planes of `in_h × in_w` among `threads` threads.
pub fn adaptive_avg_pool2d_split(channels: usize, in_h: usize, in_w: usize, threads: usize) -> Split {
    Split::rayon(channels, min_channels(in_h, in_w), threads)
}

/// PyTorch `adaptive_avg_pool2d` of `channels` planes of `in_h × in_w` into `out_h × out_w` (overwritten).
///
/// Output bin `(i, j)` is the mean of input rows `[floor(i·In_h/Out_h), ceil((i+1)·In_h/Out_h))` and
/// the same rule on columns; bins may overlap when the sizes do not divide. Parallel over channels.
pub fn adaptive_avg_pool2d(
    input: &[f32],
    channels: usize,
    in_h: usize,
    in_w: usize,
    out_h: usize,
    out_w: usize,
    out: &mut [f32],
) {
    debug_assert_eq!(input.len(), channels * in_h * in_w);
    debug_assert_eq!(out.len(), channels * out_h * out_w);
    if out.is_empty() {
        return;
    }
    let cols: Vec<_> = (0..out_w).map(|j| adaptive_bin(j, in_w, out_w)).collect();
    out.par_chunks_mut(out_h * out_w)
        .zip(input.par_chunks(in_h * in_w))
        .with_min_len(min_channels(in_h, in_w))
        .for_each(|(y, x)| {
            with_scratch(in_w, |col_sums| {
                for (i, y_row) in y.chunks_exact_mut(out_w).enumerate() {
                    let (r0, r1) = adaptive_bin(i, in_h, out_h);
                    col_sums.fill(0.0);
                    for x_row in x.chunks_exact(in_w).take(r1).skip(r0) {
                        for (s, &v) in col_sums.iter_mut().zip(x_row) {
                            *s += v;
                        }
                    }
                    for (v, &(c0, c1)) in y_row.iter_mut().zip(&cols) {
                        let sum: f32 = col_sums[c0..c1].iter().sum();
                        *v = sum / ((r1 - r0) * (c1 - c0)) as f32;
                    }
                }
            });
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::test_util::{assert_close, random, with_pools};

    /// Mean over each bin straight from the definition.
    fn naive(x: &[f32], c: usize, ih: usize, iw: usize, oh: usize, ow: usize) -> Vec<f32> {
        let mut out = Vec::new();
        for ch in 0..c {
            for i in 0..oh {
                for j in 0..ow {
                    let (y0, y1) = ((i * ih) as f64 / oh as f64, ((i + 1) * ih) as f64 / oh as f64);
                    let (x0, x1) = ((j * iw) as f64 / ow as f64, ((j + 1) * iw) as f64 / ow as f64);
                    let (y0, y1, x0, x1) =
                        (y0.floor() as usize, y1.ceil() as usize, x0.floor() as usize, x1.ceil() as usize);
                    let mut sum = 0.0f64;
                    for y in y0..y1 {
                        for xx in x0..x1 {
                            sum += x[(ch * ih + y) * iw + xx] as f64;
                        }
                    }
                    out.push((sum / ((y1 - y0) * (x1 - x0)) as f64) as f32);
                }
            }
        }
        out
    }

    #[test]
    fn matches_naive_on_uneven_bins() {
        let shapes = [
            (18, 26, 2, 2),
            (5, 7, 2, 2),
            (5, 7, 3, 4),
            (7, 11, 7, 11),
            (1, 1, 1, 1),
            (16, 16, 8, 8),
            (9, 9, 4, 5),
            (2, 3, 3, 5),
        ];
        with_pools(|setup| {
            for (ih, iw, oh, ow) in shapes {
                for c in [1, 3, 50] {
                    let x = random(c * ih * iw, 5, 3.0);
                    let mut out = vec![f32::NAN; c * oh * ow];
                    adaptive_avg_pool2d(&x, c, ih, iw, oh, ow, &mut out);
                    let what = format!("{c}x{ih}x{iw} -> {oh}x{ow}, {setup}");
                    assert_close(&out, &naive(&x, c, ih, iw, oh, ow), &what);
                }
            }
        });
    }

    #[test]
    fn overlapping_bins_by_hand() {
        // 5×7 → 2×2: rows [0,3) and [2,5), columns [0,4) and [3,7).
        let x: Vec<f32> = (0..35).map(|v| v as f32).collect();
        let mut out = [0.0; 4];
        adaptive_avg_pool2d(&x, 1, 5, 7, 2, 2, &mut out);
        let mean = |rows: std::ops::Range<usize>, cols: std::ops::Range<usize>| {
            let n = (rows.len() * cols.len()) as f32;
            rows.flat_map(|r| cols.clone().map(move |c| (r * 7 + c) as f32)).sum::<f32>() / n
        };
        assert_eq!(out, [mean(0..3, 0..4), mean(0..3, 3..7), mean(2..5, 0..4), mean(2..5, 3..7)]);
        assert_eq!(out[0], 8.5);
    }
}
