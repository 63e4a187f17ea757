//! Reading and writing weight files: safetensors and PyTorch `.pth` checkpoints (zip format),
//! told apart by their content, not their extension.

use std::collections::BTreeMap;
use std::path::Path;

use crate::error::{write_atomic, Error, Result};

/// Element data of a loaded tensor.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    /// Floating-point data (F32 exactly; F16, BF16 and F64 converted to f32).
    F32(Vec<f32>),
    /// Integer data (I64 exactly; I32 widened), e.g. BatchNorm's `num_batches_tracked`.
    I64(Vec<i64>),
}

/// A tensor read from a checkpoint: row-major, contiguous.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    /// Dimensions, outermost first (empty for a scalar).
    pub shape: Vec<usize>,
    /// The elements in row-major order; `data` holds exactly `shape.iter().product()` of them.
    pub data: TensorData,
}

/// Tensors by their state_dict name, sorted.
pub type TensorMap = BTreeMap<String, Tensor>;

impl Tensor {
    /// The element type as safetensors spells it: `"F32"` or `"I64"`.
    pub fn dtype_name(&self) -> &'static str {
        match self.data {
            TensorData::F32(_) => "F32",
            TensorData::I64(_) => "I64",
        }
    }

    /// The number of elements.
    pub fn numel(&self) -> usize {
        match &self.data {
            TensorData::F32(v) => v.len(),
            TensorData::I64(v) => v.len(),
        }
    }
}

/// A stored element type this module can decode (shared by the safetensors and `.pth` readers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dtype {
    F32,
    F16,
    BF16,
    F64,
    I64,
    I32,
}

impl Dtype {
    /// Bytes per element.
    pub(crate) fn size(self) -> usize {
        match self {
            Dtype::F16 | Dtype::BF16 => 2,
            Dtype::F32 | Dtype::I32 => 4,
            Dtype::F64 | Dtype::I64 => 8,
        }
    }

    /// Decodes little-endian elements (`bytes` may be unaligned; a trailing partial element is
    /// ignored, callers pass whole elements).
    pub(crate) fn decode(self, bytes: &[u8]) -> TensorData {
        fn each<const N: usize, T>(bytes: &[u8], f: impl Fn([u8; N]) -> T) -> Vec<T> {
            bytes
                .chunks_exact(N)
                .map(|c| {
                    let mut a = [0u8; N];
                    a.copy_from_slice(c);
                    f(a)
                })
                .collect()
        }
        match self {
            Dtype::F32 => TensorData::F32(each(bytes, f32::from_le_bytes)),
            Dtype::F16 => TensorData::F32(each(bytes, |b| f16_to_f32(u16::from_le_bytes(b)))),
            Dtype::BF16 => TensorData::F32(each(bytes, |b| f32::from_bits(u32::from(u16::from_le_bytes(b)) << 16))),
            Dtype::F64 => TensorData::F32(each(bytes, |b| f64::from_le_bytes(b) as f32)),
            Dtype::I64 => TensorData::I64(each(bytes, i64::from_le_bytes)),
            Dtype::I32 => TensorData::I64(each(bytes, |b| i64::from(i32::from_le_bytes(b)))),
        }
    }
}

/// IEEE 754 half precision to single precision, exactly (subnormals, infinities and NaN included).
fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h >> 15) << 31;
    let exp = u32::from((h >> 10) & 0x1f);
    let mant = u32::from(h & 0x3ff);
    let bits = match (exp, mant) {
        (0, 0) => sign,
        (0, _) => {
            // Subnormal: value = mant · 2^-24; normalise it.
            let shift = mant.leading_zeros() - 21; // bring the top set bit to position 10
            let m = (mant << shift) & 0x3ff;
            sign | ((127 - 15 + 1 - shift) << 23) | (m << 13)
        }
        (0x1f, _) => sign | 0x7f80_0000 | (mant << 13),
        _ => sign | ((exp + 127 - 15) << 23) | (mant << 13),
    };
    f32::from_bits(bits)
}

/// Number of elements of `shape`, or an error naming the file and tensor on overflow.
pub(crate) fn checked_numel(path: &Path, name: &str, shape: &[usize]) -> Result<usize> {
    shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| Error::input(format!("{}: tensor '{name}': shape {shape:?} is too large", path.display())))
}

/// The first bytes of a pre-1.6 `torch.save` file (a bare pickle starting with torch's magic number).
const LEGACY_TORCH_MAGIC: &[u8] = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19";

/// Reads a safetensors file or a PyTorch `.pth` (torch.save zip format), detected by content, not extension.
///
/// `.pth` checkpoints yield the state dict the official TopFormer code would load (`state_dict_ema`,
/// then `state_dict`, then `model`, else the whole dict), with a `module.` prefix stripped when every
/// name has it. Every failure is an [`Error`] naming the file (and the tensor where one is concerned).
pub fn read_tensors(path: &Path) -> Result<TensorMap> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    if bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"PK\x05\x06") {
        super::pth::read_pth(path, &bytes)
    } else if bytes.len() > 8 && bytes[8] == b'{' {
        read_safetensors(path, &bytes)
    } else if bytes.starts_with(LEGACY_TORCH_MAGIC) {
        Err(Error::input(format!(
            "{}: legacy (pre-1.6) torch.save format is not supported; re-save it with a current PyTorch",
            path.display()
        )))
    } else {
        Err(Error::input(format!(
            "{}: not a weights file (neither safetensors nor a PyTorch zip checkpoint)",
            path.display()
        )))
    }
}

/// Decodes a safetensors buffer read from `path`.
fn read_safetensors(path: &Path, bytes: &[u8]) -> Result<TensorMap> {
    let st = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| Error::input(format!("{}: invalid safetensors file: {e}", path.display())))?;
    let mut map = TensorMap::new();
    for (name, view) in st.iter() {
        let dtype = match view.dtype() {
            safetensors::Dtype::F32 => Dtype::F32,
            safetensors::Dtype::F16 => Dtype::F16,
            safetensors::Dtype::BF16 => Dtype::BF16,
            safetensors::Dtype::F64 => Dtype::F64,
            safetensors::Dtype::I64 => Dtype::I64,
            safetensors::Dtype::I32 => Dtype::I32,
            other => {
                return Err(Error::input(format!(
                    "{}: tensor '{name}' has unsupported dtype {other} (supported: F32, F16, BF16, F64, I64, I32)",
                    path.display()
                )))
            }
        };
        let shape = view.shape().to_vec();
        let numel = checked_numel(path, name, &shape)?;
        if numel.checked_mul(dtype.size()) != Some(view.data().len()) {
            return Err(Error::input(format!(
                "{}: tensor '{name}': {} data bytes do not match shape {shape:?}",
                path.display(),
                view.data().len()
            )));
        }
        map.insert(name.to_string(), Tensor { shape, data: dtype.decode(view.data()) });
    }
    Ok(map)
}

/// Writes f32 tensors as safetensors (atomically), names sorted.
///
/// Fails (naming the file and tensor) on a duplicate name or data whose length does not match its shape.
pub fn write_safetensors(path: &Path, tensors: &[(String, Vec<usize>, Vec<f32>)]) -> Result<()> {
    let mut byte_data: BTreeMap<&str, (&[usize], Vec<u8>)> = BTreeMap::new();
    for (name, shape, data) in tensors {
        if checked_numel(path, name, shape)? != data.len() {
            return Err(Error::input(format!(
                "{}: tensor '{name}': {} values do not match shape {shape:?}",
                path.display(),
                data.len()
            )));
        }
        let bytes = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        if byte_data.insert(name, (shape, bytes)).is_some() {
            return Err(Error::input(format!("{}: tensor '{name}' given twice", path.display())));
        }
    }
    let write_err = |e: safetensors::SafeTensorError| {
        Error::input(format!("{}: cannot serialise safetensors: {e}", path.display()))
    };
    let views = byte_data
        .iter()
        .map(|(&name, (shape, bytes))| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.to_vec(), bytes).map(|v| (name, v))
        })
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(write_err)?;
    let buffer = safetensors::serialize(views, None).map_err(write_err)?;
    write_atomic(path, &buffer)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::path::PathBuf;

    /// A fresh path in the system temp dir, unique to this process and `tag`; removed on drop.
    pub(crate) struct TempPath(pub(crate) PathBuf);

    impl TempPath {
        pub(crate) fn new(tag: &str) -> Self {
            use std::sync::atomic::{AtomicUsize, Ordering};
            static COUNTER: AtomicUsize = AtomicUsize::new(0);
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            TempPath(std::env::temp_dir().join(format!("toparch-test-{}-{n}-{tag}", std::process::id())))
        }
    }

    impl Drop for TempPath {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    pub(crate) fn manifest_path(rel: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
    }

    /// Asserts that two maps hold the same names, shapes, dtypes and bit-identical values.
    pub(crate) fn assert_maps_identical(a: &TensorMap, b: &TensorMap) {
        assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
        for (name, ta) in a {
            let tb = &b[name];
            assert_eq!(ta.shape, tb.shape, "{name}");
            match (&ta.data, &tb.data) {
                (TensorData::F32(x), TensorData::F32(y)) => {
                    assert!(x.iter().map(|v| v.to_bits()).eq(y.iter().map(|v| v.to_bits())), "{name}: values differ")
                }
                (TensorData::I64(x), TensorData::I64(y)) => assert_eq!(x, y, "{name}"),
                _ => panic!("{name}: dtypes differ"),
            }
        }
    }

    fn check_pair(stem: &str) -> TensorMap {
        let st = read_tensors(&manifest_path(&format!("{stem}.safetensors"))).unwrap();
        let pth = read_tensors(&manifest_path(&format!("{stem}.pth"))).unwrap();
        assert_maps_identical(&st, &pth);
        let tracked: Vec<_> = st.iter().filter(|(k, _)| k.ends_with("num_batches_tracked")).collect();
        assert!(!tracked.is_empty());
        for (k, t) in tracked {
            assert_eq!(t.dtype_name(), "I64", "{k}");
            assert_eq!(t.numel(), 1, "{k}");
        }
        st
    }

    #[test]
    fn micro_safetensors_and_pth_agree() {
        let map = check_pair("tests/fixtures/micro/topformer-micro-seed5");
        let stem = &map["backbone.tpm.stem.0.c.weight"];
        assert_eq!(stem.shape, vec![16, 3, 3, 3]);
        assert_eq!(stem.dtype_name(), "F32");
        // Parameters only (num_batches_tracked and running stats are buffers): 105,578 per the README.
        let params: usize = map
            .iter()
            .filter(|(k, _)| !k.contains("running_") && !k.ends_with("num_batches_tracked"))
            .map(|(_, t)| t.numel())
            .sum();
        assert_eq!(params, 105_578);
    }

    #[test]
    fn tiny_safetensors_and_pth_agree() {
        let test = "exec::weights::tiny_safetensors_and_pth_agree";
        let files = ["pth", "safetensors"].map(|ext| format!("reference/topformer-tiny-seed0.{ext}"));
        if files.iter().any(|f| crate::testing::shared_file(f, test).is_none()) {
            return;
        }
        let map = check_pair("../shared/reference/topformer-tiny-seed0");
        assert!(map.len() > 300);
    }

    #[test]
    fn io_file_reads() {
        let io = read_tensors(&manifest_path("tests/fixtures/micro/topformer-micro-seed5-io.safetensors")).unwrap();
        assert_eq!(io["input"].shape, vec![1, 3, 72, 104]);
    }

    #[test]
    fn write_then_read_round_trip() {
        let tmp = TempPath::new("rt.safetensors");
        let tensors = vec![
            ("z.last".to_string(), vec![2, 3], vec![1.0, -2.5, 3.25, f32::MIN_POSITIVE, 1e-40, -0.0]),
            ("a.first".to_string(), vec![], vec![7.0]),
            ("m.empty".to_string(), vec![0, 4], vec![]),
        ];
        write_safetensors(&tmp.0, &tensors).unwrap();
        let back = read_tensors(&tmp.0).unwrap();
        assert_eq!(back.keys().collect::<Vec<_>>(), vec!["a.first", "m.empty", "z.last"]);
        for (name, shape, data) in &tensors {
            let t = &back[name];
            assert_eq!(&t.shape, shape);
            match &t.data {
                TensorData::F32(v) => {
                    assert!(v.iter().map(|x| x.to_bits()).eq(data.iter().map(|x| x.to_bits())), "{name}")
                }
                TensorData::I64(_) => panic!("{name} came back as I64"),
            }
        }
        // Names sorted in the header too.
        let bytes = std::fs::read(&tmp.0).unwrap();
        let header = String::from_utf8_lossy(&bytes[8..200]);
        let (a, m, z) = (header.find("a.first"), header.find("m.empty"), header.find("z.last"));
        assert!(a < m && m < z, "{header}");
    }

    #[test]
    fn write_rejects_bad_input() {
        let tmp = TempPath::new("bad.safetensors");
        let err = write_safetensors(&tmp.0, &[("w".into(), vec![2, 2], vec![1.0; 3])]).unwrap_err();
        assert!(err.to_string().contains("'w'") && err.to_string().contains("bad.safetensors"), "{err}");
        let dup = vec![("w".into(), vec![1], vec![1.0]), ("w".into(), vec![1], vec![2.0])];
        assert!(write_safetensors(&tmp.0, &dup).unwrap_err().to_string().contains("twice"));
        assert!(!tmp.0.exists());
    }

    #[test]
    fn safetensors_dtypes_convert() {
        // A hand-made header with F16, BF16, F64, I32 (odd offsets make the data unaligned).
        let f16: [u16; 4] = [0x3c00, 0xc000, 0x0001, 0x7c00]; // 1, -2, 2^-24, +inf
        let bf16: [u16; 2] = [0x3f80, 0xc0a0]; // 1, -5
        let mut data = Vec::new();
        data.extend(f16.iter().flat_map(|v| v.to_le_bytes()));
        data.extend(bf16.iter().flat_map(|v| v.to_le_bytes()));
        data.extend(0.1f64.to_le_bytes());
        data.extend((-3i32).to_le_bytes());
        let header = r#"{"h":{"dtype":"F16","shape":[4],"data_offsets":[0,8]},"b":{"dtype":"BF16","shape":[2],"data_offsets":[8,12]},"d":{"dtype":"F64","shape":[1],"data_offsets":[12,20]},"i":{"dtype":"I32","shape":[1,1],"data_offsets":[20,24]}}"#;
        let mut file = (header.len() as u64).to_le_bytes().to_vec();
        file.extend(header.as_bytes());
        file.extend(&data);
        let tmp = TempPath::new("dtypes.safetensors");
        std::fs::write(&tmp.0, &file).unwrap();
        let map = read_tensors(&tmp.0).unwrap();
        assert_eq!(map["h"].data, TensorData::F32(vec![1.0, -2.0, 2f32.powi(-24), f32::INFINITY]));
        assert_eq!(map["b"].data, TensorData::F32(vec![1.0, -5.0]));
        assert_eq!(map["d"].data, TensorData::F32(vec![0.1f64 as f32]));
        assert_eq!(map["i"].data, TensorData::I64(vec![-3]));
        assert_eq!(map["i"].shape, vec![1, 1]);

        // The same file with the I32 tensor declared as U8: unsupported, named in the error.
        let header_u8 = header.replace(r#""I32","shape":[1,1]"#, r#""U8","shape":[4]"#);
        let mut file_u8 = (header_u8.len() as u64).to_le_bytes().to_vec();
        file_u8.extend(header_u8.as_bytes());
        file_u8.extend(&data);
        std::fs::write(&tmp.0, &file_u8).unwrap();
        let err = read_tensors(&tmp.0).unwrap_err().to_string();
        assert!(err.contains("'i'") && err.contains("U8") && err.contains("dtypes.safetensors"), "{err}");
    }

    #[test]
    fn f16_conversion_is_exact() {
        for h in 0..=u16::MAX {
            let f = f16_to_f32(h);
            let exp = (h >> 10) & 0x1f;
            let mant = f32::from(h & 0x3ff);
            let expected = match exp {
                0 => mant * 2f32.powi(-24),
                0x1f if mant == 0.0 => f32::INFINITY,
                0x1f => f32::NAN,
                e => (1.0 + mant / 1024.0) * 2f32.powi(i32::from(e) - 15),
            };
            let expected = if h >> 15 == 1 { -expected } else { expected };
            if expected.is_nan() {
                assert!(f.is_nan(), "{h:#x}");
            } else {
                assert_eq!(f.to_bits(), expected.to_bits(), "{h:#x}");
            }
        }
    }

    /// Asserts that reading `path` fails with a message naming the file and containing `needle`.
    pub(crate) fn expect_err(path: &Path, needle: &str) {
        let err = read_tensors(path).unwrap_err().to_string();
        let name = path.file_name().unwrap().to_string_lossy();
        assert!(err.contains(name.as_ref()), "message does not name the file: {err}");
        assert!(err.contains(needle), "expected '{needle}' in: {err}");
    }

    #[test]
    fn error_cases_name_the_file() {
        let missing = TempPath::new("missing.safetensors");
        expect_err(&missing.0, "No such file");

        let text = TempPath::new("notes.txt");
        std::fs::write(&text.0, "just some text, not weights\n").unwrap();
        expect_err(&text.0, "not a weights file");

        let truncated = TempPath::new("truncated.safetensors");
        let full = std::fs::read(manifest_path("tests/fixtures/micro/topformer-micro-seed5.safetensors")).unwrap();
        std::fs::write(&truncated.0, &full[..full.len() / 2]).unwrap();
        expect_err(&truncated.0, "invalid safetensors");
        std::fs::write(&truncated.0, &full[..100]).unwrap();
        expect_err(&truncated.0, "invalid safetensors");

        let legacy = TempPath::new("legacy.pth");
        std::fs::write(&legacy.0, [LEGACY_TORCH_MAGIC, b"\x2e"].concat()).unwrap();
        expect_err(&legacy.0, "legacy");
    }
}
