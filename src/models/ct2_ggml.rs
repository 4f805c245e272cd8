//! Whisper's CTranslate2 weights → whisper.cpp's legacy ggml model file.
//!
//! The registry ships Whisper as CTranslate2 (`model.bin` + `vocabulary.txt`); whisper-rs
//! vendors whisper.cpp, which reads only its own ggml file. The conversion is a pure re-layout:
//! rename tensors, split CTranslate2's fused Q/K/V projections, widen small tensors to f32,
//! add the mel filterbank and the byte-level vocabulary. It is deterministic, so the output's
//! sha256 is recorded in the manifest and checked like a download.
//!
//! Tensors are written in the order of OpenAI's PyTorch state dict (the order whisper.cpp's
//! own converter produces); whisper.cpp looks tensors up by name, so order affects only the hash.
//! The weight matrices may instead be quantized to Q8_0 or Q5_1 blocks, as whisper.cpp's own
//! `quantize` writes them. (Past 600 lines for its tests: a whole synthetic model is written
//! to pin every format's bytes.)

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use half::f16;

use super::ConvertError;

/// What a Format error says the input should have been.
const CT2_WHISPER: &str = "a CTranslate2 Whisper model";
const GGML_MAGIC: i32 = 0x6767_6d6c;
const N_MELS: usize = 80;
const N_FFT: usize = 400;
const SAMPLE_RATE: f64 = 16_000.0;
const AUDIO_CTX: i32 = 1500;
/// ggml's `GGML_QNT_VERSION × GGML_QNT_VERSION_FACTOR`, added to a quantized file's ftype.
const QUANTIZED_VERSION: i32 = 2 * 1000;
/// Values per quantized block (Q8_0 and Q5_1 alike).
const BLOCK: usize = 32;

/// How the weight matrices are stored. whisper.cpp takes the file's type for every matrix
/// (the token embedding included); convolutions stay f16 and vectors f32 in all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Weights {
    /// As shipped: half precision.
    F16,
    /// 8-bit blocks with one f16 scale per 32 values (~0.53× the size of f16).
    Q8_0,
    /// 5-bit blocks with an f16 scale and minimum per 32 values (~0.38×).
    Q5_1,
}

impl Weights {
    /// The ggml file's `ftype` hyperparameter.
    fn ftype(self) -> i32 {
        match self {
            Weights::F16 => 1,
            Weights::Q8_0 => 7 + QUANTIZED_VERSION,
            Weights::Q5_1 => 9 + QUANTIZED_VERSION,
        }
    }

    /// The ggml type of a weight matrix.
    fn matrix_type(self) -> i32 {
        match self {
            Weights::F16 => 1,
            Weights::Q8_0 => 8,
            Weights::Q5_1 => 7,
        }
    }
}

/// A tensor as written to the ggml file: borrowed from the model, or a slice split from a fused one.
struct Tensor<'a> {
    name: String,
    dims: Vec<usize>,
    values: Cow<'a, [f32]>,
}

/// One CTranslate2 variable, widened to f32.
struct Variable {
    dims: Vec<usize>,
    values: Vec<f32>,
}

/// Converts `<dir>/model.bin` + `<dir>/vocabulary.txt` into a ggml file at `output`.
pub fn convert(dir: &Path, output: &Path) -> Result<(), ConvertError> {
    convert_to(dir, output, Weights::F16)
}

/// [`convert`], with the weight matrices quantized to Q8_0.
pub fn convert_q8_0(dir: &Path, output: &Path) -> Result<(), ConvertError> {
    convert_to(dir, output, Weights::Q8_0)
}

/// [`convert`], with the weight matrices quantized to Q5_1.
pub fn convert_q5_1(dir: &Path, output: &Path) -> Result<(), ConvertError> {
    convert_to(dir, output, Weights::Q5_1)
}

fn convert_to(dir: &Path, output: &Path, weights: Weights) -> Result<(), ConvertError> {
    let model_path = dir.join("model.bin");
    let bytes = std::fs::read(&model_path).map_err(|source| ConvertError::Read { path: model_path.clone(), source })?;
    let (variables, scalars) = read_ct2(&bytes).map_err(|reason| ConvertError::Format { path: model_path.clone(), expected: CT2_WHISPER, reason })?;
    let vocab_path = dir.join("vocabulary.txt");
    let vocabulary =
        std::fs::read_to_string(&vocab_path).map_err(|source| ConvertError::Read { path: vocab_path.clone(), source })?;
    let tokens = byte_tokens(&vocabulary).map_err(|reason| ConvertError::Format { path: vocab_path, expected: CT2_WHISPER, reason })?;

    let get = |name: &str| {
        variables.get(name).ok_or_else(|| ConvertError::MissingTensor { path: model_path.clone(), name: name.to_string() })
    };
    let count_layers = |side: &str| {
        (0..).take_while(|i| variables.contains_key(&format!("{side}/layer_{i}/ffn/layer_norm/gamma"))).count()
    };
    let encoder_layers = count_layers("encoder");
    let decoder_layers = count_layers("decoder");
    let embedding = get("decoder/embeddings/weight")?;
    let conv1 = get("encoder/conv1/weight")?;
    let text_ctx = get("decoder/position_encodings/encodings")?.dims[0];
    let heads = |side: &str| {
        scalars.get(&format!("{side}/num_heads")).copied().ok_or_else(|| ConvertError::MissingTensor {
            path: model_path.clone(),
            name: format!("{side}/num_heads"),
        })
    };
    let hparams = [
        embedding.dims[0] as i32,
        AUDIO_CTX,
        conv1.dims[0] as i32,
        heads("encoder")?,
        encoder_layers as i32,
        text_ctx as i32,
        embedding.dims[1] as i32,
        heads("decoder")?,
        decoder_layers as i32,
        conv1.dims[1] as i32,
        weights.ftype(),
    ];

    let mut tensors: Vec<Tensor<'_>> = vec![whole("encoder.positional_embedding", get("encoder/position_encodings/encodings")?)];
    for conv in ["conv1", "conv2"] {
        tensors.push(whole(&format!("encoder.{conv}.weight"), get(&format!("encoder/{conv}/weight"))?));
        tensors.push(whole(&format!("encoder.{conv}.bias"), get(&format!("encoder/{conv}/bias"))?));
    }
    for layer in 0..encoder_layers {
        layer_tensors(&variables, &model_path, "encoder", layer, &mut tensors)?;
    }
    tensors.push(whole("encoder.ln_post.weight", get("encoder/layer_norm/gamma")?));
    tensors.push(whole("encoder.ln_post.bias", get("encoder/layer_norm/beta")?));
    tensors.push(whole("decoder.positional_embedding", get("decoder/position_encodings/encodings")?));
    tensors.push(whole("decoder.token_embedding.weight", embedding));
    for layer in 0..decoder_layers {
        layer_tensors(&variables, &model_path, "decoder", layer, &mut tensors)?;
    }
    tensors.push(whole("decoder.ln.weight", get("decoder/layer_norm/gamma")?));
    tensors.push(whole("decoder.ln.bias", get("decoder/layer_norm/beta")?));

    let file = std::fs::File::create(output).map_err(|source| ConvertError::Write { path: output.to_path_buf(), source })?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    if weights != Weights::F16 {
        if let Some(t) = tensors.iter().find(|t| is_matrix(t) && t.dims[1] % BLOCK != 0) {
            return Err(ConvertError::Format { path: model_path, expected: CT2_WHISPER, reason: format!("{}: rows of {} values do not divide into blocks of {BLOCK}", t.name, t.dims[1]) });
        }
    }
    write_ggml(&mut out, &hparams, &tokens, &tensors, weights)
        .and_then(|_| out.flush())
        .map_err(|source| ConvertError::Write { path: output.to_path_buf(), source })
}

/// A weight matrix: two dimensions, not a positional embedding (those stay f32).
fn is_matrix(tensor: &Tensor<'_>) -> bool {
    tensor.dims.len() == 2 && !tensor.name.contains("positional_embedding")
}

fn write_ggml(out: &mut impl Write, hparams: &[i32], tokens: &[Vec<u8>], tensors: &[Tensor<'_>], weights: Weights) -> std::io::Result<()> {
    out.write_all(&GGML_MAGIC.to_le_bytes())?;
    for value in hparams {
        out.write_all(&value.to_le_bytes())?;
    }
    out.write_all(&(N_MELS as i32).to_le_bytes())?;
    out.write_all(&((N_FFT / 2 + 1) as i32).to_le_bytes())?;
    for value in mel_filters() {
        out.write_all(&value.to_le_bytes())?;
    }
    out.write_all(&(tokens.len() as i32).to_le_bytes())?;
    for token in tokens {
        out.write_all(&(token.len() as i32).to_le_bytes())?;
        out.write_all(token)?;
    }
    for tensor in tensors {
        let Tensor { name, dims, values } = tensor;
        let is_conv_bias = name.starts_with("encoder.conv") && name.ends_with(".bias");
        let dims: Vec<usize> = if is_conv_bias { vec![dims[0], 1] } else { dims.to_vec() };
        let keep_f32 = dims.len() < 2 || is_conv_bias || name.contains("positional_embedding");
        let quantize = weights != Weights::F16 && is_matrix(tensor);
        let ggml_type = if keep_f32 { 0i32 } else if quantize { weights.matrix_type() } else { 1 };
        out.write_all(&(dims.len() as i32).to_le_bytes())?;
        out.write_all(&(name.len() as i32).to_le_bytes())?;
        out.write_all(&ggml_type.to_le_bytes())?;
        for dim in dims.iter().rev() {
            out.write_all(&(*dim as i32).to_le_bytes())?;
        }
        out.write_all(name.as_bytes())?;
        let mut buffer = Vec::with_capacity(values.len() * 4);
        if quantize {
            for block in values.chunks_exact(BLOCK) {
                match weights {
                    Weights::Q8_0 => quantize_q8_0(block, &mut buffer),
                    _ => quantize_q5_1(block, &mut buffer),
                }
            }
        } else if keep_f32 {
            values.iter().for_each(|v: &f32| buffer.extend_from_slice(&v.to_le_bytes()));
        } else {
            values.iter().for_each(|v: &f32| buffer.extend_from_slice(&f16::from_f32(*v).to_le_bytes()));
        }
        out.write_all(&buffer)?;
    }
    Ok(())
}

/// One Q8_0 block as ggml's reference quantizer writes it: f16 scale `amax / 127`, then each
/// value over the scale rounded half away from zero. Only comparisons pick the extremes (no
/// `f32::max`), so the bytes cannot depend on how a build lowers min/max of signed zeros.
fn quantize_q8_0(block: &[f32], out: &mut Vec<u8>) {
    let mut amax = 0f32;
    for v in block {
        if v.abs() > amax {
            amax = v.abs();
        }
    }
    let scale = amax / 127.0;
    let inverse = if scale != 0.0 { 1.0 / scale } else { 0.0 };
    out.extend_from_slice(&f16::from_f32(scale).to_le_bytes());
    out.extend(block.iter().map(|v| (v * inverse).round() as i8 as u8));
}

/// One Q5_1 block as ggml's reference quantizer writes it: f16 scale `(max − min) / 31` and
/// f16 minimum, the high bits of the 32 five-bit values in a u32, their low nibbles paired
/// (value j with value j + 16). Values are `(x − min) / scale + 0.5`, truncated, as ggml does.
fn quantize_q5_1(block: &[f32], out: &mut Vec<u8>) {
    let (mut min, mut max) = (f32::MAX, -f32::MAX);
    for &v in block {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    let scale = (max - min) / 31.0;
    let inverse = if scale != 0.0 { 1.0 / scale } else { 0.0 };
    let level = |v: f32| ((v - min) * inverse + 0.5) as u8;
    let half = BLOCK / 2;
    let mut high = 0u32;
    let mut nibbles = [0u8; BLOCK / 2];
    for j in 0..half {
        let (low, up) = (level(block[j]), level(block[j + half]));
        nibbles[j] = (low & 0x0F) | ((up & 0x0F) << 4);
        high |= (((low & 0x10) >> 4) as u32) << j;
        high |= (((up & 0x10) >> 4) as u32) << (j + half);
    }
    out.extend_from_slice(&f16::from_f32(scale).to_le_bytes());
    out.extend_from_slice(&f16::from_f32(min).to_le_bytes());
    out.extend_from_slice(&high.to_le_bytes());
    out.extend_from_slice(&nibbles);
}

/// Appends one transformer block's tensors, in PyTorch order, splitting fused projections.
fn layer_tensors<'a>(
    vars: &'a HashMap<String, Variable>,
    path: &Path,
    side: &str,
    layer: usize,
    out: &mut Vec<Tensor<'a>>,
) -> Result<(), ConvertError> {
    let src = |rest: &str| {
        let name = format!("{side}/layer_{layer}/{rest}");
        vars.get(&name).ok_or(ConvertError::MissingTensor { path: path.to_path_buf(), name })
    };
    let dst = |rest: &str| format!("{side}.blocks.{layer}.{rest}");
    let whole = |var: &'a Variable| (var.dims.clone(), Cow::Borrowed(&var.values[..]));
    let mut add = |name: String, (dims, values): (Vec<usize>, Cow<'a, [f32]>)| out.push(Tensor { name, dims, values });

    // Self-attention: linear_0 is Q, K and V stacked by rows; K has no bias (CTranslate2 stores zeros).
    let qkv_w = src("self_attention/linear_0/weight")?;
    let qkv_b = src("self_attention/linear_0/bias")?;
    add(dst("attn.query.weight"), rows(qkv_w, 0, 3));
    add(dst("attn.query.bias"), rows(qkv_b, 0, 3));
    add(dst("attn.key.weight"), rows(qkv_w, 1, 3));
    add(dst("attn.value.weight"), rows(qkv_w, 2, 3));
    add(dst("attn.value.bias"), rows(qkv_b, 2, 3));
    add(dst("attn.out.weight"), whole(src("self_attention/linear_1/weight")?));
    add(dst("attn.out.bias"), whole(src("self_attention/linear_1/bias")?));
    add(dst("attn_ln.weight"), whole(src("self_attention/layer_norm/gamma")?));
    add(dst("attn_ln.bias"), whole(src("self_attention/layer_norm/beta")?));
    if side == "decoder" {
        // Cross-attention: linear_0 is Q, linear_1 is K and V stacked, linear_2 the output.
        let kv_w = src("attention/linear_1/weight")?;
        let kv_b = src("attention/linear_1/bias")?;
        add(dst("cross_attn.query.weight"), whole(src("attention/linear_0/weight")?));
        add(dst("cross_attn.query.bias"), whole(src("attention/linear_0/bias")?));
        add(dst("cross_attn.key.weight"), rows(kv_w, 0, 2));
        add(dst("cross_attn.value.weight"), rows(kv_w, 1, 2));
        add(dst("cross_attn.value.bias"), rows(kv_b, 1, 2));
        add(dst("cross_attn.out.weight"), whole(src("attention/linear_2/weight")?));
        add(dst("cross_attn.out.bias"), whole(src("attention/linear_2/bias")?));
        add(dst("cross_attn_ln.weight"), whole(src("attention/layer_norm/gamma")?));
        add(dst("cross_attn_ln.bias"), whole(src("attention/layer_norm/beta")?));
    }
    add(dst("mlp.0.weight"), whole(src("ffn/linear_0/weight")?));
    add(dst("mlp.0.bias"), whole(src("ffn/linear_0/bias")?));
    add(dst("mlp.2.weight"), whole(src("ffn/linear_1/weight")?));
    add(dst("mlp.2.bias"), whole(src("ffn/linear_1/bias")?));
    add(dst("mlp_ln.weight"), whole(src("ffn/layer_norm/gamma")?));
    add(dst("mlp_ln.bias"), whole(src("ffn/layer_norm/beta")?));
    Ok(())
}

fn whole<'a>(name: &str, var: &'a Variable) -> Tensor<'a> {
    Tensor { name: name.to_string(), dims: var.dims.clone(), values: Cow::Borrowed(&var.values[..]) }
}

/// Part `index` of `parts` equal row blocks of a tensor.
fn rows(var: &Variable, index: usize, parts: usize) -> (Vec<usize>, Cow<'static, [f32]>) {
    let n = var.dims[0] / parts;
    let row_len: usize = var.dims[1..].iter().product();
    let mut dims = var.dims.clone();
    dims[0] = n;
    (dims, Cow::Owned(var.values[index * n * row_len..(index + 1) * n * row_len].to_vec()))
}

/// Parses a CTranslate2 model file: tensors (widened to f32) and integer scalars.
fn read_ct2(bytes: &[u8]) -> Result<(HashMap<String, Variable>, HashMap<String, i32>), String> {
    let mut r = Reader { bytes, at: 0 };
    let version = r.u32()?;
    if version != 6 {
        return Err(format!("binary version {version}, expected 6"));
    }
    let spec = r.string()?;
    if spec != "WhisperSpec" {
        return Err(format!("spec `{spec}`, expected WhisperSpec"));
    }
    let _revision = r.u32()?;
    let count = r.u32()?;
    let mut variables = HashMap::new();
    let mut scalars = HashMap::new();
    for _ in 0..count {
        let name = r.string()?;
        let rank = r.u8()? as usize;
        let mut dims = Vec::with_capacity(rank);
        for _ in 0..rank {
            dims.push(r.u32()? as usize);
        }
        let dtype = r.u8()?;
        let nbytes = r.u32()? as usize;
        let data = r.take(nbytes)?;
        let values = widen(dtype, data).ok_or_else(|| format!("{name}: unsupported dtype {dtype}"))?;
        if rank == 0 {
            scalars.insert(name, values.first().copied().unwrap_or(0.0) as i32);
        } else {
            if values.len() != dims.iter().product::<usize>() {
                return Err(format!("{name}: {} values for shape {dims:?}", values.len()));
            }
            variables.insert(name, Variable { dims, values });
        }
    }
    Ok((variables, scalars))
}

fn widen(dtype: u8, data: &[u8]) -> Option<Vec<f32>> {
    Some(match dtype {
        0 => data.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect(),
        1 => data.iter().map(|b| *b as i8 as f32).collect(),
        2 => data.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]]) as f32).collect(),
        3 => data.chunks_exact(4).map(|b| i32::from_le_bytes(b.try_into().unwrap()) as f32).collect(),
        4 => data.chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        5 => data.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        _ => return None,
    })
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(n).filter(|end| *end <= self.bytes.len()).ok_or("truncated file")?;
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().unwrap()))
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    /// A u16 length that counts a trailing NUL, then the bytes.
    fn string(&mut self) -> Result<String, String> {
        let len = self.u16()? as usize;
        let raw = self.take(len)?;
        let raw = raw.strip_suffix(&[0]).unwrap_or(raw);
        String::from_utf8(raw.to_vec()).map_err(|_| "a name is not UTF-8".to_string())
    }
}

/// The vocabulary's tokens before `<|endoftext|>`, mapped from GPT-2's printable byte alphabet
/// back to raw bytes (whisper.cpp adds the special tokens itself).
fn byte_tokens(vocabulary: &str) -> Result<Vec<Vec<u8>>, String> {
    let decoder = gpt2_unicode_to_byte();
    let mut tokens = Vec::new();
    for (line_no, line) in vocabulary.lines().enumerate() {
        if line == "<|endoftext|>" {
            return Ok(tokens);
        }
        let mut token = Vec::with_capacity(line.len());
        for c in line.chars() {
            let byte = decoder.get(&c).ok_or_else(|| format!("line {}: character {c:?} is outside GPT-2's byte alphabet", line_no + 1))?;
            token.push(*byte);
        }
        tokens.push(token);
    }
    Err("no <|endoftext|> token".to_string())
}

/// GPT-2's `bytes_to_unicode`, inverted.
fn gpt2_unicode_to_byte() -> HashMap<char, u8> {
    let printable = |b: u32| (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
    let mut map = HashMap::new();
    let mut shifted = 0;
    for byte in 0u32..256 {
        let code = if printable(byte) {
            byte
        } else {
            shifted += 1;
            255 + shifted
        };
        map.insert(char::from_u32(code).expect("valid code point"), byte as u8);
    }
    map
}

/// librosa's `filters.mel(sr=16000, n_fft=400, n_mels=80)` (Slaney scale and norm), reproducing
/// its arithmetic: weights rounded to f32, then scaled in f64 and rounded again.
pub fn mel_filters() -> Vec<f32> {
    let f_sp = 200.0 / 3.0;
    let min_log_hz = 1000.0;
    let min_log_mel = min_log_hz / f_sp;
    let logstep = 6.4f64.ln() / 27.0;
    let hz_to_mel = |hz: f64| if hz >= min_log_hz { min_log_mel + (hz / min_log_hz).ln() / logstep } else { hz / f_sp };
    let mel_to_hz = |mel: f64| if mel >= min_log_mel { min_log_hz * (logstep * (mel - min_log_mel)).exp() } else { f_sp * mel };

    let n_bins = N_FFT / 2 + 1;
    let bin_spacing = 1.0 / (N_FFT as f64 * (1.0 / SAMPLE_RATE));
    let fft_freqs: Vec<f64> = (0..n_bins).map(|i| i as f64 * bin_spacing).collect();
    let (low, high) = (hz_to_mel(0.0), hz_to_mel(SAMPLE_RATE / 2.0));
    let points = N_MELS + 2;
    let step = (high - low) / (points - 1) as f64;
    // numpy's linspace: i × step + start, with the end point set exactly.
    let mel_points: Vec<f64> = (0..points)
        .map(|i| if i == points - 1 { high } else { i as f64 * step + low })
        .map(mel_to_hz)
        .collect();

    let mut weights = vec![0f32; N_MELS * n_bins];
    for m in 0..N_MELS {
        let lower_width = mel_points[m + 1] - mel_points[m];
        let upper_width = mel_points[m + 2] - mel_points[m + 1];
        let enorm = 2.0 / (mel_points[m + 2] - mel_points[m]);
        for (k, freq) in fft_freqs.iter().enumerate() {
            let lower = -(mel_points[m] - freq) / lower_width;
            let upper = (mel_points[m + 2] - freq) / upper_width;
            // Not `.max(0.0)`: the first bin's `lower` is −0.0, and which zero `max` returns
            // differs between builds, so the converted file's checksum did too.
            let triangle = lower.min(upper);
            let triangle = if triangle > 0.0 { triangle as f32 } else { 0.0 };
            weights[m * n_bins + k] = (triangle as f64 * enorm) as f32;
        }
    }
    weights
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpt2_alphabet_is_a_bijection() {
        let map = gpt2_unicode_to_byte();
        assert_eq!(map.len(), 256);
        assert_eq!(map[&'Ġ'], b' ');
        assert_eq!(map[&'Ċ'], b'\n');
        assert_eq!(map[&'a'], b'a');
    }

    #[test]
    fn mel_filters_are_slaney_triangles() {
        let filters = mel_filters();
        assert_eq!(filters.len(), 80 * 201);
        // Every filter has some weight, none negative, and the first peaks near 40 Hz (bin 1).
        for m in 0..80 {
            let row = &filters[m * 201..(m + 1) * 201];
            // Positive zeros too: a −0.0 would change the file's bytes, and its checksum.
            assert!(row.iter().all(|w| *w >= 0.0 && w.is_sign_positive()), "filter {m} has a negative weight");
            assert!(row.iter().any(|w| *w > 0.0), "filter {m} is empty");
        }
        let first = &filters[..201];
        let peak = first.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0;
        assert_eq!(peak, 1);
    }

    /// Dequantizes one block the way ggml reads it.
    fn dequantize(bytes: &[u8], weights: Weights) -> Vec<f32> {
        let f = |i: usize| f16::from_le_bytes([bytes[i], bytes[i + 1]]).to_f32();
        match weights {
            Weights::Q8_0 => bytes[2..34].iter().map(|q| *q as i8 as f32 * f(0)).collect(),
            _ => {
                let high = u32::from_le_bytes(bytes[4..8].try_into().unwrap());
                let mut values = vec![0f32; BLOCK];
                for j in 0..BLOCK / 2 {
                    let low = (bytes[8 + j] & 0x0F) as u32 | ((high >> j) & 1) << 4;
                    let up = (bytes[8 + j] >> 4) as u32 | ((high >> (j + 16)) & 1) << 4;
                    values[j] = low as f32 * f(0) + f(2);
                    values[j + 16] = up as f32 * f(0) + f(2);
                }
                values
            }
        }
    }

    #[test]
    fn quantized_blocks_round_trip_within_half_a_step() {
        let block: Vec<f32> = (0..BLOCK).map(|i| ((i as f32 * 0.37).sin() * 0.8) - 0.1).collect();
        for (weights, size, steps) in [(Weights::Q8_0, 34, 127.0 * 2.0), (Weights::Q5_1, 24, 31.0)] {
            let mut bytes = Vec::new();
            if weights == Weights::Q8_0 { quantize_q8_0(&block, &mut bytes) } else { quantize_q5_1(&block, &mut bytes) }
            assert_eq!(bytes.len(), size, "{weights:?}: ggml's block size");
            let range = block.iter().cloned().fold(f32::MIN, f32::max) - block.iter().cloned().fold(f32::MAX, f32::min);
            let amax = block.iter().map(|v| v.abs()).fold(0.0, f32::max);
            let step = if weights == Weights::Q8_0 { amax * 2.0 / steps } else { range / steps };
            for (was, now) in block.iter().zip(dequantize(&bytes, weights)) {
                assert!((was - now).abs() <= step * 0.51 + 2e-3, "{weights:?}: {was} became {now}");
            }
        }
        // An all-zero block (and signed zeros) gives the same bytes every time: zero scale.
        let mut a = Vec::new();
        quantize_q8_0(&[0.0; BLOCK], &mut a);
        let mut b = Vec::new();
        quantize_q8_0(&[-0.0; BLOCK], &mut b);
        assert_eq!(a, b);
    }

    /// Writes a tiny CTranslate2 Whisper (one layer each side, width 32) whose f32 weights hold
    /// what rounding can trip on: signed zeros, subnormals, f16 ties, values f16 cannot hold.
    fn tiny_ct2(dir: &Path) {
        let width = 32usize;
        let mut vars: Vec<(String, Vec<usize>)> = vec![
            ("encoder/conv1/weight".into(), vec![width, 80, 3]),
            ("encoder/conv1/bias".into(), vec![width]),
            ("encoder/conv2/weight".into(), vec![width, width, 3]),
            ("encoder/conv2/bias".into(), vec![width]),
            ("encoder/position_encodings/encodings".into(), vec![8, width]),
            ("encoder/layer_norm/gamma".into(), vec![width]),
            ("encoder/layer_norm/beta".into(), vec![width]),
            ("decoder/embeddings/weight".into(), vec![4, width]),
            ("decoder/position_encodings/encodings".into(), vec![8, width]),
            ("decoder/layer_norm/gamma".into(), vec![width]),
            ("decoder/layer_norm/beta".into(), vec![width]),
        ];
        for side in ["encoder", "decoder"] {
            let p = |rest: &str| format!("{side}/layer_0/{rest}");
            vars.push((p("self_attention/linear_0/weight"), vec![3 * width, width]));
            vars.push((p("self_attention/linear_0/bias"), vec![3 * width]));
            vars.push((p("self_attention/linear_1/weight"), vec![width, width]));
            vars.push((p("self_attention/linear_1/bias"), vec![width]));
            vars.push((p("self_attention/layer_norm/gamma"), vec![width]));
            vars.push((p("self_attention/layer_norm/beta"), vec![width]));
            if side == "decoder" {
                vars.push((p("attention/linear_0/weight"), vec![width, width]));
                vars.push((p("attention/linear_0/bias"), vec![width]));
                vars.push((p("attention/linear_1/weight"), vec![2 * width, width]));
                vars.push((p("attention/linear_1/bias"), vec![2 * width]));
                vars.push((p("attention/linear_2/weight"), vec![width, width]));
                vars.push((p("attention/linear_2/bias"), vec![width]));
                vars.push((p("attention/layer_norm/gamma"), vec![width]));
                vars.push((p("attention/layer_norm/beta"), vec![width]));
            }
            vars.push((p("ffn/linear_0/weight"), vec![width, width]));
            vars.push((p("ffn/linear_0/bias"), vec![width]));
            vars.push((p("ffn/linear_1/weight"), vec![width, width]));
            vars.push((p("ffn/linear_1/bias"), vec![width]));
            vars.push((p("ffn/layer_norm/gamma"), vec![width]));
            vars.push((p("ffn/layer_norm/beta"), vec![width]));
        }
        let string = |out: &mut Vec<u8>, s: &str| {
            out.extend_from_slice(&((s.len() + 1) as u16).to_le_bytes());
            out.extend_from_slice(s.as_bytes());
            out.push(0);
        };
        let mut out = Vec::new();
        out.extend_from_slice(&6u32.to_le_bytes());
        string(&mut out, "WhisperSpec");
        out.extend_from_slice(&1u32.to_le_bytes());
        out.extend_from_slice(&((vars.len() + 2) as u32).to_le_bytes());
        let special = [0.0f32, -0.0, 1e-40, -1e-40, 1.0 + 1.0 / 2048.0, 1.0 + 3.0 / 2048.0, 65520.0 / 1e5, -0.333_333_34];
        let mut state = 0x9E37_79B9u32;
        for (name, dims) in &vars {
            string(&mut out, name);
            out.push(dims.len() as u8);
            dims.iter().for_each(|d| out.extend_from_slice(&(*d as u32).to_le_bytes()));
            out.push(0); // f32
            let n: usize = dims.iter().product();
            out.extend_from_slice(&((n * 4) as u32).to_le_bytes());
            for i in 0..n {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                let v = if i % 7 == 0 { special[(i / 7) % special.len()] } else { (state >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0 };
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        for side in ["encoder", "decoder"] {
            string(&mut out, &format!("{side}/num_heads"));
            out.push(0);
            out.push(3); // i32 scalar
            out.extend_from_slice(&4u32.to_le_bytes());
            out.extend_from_slice(&1i32.to_le_bytes());
        }
        out.extend_from_slice(&0u32.to_le_bytes());
        std::fs::write(dir.join("model.bin"), out).unwrap();
        std::fs::write(dir.join("vocabulary.txt"), "a\nb\nĠc\n<|endoftext|>\n").unwrap();
    }

    /// The conversion's bytes are pinned for each weight format, on weights full of the values
    /// where rounding differs between ways of computing it. A change of arithmetic — or a build
    /// that computes it differently — shows here as a different hash (the release build was
    /// checked against the same pins when they were recorded; see docs/decisions.md).
    #[test]
    fn every_weight_format_converts_to_the_same_bytes() {
        let dir = tempfile::tempdir().unwrap();
        tiny_ct2(dir.path());
        let mut hashes = Vec::new();
        for (weights, name) in [(Weights::F16, "f16"), (Weights::Q8_0, "q8_0"), (Weights::Q5_1, "q5_1")] {
            let output = dir.path().join(format!("{name}.bin"));
            convert_to(dir.path(), &output, weights).unwrap();
            hashes.push((name, super::super::sha256_file(&output).unwrap()));
        }
        let pinned: [(&str, &str); 3] = [("f16", PIN_F16), ("q8_0", PIN_Q8_0), ("q5_1", PIN_Q5_1)];
        assert_eq!(hashes, pinned.map(|(n, h)| (n, h.to_string())).to_vec());
    }

    const PIN_F16: &str = "169c671221473e59f2dffbff040155a0074db785927dfe885684e6e3e0fe3902";
    const PIN_Q8_0: &str = "db91cb177e002bd41caea1cbc98fa91d9a657c2eeaed3d66ad482dfc0258a5ad";
    const PIN_Q5_1: &str = "c9d9083f644e67c9513dba8d0e89e5e13766c68404edcc109e8ced7a4f02d19e";

    #[test]
    fn truncated_model_is_a_format_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("model.bin"), [6, 0, 0, 0, 12, 0]).unwrap();
        std::fs::write(dir.path().join("vocabulary.txt"), "a\n<|endoftext|>\n").unwrap();
        let error = convert(dir.path(), &dir.path().join("out.bin")).unwrap_err().to_string();
        assert!(error.contains("model.bin") && error.contains("truncated"), "{error}");
    }
}
