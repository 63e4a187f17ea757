//! The paper's mobile setting (one Snapdragon 865 core, TNN, fp32): the `snapdragon865` device profile derived
//! from a local calibration and the published TopFormer latencies, and predicted vs published.

use super::baselines::{embedded_baselines, LatencySetup};
use super::format::shape;
use super::rows::{millis, Rows};
use crate::cost::latency::{fit_scale, leave_one_out_errors};
use crate::cost::{Device, Prediction};
use crate::error::{Error, Result};
use crate::graph::compile;
use crate::spec::{load_embedded, parse_resolution};

/// A published TopFormer latency in the paper's setting.
pub struct PublishedLatency {
    /// Model name as published.
    pub name: String,
    /// Embedded spec.
    pub spec: String,
    /// Input height and width.
    pub res: (usize, usize),
    /// Published milliseconds.
    pub ms: f64,
}

/// Every distinct (spec, input) TopFormer latency published for one Snapdragon 865 core with TNN.
pub fn published_latencies() -> Result<Vec<PublishedLatency>> {
    let baselines = embedded_baselines()?;
    let mut out: Vec<PublishedLatency> = Vec::new();
    for b in &baselines.models {
        let (Some(spec), Some(ms)) = (&b.spec, b.latency_ms) else { continue };
        if !b.is_topformer() || b.reproduction || b.latency_setup != Some(LatencySetup::Sd865OneCoreTnn) {
            continue;
        }
        let res = parse_resolution(&b.input)?;
        if !out.iter().any(|p| p.spec == *spec && p.res == res) {
            out.push(PublishedLatency { name: b.name.get_ref().clone(), spec: spec.clone(), res, ms });
        }
    }
    Ok(out)
}

/// The prediction for a published case on `device`.
fn predict(case: &PublishedLatency, device: &Device) -> Result<Prediction> {
    let graph = compile(&load_embedded(&case.spec)?.spec, case.res.0, case.res.1)?;
    Ok(Prediction::new(&graph, device))
}

/// The snapdragon865 profile: the local one-thread profile's per-family laws, times the one scale that best
/// maps its predictions of the networks (the final resize left out, as the paper times them) onto the
/// published TopFormer latencies.
pub fn derive_snapdragon865(local: &Device) -> Result<Device> {
    if local.threads != 1 {
        return Err(Error::input(format!(
            "device '{}' was calibrated for {} threads; the paper's setting is one core: calibrate with --threads 1",
            local.name, local.threads
        )));
    }
    let cases = published_latencies()?;
    let pairs =
        cases.iter().map(|c| Ok((predict(c, local)?.network_ms(), c.ms))).collect::<Result<Vec<(f64, f64)>>>()?;
    let scale = fit_scale(&pairs);
    if !(scale.is_finite() && scale > 0.0) {
        return Err(Error::input(format!(
            "'{}': its laws give no usable prediction of the published latencies (scale {scale}); calibrate again",
            local.name
        )));
    }
    let worst = leave_one_out_errors(&pairs).iter().map(|e| e.abs()).fold(0.0, f64::max);
    let mut device = local.scaled(scale);
    device.name = "snapdragon865".into();
    device.cpu = "Qualcomm Snapdragon 865, one ARM core (TNN, fp32), as the TopFormer paper measures".into();
    device.isa = "neon".into();
    device.source = format!(
        "derived by `toparch derive-device`: the per-family laws of a one-thread calibration on {} ({}, {}) \
         scaled by {scale:.4}, the one factor that best fits the {} published TopFormer latencies (worst \
         leave-one-out error {:.1} %)",
        local.cpu,
        local.isa,
        local.date,
        pairs.len(),
        100.0 * worst
    );
    Ok(device)
}

/// Predicted vs published for every published case on `device`, with leave-one-out errors (the device's
/// scale refitted without the case) and the post-processing the paper's figures leave out.
pub fn mobile_rows(device: &Device) -> Result<Rows> {
    let cases = published_latencies()?;
    let predictions = cases.iter().map(|c| predict(c, device)).collect::<Result<Vec<_>>>()?;
    let pairs: Vec<(f64, f64)> = predictions.iter().zip(&cases).map(|(p, c)| (p.network_ms(), c.ms)).collect();
    let loo = leave_one_out_errors(&pairs);
    let percent = |e: f64| format!("{:+.1} %", 100.0 * e);
    let header = [
        "model",
        "input",
        "published ms",
        "predicted ms (network)",
        "error",
        "leave-one-out error",
        "final resize + argmax ms",
        "predicted ms with post-processing",
    ]
    .map(String::from)
    .to_vec();
    let body = cases
        .iter()
        .zip(&predictions)
        .zip(&loo)
        .map(|((c, p), &l)| {
            vec![
                c.name.clone(),
                shape(&[c.res.0, c.res.1]),
                format!("{:.0}", c.ms),
                millis(p.network_ms()),
                percent(p.network_ms() / c.ms - 1.0),
                percent(l),
                format!("{} + {}", millis(p.final_resize_ms), millis(p.argmax_ms)),
                millis(p.total_ms + p.argmax_ms),
            ]
        })
        .collect();
    Ok(Rows { header, body, total: vec![] })
}
