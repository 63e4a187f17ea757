//! Elementwise arithmetic between equally shaped tensors (residual adds, attention injection).

use rayon::prelude::*;

use super::Split;

/// Elements per parallel piece of an elementwise op; tensors shorter than two pieces run on one thread.
const ELEMENTWISE_PIECE: usize = 32 * 1024;

/// How [`add_into`] and [`mul_into`] divide `len` elements among threads.
pub fn elementwise_split(len: usize) -> Split {
    if len < 2 * ELEMENTWISE_PIECE {
        Split::SERIAL
    } else {
        Split { units: len, piece: ELEMENTWISE_PIECE }
    }
}

/// Applies `f(dst, src)` to every pair of elements, in pieces of [`ELEMENTWISE_PIECE`] on the current rayon
/// pool when there are at least two.
#[inline(always)]
fn zip_apply(dst: &mut [f32], src: &[f32], f: impl Fn(f32, f32) -> f32 + Sync) {
    debug_assert_eq!(dst.len(), src.len());
    let serial = |dst: &mut [f32], src: &[f32]| {
        for (d, &s) in dst.iter_mut().zip(src) {
            *d = f(*d, s);
        }
    };
    match elementwise_split(dst.len()) {
        Split::SERIAL => serial(dst, src),
        Split { piece, .. } => dst.par_chunks_mut(piece).zip(src.par_chunks(piece)).for_each(|(d, s)| serial(d, s)),
    }
}

/// `dst[i] += src[i]` over two buffers of equal length.
pub fn add_into(dst: &mut [f32], src: &[f32]) {
    zip_apply(dst, src, |d, s| d + s);
}

/// `dst[i] *= src[i]` over two buffers of equal length.
pub fn mul_into(dst: &mut [f32], src: &[f32]) {
    zip_apply(dst, src, |d, s| d * s);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_and_mul_are_elementwise() {
        let mut x = vec![1.0, -2.0, 3.5];
        add_into(&mut x, &[0.5, 2.0, -1.0]);
        assert_eq!(x, [1.5, 0.0, 2.5]);
        mul_into(&mut x, &[2.0, 7.0, -2.0]);
        assert_eq!(x, [3.0, 0.0, -5.0]);
    }

    #[test]
    fn long_buffers_split_into_pieces_give_the_same_values() {
        let n = 5 * ELEMENTWISE_PIECE + 17;
        let a: Vec<f32> = (0..n).map(|i| (i % 101) as f32 - 50.0).collect();
        let b: Vec<f32> = (0..n).map(|i| (i % 7) as f32 * 0.5).collect();
        crate::kernels::test_util::with_pools(|setup| {
            let (mut sum, mut product) = (a.clone(), a.clone());
            add_into(&mut sum, &b);
            mul_into(&mut product, &b);
            for i in 0..n {
                assert_eq!(sum[i], a[i] + b[i], "{setup}: element {i}");
                assert_eq!(product[i], a[i] * b[i], "{setup}: element {i}");
            }
        });
    }
}
