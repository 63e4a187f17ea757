//! Executing a compiled graph: kernels, weights, inputs and the forward pass.

mod engine;
pub mod image_io;
mod params;
pub mod plan;
pub mod pth;
pub mod weights;

pub use engine::{check_threads, Executor, RunOutput, StepStat, MAX_THREADS};
pub use params::NodeParams;
pub use plan::{BufferLife, Plan, PlanStep, Schedule, ScheduledStep, StepKind};

use crate::error::{Error, Result};
use crate::kernels;
use crate::spec::MAX_SIDE;
use std::path::Path;

/// Reads a network input: a safetensors file holding `input` [1, 3, H, W] (already normalised), or a PNG/JPEG
/// image normalised as mmseg does (resized to `res` first if given). Returns NCHW data and (H, W).
pub fn read_input(path: &Path, res: Option<(usize, usize)>) -> Result<(Vec<f32>, usize, usize)> {
    let is_tensor_file = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("safetensors"));
    let (data, h, w) = if is_tensor_file { read_tensor_input(path, res)? } else { image_io::read_image(path, res)? };
    if h > MAX_SIDE || w > MAX_SIDE {
        return Err(Error::input(format!(
            "{}: input is {h}x{w}; sides up to {MAX_SIDE} are supported",
            path.display()
        )));
    }
    Ok((data, h, w))
}

fn read_tensor_input(path: &Path, res: Option<(usize, usize)>) -> Result<(Vec<f32>, usize, usize)> {
    let mut tensors = weights::read_tensors(path)?;
    let tensor =
        tensors.remove("input").ok_or_else(|| Error::input(format!("{}: no tensor named 'input'", path.display())))?;
    let (h, w) = match tensor.shape.as_slice() {
        &[1, 3, h, w] if h > 0 && w > 0 => (h, w),
        shape => {
            return Err(Error::input(format!(
                "{}: tensor 'input' has shape {shape:?}, expected [1, 3, H, W]",
                path.display()
            )))
        }
    };
    if let Some(res) = res.filter(|&r| r != (h, w)) {
        return Err(Error::input(format!(
            "{}: input is {h}x{w} but --res asks for {}x{}; resize applies to images only",
            path.display(),
            res.0,
            res.1
        )));
    }
    match tensor.data {
        weights::TensorData::F32(data) => Ok((data, h, w)),
        weights::TensorData::I64(_) => Err(Error::input(format!("{}: tensor 'input' must be float", path.display()))),
    }
}

/// The class of every pixel after bilinearly resizing `logits` [C, H, W] to `out_h`×`out_w` (as mmseg's
/// inference does before its argmax). Works through the classes a few at a time so the full-size
/// score map never has to exist at once.
pub fn argmax_resized(
    logits: &[f32],
    channels: usize,
    (h, w): (usize, usize),
    (out_h, out_w): (usize, usize),
) -> Vec<u32> {
    const CHUNK: usize = 8;
    let plane = out_h * out_w;
    let mut best = vec![f32::NEG_INFINITY; plane];
    let mut class = vec![0u32; plane];
    let mut scores = vec![0.0f32; CHUNK.min(channels) * plane];
    for start in (0..channels).step_by(CHUNK) {
        let n = CHUNK.min(channels - start);
        let src = &logits[start * h * w..(start + n) * h * w];
        kernels::resize_bilinear(src, n, h, w, out_h, out_w, &mut scores[..n * plane], false);
        for (c, plane_scores) in scores[..n * plane].chunks(plane).enumerate() {
            for ((b, k), &s) in best.iter_mut().zip(class.iter_mut()).zip(plane_scores) {
                if s > *b {
                    *b = s;
                    *k = (start + c) as u32;
                }
            }
        }
    }
    class
}
