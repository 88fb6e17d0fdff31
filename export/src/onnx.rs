//! ONNX export of a [`Network`]: the protobuf messages of `onnx.proto` that a model needs
//! (field numbers as in ONNX's `onnx/onnx.proto`, IR version 7, opset 13) and the graph
//! writer.
//!
//! The graph: input `features` `[N, d]` (raw rows) → the input stage (`Sub`/`Mul`/`Clip`,
//! or the fused `Max`/`Min` clamp) → per hidden layer `Gemm` + `Relu` → per head `Gemm` →
//! the α-mix of the heads' softmaxes → outputs `probabilities` `[N, C]` and `class` `[N]`
//! (int64, `ArgMax`, the first of equals as in Rust). Weights are stored as f32, as sparse
//! initializers (a pruned layer: only its non-zero weights and their indices), or as int8
//! with one scale per output unit behind a `DequantizeLinear`.

use flotilla_learner::network::{Dense, InputStage, Network, Storage};
use prost::Message;

/// `TensorProto.DataType` values used here.
mod data_type {
    pub const FLOAT: i32 = 1;
    pub const INT8: i32 = 3;
    pub const INT64: i32 = 7;
}

/// `AttributeProto.AttributeType` values used here.
mod attribute_type {
    pub const INT: i32 = 2;
}

/// `ModelProto`.
#[derive(Clone, PartialEq, Message)]
pub struct ModelProto {
    /// IR version.
    #[prost(int64, tag = "1")]
    pub ir_version: i64,
    /// Producer.
    #[prost(string, tag = "2")]
    pub producer_name: String,
    /// Producer's version.
    #[prost(string, tag = "3")]
    pub producer_version: String,
    /// Model version.
    #[prost(int64, tag = "5")]
    pub model_version: i64,
    /// Description.
    #[prost(string, tag = "6")]
    pub doc_string: String,
    /// The graph.
    #[prost(message, optional, tag = "7")]
    pub graph: Option<GraphProto>,
    /// Operator sets.
    #[prost(message, repeated, tag = "8")]
    pub opset_import: Vec<OperatorSetIdProto>,
    /// Key/value metadata.
    #[prost(message, repeated, tag = "14")]
    pub metadata_props: Vec<StringStringEntryProto>,
}

/// `OperatorSetIdProto`.
#[derive(Clone, PartialEq, Message)]
pub struct OperatorSetIdProto {
    /// Domain ("" is the default ONNX domain).
    #[prost(string, tag = "1")]
    pub domain: String,
    /// Version.
    #[prost(int64, tag = "2")]
    pub version: i64,
}

/// `StringStringEntryProto`.
#[derive(Clone, PartialEq, Message)]
pub struct StringStringEntryProto {
    /// Key.
    #[prost(string, tag = "1")]
    pub key: String,
    /// Value.
    #[prost(string, tag = "2")]
    pub value: String,
}

/// `GraphProto`.
#[derive(Clone, PartialEq, Message)]
pub struct GraphProto {
    /// Nodes, in topological order.
    #[prost(message, repeated, tag = "1")]
    pub node: Vec<NodeProto>,
    /// Name.
    #[prost(string, tag = "2")]
    pub name: String,
    /// Constant tensors.
    #[prost(message, repeated, tag = "5")]
    pub initializer: Vec<TensorProto>,
    /// Inputs.
    #[prost(message, repeated, tag = "11")]
    pub input: Vec<ValueInfoProto>,
    /// Outputs.
    #[prost(message, repeated, tag = "12")]
    pub output: Vec<ValueInfoProto>,
    /// Constant sparse tensors.
    #[prost(message, repeated, tag = "15")]
    pub sparse_initializer: Vec<SparseTensorProto>,
}

/// `NodeProto`.
#[derive(Clone, PartialEq, Message)]
pub struct NodeProto {
    /// Input names.
    #[prost(string, repeated, tag = "1")]
    pub input: Vec<String>,
    /// Output names.
    #[prost(string, repeated, tag = "2")]
    pub output: Vec<String>,
    /// Node name.
    #[prost(string, tag = "3")]
    pub name: String,
    /// Operator.
    #[prost(string, tag = "4")]
    pub op_type: String,
    /// Attributes.
    #[prost(message, repeated, tag = "5")]
    pub attribute: Vec<AttributeProto>,
}

/// `AttributeProto` (integer attributes only).
#[derive(Clone, PartialEq, Message)]
pub struct AttributeProto {
    /// Name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Integer value.
    #[prost(int64, optional, tag = "3")]
    pub i: Option<i64>,
    /// Attribute type.
    #[prost(int32, tag = "20")]
    pub r#type: i32,
}

/// `TensorProto` (values as little-endian `raw_data`).
#[derive(Clone, PartialEq, Message)]
pub struct TensorProto {
    /// Shape.
    #[prost(int64, repeated, packed = "false", tag = "1")]
    pub dims: Vec<i64>,
    /// Element type.
    #[prost(int32, tag = "2")]
    pub data_type: i32,
    /// Name.
    #[prost(string, tag = "8")]
    pub name: String,
    /// Values, little-endian.
    #[prost(bytes = "vec", tag = "9")]
    pub raw_data: Vec<u8>,
}

/// `SparseTensorProto` (COO with linear indices).
#[derive(Clone, PartialEq, Message)]
pub struct SparseTensorProto {
    /// The non-zero values `[NNZ]`, named as the dense tensor.
    #[prost(message, optional, tag = "1")]
    pub values: Option<TensorProto>,
    /// Their linear (row-major) indices `[NNZ]`, int64.
    #[prost(message, optional, tag = "2")]
    pub indices: Option<TensorProto>,
    /// The dense shape.
    #[prost(int64, repeated, packed = "false", tag = "3")]
    pub dims: Vec<i64>,
}

/// `ValueInfoProto`.
#[derive(Clone, PartialEq, Message)]
pub struct ValueInfoProto {
    /// Name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Type.
    #[prost(message, optional, tag = "2")]
    pub r#type: Option<TypeProto>,
}

/// `TypeProto` (tensors only: `tensor_type` is the first member of its `oneof`).
#[derive(Clone, PartialEq, Message)]
pub struct TypeProto {
    /// A tensor's type.
    #[prost(message, optional, tag = "1")]
    pub tensor_type: Option<TypeProtoTensor>,
}

/// `TypeProto.Tensor`.
#[derive(Clone, PartialEq, Message)]
pub struct TypeProtoTensor {
    /// Element type.
    #[prost(int32, tag = "1")]
    pub elem_type: i32,
    /// Shape.
    #[prost(message, optional, tag = "2")]
    pub shape: Option<TensorShapeProto>,
}

/// `TensorShapeProto`.
#[derive(Clone, PartialEq, Message)]
pub struct TensorShapeProto {
    /// Dimensions.
    #[prost(message, repeated, tag = "1")]
    pub dim: Vec<Dimension>,
}

/// `TensorShapeProto.Dimension` (its `oneof` as two optional fields).
#[derive(Clone, PartialEq, Message)]
pub struct Dimension {
    /// A fixed size.
    #[prost(int64, optional, tag = "1")]
    pub dim_value: Option<i64>,
    /// A named, free size.
    #[prost(string, optional, tag = "2")]
    pub dim_param: Option<String>,
}

/// What the exported model says about itself (ONNX metadata properties).
#[derive(Debug, Clone, Default)]
pub struct Metadata {
    /// The global model's version (committed rounds).
    pub model_version: u64,
    /// Extra key/value pairs (the transformations applied, the source checkpoint).
    pub properties: Vec<(String, String)>,
}

/// The ONNX opset the graph uses (per-axis `DequantizeLinear`, single-axis `Softmax`).
pub const OPSET: i64 = 13;

/// Builds a graph node by node, naming every value once.
struct Builder {
    graph: GraphProto,
}

impl Builder {
    fn node(&mut self, op: &str, inputs: &[&str], output: &str, attributes: &[(&str, i64)]) {
        let attribute = attributes
            .iter()
            .map(|&(name, i)| AttributeProto { name: name.into(), i: Some(i), r#type: attribute_type::INT })
            .collect();
        self.graph.node.push(NodeProto {
            input: inputs.iter().map(|s| (*s).to_string()).collect(),
            output: vec![output.to_string()],
            name: format!("{op}_{}", self.graph.node.len()),
            op_type: op.into(),
            attribute,
        });
    }

    fn floats(&mut self, name: &str, dims: &[usize], values: &[f32]) {
        let raw_data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.graph.initializer.push(tensor(name, dims, data_type::FLOAT, raw_data));
    }

    fn int64s(&mut self, name: &str, dims: &[usize], values: &[i64]) {
        let raw_data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.graph.initializer.push(tensor(name, dims, data_type::INT64, raw_data));
    }

    /// The weights of `dense` as a value named `name` (an initializer, a sparse initializer,
    /// or the output of a `DequantizeLinear` of int8 initializers).
    fn weights(&mut self, name: &str, dense: &Dense) {
        let dims = [dense.inputs, dense.outputs];
        match &dense.storage {
            Storage::Dense => self.floats(name, &dims, &dense.weight),
            Storage::Sparse => {
                let (indices, values): (Vec<i64>, Vec<f32>) =
                    dense.weight.iter().enumerate().filter(|(_, w)| **w != 0.0).map(|(i, &w)| (i as i64, w)).unzip();
                let nnz = [values.len()];
                let values =
                    tensor(name, &nnz, data_type::FLOAT, values.iter().flat_map(|v| v.to_le_bytes()).collect());
                let indices = tensor(
                    &format!("{name}_indices"),
                    &nnz,
                    data_type::INT64,
                    indices.iter().flat_map(|v| v.to_le_bytes()).collect(),
                );
                self.graph.sparse_initializer.push(SparseTensorProto {
                    values: Some(values),
                    indices: Some(indices),
                    dims: dims.iter().map(|&d| d as i64).collect(),
                });
            }
            Storage::Int8 { scales } => {
                let q: Vec<u8> = dense
                    .weight
                    .chunks_exact(dense.outputs.max(1))
                    .flat_map(|row| {
                        row.iter().zip(scales).map(|(&w, &s)| crate::quantize::level(w, s).to_le_bytes()[0])
                    })
                    .collect();
                let quantised = format!("{name}_int8");
                let scale = format!("{name}_scale");
                let zero = format!("{name}_zero_point");
                self.graph.initializer.push(tensor(&quantised, &dims, data_type::INT8, q));
                self.floats(&scale, &[dense.outputs], scales);
                self.graph.initializer.push(tensor(&zero, &[dense.outputs], data_type::INT8, vec![0; dense.outputs]));
                self.node("DequantizeLinear", &[&quantised, &scale, &zero], name, &[("axis", 1)]);
            }
        }
    }

    /// `output = Gemm(input, W, b)` for `dense`, its parameters named after `name`.
    fn gemm(&mut self, name: &str, input: &str, dense: &Dense, output: &str) {
        let (w, b) = (format!("{name}_weight"), format!("{name}_bias"));
        self.weights(&w, dense);
        self.floats(&b, &[dense.outputs], &dense.bias);
        self.node("Gemm", &[input, &w, &b], output, &[]);
    }
}

fn tensor(name: &str, dims: &[usize], data_type: i32, raw_data: Vec<u8>) -> TensorProto {
    TensorProto { dims: dims.iter().map(|&d| d as i64).collect(), data_type, name: name.into(), raw_data }
}

fn value(name: &str, elem_type: i32, dims: &[Option<usize>]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| match d {
            Some(size) => Dimension { dim_value: Some(*size as i64), dim_param: None },
            None => Dimension { dim_value: None, dim_param: Some("rows".into()) },
        })
        .collect();
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            tensor_type: Some(TypeProtoTensor { elem_type, shape: Some(TensorShapeProto { dim }) }),
        }),
    }
}

/// How the heads' probabilities are mixed in the graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mix {
    /// Per head `Softmax` and `Mul` by its α, then one `Sum`: 3 nodes a head.
    PerHead,
    /// The heads' logits `Concat`enated, one `Softmax` over `[N, K, C]`, one `MatMul` by α:
    /// 5 nodes in all (layer fusion of the mix).
    Fused,
}

/// The ONNX model of `network`, encoded.
pub fn encode(network: &Network, mix: Mix, metadata: &Metadata) -> Vec<u8> {
    let (d, c) = (network.inputs, network.classes);
    let mut b = Builder { graph: GraphProto { name: "flotilla_hbp".into(), ..GraphProto::default() } };
    b.graph.input.push(value("features", data_type::FLOAT, &[None, Some(d)]));
    let mut depth = String::from("features");
    match &network.input {
        InputStage::Identity => {}
        InputStage::Standardize { mean, inv_std, clip } => {
            b.floats("mean", &[d], mean);
            b.floats("inv_std", &[d], inv_std);
            b.floats("clip_low", &[], &[-clip]);
            b.floats("clip_high", &[], &[*clip]);
            b.node("Sub", &["features", "mean"], "centred", &[]);
            b.node("Mul", &["centred", "inv_std"], "scaled", &[]);
            b.node("Clip", &["scaled", "clip_low", "clip_high"], "depth0", &[]);
            depth = "depth0".into();
        }
        InputStage::Clamp { low, high } => {
            b.floats("clamp_low", &[d], low);
            b.floats("clamp_high", &[d], high);
            b.node("Max", &["features", "clamp_low"], "clamped_low", &[]);
            b.node("Min", &["clamped_low", "clamp_high"], "depth0", &[]);
            depth = "depth0".into();
        }
    }
    let mut depths = vec![depth];
    let deepest = network.heads.iter().map(|h| h.source).max().unwrap_or(0).min(network.layers.len());
    for (l, dense) in network.layers.iter().take(deepest).enumerate() {
        let pre = format!("hidden{l}_pre");
        let out = format!("depth{}", l + 1);
        b.gemm(&format!("hidden{l}"), &depths[l].clone(), dense, &pre);
        b.node("Relu", &[&pre], &out, &[]);
        depths.push(out);
    }
    let logits: Vec<String> = network
        .heads
        .iter()
        .enumerate()
        .map(|(k, head)| {
            let out = format!("head{k}_logits");
            b.gemm(&format!("head{k}"), &depths[head.source.min(deepest)].clone(), &head.dense, &out);
            out
        })
        .collect();
    let alphas: Vec<f32> = network.heads.iter().map(|h| h.alpha).collect();
    match mix {
        Mix::PerHead => {
            let mut weighted = Vec::with_capacity(logits.len());
            for (k, logit) in logits.iter().enumerate() {
                let (p, a, out) = (format!("head{k}_proba"), format!("head{k}_alpha"), format!("head{k}_weighted"));
                b.node("Softmax", &[logit], &p, &[("axis", 1)]);
                b.floats(&a, &[], &[alphas[k]]);
                b.node("Mul", &[&p, &a], &out, &[]);
                weighted.push(out);
            }
            let refs: Vec<&str> = weighted.iter().map(String::as_str).collect();
            b.node("Sum", &refs, "probabilities", &[]);
        }
        Mix::Fused => {
            let k = logits.len();
            let refs: Vec<&str> = logits.iter().map(String::as_str).collect();
            b.node("Concat", &refs, "heads_logits", &[("axis", 1)]);
            b.int64s("heads_shape", &[3], &[-1, k as i64, c as i64]);
            b.node("Reshape", &["heads_logits", "heads_shape"], "heads_stacked", &[]);
            b.node("Softmax", &["heads_stacked"], "heads_proba", &[("axis", 2)]);
            b.floats("alpha", &[1, k], &alphas);
            b.node("MatMul", &["alpha", "heads_proba"], "mixed", &[]);
            b.int64s("output_shape", &[2], &[-1, c as i64]);
            b.node("Reshape", &["mixed", "output_shape"], "probabilities", &[]);
        }
    }
    b.node("ArgMax", &["probabilities"], "class", &[("axis", 1), ("keepdims", 0)]);
    b.graph.output.push(value("probabilities", data_type::FLOAT, &[None, Some(c)]));
    b.graph.output.push(value("class", data_type::INT64, &[None]));
    let model = ModelProto {
        ir_version: 7,
        producer_name: "flotilla".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        model_version: i64::try_from(metadata.model_version).unwrap_or(i64::MAX),
        doc_string: "Flotilla HBP network: standardise, ReLU trunk, softmax heads, alpha-weighted mix".into(),
        graph: Some(b.graph),
        opset_import: vec![OperatorSetIdProto { domain: String::new(), version: OPSET }],
        metadata_props: metadata
            .properties
            .iter()
            .map(|(key, value)| StringStringEntryProto { key: key.clone(), value: value.clone() })
            .collect(),
    };
    model.encode_to_vec()
}

/// Nodes in an encoded model's graph (for reports), or `None` if it does not decode.
pub fn node_count(encoded: &[u8]) -> Option<usize> {
    let model = ModelProto::decode(encoded).ok()?;
    Some(model.graph.map_or(0, |g| g.node.len()))
}
