//! Bilinear resizing with PyTorch's `align_corners=False` rule, separably: each needed input row is
//! interpolated horizontally once, then output rows blend two of those rows with contiguous loads. An
//! output far larger than the caches (a segmentor's logits resized to the input size) is written with
//! non-temporal stores.

use rayon::prelude::*;

use super::{elementwise_split, has_avx2_fma, with_scratch, Split};

/// The two source indices of one output coordinate and their weights.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Tap {
    i0: usize,
    i1: usize,
    w0: f32,
    w1: f32,
}

impl Tap {
    /// `w0·a + w1·b`: two products and a sum, no FMA, on every path, so that all give the same values.
    #[inline(always)]
    fn blend(&self, a: f32, b: f32) -> f32 {
        self.w0 * a + self.w1 * b
    }
}

/// Taps of every output coordinate, exactly as PyTorch's `upsample_bilinear2d` computes them in `f32`:
/// `src = max((dst + 0.5)·in/out − 0.5, 0)`, `i0 = min(floor(src), in − 1)`, `i1 = min(i0 + 1, in − 1)`,
/// `lambda = clamp(src − i0, 0, 1)`.
fn taps(in_len: usize, out_len: usize) -> Vec<Tap> {
    let scale = in_len as f32 / out_len as f32;
    (0..out_len)
        .map(|o| {
            let src = (scale * (o as f32 + 0.5) - 0.5).max(0.0);
            let i0 = (src.floor() as usize).min(in_len - 1);
            let i1 = (i0 + 1).min(in_len - 1);
            let lambda = (src - i0 as f32).clamp(0.0, 1.0);
            Tap { i0, i1, w0: 1.0 - lambda, w1: lambda }
        })
        .collect()
}

/// Fewest channels per parallel piece of [`resize_bilinear`]: about 4 K output values.
fn min_channels(out_h: usize, out_w: usize) -> usize {
    (4096 / (out_h * out_w).max(1)).max(1)
}

/// How [`resize_bilinear`] divides its work among `threads` threads: channels, or at scale 1 the copy
/// (serial) or the add (as [`add_into`](super::add_into)).
pub fn resize_bilinear_split(
    channels: usize,
    (in_h, in_w): (usize, usize),
    (out_h, out_w): (usize, usize),
    accumulate: bool,
    threads: usize,
) -> Split {
    match ((in_h, in_w) == (out_h, out_w), accumulate) {
        (true, true) => elementwise_split(channels * out_h * out_w),
        (true, false) => Split::SERIAL,
        (false, _) => Split::rayon(channels, min_channels(out_h, out_w), threads),
    }
}

/// PyTorch `F.interpolate(mode='bilinear', align_corners=False)` to an explicit size, per channel.
///
/// `input` holds `channels` planes of `in_h × in_w`, `out` as many of `out_h × out_w`; the result is
/// written into `out`, or added to it when `accumulate`. Parallel over channels.
#[allow(clippy::too_many_arguments)] // the documented kernel signature
pub fn resize_bilinear(
    input: &[f32],
    channels: usize,
    in_h: usize,
    in_w: usize,
    out_h: usize,
    out_w: usize,
    out: &mut [f32],
    accumulate: bool,
) {
    debug_assert_eq!(input.len(), channels * in_h * in_w);
    debug_assert_eq!(out.len(), channels * out_h * out_w);
    if out.is_empty() {
        return;
    }
    if (in_h, in_w) == (out_h, out_w) {
        // Scale 1: every source coordinate is the destination itself.
        if accumulate {
            super::add_into(out, input);
        } else {
            out.copy_from_slice(input);
        }
        return;
    }
    let plan = Plan::new(in_h, in_w, out_h, out_w, accumulate, std::mem::size_of_val(out));
    let avx2 = has_avx2_fma();
    out.par_chunks_mut(out_h * out_w)
        .zip(input.par_chunks(in_h * in_w))
        .with_min_len(min_channels(out_h, out_w))
        .for_each(|(y, x)| {
            with_scratch(in_h * out_w, |horizontal| {
                #[cfg(target_arch = "x86_64")]
                if avx2 {
                    // SAFETY: `avx2` is true only when AVX2 and FMA were detected on this CPU.
                    unsafe { resize_plane_avx2(x, y, &plan, horizontal) };
                    return;
                }
                let _ = avx2;
                resize_plane(x, y, &plan, horizontal);
            });
        });
}

/// Outputs of at least this many bytes that are not accumulated are written with non-temporal stores
/// (x86-64 only; `None` elsewhere), which do not read each line into the cache before overwriting it: an
/// output this large leaves the caches before anything reads it (the final resize of a 150-class segmentor
/// to 512×512 writes 157 MB). On a 2-vCPU Xeon with a 260 MB L3, 150 classes resized to 360×480 (104 MB)
/// and to 512×512 (157 MB) took half the time, on one thread or two (17.0 → 8.9 and 25.4 → 12.9 ms on one);
/// streamed 40 MB outputs gained nothing and a 39 MB one, which stays in that L3 between runs, took 40 %
/// longer.
pub const RESIZE_STREAM_MIN_BYTES: Option<usize> = if cfg!(target_arch = "x86_64") { Some(64 << 20) } else { None };

/// Everything about a resize that is shared by its channels.
struct Plan {
    rows: Vec<Tap>,
    cols: Vec<Tap>,
    /// Input rows that some output row reads.
    needed: Vec<bool>,
    in_w: usize,
    out_w: usize,
    accumulate: bool,
    /// Whether output rows are written with non-temporal stores.
    stream: bool,
}

impl Plan {
    fn new(in_h: usize, in_w: usize, out_h: usize, out_w: usize, accumulate: bool, out_bytes: usize) -> Self {
        let rows = taps(in_h, out_h);
        let mut needed = vec![false; in_h];
        for t in &rows {
            needed[t.i0] = true;
            needed[t.i1] = true;
        }
        let stream = !accumulate && RESIZE_STREAM_MIN_BYTES.is_some_and(|min| out_bytes >= min);
        Plan { rows, cols: taps(in_w, out_w), needed, in_w, out_w, accumulate, stream }
    }
}

/// [`resize_plane`] compiled for AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn resize_plane_avx2(x: &[f32], y: &mut [f32], plan: &Plan, horizontal: &mut [f32]) {
    resize_plane(x, y, plan, horizontal);
}

/// Resizes one channel: horizontal interpolation of the needed input rows into `horizontal`
/// (`in_h × out_w`), then a contiguous two-row blend per output row.
#[inline(always)]
fn resize_plane(x: &[f32], y: &mut [f32], plan: &Plan, horizontal: &mut [f32]) {
    let out_w = plan.out_w;
    for ((h_row, x_row), _) in horizontal
        .chunks_exact_mut(out_w)
        .zip(x.chunks_exact(plan.in_w))
        .zip(&plan.needed)
        .filter(|(_, &needed)| needed)
    {
        for (h, t) in h_row.iter_mut().zip(&plan.cols) {
            *h = t.blend(x_row[t.i0], x_row[t.i1]);
        }
    }
    for (y_row, t) in y.chunks_exact_mut(out_w).zip(&plan.rows) {
        let h0 = &horizontal[t.i0 * out_w..][..out_w];
        let h1 = &horizontal[t.i1 * out_w..][..out_w];
        if plan.stream {
            blend_streamed(h0, h1, t, y_row);
        } else if plan.accumulate {
            y_row.iter_mut().zip(h0.iter().zip(h1)).for_each(|(o, (&a, &b))| *o += t.blend(a, b));
        } else {
            blend_row(h0, h1, t, y_row);
        }
    }
    #[cfg(target_arch = "x86_64")]
    if plan.stream {
        // SAFETY: SSE is part of the x86-64 baseline. Orders the non-temporal stores before whatever
        // hands the plane to another thread.
        unsafe { std::arch::x86_64::_mm_sfence() };
    }
}

/// `y = w0·h0 + w1·h1`, element by element ([`Tap::blend`]).
#[inline(always)]
fn blend_row(h0: &[f32], h1: &[f32], t: &Tap, y: &mut [f32]) {
    y.iter_mut().zip(h0.iter().zip(h1)).for_each(|(o, (&a, &b))| *o = t.blend(a, b));
}

/// [`blend_row`] written with non-temporal stores wherever `y` is 16-byte aligned (the same two products
/// and sum four lanes at a time, so the same values bit for bit; ordinary stores on architectures other
/// than x86-64).
fn blend_streamed(h0: &[f32], h1: &[f32], t: &Tap, y: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_add_ps, _mm_loadu_ps, _mm_mul_ps, _mm_set1_ps, _mm_stream_ps};
        let head = y.as_ptr().align_offset(16).min(y.len());
        let body = (y.len() - head) / 4 * 4;
        let (y_head, rest) = y.split_at_mut(head);
        let (y_body, y_tail) = rest.split_at_mut(body);
        blend_row(&h0[..head], &h1[..head], t, y_head);
        let (h0_body, h1_body) = (&h0[head..head + body], &h1[head..head + body]);
        // SAFETY: SSE is part of the x86-64 baseline. Each step loads four values of `h0_body` and
        // `h1_body` and stores four into `y_body`, all three `body` long (a multiple of 4); `y_body` starts
        // 16-byte aligned, as the non-temporal store requires.
        unsafe {
            let (w0, w1) = (_mm_set1_ps(t.w0), _mm_set1_ps(t.w1));
            for i in (0..body).step_by(4) {
                let a = _mm_mul_ps(w0, _mm_loadu_ps(h0_body.as_ptr().add(i)));
                let b = _mm_mul_ps(w1, _mm_loadu_ps(h1_body.as_ptr().add(i)));
                _mm_stream_ps(y_body.as_mut_ptr().add(i), _mm_add_ps(a, b));
            }
        }
        blend_row(&h0[head + body..], &h1[head + body..], t, y_tail);
    }
    #[cfg(not(target_arch = "x86_64"))]
    blend_row(h0, h1, t, y);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::test_util::{assert_close, random, with_pools};

    /// Four-tap formula per output element, coordinates computed in `f64`.
    fn naive(x: &[f32], c: usize, ih: usize, iw: usize, oh: usize, ow: usize) -> Vec<f32> {
        let coord = |o: usize, inl: usize, outl: usize| {
            let src = ((o as f64 + 0.5) * inl as f64 / outl as f64 - 0.5).max(0.0);
            let i0 = (src.floor() as usize).min(inl - 1);
            (i0, (i0 + 1).min(inl - 1), src - i0 as f64)
        };
        let mut out = Vec::new();
        for ch in 0..c {
            let at = |y: usize, xx: usize| x[(ch * ih + y) * iw + xx] as f64;
            for oy in 0..oh {
                let (y0, y1, ly) = coord(oy, ih, oh);
                for ox in 0..ow {
                    let (x0, x1, lx) = coord(ox, iw, ow);
                    let top = (1.0 - lx) * at(y0, x0) + lx * at(y0, x1);
                    let bottom = (1.0 - lx) * at(y1, x0) + lx * at(y1, x1);
                    out.push(((1.0 - ly) * top + ly * bottom) as f32);
                }
            }
        }
        out
    }

    #[test]
    fn matches_naive_up_down_and_identity() {
        let shapes = [(7, 11, 3, 5), (7, 11, 16, 9), (1, 1, 4, 3), (5, 5, 5, 5), (16, 16, 64, 64), (13, 6, 1, 1)];
        with_pools(|setup| {
            for (ih, iw, oh, ow) in shapes {
                for c in [1, 3] {
                    let x = random(c * ih * iw, 7, 3.0);
                    let base = random(c * oh * ow, 8, 1.0);
                    let want = naive(&x, c, ih, iw, oh, ow);
                    let what = format!("{c}x{ih}x{iw} -> {oh}x{ow}, {setup}");
                    let mut out = vec![f32::NAN; c * oh * ow];
                    resize_bilinear(&x, c, ih, iw, oh, ow, &mut out, false);
                    assert_close(&out, &want, &what);
                    let mut acc = base.clone();
                    resize_bilinear(&x, c, ih, iw, oh, ow, &mut acc, true);
                    let want_acc: Vec<f32> = want.iter().zip(&base).map(|(w, b)| w + b).collect();
                    assert_close(&acc, &want_acc, &format!("{what} accumulate"));
                }
            }
        });
    }

    /// Rows written with non-temporal stores (from any alignment, of any length) hold the same values,
    /// bit for bit, as the cached path writes; and an output of the threshold's size is streamed.
    #[test]
    fn streamed_rows_match_cached_rows() {
        let (ih, iw) = (5, 7);
        let x = random(ih * iw, 9, 3.0);
        for (oh, ow) in [(9, 13), (16, 16), (3, 2), (11, 40)] {
            let cached = Plan::new(ih, iw, oh, ow, false, 0);
            let streamed = Plan { stream: true, ..Plan::new(ih, iw, oh, ow, false, 0) };
            assert!(!cached.stream);
            let mut horizontal = vec![0.0; ih * ow];
            let mut want = vec![f32::NAN; oh * ow];
            resize_plane(&x, &mut want, &cached, &mut horizontal);
            // Every alignment of the output's first value.
            let mut buffer = vec![f32::NAN; oh * ow + 3];
            for offset in 0..4 {
                let got = &mut buffer[offset..offset + oh * ow];
                resize_plane(&x, got, &streamed, &mut horizontal);
                assert_eq!(
                    got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    "{oh}x{ow} at offset {offset}"
                );
            }
        }
        if let Some(min) = RESIZE_STREAM_MIN_BYTES {
            assert!(Plan::new(2, 2, 4, 4, false, min).stream);
            assert!(!Plan::new(2, 2, 4, 4, false, min - 4).stream);
            assert!(!Plan::new(2, 2, 4, 4, true, min).stream, "an accumulated output is read first");
        }
    }

    #[test]
    fn pytorch_values_by_hand() {
        // F.interpolate(torch.tensor([[[[1., 2.], [3., 4.]]]]), size=(4, 4), mode='bilinear', align_corners=False)
        let mut out = [0.0; 16];
        resize_bilinear(&[1.0, 2.0, 3.0, 4.0], 1, 2, 2, 4, 4, &mut out, false);
        #[rustfmt::skip]
        let want = [1.0, 1.25, 1.75, 2.0, 1.5, 1.75, 2.25, 2.5, 2.5, 2.75, 3.25, 3.5, 3.0, 3.25, 3.75, 4.0];
        assert_eq!(out, want);
        // torch.arange(16.).view(1, 1, 4, 4) resized to 2×2.
        let x: Vec<f32> = (0..16).map(|v| v as f32).collect();
        let mut out = [0.0; 4];
        resize_bilinear(&x, 1, 4, 4, 2, 2, &mut out, false);
        assert_eq!(out, [2.5, 4.5, 10.5, 12.5]);
        // [0, 1, 2] to width 5: sources 0 (clamped), 0.4, 1.0, 1.6, 2.2 (clamped to the last column).
        let mut out = [0.0; 5];
        resize_bilinear(&[0.0, 1.0, 2.0], 1, 1, 3, 1, 5, &mut out, false);
        assert_close(&out, &[0.0, 0.4, 1.0, 1.6, 2.0], "1x3 -> 1x5");
    }
}
