//! Property-based tests of the compiler and of every reader of user input.
//!
//! Random valid specs always compile, with shapes equal to an independent recomputation and counts that keep
//! their invariants. Random mutations of spec text, budgets, safetensors and `.pth` bytes and PNG/JPEG bytes
//! never panic, never hang and never allocate more than the input justifies: this test binary's allocator
//! records the largest single allocation each thread makes, so a header claiming a huge tensor or image that
//! is allocated before it is checked fails the test.

use proptest::prelude::*;
use proptest::sample::Index;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use toparch::cost::{Convention, Profile};
use toparch::exec::image_io::decode_image_bytes;
use toparch::exec::weights::read_tensors;
use toparch::graph::compile;
use toparch::spec::{load_file, make_divisible, Spec};

/// The system allocator, noting the largest single allocation of each thread.
struct Tracking;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    // `try_with`: the thread-local may already be gone while a thread exits.
    let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
}

// SAFETY: every call is forwarded unchanged to `System`; only the requested sizes are recorded.
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Tracking = Tracking;

/// Longest any single parse of a mutated input may take: far above the milliseconds they need.
const HANG: Duration = Duration::from_secs(10);

/// Runs `parse`, asserting it returned within [`HANG`] and never allocated more than `limit` bytes at once.
fn bounded<T>(what: &str, limit: usize, parse: impl FnOnce() -> T) -> T {
    LARGEST.with(|l| l.set(0));
    let started = Instant::now();
    let result = parse();
    let (elapsed, largest) = (started.elapsed(), LARGEST.with(Cell::get));
    assert!(elapsed < HANG, "{what}: took {elapsed:?}");
    assert!(largest <= limit, "{what}: allocated {largest} bytes at once (limit {limit})");
    result
}

fn manifest(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// A fresh path in a scratch folder of this test run.
fn scratch(name: &str) -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!("toparch-properties-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(format!("{}-{name}", COUNTER.fetch_add(1, Ordering::Relaxed)))
}

/// One random edit: where (any position), what kind, and a byte.
fn edits(max: usize) -> impl Strategy<Value = Vec<(Index, u8, u8)>> {
    prop::collection::vec((any::<Index>(), any::<u8>(), any::<u8>()), 1..=max)
}

/// Applies edits to `base`: flip bits, overwrite, delete, insert, splice in a huge number, or truncate.
fn mutate(base: &[u8], edits: &[(Index, u8, u8)]) -> Vec<u8> {
    let mut bytes = base.to_vec();
    for (at, kind, byte) in edits {
        if bytes.is_empty() {
            bytes.push(*byte);
            continue;
        }
        let i = at.index(bytes.len());
        match kind % 8 {
            0 | 1 => bytes[i] ^= byte | 1,
            2 => bytes[i] = *byte,
            3 => {
                bytes.remove(i);
            }
            4 => bytes.insert(i, *byte),
            5 => {
                bytes.splice(i..i, b"99999999999".iter().copied());
            }
            6 => bytes[i] = b"0-.x[]\"\n"[usize::from(*byte) % 8],
            _ => bytes.truncate(i.max(1)),
        }
    }
    bytes
}

// ---------------------------------------------------------------------------------------------------------------
// Random valid specs

/// Everything a random valid spec is made of.
#[derive(Debug, Clone)]
struct RandomSpec {
    stem: usize,
    /// [kernel, expand, out, stride]
    blocks: Vec<(usize, f64, usize, usize)>,
    out_indices: Vec<usize>,
    depth: usize,
    heads: usize,
    key_dim: usize,
    attn_ratio: f64,
    mlp_ratio: f64,
    c2t_stride: usize,
    activations: [&'static str; 3],
    injection: &'static str,
    injection_indices: Vec<usize>,
    channels: usize,
    fuse: &'static str,
    classes: usize,
}

impl RandomSpec {
    fn pyramid_channels(&self) -> Vec<usize> {
        self.out_indices.iter().map(|&i| make_divisible(self.blocks[i].2, 8)).collect()
    }

    fn toml(&self) -> String {
        let blocks: Vec<String> = self.blocks.iter().map(|(k, t, c, s)| format!("[{k}, {t:?}, {c}, {s}]")).collect();
        let [tp_act, se_act, head_act] = self.activations;
        format!(
            "name = \"random\"\n\n[token_pyramid]\nstem_channels = {}\nactivation = \"{tp_act}\"\nblocks = [{}]\n\
             out_indices = {:?}\nchannels = {:?}\n\n[semantics_extractor]\ndepth = {}\nnum_heads = {}\nkey_dim = {}\n\
             attn_ratio = {:?}\nmlp_ratio = {:?}\nc2t_stride = {}\nactivation = \"{se_act}\"\n\n[injection]\n\
             type = \"{}\"\nindices = {:?}\nchannels = {}\n\n[head]\nchannels = {}\nfuse = \"{}\"\n\
             activation = \"{head_act}\"\nnum_classes = {}\n",
            self.stem,
            blocks.join(", "),
            self.out_indices,
            self.pyramid_channels(),
            self.depth,
            self.heads,
            self.key_dim,
            self.attn_ratio,
            self.mlp_ratio,
            self.c2t_stride,
            self.injection,
            self.injection_indices,
            self.channels,
            self.channels,
            self.fuse,
            self.classes
        )
    }
}

/// A non-empty, strictly increasing subset of `0..n`.
fn subset(n: usize) -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(any::<bool>(), n).prop_flat_map(move |mask| {
        let chosen: Vec<usize> = (0..n).filter(|&i| mask[i]).collect();
        let fallback = any::<Index>().prop_map(move |i| vec![i.index(n)]);
        if chosen.is_empty() {
            fallback.boxed()
        } else {
            Just(chosen).boxed()
        }
    })
}

fn activation() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec!["relu", "relu6", "hsigmoid", "hswish"])
}

fn random_spec() -> impl Strategy<Value = RandomSpec> {
    let block = (
        prop::sample::select(vec![1usize, 3, 5, 7]),
        prop::sample::select(vec![1.0f64, 2.0, 3.0, 4.0, 6.0, 2.5]),
        4usize..=72,
        1usize..=2,
    );
    let shape = (8usize..=32, prop::collection::vec(block, 1..=7));
    let semantics = (
        1usize..=3,
        1usize..=4,
        1usize..=16,
        prop::sample::select(vec![1.0f64, 1.5, 2.0, 4.0]),
        prop::sample::select(vec![0.5f64, 1.0, 2.0, 4.0]),
        1usize..=3,
    );
    let rest = (
        [activation(), activation(), activation()],
        prop::sample::select(vec!["muli_sum", "muli_sum_cbr", "fuse_sum", "fuse_multi"]),
        4usize..=64,
        prop::sample::select(vec!["depthwise", "dense"]),
        1usize..=40,
    );
    (shape, semantics, rest).prop_flat_map(|((stem, blocks), semantics, rest)| {
        let n = blocks.len();
        subset(n).prop_flat_map(move |out_indices| {
            let blocks = blocks.clone();
            subset(out_indices.len()).prop_map(move |injection_indices| {
                let (depth, heads, key_dim, attn_ratio, mlp_ratio, c2t_stride) = semantics;
                let (activations, injection, channels, fuse, classes) = rest;
                RandomSpec {
                    stem,
                    blocks: blocks.clone(),
                    out_indices: out_indices.clone(),
                    depth,
                    heads,
                    key_dim,
                    attn_ratio,
                    mlp_ratio,
                    c2t_stride,
                    activations,
                    injection,
                    injection_indices,
                    channels,
                    fuse,
                    classes,
                }
            })
        })
    })
}

/// PyTorch's output size of a k×k conv with padding k/2 (k odd) and stride `s`.
fn conv_out(n: usize, s: usize) -> usize {
    (n - 1) / s + 1
}

/// The shape of every tap of `random` at `(h, w)`, recomputed from the spec alone (batch 1).
fn expected_taps(random: &RandomSpec, (h, w): (usize, usize)) -> Vec<(String, Vec<usize>)> {
    let mut size = (conv_out(h, 2), conv_out(w, 2));
    let mut levels = Vec::new();
    for (i, &(_, _, _, stride)) in random.blocks.iter().enumerate() {
        size = (conv_out(size.0, stride), conv_out(size.1, stride));
        if random.out_indices.contains(&i) {
            levels.push(size);
        }
    }
    let channels = random.pyramid_channels();
    let mut taps: Vec<(String, Vec<usize>)> = levels
        .iter()
        .zip(&channels)
        .enumerate()
        .map(|(l, (&(lh, lw), &c))| (format!("tpm.out{l}"), vec![1, c, lh, lw]))
        .collect();
    let last = *levels.last().unwrap();
    let tokens =
        vec![1, channels.iter().sum(), conv_out(last.0, random.c2t_stride), conv_out(last.1, random.c2t_stride)];
    taps.push(("ppa".into(), tokens.clone()));
    taps.push(("trans".into(), tokens));
    for (j, &level) in random.injection_indices.iter().enumerate() {
        taps.push((format!("sim.out{j}"), vec![1, random.channels, levels[level].0, levels[level].1]));
    }
    let first = levels[random.injection_indices[0]];
    taps.push(("logits".into(), vec![1, random.classes, first.0, first.1]));
    taps
}

fn load_random(random: &RandomSpec) -> Spec {
    let path = scratch("random.toml");
    std::fs::write(&path, random.toml()).unwrap();
    let loaded = load_file(&path).unwrap_or_else(|e| panic!("a valid spec was refused: {e}\n{}", random.toml()));
    std::fs::remove_file(&path).ok();
    loaded.spec
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn random_valid_specs_compile_with_recomputed_shapes_and_consistent_counts(
        random in random_spec(),
        h in 16usize..=160,
        w in 16usize..=160,
        (h2, w2) in (16usize..=96, 16usize..=96),
    ) {
        let spec = load_random(&random);
        let graph = compile(&spec, h, w).unwrap();
        for (name, shape) in expected_taps(&random, (h, w)) {
            let node = graph.tap_node(&name).unwrap_or_else(|| panic!("no tap {name}"));
            prop_assert_eq!(&graph.node(node).shape, &shape, "{}", name);
        }
        prop_assert_eq!(&graph.node(graph.output()).shape, &vec![1, random.classes, h, w]);
        let profile = Profile::new(&graph, &spec).unwrap();
        let other = Profile::new(&compile(&spec, h2, w2).unwrap(), &spec).unwrap();
        prop_assert_eq!(profile.params, other.params, "params depend on the resolution");
        prop_assert_eq!(profile.stages.iter().map(|g| g.params).sum::<u64>(), profile.params);
        for convention in Convention::ALL {
            let stages: u64 = profile.stages.iter().map(|g| g.cost.get(convention)).sum();
            let blocks: u64 = profile.blocks.iter().map(|g| g.cost.get(convention)).sum();
            prop_assert_eq!(stages, profile.flops(convention));
            prop_assert_eq!(blocks, profile.flops(convention));
        }
        prop_assert!(profile.flops(Convention::Macs) <= profile.flops(Convention::Fvcore));
        prop_assert!(profile.flops(Convention::Macs) > 0);
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Mutated inputs

/// Input size that a reader may allocate per byte of input, beyond a fixed floor.
fn limit(input: &[u8], per_byte: usize, floor: usize) -> usize {
    floor + per_byte * input.len()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn mutated_spec_text_never_panics(which in 0usize..3, edits in edits(6)) {
        let base = match which {
            0 => include_str!("../specs/topformer-tiny.toml"),
            1 => include_str!("../specs/topformer-tiny-cityscapes.toml"),
            _ => include_str!("fixtures/topformer-micro.toml"),
        };
        let text = mutate(base.as_bytes(), &edits);
        let path = scratch("mutated.toml");
        std::fs::write(&path, &text).unwrap();
        bounded("spec", limit(&text, 64, 1 << 20), || {
            if let Ok(loaded) = load_file(&path) {
                // A spec that loads compiles (or names what is too large) and counts without panicking.
                if let Ok(graph) = compile(&loaded.spec, 33, 47) {
                    let _ = Profile::new(&graph, &loaded.spec);
                }
            }
        });
        std::fs::remove_file(&path).ok();
    }

    #[test]
    fn mutated_budgets_never_panic(edits in edits(6)) {
        let text = mutate(include_bytes!("../specs/budgets.toml"), &edits);
        let path = scratch("budgets.toml");
        std::fs::write(&path, &text).unwrap();
        bounded("budgets", limit(&text, 64, 1 << 20), || {
            if let Ok((budgets, doc)) = toparch::budget::read_budgets(&path) {
                let _ = toparch::budget::evaluate(&budgets, &doc);
            }
        });
        std::fs::remove_file(&path).ok();
    }

    #[test]
    fn mutated_safetensors_never_panic_or_over_allocate(edits in edits(4), header_only in any::<bool>()) {
        let base = std::fs::read(manifest("tests/fixtures/micro/topformer-micro-seed5-io.safetensors")).unwrap();
        // Most of the file is tensor data: aim half the cases at the header.
        let header_len = 8 + u64::from_le_bytes(base[..8].try_into().unwrap()) as usize;
        let bytes = if header_only {
            let mut head = mutate(&base[..header_len], &edits);
            head.extend_from_slice(&base[header_len..]);
            head
        } else {
            mutate(&base, &edits)
        };
        let path = scratch("mutated.safetensors");
        std::fs::write(&path, &bytes).unwrap();
        // Decoding F32 keeps the size; F16/BF16 double it.
        bounded("safetensors", limit(&bytes, 4, 1 << 20), || read_tensors(&path).is_ok());
        std::fs::remove_file(&path).ok();
    }

    #[test]
    fn mutated_pth_never_panics_or_over_allocates(edits in edits(4), in_pickle in any::<bool>()) {
        let base = std::fs::read(manifest("tests/fixtures/pth/proto4-views.pth")).unwrap();
        let bytes = if in_pickle { rezip_with_mutated_pickle(&base, &edits) } else { mutate(&base, &edits) };
        let path = scratch("mutated.pth");
        std::fs::write(&path, &bytes).unwrap();
        bounded("pth", limit(&bytes, 64, 1 << 20), || read_tensors(&path).is_ok());
        std::fs::remove_file(&path).ok();
    }

    #[test]
    fn mutated_images_never_panic_or_over_allocate(
        format in 0usize..4,
        (w, h) in (1u32..=40, 1u32..=40),
        edits in edits(4),
    ) {
        let bytes = mutate(&encoded_image(format, w, h), &edits);
        // The decoder's own budget (16 MiB or 2048 bytes per input byte) and 1 MiB of working memory.
        let decoded = bounded("image", limit(&bytes, 2048, 17 << 20), || {
            decode_image_bytes(&bytes, "mutated")
        });
        if let Ok(img) = decoded {
            prop_assert!(img.width() > 0 && img.height() > 0);
        }
    }
}

/// A small photo-like image encoded as PNG or JPEG, RGB or greyscale.
fn encoded_image(format: usize, w: u32, h: u32) -> Vec<u8> {
    let rgb = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 6) as u8, (y * 6) as u8, ((x + y) * 3) as u8]));
    let img = if format % 2 == 1 {
        image::DynamicImage::ImageLuma8(image::DynamicImage::ImageRgb8(rgb).to_luma8())
    } else {
        image::DynamicImage::ImageRgb8(rgb)
    };
    let mut out = std::io::Cursor::new(Vec::new());
    let kind = if format < 2 { image::ImageFormat::Png } else { image::ImageFormat::Jpeg };
    img.write_to(&mut out, kind).unwrap();
    out.into_inner()
}

/// The checkpoint `zip` with its `data.pkl` mutated and every entry rewritten (stored, valid CRCs), so that
/// the pickle interpreter, not the zip checksum, meets the damage.
fn rezip_with_mutated_pickle(zip: &[u8], edits: &[(Index, u8, u8)]) -> Vec<u8> {
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(zip)).unwrap();
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).unwrap();
        let name = entry.name().unwrap().to_string();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        if name.ends_with("data.pkl") {
            data = mutate(&data, edits);
        }
        writer.start_file(name, options).unwrap();
        writer.write_all(&data).unwrap();
    }
    writer.finish().unwrap().into_inner()
}

// ---------------------------------------------------------------------------------------------------------------
// Headers that claim more than their data

#[test]
fn a_safetensors_header_claiming_a_huge_tensor_fails_before_allocating_it() {
    let header = br#"{"w":{"dtype":"F32","shape":[1099511627776],"data_offsets":[0,4398046511104]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header);
    bytes.extend_from_slice(&[0; 16]);
    let path = scratch("huge.safetensors");
    std::fs::write(&path, &bytes).unwrap();
    let result = bounded("huge safetensors", 1 << 20, || read_tensors(&path));
    let err = result.unwrap_err().to_string();
    assert!(err.contains("huge.safetensors"), "{err}");
}

#[test]
fn an_image_header_claiming_a_huge_image_fails_before_allocating_it() {
    // A valid 8×8 PNG whose header then claims 60000×60000 pixels (CRC fixed, so the header is believed).
    let mut png = encoded_image(0, 8, 8);
    png[16..20].copy_from_slice(&60000u32.to_be_bytes());
    png[20..24].copy_from_slice(&60000u32.to_be_bytes());
    let crc = crc32(&png[12..29]);
    png[29..33].copy_from_slice(&crc.to_be_bytes());
    let result = bounded("huge png", 16 << 20, || decode_image_bytes(&png, "huge.png"));
    let err = result.unwrap_err().to_string();
    assert!(err.contains("huge.png"), "{err}");
}

/// The CRC-32 of PNG chunks (ISO 3309), bit by bit.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}
