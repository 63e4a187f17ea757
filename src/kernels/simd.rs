//! Fixed-width `f32` vectors for register-tiled kernels: a portable 8-lane array and the AVX2 and
//! AVX-512 registers behind one trait, so that a kernel is written once and compiled per instruction
//! set with explicit vector instructions (the optimiser's own vectorisation of array loops depends on
//! the optimisation level).

/// An `f32` vector of [`LANES`](Vector::LANES) lanes.
///
/// # Safety
///
/// The methods of the AVX types execute AVX2/FMA or AVX-512F instructions: call them only from code
/// compiled for that instruction set (a `#[target_feature]` function, dispatched after detection).
pub(super) trait Vector: Copy {
    /// Lanes per vector.
    const LANES: usize;
    /// Every lane `x`.
    unsafe fn splat(x: f32) -> Self;
    /// The first `LANES` values of `src` (panics when it is shorter).
    unsafe fn load(src: &[f32]) -> Self;
    /// The `LANES` values from `src` on, which must all be readable.
    unsafe fn load_ptr(src: *const f32) -> Self;
    /// `self · w + acc` lane by lane (fused on the AVX types).
    unsafe fn mul_add(self, w: Self, acc: Self) -> Self;
    /// Lane-wise `self + o`.
    unsafe fn add(self, o: Self) -> Self;
    /// Lane-wise `self · o`.
    unsafe fn mul(self, o: Self) -> Self;
    /// Lane-wise `self / o`.
    unsafe fn div(self, o: Self) -> Self;
    /// Lane-wise maximum (`o` where `self` is NaN, as `f32::max` against a number).
    unsafe fn max(self, o: Self) -> Self;
    /// Lane-wise minimum.
    unsafe fn min(self, o: Self) -> Self;
    /// Writes the lanes to the first `LANES` values of `dst` (panics when it is shorter).
    unsafe fn store(self, dst: &mut [f32]);
    /// Writes the first `dst.len()` (at most `LANES`) lanes to `dst`.
    unsafe fn store_prefix(self, dst: &mut [f32]) {
        let mut lanes = [0.0f32; 16];
        self.store(&mut lanes[..Self::LANES]);
        dst.copy_from_slice(&lanes[..dst.len()]);
    }
}

/// Eight lanes in a plain array, for CPUs without AVX2 (unfused multiply-add).
#[derive(Clone, Copy)]
pub(super) struct F32x8([f32; 8]);

impl Vector for F32x8 {
    const LANES: usize = 8;
    #[inline(always)]
    unsafe fn splat(x: f32) -> Self {
        F32x8([x; 8])
    }
    #[inline(always)]
    unsafe fn load(src: &[f32]) -> Self {
        F32x8(src[..8].try_into().expect("eight values"))
    }
    #[inline(always)]
    unsafe fn load_ptr(src: *const f32) -> Self {
        F32x8(src.cast::<[f32; 8]>().read_unaligned())
    }
    #[inline(always)]
    unsafe fn mul_add(self, w: Self, acc: Self) -> Self {
        F32x8(std::array::from_fn(|i| self.0[i] * w.0[i] + acc.0[i]))
    }
    #[inline(always)]
    unsafe fn add(self, o: Self) -> Self {
        F32x8(std::array::from_fn(|i| self.0[i] + o.0[i]))
    }
    #[inline(always)]
    unsafe fn mul(self, o: Self) -> Self {
        F32x8(std::array::from_fn(|i| self.0[i] * o.0[i]))
    }
    #[inline(always)]
    unsafe fn div(self, o: Self) -> Self {
        F32x8(std::array::from_fn(|i| self.0[i] / o.0[i]))
    }
    #[inline(always)]
    unsafe fn max(self, o: Self) -> Self {
        F32x8(std::array::from_fn(|i| self.0[i].max(o.0[i])))
    }
    #[inline(always)]
    unsafe fn min(self, o: Self) -> Self {
        F32x8(std::array::from_fn(|i| self.0[i].min(o.0[i])))
    }
    #[inline(always)]
    unsafe fn store(self, dst: &mut [f32]) {
        dst[..8].copy_from_slice(&self.0);
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::Vector;
    use std::arch::x86_64::*;

    /// Implements [`Vector`] for an AVX register type with its set1, loadu, fmadd, arithmetic and storeu
    /// intrinsics.
    macro_rules! avx_vector {
        ($ty:ty, $lanes:literal, $set1:ident, $load:ident, $fmadd:ident, $add:ident, $mul:ident, $div:ident,
         $max:ident, $min:ident, $store:ident) => {
            impl Vector for $ty {
                const LANES: usize = $lanes;
                #[inline(always)]
                unsafe fn splat(x: f32) -> Self {
                    $set1(x)
                }
                #[inline(always)]
                unsafe fn load(src: &[f32]) -> Self {
                    $load(src[..$lanes].as_ptr())
                }
                #[inline(always)]
                unsafe fn load_ptr(src: *const f32) -> Self {
                    $load(src)
                }
                #[inline(always)]
                unsafe fn mul_add(self, w: Self, acc: Self) -> Self {
                    $fmadd(self, w, acc)
                }
                #[inline(always)]
                unsafe fn add(self, o: Self) -> Self {
                    $add(self, o)
                }
                #[inline(always)]
                unsafe fn mul(self, o: Self) -> Self {
                    $mul(self, o)
                }
                #[inline(always)]
                unsafe fn div(self, o: Self) -> Self {
                    $div(self, o)
                }
                #[inline(always)]
                unsafe fn max(self, o: Self) -> Self {
                    // `maxps` returns its second operand when either is NaN: `f32::max`'s answer.
                    $max(self, o)
                }
                #[inline(always)]
                unsafe fn min(self, o: Self) -> Self {
                    $min(self, o)
                }
                #[inline(always)]
                unsafe fn store(self, dst: &mut [f32]) {
                    $store(dst[..$lanes].as_mut_ptr(), self)
                }
            }
        };
    }

    avx_vector!(
        __m256,
        8,
        _mm256_set1_ps,
        _mm256_loadu_ps,
        _mm256_fmadd_ps,
        _mm256_add_ps,
        _mm256_mul_ps,
        _mm256_div_ps,
        _mm256_max_ps,
        _mm256_min_ps,
        _mm256_storeu_ps
    );
    avx_vector!(
        __m512,
        16,
        _mm512_set1_ps,
        _mm512_loadu_ps,
        _mm512_fmadd_ps,
        _mm512_add_ps,
        _mm512_mul_ps,
        _mm512_div_ps,
        _mm512_max_ps,
        _mm512_min_ps,
        _mm512_storeu_ps
    );
}

/// `act(x + bias)` lane by lane, with the arithmetic of [`Activation::apply`](super::Activation::apply).
///
/// # Safety
///
/// As for the [`Vector`] methods.
#[inline(always)]
pub(super) unsafe fn bias_activate<V: Vector>(x: V, bias: V, act: Option<super::Activation>) -> V {
    use super::Activation;
    let x = x.add(bias);
    match act {
        None => x,
        Some(Activation::Relu) => x.max(V::splat(0.0)),
        Some(Activation::Relu6) => relu6(x),
        Some(Activation::Hsigmoid) => relu6(x.add(V::splat(3.0))).div(V::splat(6.0)),
        Some(Activation::Hswish) => x.mul(relu6(x.add(V::splat(3.0)))).div(V::splat(6.0)),
    }
}

/// `min(max(x, 0), 6)` lane by lane.
#[inline(always)]
unsafe fn relu6<V: Vector>(x: V) -> V {
    x.max(V::splat(0.0)).min(V::splat(6.0))
}
