//! The subset of the ONNX protobuf messages (onnx.proto3) the exporter writes, declared by hand with
//! `prost` derives so no `protoc` or generated code is needed. Field numbers follow onnx.proto3; the
//! `oneof`s of `TypeProto` and `Dimension` are written as the one optional member used, which is the same
//! on the wire.

/// A whole model: IR version, opsets and the graph.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ModelProto {
    /// ONNX IR version (7 for opset 13, 8 for opset 17).
    #[prost(int64, tag = "1")]
    pub ir_version: i64,
    /// The program that wrote the file.
    #[prost(string, tag = "2")]
    pub producer_name: String,
    /// Its version.
    #[prost(string, tag = "3")]
    pub producer_version: String,
    /// A description of the model.
    #[prost(string, tag = "6")]
    pub doc_string: String,
    /// The graph.
    #[prost(message, optional, tag = "7")]
    pub graph: Option<GraphProto>,
    /// Operator sets the graph uses.
    #[prost(message, repeated, tag = "8")]
    pub opset_import: Vec<OperatorSetIdProto>,
}

/// An operator set: the default ONNX domain is the empty string.
#[derive(Clone, PartialEq, prost::Message)]
pub struct OperatorSetIdProto {
    /// Domain.
    #[prost(string, tag = "1")]
    pub domain: String,
    /// Version.
    #[prost(int64, tag = "2")]
    pub version: i64,
}

/// Nodes in topological order, constant tensors, inputs, outputs and known intermediate shapes.
#[derive(Clone, PartialEq, prost::Message)]
pub struct GraphProto {
    /// Nodes, in topological order.
    #[prost(message, repeated, tag = "1")]
    pub node: Vec<NodeProto>,
    /// Graph name.
    #[prost(string, tag = "2")]
    pub name: String,
    /// Constant tensors (weights and op arguments).
    #[prost(message, repeated, tag = "5")]
    pub initializer: Vec<TensorProto>,
    /// Graph inputs.
    #[prost(message, repeated, tag = "11")]
    pub input: Vec<ValueInfoProto>,
    /// Graph outputs.
    #[prost(message, repeated, tag = "12")]
    pub output: Vec<ValueInfoProto>,
    /// Shapes of intermediate values.
    #[prost(message, repeated, tag = "13")]
    pub value_info: Vec<ValueInfoProto>,
}

/// One operator application.
#[derive(Clone, PartialEq, prost::Message)]
pub struct NodeProto {
    /// Input value names; an empty name skips an optional input.
    #[prost(string, repeated, tag = "1")]
    pub input: Vec<String>,
    /// Output value names.
    #[prost(string, repeated, tag = "2")]
    pub output: Vec<String>,
    /// Node name (unique in the graph).
    #[prost(string, tag = "3")]
    pub name: String,
    /// Operator, e.g. `Conv`.
    #[prost(string, tag = "4")]
    pub op_type: String,
    /// Attributes.
    #[prost(message, repeated, tag = "5")]
    pub attribute: Vec<AttributeProto>,
    /// Operator domain (empty: the default ONNX domain).
    #[prost(string, tag = "7")]
    pub domain: String,
}

/// A named attribute; `r#type` says which value field is set.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AttributeProto {
    /// Name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// A float value.
    #[prost(float, tag = "2")]
    pub f: f32,
    /// An integer value.
    #[prost(int64, tag = "3")]
    pub i: i64,
    /// A string value.
    #[prost(bytes = "vec", tag = "4")]
    pub s: Vec<u8>,
    /// Integer values.
    #[prost(int64, repeated, tag = "8")]
    pub ints: Vec<i64>,
    /// Which value is set: [`ATTRIBUTE_FLOAT`], [`ATTRIBUTE_INT`], [`ATTRIBUTE_STRING`] or [`ATTRIBUTE_INTS`].
    #[prost(int32, tag = "20")]
    pub r#type: i32,
}

/// `AttributeProto.type` of a float.
pub const ATTRIBUTE_FLOAT: i32 = 1;
/// `AttributeProto.type` of an integer.
pub const ATTRIBUTE_INT: i32 = 2;
/// `AttributeProto.type` of a string.
pub const ATTRIBUTE_STRING: i32 = 3;
/// `AttributeProto.type` of a list of integers.
pub const ATTRIBUTE_INTS: i32 = 7;

/// A constant tensor, its data little-endian in `raw_data`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorProto {
    /// Shape.
    #[prost(int64, repeated, tag = "1")]
    pub dims: Vec<i64>,
    /// Element type: [`FLOAT`] or [`INT64`].
    #[prost(int32, tag = "2")]
    pub data_type: i32,
    /// Name, by which nodes refer to it.
    #[prost(string, tag = "8")]
    pub name: String,
    /// Little-endian element bytes.
    #[prost(bytes = "vec", tag = "9")]
    pub raw_data: Vec<u8>,
}

/// `TensorProto.DataType` of f32.
pub const FLOAT: i32 = 1;
/// `TensorProto.DataType` of i64.
pub const INT64: i32 = 7;

/// A named value with its type.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ValueInfoProto {
    /// Name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Type.
    #[prost(message, optional, tag = "2")]
    pub r#type: Option<TypeProto>,
}

/// A value's type (only tensors here).
#[derive(Clone, PartialEq, prost::Message)]
pub struct TypeProto {
    /// A tensor type.
    #[prost(message, optional, tag = "1")]
    pub tensor_type: Option<TensorTypeProto>,
}

/// Element type and shape of a tensor value.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorTypeProto {
    /// Element type ([`FLOAT`] or [`INT64`]).
    #[prost(int32, tag = "1")]
    pub elem_type: i32,
    /// Shape.
    #[prost(message, optional, tag = "2")]
    pub shape: Option<TensorShapeProto>,
}

/// A tensor shape.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorShapeProto {
    /// Dimensions, outermost first.
    #[prost(message, repeated, tag = "1")]
    pub dim: Vec<Dimension>,
}

/// One fixed dimension.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Dimension {
    /// Its size.
    #[prost(int64, optional, tag = "1")]
    pub dim_value: Option<i64>,
}

impl ValueInfoProto {
    /// A tensor value of element type `elem_type` and a fixed `shape`.
    pub fn tensor(name: &str, elem_type: i32, shape: &[usize]) -> Self {
        let dim = shape.iter().map(|&d| Dimension { dim_value: Some(d as i64) }).collect();
        let tensor_type = TensorTypeProto { elem_type, shape: Some(TensorShapeProto { dim }) };
        ValueInfoProto { name: name.into(), r#type: Some(TypeProto { tensor_type: Some(tensor_type) }) }
    }

    /// Element type and shape, if this is a tensor value with a fixed shape.
    pub fn tensor_shape(&self) -> Option<(i32, Vec<usize>)> {
        let tensor = self.r#type.as_ref()?.tensor_type.as_ref()?;
        let dims = tensor.shape.as_ref()?.dim.iter().map(|d| d.dim_value.map(|v| v as usize)).collect::<Option<_>>()?;
        Some((tensor.elem_type, dims))
    }
}

impl TensorProto {
    /// An f32 tensor.
    pub fn float(name: &str, shape: &[usize], data: &[f32]) -> Self {
        TensorProto {
            dims: shape.iter().map(|&d| d as i64).collect(),
            data_type: FLOAT,
            name: name.into(),
            raw_data: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    /// A 1-D i64 tensor.
    pub fn int64s(name: &str, data: &[i64]) -> Self {
        TensorProto {
            dims: vec![data.len() as i64],
            data_type: INT64,
            name: name.into(),
            raw_data: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    /// The elements of an f32 tensor.
    pub fn float_data(&self) -> Vec<f32> {
        self.raw_data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
    }
}

impl AttributeProto {
    /// An integer attribute.
    pub fn int(name: &str, value: i64) -> Self {
        AttributeProto { name: name.into(), i: value, r#type: ATTRIBUTE_INT, ..Default::default() }
    }

    /// A float attribute.
    pub fn float(name: &str, value: f32) -> Self {
        AttributeProto { name: name.into(), f: value, r#type: ATTRIBUTE_FLOAT, ..Default::default() }
    }

    /// A string attribute.
    pub fn string(name: &str, value: &str) -> Self {
        AttributeProto {
            name: name.into(),
            s: value.as_bytes().to_vec(),
            r#type: ATTRIBUTE_STRING,
            ..Default::default()
        }
    }

    /// A list-of-integers attribute.
    pub fn ints(name: &str, values: &[usize]) -> Self {
        let ints = values.iter().map(|&v| v as i64).collect();
        AttributeProto { name: name.into(), ints, r#type: ATTRIBUTE_INTS, ..Default::default() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn field_numbers_match_onnx_proto3_on_the_wire() {
        // OperatorSetIdProto { domain: "", version: 13 }: field 2, varint → key 0x10, value 13.
        let opset = OperatorSetIdProto { domain: String::new(), version: 13 };
        assert_eq!(opset.encode_to_vec(), [0x10, 13]);
        // A dimension of 0 is still written (explicit presence): field 1, varint → 0x08 0x00.
        assert_eq!(Dimension { dim_value: Some(0) }.encode_to_vec(), [0x08, 0]);
        // AttributeProto.type is field 20, varint: key (20 << 3) = 160 → 0xa0 0x01.
        let bytes = AttributeProto::int("k", 3).encode_to_vec();
        assert_eq!(bytes, [0x0a, 1, b'k', 0x18, 3, 0xa0, 0x01, ATTRIBUTE_INT as u8]);
    }

    #[test]
    fn tensors_and_value_infos_round_trip() {
        let t = TensorProto::float("w", &[2, 1], &[1.5, -2.0]);
        let back = TensorProto::decode(t.encode_to_vec().as_slice()).unwrap();
        assert_eq!(back.float_data(), vec![1.5, -2.0]);
        assert_eq!(back.dims, vec![2, 1]);
        let v = ValueInfoProto::tensor("x", FLOAT, &[1, 3, 5, 7]);
        let back = ValueInfoProto::decode(v.encode_to_vec().as_slice()).unwrap();
        assert_eq!(back.tensor_shape(), Some((FLOAT, vec![1, 3, 5, 7])));
    }
}
