//! Ranges of work that threads share out as they go: each thread starts on its own contiguous range and,
//! once that is done, takes the back half of the largest range still left. A thread that runs slower (a
//! busy sibling hyperthread, a descheduled vCPU, an efficiency core) then leaves its unfinished work to the
//! others instead of holding up the whole kernel, while each thread still works on long contiguous runs
//! (a fused block recomputes its halo only where a thread jumps to a stolen range).

use ndarray::{ArrayViewMut3, ShapeBuilder};
use rayon::prelude::*;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};

/// A range `next..end` of units, claimed from the front by its thread and cut from the back by thieves,
/// packed in one atomic word (`next` in the high half).
struct SharedRange(AtomicU64);

impl SharedRange {
    fn new(range: Range<usize>) -> Self {
        SharedRange(AtomicU64::new(pack(range)))
    }

    /// Claims the first `grain` units (fewer at the end), if any are left.
    fn claim(&self, grain: usize) -> Option<Range<usize>> {
        self.take(|left| {
            let end = (left.start + grain).min(left.end);
            (end..left.end, left.start..end)
        })
    }

    /// Units left.
    fn left(&self) -> usize {
        unpack(self.0.load(Ordering::Acquire)).len()
    }

    /// Cuts the back half of what is left (all of it when that is at most `grain` units), if anything is.
    fn steal(&self, grain: usize) -> Option<Range<usize>> {
        self.take(|left| {
            let cut = if left.len() <= grain { left.start } else { left.end - left.len() / 2 };
            (left.start..cut, cut..left.end)
        })
    }

    /// Splits what is left, if anything, into what stays and what the caller takes, by `split`, atomically.
    fn take(&self, split: impl Fn(Range<usize>) -> (Range<usize>, Range<usize>)) -> Option<Range<usize>> {
        let mut current = self.0.load(Ordering::Acquire);
        loop {
            let left = unpack(current);
            if left.is_empty() {
                return None;
            }
            let (stays, taken) = split(left);
            match self.0.compare_exchange_weak(current, pack(stays), Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Some(taken),
                Err(seen) => current = seen,
            }
        }
    }

    /// Makes `range` this (exhausted) range's new work; only its owner calls this.
    fn refill(&self, range: Range<usize>) {
        self.0.store(pack(range), Ordering::Release);
    }
}

fn pack(range: Range<usize>) -> u64 {
    ((range.start as u64) << 32) | range.end as u64
}

fn unpack(word: u64) -> Range<usize> {
    (word >> 32) as usize..(word & u64::from(u32::MAX)) as usize
}

/// Calls `work(state, chunk)` exactly once for every chunk of a partition of `0..units` into chunks of at
/// most `grain` units, on the current rayon pool: `pieces` equal contiguous ranges start one per rayon job
/// (each with a `state` from `init`, reused for every chunk that job runs, in increasing order within a
/// range), and a job whose range is done steals the back half of the largest range left until none is.
/// Chunks start anywhere (a stolen range starts mid-range), not only at multiples of `grain`.
pub(super) fn for_each_chunk<S>(
    units: usize,
    pieces: usize,
    grain: usize,
    init: impl Fn() -> S + Sync,
    work: impl Fn(&mut S, Range<usize>) + Sync,
) {
    assert!(u32::try_from(units).is_ok(), "{units} units do not fit a shared range");
    let (grain, pieces) = (grain.max(1), pieces.clamp(1, units.max(1)));
    let size = units.div_ceil(pieces);
    let ranges: Vec<SharedRange> =
        (0..pieces).map(|i| SharedRange::new((i * size).min(units)..((i + 1) * size).min(units))).collect();
    let run = |own: usize| {
        let mut state = None;
        loop {
            while let Some(chunk) = ranges[own].claim(grain) {
                work(state.get_or_insert_with(&init), chunk);
            }
            let victim = (0..pieces).max_by_key(|&i| ranges[i].left()).expect("at least one range");
            match ranges[victim].steal(grain) {
                Some(stolen) => ranges[own].refill(stolen),
                None if ranges.iter().all(|r| r.left() == 0) => break,
                None => {}
            }
        }
    };
    if pieces == 1 {
        run(0);
    } else {
        (0..pieces).into_par_iter().with_max_len(1).for_each(run);
    }
}

/// [`for_each_chunk`] over the rows of `out`, an `[channels, rows, width]` array (row-major in `data`):
/// `work(state, first_row, band)` gets each chunk's rows of every channel as a mutable view.
pub(super) fn for_each_band<S>(
    data: &mut [f32],
    (channels, rows, width): (usize, usize, usize),
    pieces: usize,
    grain: usize,
    init: impl Fn() -> S + Sync,
    work: impl Fn(&mut S, usize, ArrayViewMut3<f32>) + Sync,
) {
    assert_eq!(data.len(), channels * rows * width, "a [{channels}, {rows}, {width}] array");
    /// The array's first value, shared with the jobs; each writes only the rows of the chunks it is handed.
    struct Base(*mut f32);
    // SAFETY: the pointer is only used to build views of disjoint rows, one per chunk, on whichever thread
    // runs the chunk, while `data` stays mutably borrowed by this call.
    unsafe impl Sync for Base {}
    impl Base {
        fn at(&self, offset: usize) -> *mut f32 {
            self.0.wrapping_add(offset)
        }
    }
    let base = Base(data.as_mut_ptr());
    for_each_chunk(rows, pieces, grain, init, |state, chunk| {
        let shape = (channels, chunk.len(), width).strides((rows * width, width, 1));
        // SAFETY: `for_each_chunk` hands out every row exactly once, so the views never overlap; each lies
        // inside `data` (rows `chunk` of every channel), which outlives this call.
        let band = unsafe { ArrayViewMut3::from_shape_ptr(shape, base.at(chunk.start * width)) };
        work(state, chunk.start, band)
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::test_util::with_pools;
    use std::sync::Mutex;

    /// Every unit is covered by exactly one chunk of at most `grain` units, and each job's chunks of one
    /// range come in increasing order, for every pool of [`with_pools`] and many shapes of the work.
    #[test]
    fn chunks_partition_the_units() {
        with_pools(|_| {
            for units in [0, 1, 2, 7, 64, 333] {
                for pieces in [1, 2, 3, 8] {
                    for grain in [1, 3, 16, 1000] {
                        let seen = Mutex::new(vec![0u32; units]);
                        for_each_chunk(
                            units,
                            pieces,
                            grain,
                            || (),
                            |_, chunk| {
                                assert!(!chunk.is_empty() && chunk.len() <= grain, "{chunk:?} of grain {grain}");
                                // Uneven work, so that threads run out at different times and steal.
                                std::hint::black_box((0..chunk.start * 50).sum::<usize>());
                                let mut seen = seen.lock().unwrap();
                                chunk.for_each(|u| seen[u] += 1);
                            },
                        );
                        assert!(seen.into_inner().unwrap().iter().all(|&n| n == 1), "{units} {pieces} {grain}");
                    }
                }
            }
        });
    }

    /// Every row of every channel is written once, through the band that holds it.
    #[test]
    fn bands_cover_every_row_of_every_channel() {
        with_pools(|_| {
            let (channels, rows, width) = (3, 37, 5);
            let mut data = vec![0.0f32; channels * rows * width];
            for_each_band(
                &mut data,
                (channels, rows, width),
                2,
                4,
                || (),
                |_, row0, mut band| {
                    for ((c, r, x), v) in band.indexed_iter_mut() {
                        *v += ((c * rows + row0 + r) * width + x) as f32;
                    }
                },
            );
            assert!(data.iter().enumerate().all(|(i, &v)| v == i as f32));
        });
    }

    #[test]
    fn a_stolen_range_is_the_back_half() {
        let range = SharedRange::new(10..20);
        assert_eq!(range.steal(2), Some(15..20));
        assert_eq!(range.claim(3), Some(10..13));
        assert_eq!(range.steal(2), Some(13..15));
        assert_eq!(range.steal(2), None);
        assert_eq!(range.left(), 0);
    }
}
