//! A minimal, safe reader for PyTorch checkpoints in the zip format of `torch.save` (PyTorch ≥ 1.6).
//!
//! The zip holds `<folder>/data.pkl` (a pickle) and raw little-endian storages under
//! `<folder>/data/<key>`. The pickle is *interpreted as data*, never executed: a small stack machine
//! understands the opcodes of protocols 0–5 that `torch.save` and ordinary Python values produce and
//! recognises torch's tensor-rebuilding functions and storages. A pickle that names any other global
//! (a class or function unpickling would call) is refused by that name, as PyTorch's own
//! `weights_only` loader does. Only what a tensor needs must be readable.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::rc::Rc;

use super::weights::{checked_numel, Dtype, Tensor, TensorMap};
use crate::error::{Error, Result};

/// Nesting limit for `_rebuild_from_type_v2` wrappers (real checkpoints use one level).
const MAX_REBUILD_NESTING: usize = 8;

/// Reads the state dict of a `torch.save` zip checkpoint whose bytes were read from `path`.
pub(crate) fn read_pth(path: &Path, bytes: &[u8]) -> Result<TensorMap> {
    let file = path.display();
    // torch.save archives start at byte 0. zip 9.8's automatic offset detection rejects some of
    // them (zip64 records, e.g. the micro reference checkpoint), so try offset 0 first.
    let open = |archive_offset| {
        zip::ZipArchive::with_config(zip::read::Config { archive_offset }, std::io::Cursor::new(bytes))
    };
    let mut zip = open(zip::read::ArchiveOffset::Known(0))
        .or_else(|_| open(zip::read::ArchiveOffset::Detect))
        .map_err(|e| Error::input(format!("{file}: not a valid zip archive: {e}")))?;
    let pkl_name = zip
        .file_names()
        .filter_map(|n| n.ok())
        .find(|n| n.strip_suffix("data.pkl").is_some_and(|dir| dir.ends_with('/') && dir.matches('/').count() == 1))
        .map(|n| n.into_owned())
        .ok_or_else(|| {
            Error::input(format!("{file}: zip archive has no <folder>/data.pkl: not a PyTorch checkpoint"))
        })?;
    let folder = &pkl_name[..pkl_name.len() - "data.pkl".len()];
    if let Ok(mut entry) = zip.by_name(&format!("{folder}byteorder")) {
        let mut order = String::new();
        // A byteorder entry that is not tiny text is simply not "big".
        let _ = entry.by_ref().take(16).read_to_string(&mut order);
        if order.trim() == "big" {
            return Err(Error::input(format!("{file}: big-endian checkpoints are not supported")));
        }
    }
    let pickle = read_entry(&mut zip, &pkl_name, None).map_err(|e| Error::input(format!("{file}: {e}")))?;
    let mut vm = Vm::default();
    let root = vm.run(&pickle).map_err(|e| Error::input(format!("{file}: {pkl_name}: {e}")))?;
    let state = select_state_dict(&vm, &root)
        .ok_or_else(|| Error::input(format!("{file}: the checkpoint's pickle does not hold a dict")))?;

    let mut entries = Vec::new();
    for (key, value) in &state.items {
        let Value::Str(name) = key else {
            return Err(Error::input(format!("{file}: state dict key is a {}, not a string", vm.kind(key))));
        };
        entries.push((name.to_string(), value));
    }
    let strip = !entries.is_empty() && entries.iter().all(|(n, _)| n.starts_with("module."));

    let mut storages: HashMap<Rc<str>, Vec<u8>> = HashMap::new();
    let mut map = TensorMap::new();
    for (name, value) in entries {
        let name = if strip { name["module.".len()..].to_string() } else { name };
        let tensor_ref = match vm.obj(value) {
            Some(Obj::Tensor(t)) => t.as_ref(),
            _ => {
                return Err(Error::input(format!(
                    "{file}: state dict entry '{name}' is a {}, not a tensor",
                    vm.kind(value)
                )))
            }
        };
        let tensor_ref = tensor_ref.map_err(|e| Error::input(format!("{file}: tensor '{name}': {e}")))?;
        let tensor = materialise(path, &name, tensor_ref, &mut zip, folder, &mut storages)?;
        if map.insert(name.clone(), tensor).is_some() {
            return Err(Error::input(format!("{file}: tensor '{name}' appears twice")));
        }
    }
    Ok(map)
}

/// Reads zip entry `name` whole (or, with `expected`, exactly that many bytes of it) without
/// trusting any size declared in the archive for the allocation. Errors name the entry.
fn read_entry<R: Read + std::io::Seek>(
    zip: &mut zip::ZipArchive<R>,
    name: &str,
    expected: Option<u64>,
) -> std::result::Result<Vec<u8>, String> {
    let entry = zip.by_name(name).map_err(|e| format!("zip entry {name}: {e}"))?;
    let mut buf = Vec::new();
    entry
        .take(expected.unwrap_or(u64::MAX))
        .read_to_end(&mut buf)
        .map_err(|e| format!("cannot read zip entry {name}: {e}"))?;
    match expected {
        Some(n) if buf.len() as u64 != n => {
            Err(format!("zip entry {name} holds {} bytes, the checkpoint declares {n}", buf.len()))
        }
        _ => Ok(buf),
    }
}

/// The state dict inside the unpickled root, chosen as the official TopFormer code does.
fn select_state_dict<'a>(vm: &'a Vm, root: &Value) -> Option<&'a Dict> {
    let Some(Obj::Dict(top)) = vm.obj(root) else { return None };
    ["state_dict_ema", "state_dict", "model"]
        .iter()
        .find_map(|key| match top.get(key).and_then(|v| vm.obj(v)) {
            Some(Obj::Dict(d)) => Some(d),
            _ => None,
        })
        .or(Some(top))
}

/// Builds the contiguous tensor a `_rebuild_tensor_v2` call describes, reading its storage.
fn materialise<R: Read + std::io::Seek>(
    path: &Path,
    name: &str,
    t: &TensorRef,
    zip: &mut zip::ZipArchive<R>,
    folder: &str,
    storages: &mut HashMap<Rc<str>, Vec<u8>>,
) -> Result<Tensor> {
    let file = path.display();
    let err = |msg: String| Error::input(format!("{file}: tensor '{name}': {msg}"));
    let dtype = t.storage.dtype.clone().map_err(|ty| err(format!("unsupported storage type {ty}")))?;
    let numel = checked_numel(path, name, &t.size)?;
    let es = dtype.size();
    if !storages.contains_key(&t.storage.key) {
        let nbytes = t.storage.numel.checked_mul(es).ok_or_else(|| err("storage too large".into()))?;
        let entry = format!("{folder}data/{}", t.storage.key);
        let bytes = read_entry(zip, &entry, Some(nbytes as u64)).map_err(err)?;
        storages.insert(t.storage.key.clone(), bytes);
    }
    let bytes = &storages[&t.storage.key];
    // Elements actually present (a storage shared by tensors is read once, for its first user).
    let available = bytes.len() / es;
    if numel > available {
        return Err(err(format!(
            "{numel} elements viewed in a storage of {available} (overlapping views are not supported)"
        )));
    }
    if numel == 0 {
        return Ok(Tensor { shape: t.size.clone(), data: dtype.decode(&[]) });
    }
    // Highest element index the view touches, checked against the storage.
    let last = t
        .size
        .iter()
        .zip(&t.stride)
        .try_fold(t.offset, |acc, (&n, &s)| (n - 1).checked_mul(s).and_then(|x| acc.checked_add(x)));
    if last.is_none_or(|l| l >= available) {
        return Err(err(format!(
            "view (offset {}, size {:?}, stride {:?}) exceeds its storage of {available} elements",
            t.offset, t.size, t.stride
        )));
    }
    let contiguous = {
        let mut expect = 1usize;
        let mut ok = true;
        for (&n, &s) in t.size.iter().zip(&t.stride).rev() {
            ok &= n == 1 || s == expect;
            expect = expect.saturating_mul(n);
        }
        ok
    };
    let data = if contiguous {
        dtype.decode(&bytes[t.offset * es..(t.offset + numel) * es])
    } else {
        let mut gathered = Vec::with_capacity(numel * es);
        let mut index = vec![0usize; t.size.len()];
        for _ in 0..numel {
            let e = t.offset + index.iter().zip(&t.stride).map(|(i, s)| i * s).sum::<usize>();
            gathered.extend_from_slice(&bytes[e * es..(e + 1) * es]);
            for d in (0..index.len()).rev() {
                index[d] += 1;
                if index[d] < t.size[d] {
                    break;
                }
                index[d] = 0;
            }
        }
        dtype.decode(&gathered)
    };
    Ok(Tensor { shape: t.size.clone(), data })
}

/// Accepts the globals a checkpoint may name: torch's tensor rebuild functions, its tensor, parameter, size
/// and storage types, and Python's containers. Any other is refused by name, before anything could call it.
fn check_global(module: &str, name: &str) -> std::result::Result<(), String> {
    let allowed = match module {
        "torch._utils" => {
            matches!(
                name,
                "_rebuild_tensor" | "_rebuild_tensor_v2" | "_rebuild_parameter" | "_rebuild_parameter_with_state"
            )
        }
        "torch._tensor" => name == "_rebuild_from_type_v2",
        "torch" => name.ends_with("Storage") || matches!(name, "Tensor" | "Size"),
        "torch.nn.parameter" => name == "Parameter",
        "collections" => name == "OrderedDict",
        "builtins" | "__builtin__" => matches!(name, "dict" | "list" | "tuple" | "set" | "frozenset"),
        _ => false,
    };
    if allowed {
        Ok(())
    } else {
        Err(format!(
            "refusing {module}.{name}: a checkpoint may name only torch's tensor rebuild functions, tensor and \
             storage types, and containers"
        ))
    }
}

/// A storage named by a persistent id `('storage', <type>, key, location, numel)`.
#[derive(Clone)]
struct StorageRef {
    /// The element type, or the storage type's name when it is not one this reader decodes.
    dtype: std::result::Result<Dtype, String>,
    key: Rc<str>,
    numel: usize,
}

/// A view into a storage: `_rebuild_tensor_v2`'s arguments.
struct TensorRef {
    storage: StorageRef,
    offset: usize,
    size: Vec<usize>,
    stride: Vec<usize>,
}

/// A pickled value: scalars inline, everything else an index into the VM's heap (so values are
/// cheap to copy, shared like Python references, and free of recursive ownership).
#[derive(Clone)]
enum Value {
    None,
    Bool,
    Int(i64),
    Float,
    Str(Rc<str>),
    Obj(usize),
}

/// A heap object.
enum Obj {
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Dict),
    /// A global reference `module.name` (a class or function, never resolved).
    Global(Rc<str>, Rc<str>),
    Storage(StorageRef),
    /// A tensor, or why its description could not be understood.
    Tensor(std::result::Result<TensorRef, String>),
    /// Anything else, described for error messages.
    Opaque(String),
}

/// A dict (insertion-ordered, like Python's); string keys are indexed for replacement and lookup.
#[derive(Default)]
struct Dict {
    items: Vec<(Value, Value)>,
    by_str: HashMap<Rc<str>, usize>,
}

impl Dict {
    fn insert(&mut self, key: Value, value: Value) {
        if let Value::Str(s) = &key {
            if let Some(&i) = self.by_str.get(s) {
                self.items[i].1 = value;
                return;
            }
            self.by_str.insert(s.clone(), self.items.len());
        }
        self.items.push((key, value));
    }

    fn get(&self, key: &str) -> Option<&Value> {
        self.by_str.get(key).map(|&i| &self.items[i].1)
    }
}

/// The pickle stack machine.
#[derive(Default)]
struct Vm {
    heap: Vec<Obj>,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u64, Value>,
}

/// A cursor over the pickle bytes; every read is bounds-checked.
struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len()).ok_or("truncated pickle")?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> std::result::Result<[u8; N], String> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u8(&mut self) -> std::result::Result<u8, String> {
        Ok(self.array::<1>()?[0])
    }

    fn u32(&mut self) -> std::result::Result<u32, String> {
        self.array().map(u32::from_le_bytes)
    }

    fn u64_len(&mut self) -> std::result::Result<usize, String> {
        usize::try_from(u64::from_le_bytes(self.array()?)).map_err(|_| "length too large".to_string())
    }

    /// A newline-terminated line (protocol 0 arguments), without the newline.
    fn line(&mut self) -> std::result::Result<&'a str, String> {
        let rest = &self.data[self.pos..];
        let n = rest.iter().position(|&b| b == b'\n').ok_or("truncated pickle")?;
        self.pos += n + 1;
        std::str::from_utf8(&rest[..n]).map_err(|_| "non-UTF-8 text argument".to_string())
    }
}

/// Little-endian two's-complement integer of up to 8 bytes (LONG1/LONG4 payloads).
fn le_signed(bytes: &[u8]) -> Option<i64> {
    if bytes.len() > 8 {
        return None;
    }
    let negative = bytes.last().is_some_and(|&b| b & 0x80 != 0);
    let mut buf = [if negative { 0xff } else { 0 }; 8];
    buf[..bytes.len()].copy_from_slice(bytes);
    Some(i64::from_le_bytes(buf))
}

impl Vm {
    fn alloc(&mut self, obj: Obj) -> Value {
        self.heap.push(obj);
        Value::Obj(self.heap.len() - 1)
    }

    fn obj(&self, v: &Value) -> Option<&Obj> {
        match v {
            Value::Obj(i) => self.heap.get(*i),
            _ => None,
        }
    }

    /// A short description of a value's kind, for error messages.
    fn kind(&self, v: &Value) -> String {
        match v {
            Value::None => "None".into(),
            Value::Bool => "bool".into(),
            Value::Int(_) => "int".into(),
            Value::Float => "float".into(),
            Value::Str(_) => "string".into(),
            Value::Obj(_) => match self.obj(v) {
                Some(Obj::Tuple(_)) => "tuple".into(),
                Some(Obj::List(_)) => "list".into(),
                Some(Obj::Dict(_)) => "dict".into(),
                Some(Obj::Global(m, n)) => format!("global {m}.{n}"),
                Some(Obj::Storage(_)) => "storage".into(),
                Some(Obj::Tensor(_)) => "tensor".into(),
                Some(Obj::Opaque(what)) => what.clone(),
                None => "dangling reference".into(),
            },
        }
    }

    fn pop(&mut self) -> std::result::Result<Value, String> {
        if self.marks.last().is_some_and(|&m| m >= self.stack.len()) {
            return Err("stack underflow (pop across a mark)".into());
        }
        self.stack.pop().ok_or_else(|| "stack underflow".to_string())
    }

    fn pop_mark(&mut self) -> std::result::Result<Vec<Value>, String> {
        let m = self.marks.pop().ok_or("no mark on the stack")?;
        Ok(self.stack.split_off(m))
    }

    fn top_index(&self) -> std::result::Result<usize, String> {
        if self.marks.last().is_some_and(|&m| m >= self.stack.len()) || self.stack.is_empty() {
            return Err("stack underflow".into());
        }
        Ok(self.stack.len() - 1)
    }

    fn memo_put(&mut self, key: u64) -> std::result::Result<(), String> {
        let v = self.stack.last().ok_or("memo store on an empty stack")?.clone();
        self.memo.insert(key, v);
        Ok(())
    }

    fn memo_get(&mut self, key: u64) -> std::result::Result<(), String> {
        let v = self.memo.get(&key).ok_or_else(|| format!("memo key {key} not found"))?.clone();
        self.stack.push(v);
        Ok(())
    }

    fn tuple(&mut self, items: Vec<Value>) -> Value {
        self.alloc(Obj::Tuple(items))
    }

    fn ints(&self, v: &Value) -> Option<Vec<usize>> {
        match self.obj(v)? {
            Obj::Tuple(items) | Obj::List(items) => items
                .iter()
                .map(|x| match x {
                    Value::Int(i) => usize::try_from(*i).ok(),
                    _ => None,
                })
                .collect(),
            _ => None,
        }
    }

    /// Adds key/value pairs to the dict at stack index `target` (an unknown object receiving items
    /// is a dict subclass: it becomes a dict).
    fn set_items(&mut self, target: usize, pairs: Vec<Value>) -> std::result::Result<(), String> {
        if !pairs.len().is_multiple_of(2) {
            return Err("SETITEMS with an odd number of values".into());
        }
        let Value::Obj(id) = self.stack[target] else {
            return Err(format!("SETITEM on a {}", self.kind(&self.stack[target])));
        };
        if let Obj::Opaque(_) = self.heap[id] {
            self.heap[id] = Obj::Dict(Dict::default());
        }
        let Obj::Dict(dict) = &mut self.heap[id] else {
            return Err(format!("SETITEM on a {}", self.kind(&Value::Obj(id))));
        };
        let mut it = pairs.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            dict.insert(k, v);
        }
        Ok(())
    }

    /// Appends to the list at stack index `target` (an unknown object receiving items becomes a
    /// list; sets receiving ADDITEMS stay opaque).
    fn append(&mut self, target: usize, items: Vec<Value>) -> std::result::Result<(), String> {
        let Value::Obj(id) = self.stack[target] else {
            return Err(format!("APPEND on a {}", self.kind(&self.stack[target])));
        };
        if let Obj::Opaque(_) = self.heap[id] {
            self.heap[id] = Obj::List(Vec::new());
        }
        let Obj::List(list) = &mut self.heap[id] else {
            return Err(format!("APPEND on a {}", self.kind(&Value::Obj(id))));
        };
        list.extend(items);
        Ok(())
    }

    /// The result of calling `callable(*args)`, for the few callables that matter; anything else
    /// yields an opaque object.
    fn call(&mut self, callable: Value, args: Value) -> Value {
        let (mut callable, mut args) = (callable, args);
        for _ in 0..MAX_REBUILD_NESTING {
            let (module, name) = match self.obj(&callable) {
                Some(Obj::Global(m, n)) => (m.clone(), n.clone()),
                _ => return self.alloc(Obj::Opaque(format!("result of calling a {}", self.kind(&callable)))),
            };
            let argv: Vec<Value> = match self.obj(&args) {
                Some(Obj::Tuple(a)) => a.clone(),
                _ => return self.alloc(Obj::Opaque(format!("{module}.{name}(...)"))),
            };
            match (&*module, &*name) {
                ("torch._utils", "_rebuild_tensor_v2" | "_rebuild_tensor") => {
                    let t = self.tensor_ref(&argv);
                    return self.alloc(Obj::Tensor(t));
                }
                ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") if !argv.is_empty() => {
                    return argv[0].clone();
                }
                ("torch._tensor", "_rebuild_from_type_v2") if argv.len() >= 3 => {
                    callable = argv[0].clone();
                    args = argv[2].clone();
                }
                ("collections", "OrderedDict") | ("builtins" | "__builtin__", "dict") => {
                    return self
                        .new_dict(&argv)
                        .unwrap_or_else(|| self.alloc(Obj::Opaque(format!("{module}.{name}(...)"))));
                }
                _ => return self.alloc(Obj::Opaque(format!("{module}.{name}(...)"))),
            }
        }
        self.alloc(Obj::Opaque("deeply nested tensor rebuild".into()))
    }

    /// `dict()` / `OrderedDict()` with no arguments or one sequence of key/value pairs.
    fn new_dict(&mut self, argv: &[Value]) -> Option<Value> {
        let mut dict = Dict::default();
        match argv {
            [] => {}
            [seq] => {
                let (Obj::List(pairs) | Obj::Tuple(pairs)) = self.obj(seq)? else { return None };
                for pair in pairs {
                    match self.obj(pair)? {
                        Obj::Tuple(kv) | Obj::List(kv) if kv.len() == 2 => dict.insert(kv[0].clone(), kv[1].clone()),
                        _ => return None,
                    }
                }
            }
            _ => return None,
        }
        Some(self.alloc(Obj::Dict(dict)))
    }

    /// Interprets `_rebuild_tensor_v2(storage, storage_offset, size, stride, ...)` arguments.
    fn tensor_ref(&self, argv: &[Value]) -> std::result::Result<TensorRef, String> {
        let [storage, offset, size, stride, ..] = argv else {
            return Err(format!("_rebuild_tensor_v2 called with {} arguments", argv.len()));
        };
        let storage = match self.obj(storage) {
            Some(Obj::Storage(s)) => s.clone(),
            _ => return Err(format!("storage argument is a {}", self.kind(storage))),
        };
        let offset = match offset {
            Value::Int(o) => usize::try_from(*o).map_err(|_| format!("negative storage offset {o}"))?,
            other => return Err(format!("storage offset is a {}", self.kind(other))),
        };
        let size = self.ints(size).ok_or("size is not a tuple of non-negative ints")?;
        let stride = self.ints(stride).ok_or("stride is not a tuple of non-negative ints")?;
        if size.len() != stride.len() {
            return Err(format!("size {size:?} and stride {stride:?} differ in length"));
        }
        Ok(TensorRef { storage, offset, size, stride })
    }

    /// Interprets a persistent id: torch's `('storage', <type>, key, location, numel)`.
    fn persistent_load(&mut self, pid: Value) -> Value {
        let storage = match self.obj(&pid) {
            Some(Obj::Tuple(t)) if t.len() >= 5 && matches!(&t[0], Value::Str(s) if &**s == "storage") => {
                let dtype = match self.obj(&t[1]) {
                    Some(Obj::Global(m, n)) if &**m == "torch" => match &**n {
                        "FloatStorage" => Ok(Dtype::F32),
                        "HalfStorage" => Ok(Dtype::F16),
                        "BFloat16Storage" => Ok(Dtype::BF16),
                        "DoubleStorage" => Ok(Dtype::F64),
                        "LongStorage" => Ok(Dtype::I64),
                        "IntStorage" => Ok(Dtype::I32),
                        other => Err(format!("torch.{other}")),
                    },
                    _ => Err(self.kind(&t[1])),
                };
                match (&t[2], &t[4]) {
                    (Value::Str(key), Value::Int(n)) if *n >= 0 && !key.contains(['/', '\\']) => {
                        usize::try_from(*n).ok().map(|numel| StorageRef { dtype, key: key.clone(), numel })
                    }
                    _ => None,
                }
            }
            _ => None,
        };
        match storage {
            Some(s) => self.alloc(Obj::Storage(s)),
            None => self.alloc(Obj::Opaque("unknown persistent id".into())),
        }
    }

    /// Runs the pickle and returns the value STOP leaves on the stack.
    fn run(&mut self, data: &[u8]) -> std::result::Result<Value, String> {
        let mut r = Reader { data, pos: 0 };
        loop {
            let at = r.pos;
            let op = r.u8().map_err(|_| "pickle ends without STOP".to_string())?;
            self.step(op, &mut r).map_err(|e| format!("pickle opcode {:#04x} at byte {at}: {e}", op))?;
            if op == b'.' {
                return self.stack.pop().ok_or_else(|| "STOP on an empty stack".to_string());
            }
        }
    }

    /// Executes one opcode.
    fn step(&mut self, op: u8, r: &mut Reader) -> std::result::Result<(), String> {
        match op {
            // Framing and protocol.
            0x80 => {
                r.u8()?;
            }
            0x95 => {
                r.take(8)?;
            }
            b'.' => {}
            // Stack manipulation.
            b'(' => self.marks.push(self.stack.len()),
            b'0' => {
                self.pop()?;
            }
            b'1' => {
                self.pop_mark()?;
            }
            b'2' => {
                let v = self.stack[self.top_index()?].clone();
                self.stack.push(v);
            }
            // Memo.
            b'q' => self.memo_put(u64::from(r.u8()?))?,
            b'r' => self.memo_put(u64::from(r.u32()?))?,
            0x94 => self.memo_put(self.memo.len() as u64)?,
            b'p' => self.memo_put(r.line()?.trim().parse().map_err(|_| "bad PUT index")?)?,
            b'h' => self.memo_get(u64::from(r.u8()?))?,
            b'j' => self.memo_get(u64::from(r.u32()?))?,
            b'g' => self.memo_get(r.line()?.trim().parse().map_err(|_| "bad GET index")?)?,
            // Scalars.
            b'N' => self.stack.push(Value::None),
            0x88 | 0x89 => self.stack.push(Value::Bool),
            b'K' => self.stack.push(Value::Int(i64::from(r.u8()?))),
            b'M' => self.stack.push(Value::Int(i64::from(u16::from_le_bytes(r.array()?)))),
            b'J' => self.stack.push(Value::Int(i64::from(i32::from_le_bytes(r.array()?)))),
            0x8a | 0x8b => {
                let n = if op == 0x8a { usize::from(r.u8()?) } else { r.u32()? as usize };
                let v = match le_signed(r.take(n)?) {
                    Some(i) => Value::Int(i),
                    None => self.alloc(Obj::Opaque("big integer".into())),
                };
                self.stack.push(v);
            }
            b'I' | b'L' => {
                let text = r.line()?.trim_end_matches('L');
                let v = match text {
                    "01" | "00" => Value::Bool,
                    _ => match text.parse() {
                        Ok(i) => Value::Int(i),
                        Err(_) => self.alloc(Obj::Opaque("big integer".into())),
                    },
                };
                self.stack.push(v);
            }
            b'G' => {
                r.take(8)?;
                self.stack.push(Value::Float);
            }
            b'F' => {
                r.line()?;
                self.stack.push(Value::Float);
            }
            // Strings (protocol 2 `str` of Python 2 included) and bytes.
            0x8c | b'X' | 0x8d | b'U' | b'T' => {
                let n = match op {
                    0x8c | b'U' => usize::from(r.u8()?),
                    0x8d => r.u64_len()?,
                    _ => r.u32()? as usize,
                };
                let s = String::from_utf8_lossy(r.take(n)?);
                self.stack.push(Value::Str(Rc::from(s.as_ref())));
            }
            b'C' | b'B' | 0x8e | 0x96 => {
                let n = match op {
                    b'C' => usize::from(r.u8()?),
                    b'B' => r.u32()? as usize,
                    _ => r.u64_len()?,
                };
                r.take(n)?;
                let v = self.alloc(Obj::Opaque("bytes".into()));
                self.stack.push(v);
            }
            b'V' | b'S' => {
                let s = r.line()?;
                let s = if op == b'S' { s.trim_matches(['\'', '"']) } else { s };
                self.stack.push(Value::Str(Rc::from(s)));
            }
            // Containers.
            b'}' => {
                let v = self.alloc(Obj::Dict(Dict::default()));
                self.stack.push(v);
            }
            b']' => {
                let v = self.alloc(Obj::List(Vec::new()));
                self.stack.push(v);
            }
            b')' => {
                let v = self.tuple(Vec::new());
                self.stack.push(v);
            }
            0x85..=0x87 => {
                let n = usize::from(op - 0x84);
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.pop()?);
                }
                items.reverse();
                let v = self.tuple(items);
                self.stack.push(v);
            }
            b't' => {
                let items = self.pop_mark()?;
                let v = self.tuple(items);
                self.stack.push(v);
            }
            b'l' => {
                let items = self.pop_mark()?;
                let v = self.alloc(Obj::List(items));
                self.stack.push(v);
            }
            b'd' => {
                let items = self.pop_mark()?;
                let v = self.alloc(Obj::Dict(Dict::default()));
                self.stack.push(v);
                let target = self.stack.len() - 1;
                self.set_items(target, items)?;
            }
            b's' => {
                let value = self.pop()?;
                let key = self.pop()?;
                let target = self.top_index()?;
                self.set_items(target, vec![key, value])?;
            }
            b'u' => {
                let items = self.pop_mark()?;
                let target = self.top_index()?;
                self.set_items(target, items)?;
            }
            b'a' => {
                let value = self.pop()?;
                let target = self.top_index()?;
                self.append(target, vec![value])?;
            }
            b'e' => {
                let items = self.pop_mark()?;
                let target = self.top_index()?;
                self.append(target, items)?;
            }
            0x8f => {
                let v = self.alloc(Obj::Opaque("set".into()));
                self.stack.push(v);
            }
            0x90 => {
                self.pop_mark()?;
                self.top_index()?;
            }
            0x91 => {
                self.pop_mark()?;
                let v = self.alloc(Obj::Opaque("frozenset".into()));
                self.stack.push(v);
            }
            // Globals and objects.
            b'c' => {
                let module: Rc<str> = Rc::from(r.line()?);
                let name: Rc<str> = Rc::from(r.line()?);
                check_global(&module, &name)?;
                let v = self.alloc(Obj::Global(module, name));
                self.stack.push(v);
            }
            0x93 => {
                let name = self.pop()?;
                let module = self.pop()?;
                let (Value::Str(module), Value::Str(name)) = (module, name) else {
                    return Err("STACK_GLOBAL needs two strings".into());
                };
                check_global(&module, &name)?;
                let v = self.alloc(Obj::Global(module, name));
                self.stack.push(v);
            }
            b'R' => {
                let args = self.pop()?;
                let callable = self.pop()?;
                let v = self.call(callable, args);
                self.stack.push(v);
            }
            0x81 | 0x92 => {
                if op == 0x92 {
                    self.pop()?; // kwargs
                }
                let _args = self.pop()?;
                let cls = self.pop()?;
                let v = match self.obj(&cls) {
                    Some(Obj::Global(m, n)) if matches!((&**m, &**n), ("collections", "OrderedDict")) => {
                        self.alloc(Obj::Dict(Dict::default()))
                    }
                    Some(Obj::Global(m, n)) => {
                        let what = format!("{m}.{n} object");
                        self.alloc(Obj::Opaque(what))
                    }
                    _ => self.alloc(Obj::Opaque("object".into())),
                };
                self.stack.push(v);
            }
            b'b' => {
                // Object state (e.g. an OrderedDict's `_metadata`) is not needed.
                self.pop()?;
                self.top_index()?;
            }
            b'Q' => {
                let pid = self.pop()?;
                let v = self.persistent_load(pid);
                self.stack.push(v);
            }
            b'P' => {
                r.line()?;
                let v = self.alloc(Obj::Opaque("persistent id".into()));
                self.stack.push(v);
            }
            _ => return Err("unsupported opcode".into()),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::weights::tests::{assert_maps_identical, expect_err, manifest_path, TempPath};
    use crate::exec::weights::{read_tensors, TensorData};
    use std::io::Write;

    /// A tiny pickle writer for hand-made test checkpoints (protocol 2 opcodes plus a few of 4).
    #[derive(Default)]
    struct Pickle(Vec<u8>);

    impl Pickle {
        fn op(&mut self, bytes: &[u8]) -> &mut Self {
            self.0.extend_from_slice(bytes);
            self
        }
        fn str(&mut self, s: &str) -> &mut Self {
            if s.len() < 256 && s.len().is_multiple_of(2) {
                self.op(&[0x8c, s.len() as u8]).op(s.as_bytes()) // SHORT_BINUNICODE
            } else {
                self.op(b"X").op(&(s.len() as u32).to_le_bytes()).op(s.as_bytes())
            }
        }
        fn int(&mut self, i: i64) -> &mut Self {
            match i {
                0..=255 => self.op(&[b'K', i as u8]),
                256..=65535 => self.op(b"M").op(&(i as u16).to_le_bytes()),
                _ => self.op(&[0x8a, 8]).op(&i.to_le_bytes()),
            }
        }
        fn global(&mut self, module: &str, name: &str) -> &mut Self {
            self.op(b"c").op(module.as_bytes()).op(b"\n").op(name.as_bytes()).op(b"\n")
        }
        fn ints(&mut self, v: &[i64]) -> &mut Self {
            self.op(b"(");
            for &i in v {
                self.int(i);
            }
            self.op(b"t")
        }
        /// `_rebuild_tensor_v2(('storage', torch.<ty>, key, 'cpu', numel), offset, size, stride, False, OrderedDict())`.
        fn tensor(&mut self, ty: &str, key: &str, numel: i64, offset: i64, size: &[i64], stride: &[i64]) -> &mut Self {
            self.global("torch._utils", "_rebuild_tensor_v2").op(b"(");
            self.op(b"(").str("storage").global("torch", ty).str(key).str("cpu").int(numel).op(b"tQ");
            self.int(offset).ints(size).ints(stride).op(&[0x89]);
            self.global("collections", "OrderedDict").op(b")R").op(b"tR")
        }
    }

    /// A zip with `folder/data.pkl` and the given storages under `folder/data/`.
    fn zip_bytes(folder: &str, pickle: Option<&[u8]>, storages: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let mut z = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
        if let Some(p) = pickle {
            z.start_file(format!("{folder}/data.pkl"), opts).unwrap();
            z.write_all(p).unwrap();
        }
        z.start_file(format!("{folder}/byteorder"), opts).unwrap();
        z.write_all(b"little").unwrap();
        for (key, bytes) in storages {
            z.start_file(format!("{folder}/data/{key}"), opts).unwrap();
            z.write_all(bytes).unwrap();
        }
        z.finish().unwrap().into_inner()
    }

    fn write_zip(path: &Path, folder: &str, pickle: Option<&[u8]>, storages: &[(&str, Vec<u8>)]) {
        std::fs::write(path, zip_bytes(folder, pickle, storages)).unwrap();
    }

    fn f32_bytes(v: impl IntoIterator<Item = f32>) -> Vec<u8> {
        v.into_iter().flat_map(f32::to_le_bytes).collect()
    }

    /// A checkpoint `{'meta': {...rich values...}, 'state_dict_ema': OrderedDict(module.* tensors)}`
    /// with a transposed view, an offset view sharing its storage, int64, half and a Parameter.
    fn views_pickle() -> Vec<u8> {
        let mut p = Pickle::default();
        p.op(&[0x80, 2]).op(b"}").op(&[0x94]).op(b"(");
        // meta: nested values of many kinds, an unknown object with state, and a dict subclass.
        p.str("meta").op(b"}q\x01(");
        p.str("name")
            .str("views-test")
            .str("epoch")
            .int(-7i64.rem_euclid(1 << 40))
            .str("lr")
            .op(b"G")
            .op(&0.01f64.to_be_bytes());
        p.str("flags").op(b"(").op(&[0x88, 0x89]).op(b"Nt");
        p.str("history").op(b"](").int(1).int(70000).op(b"e");
        p.str("blob").op(b"C\x03abc");
        p.str("cfg").global("builtins", "dict").op(b")R(").str("k").int(3).op(b"u");
        p.str("obj").global("builtins", "set").op(b")").op(&[0x81]).op(b"}").str("x").int(1).op(b"sb");
        p.str("big").op(&[0x8a, 9]).op(&[1, 2, 3, 4, 5, 6, 7, 8, 9]);
        p.str("set").op(&[0x8f]).op(b"(").int(1).op(&[0x90]);
        p.op(b"h\x01").op(b"0"); // BINGET then POP: memo round trip
        p.op(b"u");
        // A decoy plain state_dict that must not be chosen.
        p.str("state_dict").op(b"}");
        p.str("state_dict_ema").global("collections", "OrderedDict").op(b")R(");
        // storage '0': 12 floats 0..11; weight = transpose of a [3,4] view -> size [4,3] stride [1,4].
        p.str("module.t").tensor("FloatStorage", "0", 12, 0, &[4, 3], &[1, 4]);
        // offset view into the same storage: elements 5..9 as [2,2].
        p.str("module.off").tensor("FloatStorage", "0", 12, 5, &[2, 2], &[2, 1]);
        // a strided row slice with offset: storage '0' viewed [[1,3],[9,11]] (offset 1, stride [8,2]).
        p.str("module.strided").tensor("FloatStorage", "0", 12, 1, &[2, 2], &[8, 2]);
        p.str("module.count").tensor("LongStorage", "1", 1, 0, &[], &[]);
        p.str("module.half").tensor("HalfStorage", "2", 2, 0, &[2], &[1]);
        p.str("module.param").global("torch._utils", "_rebuild_parameter").op(b"(");
        p.tensor("DoubleStorage", "3", 3, 1, &[2], &[1])
            .op(&[0x88])
            .global("collections", "OrderedDict")
            .op(b")Rt")
            .op(b"R");
        p.op(b"u"); // state_dict_ema items
        p.op(b"}").str("_metadata").op(b"}").op(b"sb"); // OrderedDict state, ignored
        p.op(b"u."); // top-level items, STOP
        p.0
    }

    fn views_storages() -> Vec<(&'static str, Vec<u8>)> {
        vec![
            ("0", f32_bytes((0..12).map(|i| i as f32))),
            ("1", 42i64.to_le_bytes().to_vec()),
            ("2", [0x3c00u16, 0xbc00].iter().flat_map(|v| v.to_le_bytes()).collect()),
            ("3", [1.5f64, 2.5, -3.5].iter().flat_map(|v| v.to_le_bytes()).collect()),
        ]
    }

    #[test]
    fn views_offsets_dtypes_and_rich_meta() {
        let tmp = TempPath::new("views.pth");
        write_zip(&tmp.0, "views", Some(&views_pickle()), &views_storages());
        let map = read_tensors(&tmp.0).unwrap();
        assert_eq!(map.keys().collect::<Vec<_>>(), vec!["count", "half", "off", "param", "strided", "t"]);
        let t = &map["t"];
        assert_eq!(t.shape, vec![4, 3]);
        assert_eq!(t.data, TensorData::F32(vec![0., 4., 8., 1., 5., 9., 2., 6., 10., 3., 7., 11.]));
        assert_eq!(map["off"].data, TensorData::F32(vec![5., 6., 7., 8.]));
        assert_eq!(map["strided"].data, TensorData::F32(vec![1., 3., 9., 11.]));
        assert_eq!(map["count"].shape, Vec::<usize>::new());
        assert_eq!(map["count"].data, TensorData::I64(vec![42]));
        assert_eq!(map["half"].data, TensorData::F32(vec![1.0, -1.0]));
        assert_eq!(map["param"].data, TensorData::F32(vec![2.5, -3.5]));
    }

    #[test]
    fn python_protocol4_pickle() {
        // Written by Python 3's pickle at protocol 4 (FRAME, STACK_GLOBAL, MEMOIZE, SHORT_BINUNICODE,
        // BINPERSID, ...) with stand-ins for torch's globals; see tests/fixtures/pth/make_proto4.py.
        let map = read_tensors(&manifest_path("tests/fixtures/pth/proto4-views.pth")).unwrap();
        assert_eq!(map.keys().collect::<Vec<_>>(), vec!["bias", "steps", "weight_t"]);
        assert_eq!(map["weight_t"].shape, vec![3, 2]);
        assert_eq!(map["weight_t"].data, TensorData::F32(vec![1., 4., 2., 5., 3., 6.]));
        assert_eq!(map["bias"].data, TensorData::F32(vec![5., 6.]));
        assert_eq!(map["steps"].data, TensorData::I64(vec![-3, 1 << 40]));
    }

    #[test]
    fn pth_and_safetensors_of_micro_use_the_folder_from_the_zip() {
        // The micro .pth's folder is its stem; copying it under another name must not matter.
        let tmp = TempPath::new("renamed.bin");
        std::fs::copy(manifest_path("tests/fixtures/micro/topformer-micro-seed5.pth"), &tmp.0).unwrap();
        let a = read_tensors(&tmp.0).unwrap();
        let b = read_tensors(&manifest_path("tests/fixtures/micro/topformer-micro-seed5.safetensors")).unwrap();
        assert_maps_identical(&a, &b);
    }

    #[test]
    fn zip_without_data_pkl() {
        let tmp = TempPath::new("nopkl.pth");
        write_zip(&tmp.0, "archive", None, &views_storages());
        expect_err(&tmp.0, "data.pkl");
    }

    #[test]
    fn corrupt_zip_and_pickles() {
        let tmp = TempPath::new("corrupt.pth");
        std::fs::write(&tmp.0, b"PK\x03\x04 this is not really a zip").unwrap();
        expect_err(&tmp.0, "zip");

        let good = views_pickle();
        write_zip(&tmp.0, "archive", Some(&good[..good.len() / 2]), &views_storages());
        expect_err(&tmp.0, "pickle");

        let mut bad_op = good.clone();
        bad_op.insert(2, 0xff);
        write_zip(&tmp.0, "archive", Some(&bad_op), &views_storages());
        expect_err(&tmp.0, "unsupported opcode");

        // A huge declared string length must fail cleanly, not allocate.
        write_zip(&tmp.0, "archive", Some(b"\x80\x04\x8d\xff\xff\xff\xff\xff\xff\xff\x7f"), &[]);
        expect_err(&tmp.0, "truncated");

        // Deep nesting must not overflow the stack.
        let deep = [&b"\x80\x02)"[..], &[0x85; 200_000], b"."].concat();
        write_zip(&tmp.0, "archive", Some(&deep), &[]);
        expect_err(&tmp.0, "does not hold a dict");

        // A pickle whose root is not a dict.
        write_zip(&tmp.0, "archive", Some(b"\x80\x02K\x05."), &[]);
        expect_err(&tmp.0, "does not hold a dict");
    }

    #[test]
    fn pickles_naming_other_callables_are_refused_by_name() {
        let tmp = TempPath::new("callables.pth");
        for (module, name) in [
            ("os", "system"),
            ("builtins", "eval"),
            ("__builtin__", "getattr"),
            ("mmcv.utils.config", "ConfigDict"),
            ("numpy.core.multiarray", "scalar"),
            ("torch", "load"),
            ("torch._utils", "_rebuild_qtensor"),
            ("collections", "deque"),
        ] {
            // GLOBAL (protocol 2) and STACK_GLOBAL (protocol 4) alike, even inside an otherwise good state dict.
            let mut global = Pickle::default();
            global.op(&[0x80, 2]).op(b"}(").str("meta").global(module, name).op(b")R");
            global.str("w").tensor("FloatStorage", "0", 4, 0, &[4], &[1]).op(b"u.");
            let mut stack_global = Pickle::default();
            stack_global.op(&[0x80, 4]).op(b"}(").str("meta").str(module).str(name).op(&[0x93]).op(b")Ru.");
            for pickle in [global.0, stack_global.0] {
                write_zip(&tmp.0, "a", Some(&pickle), &[("0", f32_bytes([1.0, 2.0, 3.0, 4.0]))]);
                expect_err(&tmp.0, &format!("refusing {module}.{name}"));
            }
        }
    }

    /// A dotted Python name made of `parts` identifiers.
    fn python_name(parts: std::ops::RangeInclusive<usize>) -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let ident =
            prop::collection::vec(prop::sample::select(b"abcdefghijklmnopqrstuvwxyz_ABCXYZ0123".to_vec()), 1..12)
                .prop_map(|bytes| String::from_utf8(bytes).expect("ASCII"));
        prop::collection::vec(ident, parts).prop_map(|parts| parts.join("."))
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// Any global outside the allowed few is refused, by its name, whichever opcode names it.
        #[test]
        fn any_other_global_is_refused_by_name(module in python_name(1..=3), name in python_name(1..=1)) {
            proptest::prop_assume!(check_global(&module, &name).is_err());
            let mut pickle = Pickle::default();
            pickle.op(&[0x80, 4]).op(b"}(").str("meta").str(&module).str(&name).op(&[0x93]).op(b")Ru.");
            let err = read_pth(Path::new("p.pth"), &zip_bytes("a", Some(&pickle.0), &[])).unwrap_err().to_string();
            let named = format!("refusing {module}.{name}");
            proptest::prop_assert!(err.contains(&named), "{}", err);
        }
    }

    #[test]
    fn tensor_errors_name_the_tensor() {
        let tmp = TempPath::new("tensors.pth");
        let one = |ty: &str, numel: i64, offset: i64, size: &[i64], stride: &[i64]| {
            let mut p = Pickle::default();
            p.op(&[0x80, 2]).op(b"}(").str("w").tensor(ty, "0", numel, offset, size, stride).op(b"u.");
            p.0
        };
        let storage = vec![("0", f32_bytes([1.0, 2.0, 3.0, 4.0]))];
        // Missing storage entry.
        write_zip(&tmp.0, "a", Some(&one("FloatStorage", 4, 0, &[4], &[1])), &[]);
        expect_err(&tmp.0, "'w'");
        // Storage shorter than declared.
        write_zip(&tmp.0, "a", Some(&one("FloatStorage", 8, 0, &[4], &[1])), &storage);
        expect_err(&tmp.0, "declares 32");
        // View beyond the storage.
        write_zip(&tmp.0, "a", Some(&one("FloatStorage", 4, 2, &[2, 2], &[2, 1])), &storage);
        expect_err(&tmp.0, "exceeds its storage");
        // Unsupported storage type.
        write_zip(&tmp.0, "a", Some(&one("ByteStorage", 16, 0, &[16], &[1])), &storage);
        expect_err(&tmp.0, "torch.ByteStorage");
        // A state dict value that is not a tensor.
        write_zip(&tmp.0, "a", Some(b"\x80\x02}(X\x01\x00\x00\x00wK\x01u."), &[]);
        expect_err(&tmp.0, "'w' is a int");
    }

    #[test]
    fn damaged_pickles_never_panic() {
        // Every single-byte corruption and every truncation of a valid checkpoint's pickle must
        // give Ok or a clean Err.
        let good = views_pickle();
        let storages = views_storages();
        let path = Path::new("fuzz.pth");
        let mut errors = 0;
        for i in 0..good.len() {
            for variant in 0..4 {
                let mut bad = good.clone();
                match variant {
                    0 => bad[i] ^= 0xff,
                    1 => bad[i] ^= 0x01,
                    2 => bad[i] = b'(',
                    _ => bad.truncate(i),
                }
                errors += usize::from(read_pth(path, &zip_bytes("f", Some(&bad), &storages)).is_err());
            }
        }
        assert!(errors > good.len(), "corruptions were not detected ({errors} errors)");
    }
}
