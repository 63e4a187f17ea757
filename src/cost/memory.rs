//! Memory, analytically: parameter bytes by precision, activation bytes per layer, the peak of live
//! activation bytes under the executor's own schedule, and the arena a greedy-by-size offset planner needs
//! for the same buffer lifetimes.

use crate::exec::{BufferLife, Plan};
use crate::graph::Graph;
use crate::ops::{numel, ParamKind};
use serde::Serialize;

/// Learnable parameter bytes at the precisions a deployment stores them in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ParamBytes {
    /// 4 bytes a parameter.
    pub f32: u64,
    /// 2 bytes a parameter.
    pub f16: u64,
    /// 1 byte a parameter.
    pub int8: u64,
}

/// Memory figures of one graph run by the executor's schedule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Memory {
    /// Learnable parameters by precision.
    pub params_bytes: ParamBytes,
    /// Float buffers (BatchNorm running statistics) at f32.
    pub buffers_bytes: u64,
    /// Every layer's output at f32, summed (the input excluded): what a runtime keeping everything would hold.
    pub activation_bytes: u64,
    /// The most f32 activation bytes live at once under the executor's schedule (input and kept output
    /// included; kernel scratch excluded).
    pub peak_activation_bytes: u64,
    /// The arena a greedy-by-size offset planner lays the same buffers out in.
    pub arena_bytes: u64,
    /// The layer whose step first reaches the peak.
    pub peak_at: String,
}

impl Memory {
    /// The memory of running the whole `graph` (keeping its final output) as the executor plans it.
    pub fn new(graph: &Graph) -> Self {
        let learnable = graph.learnable_params();
        let buffers = graph.params().filter(|p| p.kind == ParamKind::Buffer).map(|p| numel(&p.shape)).sum::<u64>();
        let activation_bytes = graph.nodes().skip(1).map(|(_, n)| 4 * numel(&n.shape)).sum();
        let plan = Plan::new(graph);
        let output = graph.output();
        let schedule = plan.schedule(graph, output, &[output]);
        let (lives, _) = schedule.buffers(&plan, graph);
        let (peak, position) = live_peak(&lives);
        let peak_node = schedule.steps.get(position).map_or(graph.input(), |s| plan.steps[s.step].output());
        let (arena_bytes, _) = greedy_by_size(&lives);
        Memory {
            params_bytes: ParamBytes { f32: 4 * learnable, f16: 2 * learnable, int8: learnable },
            buffers_bytes: 4 * buffers,
            activation_bytes,
            peak_activation_bytes: peak,
            arena_bytes,
            peak_at: graph.node(peak_node).name.clone(),
        }
    }
}

/// The most bytes live at once and the first position where that happens.
pub fn live_peak(lives: &[BufferLife]) -> (u64, usize) {
    let end = lives.iter().map(|l| l.last + 1).max().unwrap_or(0);
    let mut change = vec![0i128; end + 1];
    for l in lives {
        change[l.first] += i128::from(l.bytes);
        change[l.last + 1] -= i128::from(l.bytes);
    }
    let mut live = 0i128;
    let mut best = (0u64, 0usize);
    for (position, delta) in change.iter().take(end).enumerate() {
        live += delta;
        if live > i128::from(best.0) {
            best = (live as u64, position);
        }
    }
    best
}

/// Lays buffers out in one arena as TFLite's GreedyMemoryPlanner does (Pisarchyk & Lee 2020): largest first,
/// each at the lowest offset where it overlaps no already placed buffer whose lifetime meets its own.
/// Returns the arena size and each buffer's offset.
pub fn greedy_by_size(lives: &[BufferLife]) -> (u64, Vec<u64>) {
    let mut order: Vec<usize> = (0..lives.len()).collect();
    order.sort_by_key(|&i| (std::cmp::Reverse(lives[i].bytes), lives[i].first, i));
    let mut offsets = vec![0u64; lives.len()];
    let mut placed: Vec<usize> = Vec::with_capacity(lives.len());
    let mut arena = 0u64;
    for &i in &order {
        let life = lives[i];
        let mut taken: Vec<(u64, u64)> = placed
            .iter()
            .filter(|&&p| lives[p].first <= life.last && life.first <= lives[p].last)
            .map(|&p| (offsets[p], offsets[p] + lives[p].bytes))
            .collect();
        taken.sort_unstable();
        let mut offset = 0u64;
        for (start, end) in taken {
            if start >= offset + life.bytes {
                break;
            }
            offset = offset.max(end);
        }
        offsets[i] = offset;
        arena = arena.max(offset + life.bytes);
        placed.push(i);
    }
    (arena, offsets)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn life(bytes: u64, first: usize, last: usize) -> BufferLife {
        BufferLife { bytes, first, last }
    }

    /// Pseudo-random lifetimes from a small linear congruential generator.
    fn random_lives(seed: u64, count: usize) -> Vec<BufferLife> {
        let mut state = seed;
        let mut next = |m: u64| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (state >> 33) % m
        };
        (0..count)
            .map(|_| {
                let first = next(20) as usize;
                life(1 + next(1000), first, first + next(6) as usize)
            })
            .collect()
    }

    #[test]
    fn peak_counts_overlapping_lifetimes() {
        let lives = [life(10, 0, 1), life(5, 1, 2), life(7, 2, 2), life(20, 4, 4)];
        assert_eq!(live_peak(&lives), (20, 4));
        assert_eq!(live_peak(&lives[..3]), (15, 1));
        assert_eq!(live_peak(&[]), (0, 0));
    }

    #[test]
    fn greedy_arena_is_valid_and_never_below_the_live_peak() {
        for seed in 0..50 {
            let lives = random_lives(seed, 30);
            let (arena, offsets) = greedy_by_size(&lives);
            assert!(arena >= live_peak(&lives).0, "seed {seed}");
            assert!(arena <= lives.iter().map(|l| l.bytes).sum(), "seed {seed}");
            for (i, a) in lives.iter().enumerate() {
                assert!(offsets[i] + a.bytes <= arena);
                for (j, b) in lives.iter().enumerate().skip(i + 1) {
                    let meet = a.first <= b.last && b.first <= a.last;
                    let overlap = offsets[i] < offsets[j] + b.bytes && offsets[j] < offsets[i] + a.bytes;
                    assert!(!(meet && overlap), "seed {seed}: buffers {i} and {j} collide");
                }
            }
        }
    }

    #[test]
    fn greedy_arena_reuses_freed_space() {
        // A chain of equal buffers each live for two steps needs two slots, not one per buffer.
        let lives: Vec<_> = (0..6).map(|s| life(100, s, s + 1)).collect();
        assert_eq!(greedy_by_size(&lives).0, 200);
        // Largest first: the 100 goes at 0, the 60 and 40 that never meet each other share the space above it.
        let lives = [life(60, 0, 1), life(100, 0, 3), life(40, 2, 3)];
        assert_eq!(greedy_by_size(&lives), (160, vec![100, 0, 100]));
    }
}
