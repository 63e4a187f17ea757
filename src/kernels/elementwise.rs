//! Elementwise arithmetic between equally shaped tensors (residual adds, attention injection).

/// Applies `f(dst, src)` to every pair of elements.
#[inline(always)]
fn zip_apply(dst: &mut [f32], src: &[f32], f: impl Fn(f32, f32) -> f32) {
    debug_assert_eq!(dst.len(), src.len());
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = f(*d, s);
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
}
