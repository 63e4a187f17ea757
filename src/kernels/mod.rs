//! Fast CPU kernels over flat NCHW `f32` buffers (batch 1).
//!
//! Every kernel takes row-major buffers whose sizes the caller has already validated (they are only
//! `debug_assert!`ed here) and fully overwrites its output unless it says it accumulates.
//!
//! Threading: the caller installs a rayon pool; each kernel parallelises at exactly one level (output
//! channels, pixel tiles, GEMM blocks, batches or rows) and calls single-threaded GEMMs inside, so a
//! one-thread pool runs everything serially with no nested parallelism.
//!
//! SIMD: GEMMs use matrixmultiply's own run-time dispatch; the other hot loops are compiled for
//! the baseline target and with `#[target_feature(enable = "avx2,fma")]`, the depthwise kernels
//! (alone or fused after an expand) also for AVX-512F with 16-lane tiles; [`vector_isa`] picks the
//! widest the CPU has at run time.

/// `$kernel::<K, S>` for the square kernel size `K` (3, 5 or 7) and stride `S` (1 or 2) of the conv `$dims`,
/// which the caller has checked (`conv::is_square_depthwise` with `conv::FUSED_KERNELS`).
macro_rules! per_kernel_and_stride {
    ($kernel:ident, $dims:expr) => {
        match ($dims.kernel_h, $dims.stride_h) {
            (3, 1) => $kernel::<3, 1>,
            (3, 2) => $kernel::<3, 2>,
            (5, 1) => $kernel::<5, 1>,
            (5, 2) => $kernel::<5, 2>,
            (7, 1) => $kernel::<7, 1>,
            _ => $kernel::<7, 2>,
        }
    };
}

mod activation;
mod channels_last;
mod conv;
mod direct;
mod elementwise;
mod fused;
mod matmul;
mod pool;
mod resize;
mod separable;
mod simd;
mod softmax;
mod steal;

pub use activation::Activation;
pub use channels_last::channels_last_input_len;
pub use conv::{conv2d, conv2d_split, Conv2dDims};
pub use elementwise::{add_into, elementwise_split, mul_into};
pub use fused::{
    expand_depthwise, expand_depthwise_split, supports_expand_depthwise, supports_expand_depthwise_project,
};
pub use matmul::{batched_matmul, batched_matmul_split};
pub use pool::{adaptive_avg_pool2d, adaptive_avg_pool2d_split, adaptive_bin};
pub use resize::{resize_bilinear, resize_bilinear_split, RESIZE_STREAM_MIN_BYTES};
pub use separable::{depthwise_project, depthwise_project_split, supports_depthwise_project, ConvLayer, Projection};
pub use softmax::{softmax_rows, softmax_rows_split};

use std::cell::Cell;

thread_local! {
    /// Per-thread scratch memory reused across kernel calls (padded planes, im2col tiles, resize rows).
    static SCRATCH: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

/// Runs `f` on this thread's scratch buffer of exactly `len` elements, with unspecified contents.
///
/// The buffer is taken out of the thread-local while `f` runs, so a nested call (e.g. after rayon work
/// stealing) gets a fresh buffer instead of aliasing this one.
fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    f(ScratchGuard::take(len).as_mut_slice())
}

/// How a kernel divides its work among the threads of the rayon pool, for models that predict its time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Split {
    /// Units of work (rows, channels, pixels, blocks) the kernel divides.
    pub units: usize,
    /// Units per piece (the last one may hold fewer); at least `units` when the kernel runs serially.
    pub piece: usize,
}

impl Split {
    /// The whole work on the calling thread.
    pub const SERIAL: Split = Split { units: 1, piece: 1 };

    /// `units` divided the way rayon divides a parallel iterator with a minimum piece of `min_len` units
    /// on `threads` threads: as many pieces as threads, or fewer when that would undercut `min_len`.
    pub fn rayon(units: usize, min_len: usize, threads: usize) -> Split {
        let pieces = (units / min_len.max(1)).clamp(1, threads.max(1));
        Split { units: units.max(1), piece: units.div_ceil(pieces).max(1) }
    }

    /// The share of the work its busiest thread does on `threads` threads when the pieces are dealt out
    /// evenly: 1 for serial work.
    pub fn busiest_share(self, threads: usize) -> f64 {
        let pieces = self.units.div_ceil(self.piece);
        if pieces <= 1 || threads <= 1 {
            return 1.0;
        }
        (pieces.div_ceil(threads) * self.piece).min(self.units) as f64 / self.units as f64
    }
}

/// Runs `f` on the current thread, a worker of a rayon pool, with the pool's other workers kept awake until
/// it returns: each spins on its rayon queues (`rayon::yield_now`), taking the pieces that `f`'s kernels split
/// off as soon as they appear, instead of going to sleep whenever it waits more than a few microseconds
/// between two kernels. Waking a sleeping worker costs tens of microseconds on a VM, which a network of a
/// hundred parallel steps would otherwise pay at almost every step (onnxruntime's thread pool spins during
/// a run for the same reason). Only when the pool has no more threads than the machine has cores.
///
/// The spinning is a broadcast job. A worker may take it inside a piece of `f` (waiting in a join), where
/// spinning would keep that piece from finishing, so a worker stops once it has found nothing to do for
/// [`SPIN_IDLE`]: a misplaced spin delays a run by that much at most and never blocks it. Workers stop as
/// soon as `f` returns or unwinds.
pub fn with_workers_awake<R>(f: impl FnOnce() -> R) -> R {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    /// Clears the flag the workers spin on when dropped, so they stop even if `f` unwinds.
    struct Stop(Arc<AtomicBool>);
    impl Drop for Stop {
        fn drop(&mut self) {
            self.0.store(false, Ordering::Release);
        }
    }
    thread_local! {
        static SPINNING: Cell<bool> = const { Cell::new(false) };
    }
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let cores = *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let threads = rayon::current_num_threads();
    let Some(caller) = rayon::current_thread_index().filter(|_| threads > 1 && threads <= cores) else {
        return f();
    };
    let running = Stop(Arc::new(AtomicBool::new(true)));
    let flag = Arc::clone(&running.0);
    rayon::spawn_broadcast(move |worker| {
        if worker.index() == caller || SPINNING.replace(true) {
            return;
        }
        let mut idle_since = std::time::Instant::now();
        while flag.load(Ordering::Acquire) {
            if rayon::yield_now() == Some(rayon::Yield::Executed) {
                idle_since = std::time::Instant::now();
            } else if idle_since.elapsed() >= SPIN_IDLE {
                break;
            } else {
                std::hint::spin_loop();
            }
        }
        SPINNING.set(false);
    });
    f()
}

/// How long a worker kept awake by [`with_workers_awake`] spins without finding work before it goes back to
/// rayon's own idling (and sleep): far longer than the gaps between the kernels of a run, short enough that a
/// spin taken inside a piece of the run delays the run little.
pub const SPIN_IDLE: std::time::Duration = std::time::Duration::from_millis(1);

/// Grows this thread's scratch buffers to what the kernels usually take (a band of the fused expand +
/// depthwise kernel with its padded plane, the packed chunks of GEMMs with up to `gemm_depth` rows of `B`, the
/// widest 1×1 conv's input channels) and the transposed input of a fused pair computed channels-last
/// (`transposed` floats, [`channels_last_input_len`]), writing them so that their pages are faulted in: call it
/// on every worker thread before a first run (a kernel that needs more still grows them).
pub fn reserve_scratch(gemm_depth: usize, transposed: usize) {
    with_scratch(fused::BAND_FLOATS + fused::BAND_FLOATS / 4, |_| ());
    direct::reserve_packed(gemm_depth);
    channels_last::reserve_transposed(transposed);
}

/// A per-thread buffer of the kernels.
type ScratchKey = std::thread::LocalKey<Cell<Vec<f32>>>;

/// A per-thread buffer (by default the kernels' [`SCRATCH`]), taken out of its thread-local for as long as
/// the guard lives (for work items that share one buffer, such as rayon's `map_init` state); dropping it
/// puts the buffer back.
struct ScratchGuard {
    key: &'static ScratchKey,
    buf: Vec<f32>,
    len: usize,
}

impl ScratchGuard {
    /// This thread's scratch buffer, at least `len` values long (contents unspecified).
    fn take(len: usize) -> Self {
        Self::take_from(&SCRATCH, len)
    }

    /// This thread's buffer of `key`, at least `len` values long (contents unspecified); a buffer that has to
    /// grow is written, so its pages are faulted in now.
    fn take_from(key: &'static ScratchKey, len: usize) -> Self {
        let mut buf = key.take();
        if buf.len() < len {
            buf.resize(len, 0.0);
        }
        ScratchGuard { key, buf, len }
    }

    /// Its first `len` values.
    fn as_mut_slice(&mut self) -> &mut [f32] {
        &mut self.buf[..self.len]
    }
}

impl Drop for ScratchGuard {
    fn drop(&mut self) {
        self.key.set(std::mem::take(&mut self.buf));
    }
}

/// The vector instruction sets the hand-written kernels are compiled for, narrowest first; the
/// widest one the CPU has is chosen at run time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    /// Baseline code for the build target (SSE2 on x86-64), no FMA.
    Portable,
    /// 256-bit AVX2 with fused multiply-add.
    Avx2Fma,
    /// 512-bit AVX-512F (with AVX2 and FMA): 16-lane tiles in the depthwise and direct GEMM kernels.
    Avx512,
}

impl Isa {
    /// Every level, narrowest first.
    pub const ALL: [Isa; 3] = [Isa::Portable, Isa::Avx2Fma, Isa::Avx512];

    /// Short name, as benchmarks print it.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2Fma => "avx2+fma",
            Isa::Avx512 => "avx512f",
        }
    }

    /// Whether this CPU can run code compiled for the level.
    pub fn available(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
            match self {
                Isa::Portable => true,
                Isa::Avx2Fma => avx2,
                Isa::Avx512 => avx2 && is_x86_feature_detected!("avx512f"),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            self == Isa::Portable
        }
    }
}

/// Cap on the level the kernels dispatch to, as an index into [`Isa::ALL`] (`u8::MAX`: no cap).
static MAX_ISA: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(u8::MAX);

/// Limits the kernels to `max` and narrower instruction sets (`None`: the widest the CPU has), for
/// the whole process from the next kernel call on; every level computes the same results up to float
/// rounding. Tests use it to cover each path, benchmarks to compare them.
pub fn limit_isa(max: Option<Isa>) {
    let level = max.map_or(u8::MAX, |isa| Isa::ALL.iter().position(|&l| l == isa).unwrap_or(0) as u8);
    MAX_ISA.store(level, std::sync::atomic::Ordering::Relaxed);
}

/// The widest vector instruction set this CPU has within the [`limit_isa`] cap: the one the kernels
/// dispatch to.
pub fn vector_isa() -> Isa {
    let detected = *Isa::ALL.iter().rev().find(|isa| isa.available()).unwrap_or(&Isa::Portable);
    let cap = MAX_ISA.load(std::sync::atomic::Ordering::Relaxed) as usize;
    detected.min(Isa::ALL[cap.min(Isa::ALL.len() - 1)])
}

/// Whether the AVX2 + FMA versions of the inner loops may run on this CPU.
fn has_avx2_fma() -> bool {
    vector_isa() >= Isa::Avx2Fma
}

/// `a · b + c`, fused when `FMA` (only instantiate `FMA = true` inside AVX2/FMA-enabled functions,
/// where it compiles to one instruction instead of a libm call).
#[inline(always)]
fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// Output pass shared by the convolutions: `x ← act(x + bias)` over `values` (a slice, an array or
/// a contiguous ndarray row; iterated with `for_each` so ndarray's contiguous fast path applies).
#[inline(always)]
fn bias_act<'a>(values: impl IntoIterator<Item = &'a mut f32>, bias: f32, act: Option<Activation>) {
    // One loop per activation, so each loop body is branch-free and vectorises.
    #[inline(always)]
    fn map<'a>(values: impl IntoIterator<Item = &'a mut f32>, f: impl Fn(f32) -> f32) {
        values.into_iter().for_each(|x| *x = f(*x));
    }
    match act {
        None if bias == 0.0 => {}
        None => map(values, |x| x + bias),
        Some(Activation::Relu) => map(values, |x| Activation::Relu.apply(x + bias)),
        Some(Activation::Relu6) => map(values, |x| Activation::Relu6.apply(x + bias)),
        Some(Activation::Hsigmoid) => map(values, |x| Activation::Hsigmoid.apply(x + bias)),
        Some(Activation::Hswish) => map(values, |x| Activation::Hswish.apply(x + bias)),
    }
}

/// `dst[i] = act(src[i] + bias)` over two slices of equal length (one loop per activation, as in
/// [`bias_act`]).
#[inline(always)]
fn bias_act_from(dst: &mut [f32], src: &[f32], bias: f32, act: Option<Activation>) {
    #[inline(always)]
    fn map(dst: &mut [f32], src: &[f32], f: impl Fn(f32) -> f32) {
        dst.iter_mut().zip(src).for_each(|(d, &s)| *d = f(s));
    }
    match act {
        None => map(dst, src, |x| x + bias),
        Some(Activation::Relu) => map(dst, src, |x| Activation::Relu.apply(x + bias)),
        Some(Activation::Relu6) => map(dst, src, |x| Activation::Relu6.apply(x + bias)),
        Some(Activation::Hsigmoid) => map(dst, src, |x| Activation::Hsigmoid.apply(x + bias)),
        Some(Activation::Hswish) => map(dst, src, |x| Activation::Hswish.apply(x + bias)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_kept_awake_run_every_piece_and_stop_spinning() {
        use rayon::prelude::*;
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        use std::time::{Duration, Instant};
        const STEPS: u64 = 50;
        // A run of `STEPS` steps, each split at two levels, from outside the pool.
        fn run(pool: &rayon::ThreadPool, run: u64) -> u64 {
            pool.install(|| {
                with_workers_awake(|| {
                    (0..STEPS)
                        .map(|step| {
                            (0..64u64).into_par_iter().map(|i| i * step + run).sum::<u64>()
                                + rayon::join(|| step, || run).0
                        })
                        .sum()
                })
            })
        }
        let want =
            |run: u64| -> u64 { (0..STEPS).map(|step| (0..64).map(|i| i * step + run).sum::<u64>() + step).sum() };
        for threads in 1..=4 {
            let exited = Arc::new(AtomicUsize::new(0));
            let counter = Arc::clone(&exited);
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .exit_handler(move |_| {
                    counter.fetch_add(1, Ordering::SeqCst);
                })
                .build()
                .expect("build rayon pool");
            let pool = Arc::new(pool);
            // Three runs at once, and a run that panics; a watchdog fails the test instead of letting it hang.
            let (done, finished) = std::sync::mpsc::channel();
            let shared = Arc::clone(&pool);
            std::thread::spawn(move || {
                let sums: Vec<u64> = std::thread::scope(|s| {
                    let runs: Vec<_> = (0..3)
                        .map(|r| {
                            s.spawn({
                                let pool = &shared;
                                move || run(pool, r)
                            })
                        })
                        .collect();
                    runs.into_iter().map(|r| r.join().expect("a run completes")).collect()
                });
                let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    shared.install(|| with_workers_awake(|| panic!("a run that fails")))
                }));
                done.send((sums, panicked.is_err())).expect("the test waits");
            });
            let (sums, panicked) = finished.recv_timeout(Duration::from_secs(60)).expect("runs finish");
            assert_eq!(sums, (0..3).map(want).collect::<Vec<u64>>(), "{threads} threads");
            assert!(panicked);
            // No worker is left spinning: dropping the pool lets every thread exit.
            drop(pool);
            let start = Instant::now();
            while exited.load(Ordering::SeqCst) < threads {
                assert!(start.elapsed() < Duration::from_secs(10), "{threads} threads: a worker never exited");
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }

    #[test]
    fn split_shares_follow_the_pieces() {
        // 10 pieces of 100 on 2 threads: 5 each; 3 pieces of 40, 40, 20 on 2 threads: the busiest does 80.
        assert_eq!(Split { units: 1000, piece: 100 }.busiest_share(2), 0.5);
        assert_eq!(Split { units: 100, piece: 40 }.busiest_share(2), 0.8);
        assert_eq!(Split::SERIAL.busiest_share(4), 1.0);
        assert_eq!(Split { units: 1000, piece: 100 }.busiest_share(1), 1.0);
        // rayon never cuts below the minimum piece, nor into more pieces than threads.
        assert_eq!(Split::rayon(10, 8, 2), Split { units: 10, piece: 10 });
        assert_eq!(Split::rayon(64, 4, 2), Split { units: 64, piece: 32 });
        assert_eq!(Split::rayon(7, 1, 2).busiest_share(2), 4.0 / 7.0);
    }
}

#[cfg(test)]
mod test_util {
    //! Deterministic data and comparison helpers shared by the kernel tests.

    /// `n` pseudo-random values uniform in `[-scale, scale)` from a fixed-seed LCG.
    pub fn random(n: usize, seed: u64, scale: f32) -> Vec<f32> {
        let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let unit = (state >> 40) as f32 / (1u64 << 24) as f32;
                (2.0 * unit - 1.0) * scale
            })
            .collect()
    }

    /// A 1×1 stride-1 conv `cin → cout` on an `h × w` map.
    pub fn pointwise_dims(cin: usize, h: usize, w: usize, cout: usize) -> super::Conv2dDims {
        super::Conv2dDims {
            in_channels: cin,
            in_h: h,
            in_w: w,
            out_channels: cout,
            kernel_h: 1,
            kernel_w: 1,
            stride_h: 1,
            stride_w: 1,
            pad_h: 0,
            pad_w: 0,
            groups: 1,
            out_h: h,
            out_w: w,
        }
    }

    /// A depthwise `k × k` conv of stride `s` and padding `k / 2` on `c` channels of `h × w`.
    pub fn depthwise_dims(c: usize, h: usize, w: usize, k: usize, s: usize) -> super::Conv2dDims {
        let p = k / 2;
        super::Conv2dDims {
            in_channels: c,
            in_h: h,
            in_w: w,
            out_channels: c,
            kernel_h: k,
            kernel_w: k,
            stride_h: s,
            stride_w: s,
            pad_h: p,
            pad_w: p,
            groups: c,
            out_h: (h + 2 * p - k) / s + 1,
            out_w: (w + 2 * p - k) / s + 1,
        }
    }

    /// What the fused kernels compute, unfused: `x` through the convs of `layers` one after the other, then
    /// `residual` added; returns the output and each conv's multiply-accumulates.
    pub fn unfused(x: &[f32], layers: &[super::ConvLayer], residual: Option<&[f32]>) -> (Vec<f32>, Vec<u64>) {
        let (mut data, mut macs) = (x.to_vec(), Vec::new());
        for layer in layers {
            let d = layer.dims;
            let mut out = vec![f32::NAN; d.out_channels * d.out_h * d.out_w];
            macs.push(layer.conv(&data, &mut out));
            data = out;
        }
        if let Some(r) = residual {
            super::add_into(&mut data, r);
        }
        (data, macs)
    }

    /// Asserts `got ≈ want` elementwise within 1e-4 relative to magnitude (absolute below 1).
    pub fn assert_close(got: &[f32], want: &[f32], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            let tol = 1e-4 * w.abs().max(1.0);
            assert!((g - w).abs() <= tol, "{what}: element {i}: got {g}, want {w}");
        }
    }

    /// Runs `f` inside rayon pools of 1, 2 and 3 threads (serial path, even and uneven splits), each
    /// with every vector instruction set this CPU has (AVX-512, AVX2 and the portable code); `f` gets
    /// a label of the setup for its messages.
    ///
    /// Calls are serialised so that the instruction-set cap is stable while `f` runs; kernels called
    /// elsewhere meanwhile may take any available path, which is correct either way.
    pub fn with_pools(mut f: impl FnMut(&str) + Send) {
        use super::{limit_isa, vector_isa, Isa};
        static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _serial = SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        for isa in Isa::ALL.into_iter().filter(|isa| isa.available()) {
            limit_isa(Some(isa));
            assert_eq!(vector_isa(), isa, "the cap selects the level");
            for threads in [1, 2, 3] {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("build rayon pool");
                let label = format!("{threads} threads, {}", isa.name());
                pool.install(|| f(&label));
            }
        }
        limit_isa(None);
    }
}
