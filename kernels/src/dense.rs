//! The encoder's dense layers, `y = x·Wᵀ + b`, for the few tokens of one caller line.
//!
//! Why not ndarray's `dot`: its general matrix product packs both operands into blocks before
//! multiplying, which pays off when both are large; here `x` is a dozen or two tokens and `W`
//! up to 1536 × 384, so packing `W` for every line costs about what the product does. This
//! reads `W` once, in the `[out, in]` layout PyTorch stores, four rows against three tokens
//! at a time (twelve running sums in registers), with AVX2 and FMA where the CPU has them and
//! a plain loop elsewhere.
//!
//! Where the CPU converts half floats (F16C) the weights are kept as f16: half the bytes to
//! read and cache (the encoder's dense layers are 42 MB as f32, more than a small box's
//! last-level cache), embeddings within ~1e-4 of f32's. Where it has AVX-512, sixteen lanes
//! instead of eight: for a line of a dozen tokens the product is bound by the multiplications,
//! not by reading `W` (memory streams at 13–20 GB/s here; 21 MB take ~1.5 ms of a ~4 ms pass).

/// One dense layer's weights, in the form this CPU multiplies fastest.
pub struct Dense {
    ins: usize,
    bias: Vec<f32>,
    weights: Weights,
}

enum Weights {
    F32(Vec<f32>),
    /// IEEE half floats' bits.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    F16(Vec<u16>),
}

impl Dense {
    /// `weight` is `[outs, ins]` row-major (PyTorch's layout), `bias` has `outs` values.
    pub fn new(weight: Vec<f32>, bias: Vec<f32>) -> Self {
        let ins = weight.len() / bias.len().max(1);
        assert!(ins > 0 && weight.len() == ins * bias.len(), "dense: {} weights for {} outputs", weight.len(), bias.len());
        let weights = if fast_path(ins, true) { Weights::F16(weight.iter().map(|&v| half::f16::from_f32(v).to_bits()).collect()) } else { Weights::F32(weight) };
        Dense { ins, bias, weights }
    }

    pub fn outs(&self) -> usize {
        self.bias.len()
    }

    /// `out[t·outs + o] = bias[o] + Σᵢ x[t·ins + i] · W[o][i]` for every token `t` of `x`.
    pub fn forward(&self, x: &[f32], out: &mut [f32]) {
        assert!(x.len() % self.ins == 0 && out.len() == x.len() / self.ins * self.outs(), "dense: shapes do not agree");
        match &self.weights {
            Weights::F32(w) => linear(x, w, &self.bias, self.ins, out),
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the AVX-512 kernel runs only where `wide_path` found AVX-512F and
            // `ins % 16 == 0`.
            Weights::F16(w) if wide_path(self.ins) => unsafe { avx512::linear(x, w, &self.bias, self.ins, out) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: F16 weights are only made where `fast_path` found AVX2, FMA and F16C and
            // `ins % 8 == 0`; lengths are asserted above and in `new`.
            Weights::F16(w) => unsafe { avx2::linear::<true>(x, w.as_ptr().cast(), &self.bias, self.ins, out) },
            #[cfg(not(target_arch = "x86_64"))]
            Weights::F16(_) => unreachable!("f16 weights are made only on x86_64"),
        }
    }
}

/// Whether the AVX2 kernel runs here (with `f16`: on half-float weights too).
fn fast_path(ins: usize, f16: bool) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        ins % 8 == 0 && std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") && (!f16 || std::is_x86_feature_detected!("f16c"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (ins, f16);
        false
    }
}

/// Which kernel the encoder's layers (384 and 1536 inputs) run on this CPU, for benchmarks to
/// print beside their figures.
pub fn kernel() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    if wide_path(384) {
        return "AVX-512, f16 weights";
    }
    if fast_path(384, true) {
        "AVX2 + FMA, f16 weights"
    } else {
        "portable, f32 weights"
    }
}

/// Whether the AVX-512 kernel runs here (on f16 weights): sixteen lanes instead of eight.
/// `RINGLINE_NO_AVX512` set turns it off, to compare the two on one machine.
#[cfg(target_arch = "x86_64")]
fn wide_path(ins: usize) -> bool {
    static AVX512: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    ins % 16 == 0 && *AVX512.get_or_init(|| std::is_x86_feature_detected!("avx512f") && std::env::var_os("RINGLINE_NO_AVX512").is_none())
}

/// `out[t·outs + o] = bias[o] + Σᵢ x[t·ins + i] · w[o·ins + i]`, on f32 weights.
pub fn linear(x: &[f32], w: &[f32], bias: &[f32], ins: usize, out: &mut [f32]) {
    let outs = bias.len();
    assert!(ins > 0 && x.len() % ins == 0 && w.len() == outs * ins && out.len() == x.len() / ins * outs, "linear: shapes do not agree");
    #[cfg(target_arch = "x86_64")]
    if fast_path(ins, false) {
        // SAFETY: the CPU has AVX2 and FMA and `ins % 8 == 0` (checked just above); slices'
        // lengths are asserted.
        unsafe { avx2::linear::<false>(x, w.as_ptr().cast(), bias, ins, out) };
        return;
    }
    portable(x, w, bias, ins, out);
}

fn portable(x: &[f32], w: &[f32], bias: &[f32], ins: usize, out: &mut [f32]) {
    let outs = bias.len();
    for (t, row) in x.chunks_exact(ins).enumerate() {
        for (o, weights) in w.chunks_exact(ins).enumerate() {
            // Eight independent sums, so the compiler can keep them in vector lanes.
            let mut lanes = [0.0f32; 8];
            let mut chunks = row.chunks_exact(8).zip(weights.chunks_exact(8));
            for (a, b) in chunks.by_ref() {
                for k in 0..8 {
                    lanes[k] += a[k] * b[k];
                }
            }
            let tail: f32 = row[ins / 8 * 8..].iter().zip(&weights[ins / 8 * 8..]).map(|(a, b)| a * b).sum();
            out[t * outs + o] = bias[o] + lanes.iter().sum::<f32>() + tail;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    const ROWS: usize = 4;
    const TOKENS: usize = 3;

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn sum(v: __m256) -> f32 {
        let half = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let pairs = _mm_add_ps(half, _mm_movehl_ps(half, half));
        _mm_cvtss_f32(_mm_add_ss(pairs, _mm_shuffle_ps(pairs, pairs, 1)))
    }

    /// Safety: AVX2, FMA (and F16C when `HALF`) present, `ins % 8 == 0`, `w` points at
    /// `bias.len() × ins` weights (f16 bits when `HALF`, else f32), shapes as
    /// [`super::linear`] asserts.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn linear<const HALF: bool>(x: &[f32], w: *const u8, bias: &[f32], ins: usize, out: &mut [f32]) {
        let outs = bias.len();
        let tokens = x.len() / ins;
        let mut o = 0;
        while o < outs {
            if outs - o >= ROWS {
                rows::<ROWS, HALF>(x, w, bias, ins, out, o, tokens);
                o += ROWS;
            } else {
                rows::<1, HALF>(x, w, bias, ins, out, o, tokens);
                o += 1;
            }
        }
    }

    /// Rows `o..o + R` of the output for every token.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn rows<const R: usize, const HALF: bool>(x: &[f32], w: *const u8, bias: &[f32], ins: usize, out: &mut [f32], o: usize, tokens: usize) {
        let mut t = 0;
        while t < tokens {
            match tokens - t {
                1 => block::<R, 1, HALF>(x, w, bias, ins, out, o, t),
                2 => block::<R, 2, HALF>(x, w, bias, ins, out, o, t),
                _ => block::<R, TOKENS, HALF>(x, w, bias, ins, out, o, t),
            }
            t += (tokens - t).min(TOKENS);
        }
    }

    /// Rows `o..o + R` against tokens `t..t + T`: R × T sums kept in registers.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn block<const R: usize, const T: usize, const HALF: bool>(x: &[f32], w: *const u8, bias: &[f32], ins: usize, out: &mut [f32], o: usize, t: usize) {
        let outs = bias.len();
        let xp = x.as_ptr().add(t * ins);
        let load = |index: usize| {
            if HALF {
                _mm256_cvtph_ps(_mm_loadu_si128(w.cast::<u16>().add(index).cast()))
            } else {
                _mm256_loadu_ps(w.cast::<f32>().add(index))
            }
        };
        let mut acc = [[_mm256_setzero_ps(); T]; R];
        let mut i = 0;
        while i < ins {
            let mut xs = [_mm256_setzero_ps(); T];
            for (k, v) in xs.iter_mut().enumerate() {
                *v = _mm256_loadu_ps(xp.add(k * ins + i));
            }
            for (r, sums) in acc.iter_mut().enumerate() {
                let wv = load((o + r) * ins + i);
                for (s, xv) in sums.iter_mut().zip(&xs) {
                    *s = _mm256_fmadd_ps(*xv, wv, *s);
                }
            }
            i += 8;
        }
        for (r, sums) in acc.iter().enumerate() {
            for (k, s) in sums.iter().enumerate() {
                out[(t + k) * outs + o + r] = bias[o + r] + sum(*s);
            }
        }
    }
}

/// The f16 product on AVX-512: four rows against four tokens at a time, sixteen lanes each.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    const ROWS: usize = 4;
    const TOKENS: usize = 4;

    /// Safety: AVX-512F present, `ins % 16 == 0`, `w.len() == bias.len() × ins`, shapes as
    /// [`super::Dense::forward`] asserts.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn linear(x: &[f32], w: &[u16], bias: &[f32], ins: usize, out: &mut [f32]) {
        let outs = bias.len();
        let tokens = x.len() / ins;
        let mut o = 0;
        while o < outs {
            let rows = (outs - o).min(ROWS);
            let mut t = 0;
            while t < tokens {
                let n = (tokens - t).min(TOKENS);
                match (rows, n) {
                    (ROWS, TOKENS) => block::<ROWS, TOKENS>(x, w, bias, ins, out, o, t),
                    (ROWS, 3) => block::<ROWS, 3>(x, w, bias, ins, out, o, t),
                    (ROWS, 2) => block::<ROWS, 2>(x, w, bias, ins, out, o, t),
                    (ROWS, _) => block::<ROWS, 1>(x, w, bias, ins, out, o, t),
                    _ => {
                        for r in 0..rows {
                            block::<1, 1>(x, w, bias, ins, out, o + r, t);
                        }
                        t += 1;
                        continue;
                    }
                }
                t += n;
            }
            o += rows;
        }
    }

    /// Rows `o..o + R` against tokens `t..t + T`: R × T sums kept in registers.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn block<const R: usize, const T: usize>(x: &[f32], w: &[u16], bias: &[f32], ins: usize, out: &mut [f32], o: usize, t: usize) {
        let outs = bias.len();
        let xp = x.as_ptr().add(t * ins);
        let wp = w.as_ptr().add(o * ins);
        let mut acc = [[_mm512_setzero_ps(); T]; R];
        let mut i = 0;
        while i < ins {
            let mut xs = [_mm512_setzero_ps(); T];
            for (k, v) in xs.iter_mut().enumerate() {
                *v = _mm512_loadu_ps(xp.add(k * ins + i));
            }
            for (r, sums) in acc.iter_mut().enumerate() {
                let wv = _mm512_cvtph_ps(_mm256_loadu_si256(wp.add(r * ins + i).cast()));
                for (s, xv) in sums.iter_mut().zip(&xs) {
                    *s = _mm512_fmadd_ps(*xv, wv, *s);
                }
            }
            i += 16;
        }
        for (r, sums) in acc.iter().enumerate() {
            for (k, s) in sums.iter().enumerate() {
                out[(t + k) * outs + o + r] = bias[o + r] + _mm512_reduce_add_ps(*s);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_path_gives_the_plain_product() {
        // Sizes off the kernel's blocks: tails of rows and tokens, and inputs not a multiple of 8.
        for (tokens, ins, outs) in [(1, 8, 1), (5, 16, 7), (7, 384, 13), (2, 12, 3)] {
            let x: Vec<f32> = (0..tokens * ins).map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0).collect();
            let w: Vec<f32> = (0..outs * ins).map(|i| ((i * 53 % 97) as f32 - 48.0) / 96.0).collect();
            let bias: Vec<f32> = (0..outs).map(|o| o as f32 * 0.1).collect();
            let mut want = vec![0.0; tokens * outs];
            for t in 0..tokens {
                for o in 0..outs {
                    want[t * outs + o] = bias[o] + (0..ins).map(|i| f64::from(x[t * ins + i]) * f64::from(w[o * ins + i])).sum::<f64>() as f32;
                }
            }
            let (mut fast, mut plain) = (vec![0.0; tokens * outs], vec![0.0; tokens * outs]);
            let mut dense = vec![0.0; tokens * outs];
            linear(&x, &w, &bias, ins, &mut fast);
            portable(&x, &w, &bias, ins, &mut plain);
            Dense::new(w.clone(), bias.clone()).forward(&x, &mut dense);
            for (((f, p), d), w) in fast.iter().zip(&plain).zip(&dense).zip(&want) {
                assert!((f - w).abs() < 1e-4 && (p - w).abs() < 1e-4, "{tokens}×{ins}→{outs}: {f} {p} {w}");
                // Half-float weights: each off by at most 2⁻¹¹ of itself.
                assert!((d - w).abs() < 2e-3 * ins as f32 / 8.0, "{tokens}×{ins}→{outs}: f16 {d}, exact {w}");
            }
        }
    }
}
