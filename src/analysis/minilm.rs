//! all-MiniLM-L6-v2 sentence embeddings: a six-layer BERT encoder in ndarray, read straight
//! from the model store's safetensors file, mean-pooled and normalized as sentence-transformers
//! does.
//!
//! Why not candle or ONNX Runtime: the store holds the safetensors weights (no ONNX export), and
//! the encoder is ~150 lines of matrix products that ndarray's matrixmultiply runs well on two
//! cores. Batches are packed, not padded: every token of every sentence goes through the dense
//! layers as one matrix, and only attention is done per sentence, so a batch of short
//! utterances costs what its tokens cost.

use std::collections::HashMap;
use std::path::Path;

use ndarray::{s, Array1, Array2, ArrayView2, Axis};
use serde::Deserialize;

use ringline_kernels::dense::Dense;
use super::wordpiece::WordPiece;

/// sentence-transformers' `max_seq_length` for this model.
const MAX_TOKENS: usize = 256;
const LAYER_NORM_EPS: f32 = 1e-12;

pub struct MiniLm {
    tokenizer: WordPiece,
    word: Array2<f32>,
    position: Array2<f32>,
    token_type: Array1<f32>,
    norm: Norm,
    layers: Vec<Layer>,
    heads: usize,
}

/// A dense layer (`[out, in]` weights, as PyTorch stores them).
struct Linear(Dense);

struct Norm {
    gain: Array1<f32>,
    bias: Array1<f32>,
}

struct Layer {
    query: Linear,
    key: Linear,
    value: Linear,
    attention_out: Linear,
    attention_norm: Norm,
    intermediate: Linear,
    output: Linear,
    output_norm: Norm,
}

#[derive(Deserialize)]
struct TensorInfo {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: [usize; 2],
}

/// The tensors of a safetensors file, as f32.
struct Tensors {
    bytes: Vec<u8>,
    start: usize,
    index: HashMap<String, TensorInfo>,
    path: String,
}

impl Tensors {
    fn open(path: &Path) -> Result<Self, String> {
        let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let bad = |why: &str| format!("{}: not a safetensors file ({why})", path.display());
        let len = bytes.get(..8).map(|b| u64::from_le_bytes(b.try_into().unwrap()) as usize).ok_or_else(|| bad("too short"))?;
        let header = bytes.get(8..8 + len).ok_or_else(|| bad("header past the end"))?;
        let mut index: HashMap<String, serde_json::Value> = serde_json::from_slice(header).map_err(|e| bad(&e.to_string()))?;
        index.remove("__metadata__");
        let index = index
            .into_iter()
            // Some exports prefix every name with the architecture's.
            .map(|(name, info)| Ok((name.strip_prefix("bert.").unwrap_or(&name).to_string(), serde_json::from_value(info).map_err(|e| bad(&e.to_string()))?)))
            .collect::<Result<_, String>>()?;
        Ok(Tensors { start: 8 + len, bytes, index, path: path.display().to_string() })
    }

    fn get(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, String> {
        let info = self.index.get(name).ok_or_else(|| format!("{}: no tensor {name}", self.path))?;
        if info.shape != shape {
            return Err(format!("{}: {name} has shape {:?}, expected {shape:?}", self.path, info.shape));
        }
        let [from, to] = info.data_offsets;
        let data = self.bytes.get(self.start + from..self.start + to).ok_or_else(|| format!("{}: {name} lies past the end", self.path))?;
        let count: usize = shape.iter().product();
        let values: Vec<f32> = match info.dtype.as_str() {
            "F32" if data.len() == count * 4 => data.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect(),
            "F16" if data.len() == count * 2 => data.chunks_exact(2).map(|b| half::f16::from_le_bytes(b.try_into().unwrap()).to_f32()).collect(),
            "BF16" if data.len() == count * 2 => data.chunks_exact(2).map(|b| half::bf16::from_le_bytes(b.try_into().unwrap()).to_f32()).collect(),
            other => return Err(format!("{}: {name} is {other} of {} bytes; expected F32, F16 or BF16 for {count} values", self.path, data.len())),
        };
        Ok(values)
    }

    fn matrix(&self, name: &str, rows: usize, cols: usize) -> Result<Array2<f32>, String> {
        Ok(Array2::from_shape_vec((rows, cols), self.get(name, &[rows, cols])?).expect("shape checked"))
    }

    fn vector(&self, name: &str, len: usize) -> Result<Array1<f32>, String> {
        Ok(Array1::from(self.get(name, &[len])?))
    }

    fn linear(&self, name: &str, inputs: usize, outputs: usize) -> Result<Linear, String> {
        Ok(Linear(Dense::new(self.get(&format!("{name}.weight"), &[outputs, inputs])?, self.get(&format!("{name}.bias"), &[outputs])?)))
    }

    fn norm(&self, name: &str, len: usize) -> Result<Norm, String> {
        Ok(Norm { gain: self.vector(&format!("{name}.weight"), len)?, bias: self.vector(&format!("{name}.bias"), len)? })
    }

    fn dims(&self, name: &str) -> Result<&[usize], String> {
        self.index.get(name).map(|t| t.shape.as_slice()).ok_or_else(|| format!("{}: no tensor {name}", self.path))
    }
}

impl MiniLm {
    /// Loads the weights (`model.safetensors`) and the tokenizer (`tokenizer.json`). Sizes come
    /// from the tensors; the head count, which the weights do not record, is MiniLM's 12.
    pub fn load(weights: &Path, tokenizer: &Path) -> Result<Self, String> {
        let tensors = Tensors::open(weights)?;
        let (vocab, hidden) = match tensors.dims("embeddings.word_embeddings.weight")? {
            [vocab, hidden] => (*vocab, *hidden),
            other => return Err(format!("{}: word embeddings of shape {other:?}", tensors.path)),
        };
        let positions = tensors.dims("embeddings.position_embeddings.weight")?[0];
        let inner = tensors.dims("encoder.layer.0.intermediate.dense.weight")?[0];
        let layer_count = (0..).take_while(|i| tensors.index.contains_key(&format!("encoder.layer.{i}.attention.self.query.weight"))).count();
        let heads = 12;
        if hidden % heads != 0 || layer_count == 0 {
            return Err(format!("{}: {layer_count} layers of width {hidden}: not a MiniLM encoder", tensors.path));
        }
        let token_types = tensors.matrix("embeddings.token_type_embeddings.weight", tensors.dims("embeddings.token_type_embeddings.weight")?[0], hidden)?;
        let mut layers = Vec::with_capacity(layer_count);
        for i in 0..layer_count {
            let p = format!("encoder.layer.{i}");
            layers.push(Layer {
                query: tensors.linear(&format!("{p}.attention.self.query"), hidden, hidden)?,
                key: tensors.linear(&format!("{p}.attention.self.key"), hidden, hidden)?,
                value: tensors.linear(&format!("{p}.attention.self.value"), hidden, hidden)?,
                attention_out: tensors.linear(&format!("{p}.attention.output.dense"), hidden, hidden)?,
                attention_norm: tensors.norm(&format!("{p}.attention.output.LayerNorm"), hidden)?,
                intermediate: tensors.linear(&format!("{p}.intermediate.dense"), hidden, inner)?,
                output: tensors.linear(&format!("{p}.output.dense"), inner, hidden)?,
                output_norm: tensors.norm(&format!("{p}.output.LayerNorm"), hidden)?,
            });
        }
        Ok(MiniLm {
            tokenizer: WordPiece::load(tokenizer)?,
            word: tensors.matrix("embeddings.word_embeddings.weight", vocab, hidden)?,
            position: tensors.matrix("embeddings.position_embeddings.weight", positions, hidden)?,
            token_type: token_types.row(0).to_owned(),
            norm: tensors.norm("embeddings.LayerNorm", hidden)?,
            layers,
            heads,
        })
    }

    #[cfg(test)]
    pub fn tokenizer_ids(&self, text: &str) -> Vec<u32> {
        self.tokenizer.encode(text, MAX_TOKENS)
    }

    pub fn dimensions(&self) -> usize {
        self.word.ncols()
    }

    /// One unit-length embedding per text, in order.
    pub fn embed(&self, texts: &[&str]) -> Vec<Vec<f32>> {
        let max = MAX_TOKENS.min(self.position.nrows());
        let sentences: Vec<Vec<u32>> = texts.iter().map(|t| self.tokenizer.encode(t, max)).collect();
        let total: usize = sentences.iter().map(Vec::len).sum();
        let hidden = self.dimensions();
        let mut x = Array2::<f32>::zeros((total, hidden));
        let mut row = 0;
        for ids in &sentences {
            for (position, &id) in ids.iter().enumerate() {
                let word = self.word.row((id as usize).min(self.word.nrows() - 1));
                let mut out = x.row_mut(row);
                out.assign(&word);
                out += &self.position.row(position);
                out += &self.token_type;
                row += 1;
            }
        }
        layer_norm(&mut x, &self.norm);
        let spans: Vec<(usize, usize)> = sentences
            .iter()
            .scan(0, |start, ids| {
                let span = (*start, *start + ids.len());
                *start += ids.len();
                Some(span)
            })
            .collect();
        for layer in &self.layers {
            x = self.layer(layer, x, &spans);
        }
        spans
            .iter()
            .map(|&(from, to)| {
                let mean = x.slice(s![from..to, ..]).mean_axis(Axis(0)).expect("a sentence has [CLS] and [SEP]");
                let norm = mean.dot(&mean).sqrt().max(1e-12);
                mean.iter().map(|v| v / norm).collect()
            })
            .collect()
    }

    fn layer(&self, layer: &Layer, x: Array2<f32>, spans: &[(usize, usize)]) -> Array2<f32> {
        let q = layer.query.forward(x.view());
        let k = layer.key.forward(x.view());
        let v = layer.value.forward(x.view());
        let width = x.ncols() / self.heads;
        let scale = 1.0 / (width as f32).sqrt();
        let mut context = Array2::<f32>::zeros(x.raw_dim());
        for &(from, to) in spans {
            for h in 0..self.heads {
                let cols = s![from..to, h * width..(h + 1) * width];
                let mut scores = q.slice(cols).dot(&k.slice(cols).t());
                scores *= scale;
                for mut row in scores.rows_mut() {
                    let max = row.fold(f32::NEG_INFINITY, |m, &v| m.max(v));
                    row.mapv_inplace(|v| (v - max).exp());
                    let sum = row.sum();
                    row /= sum;
                }
                context.slice_mut(cols).assign(&scores.dot(&v.slice(cols)));
            }
        }
        let mut attended = layer.attention_out.forward(context.view());
        attended += &x;
        layer_norm(&mut attended, &layer.attention_norm);
        let mut inner = layer.intermediate.forward(attended.view());
        ringline_kernels::activation::gelu(inner.as_slice_mut().expect("fresh array"));
        let mut out = layer.output.forward(inner.view());
        out += &attended;
        layer_norm(&mut out, &layer.output_norm);
        out
    }
}

impl Linear {
    fn forward(&self, x: ArrayView2<f32>) -> Array2<f32> {
        let x = x.as_standard_layout();
        let mut y = Array2::<f32>::zeros((x.nrows(), self.0.outs()));
        self.0.forward(x.as_slice().expect("standard layout"), y.as_slice_mut().expect("fresh array"));
        y
    }
}

fn layer_norm(x: &mut Array2<f32>, norm: &Norm) {
    let n = x.ncols() as f32;
    for mut row in x.rows_mut() {
        let mean = row.sum() / n;
        let var = row.fold(0.0, |acc, &v| acc + (v - mean) * (v - mean)) / n;
        let inv = 1.0 / (var + LAYER_NORM_EPS).sqrt();
        for ((v, g), b) in row.iter_mut().zip(&norm.gain).zip(&norm.bias) {
            *v = (*v - mean) * inv * g + b;
        }
    }
}
