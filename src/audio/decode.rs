//! Reading audio files: WAV in every common encoding, FLAC, and raw PCM.
//!
//! WAV is parsed here rather than through hound because telephone recordings are often
//! μ-law or A-law WAV, which hound refuses. The reader walks the RIFF chunks, understands
//! `WAVE_FORMAT_EXTENSIBLE`, and reports exactly what it did not understand, naming the file.

use std::path::{Path, PathBuf};

use super::{downmix, g711, Audio};

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("{path}: unsupported audio: {reason}")]
    Unsupported { path: PathBuf, reason: String },
}

const FORMAT_PCM: u16 = 0x0001;
const FORMAT_FLOAT: u16 = 0x0003;
const FORMAT_ALAW: u16 = 0x0006;
const FORMAT_MULAW: u16 = 0x0007;
const FORMAT_EXTENSIBLE: u16 = 0xFFFE;

/// Reads a WAV or FLAC file (by content, not by extension) into mono audio at its own rate.
pub fn decode_file(path: &Path) -> Result<Audio, DecodeError> {
    let bytes = std::fs::read(path).map_err(|source| DecodeError::Io { path: path.to_path_buf(), source })?;
    decode_bytes(&bytes, path)
}

/// Decodes file contents; `path` only names the source in errors.
pub fn decode_bytes(bytes: &[u8], path: &Path) -> Result<Audio, DecodeError> {
    if bytes.starts_with(b"RIFF") || bytes.starts_with(b"RIFX") {
        return decode_wav(bytes, path);
    }
    if bytes.starts_with(b"fLaC") {
        return decode_flac(bytes, path);
    }
    let reason = if bytes.is_empty() {
        "the file is empty".to_string()
    } else {
        "not a WAV or FLAC file (for headerless PCM pass --raw-rate)".to_string()
    };
    Err(DecodeError::Unsupported { path: path.to_path_buf(), reason })
}

/// Interprets bytes as headerless signed 16-bit little-endian PCM.
pub fn decode_raw_pcm16(bytes: &[u8], rate: u32, channels: u16) -> Audio {
    let interleaved: Vec<f32> =
        bytes.chunks_exact(2).map(|b| super::i16_to_f32(i16::from_le_bytes([b[0], b[1]]))).collect();
    Audio::new(downmix(&interleaved, channels.max(1) as usize), rate)
}

struct WavFormat {
    tag: u16,
    channels: u16,
    rate: u32,
    bits: u16,
    block_align: u16,
}

fn decode_wav(bytes: &[u8], path: &Path) -> Result<Audio, DecodeError> {
    let invalid = |reason: &str| DecodeError::Invalid { path: path.to_path_buf(), reason: reason.to_string() };
    if bytes.starts_with(b"RIFX") {
        return Err(DecodeError::Unsupported { path: path.to_path_buf(), reason: "big-endian RIFX WAV".into() });
    }
    if bytes.len() < 12 || &bytes[8..12] != b"WAVE" {
        return Err(invalid("a RIFF file but not WAVE"));
    }
    let mut format: Option<WavFormat> = None;
    let mut data: Option<&[u8]> = None;
    let mut offset = 12;
    while offset + 8 <= bytes.len() {
        let id = &bytes[offset..offset + 4];
        let size = u32::from_le_bytes(bytes[offset + 4..offset + 8].try_into().unwrap()) as usize;
        let body_start = offset + 8;
        // Streams written live often leave the data size at 0 or 0xFFFFFFFF: take what is there.
        let body_end = body_start.saturating_add(size).min(bytes.len());
        let body = &bytes[body_start..body_end];
        match id {
            b"fmt " => format = Some(parse_fmt(body).ok_or_else(|| invalid("the fmt chunk is too short"))?),
            b"data" => {
                let body = if size == 0 || size == u32::MAX as usize { &bytes[body_start..] } else { body };
                data = Some(body);
            }
            _ => {}
        }
        offset = body_start.saturating_add(size).saturating_add(size & 1);
    }
    let format = format.ok_or_else(|| invalid("no fmt chunk"))?;
    let data = data.ok_or_else(|| invalid("no data chunk"))?;
    if format.channels == 0 || format.rate == 0 {
        return Err(invalid(&format!("{} channels at {} Hz", format.channels, format.rate)));
    }
    let interleaved = decode_samples(&format, data)
        .ok_or_else(|| DecodeError::Unsupported { path: path.to_path_buf(), reason: describe(&format) })?;
    Ok(Audio::new(downmix(&interleaved, format.channels as usize), format.rate))
}

fn parse_fmt(body: &[u8]) -> Option<WavFormat> {
    if body.len() < 16 {
        return None;
    }
    let u16_at = |i: usize| u16::from_le_bytes([body[i], body[i + 1]]);
    let mut tag = u16_at(0);
    if tag == FORMAT_EXTENSIBLE && body.len() >= 26 {
        // The sub-format GUID's first two bytes are the plain format tag.
        tag = u16_at(24);
    }
    Some(WavFormat {
        tag,
        channels: u16_at(2),
        rate: u32::from_le_bytes(body[4..8].try_into().ok()?),
        block_align: u16_at(12),
        bits: u16_at(14),
    })
}

fn decode_samples(format: &WavFormat, data: &[u8]) -> Option<Vec<f32>> {
    let width = (format.bits as usize).div_ceil(8);
    if width == 0 {
        return None;
    }
    // Container width can exceed the significant bits (24 bits in 32-bit words).
    let container = if format.block_align as usize >= width * format.channels as usize && format.channels > 0 {
        format.block_align as usize / format.channels as usize
    } else {
        width
    };
    let frames = data.chunks_exact(container);
    let samples = match (format.tag, container) {
        (FORMAT_PCM, 1) => frames.map(|b| (b[0] as f32 - 128.0) / 128.0).collect(),
        (FORMAT_PCM, 2) => frames.map(|b| i16::from_le_bytes([b[0], b[1]]) as f32 / 32_768.0).collect(),
        (FORMAT_PCM, 3) => frames.map(|b| i32::from_le_bytes([0, b[0], b[1], b[2]]) as f32 / 2_147_483_648.0).collect(),
        (FORMAT_PCM, 4) => frames.map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32 / 2_147_483_648.0).collect(),
        (FORMAT_FLOAT, 4) => frames.map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
        (FORMAT_FLOAT, 8) => frames.map(|b| f64::from_le_bytes(b.try_into().unwrap()) as f32).collect(),
        (FORMAT_MULAW, 1) => g711::decode_mulaw(data),
        (FORMAT_ALAW, 1) => g711::decode_alaw(data),
        _ => return None,
    };
    Some(samples)
}

fn describe(format: &WavFormat) -> String {
    let name = match format.tag {
        FORMAT_PCM => "PCM".to_string(),
        FORMAT_FLOAT => "float".to_string(),
        FORMAT_MULAW => "μ-law".to_string(),
        FORMAT_ALAW => "A-law".to_string(),
        0x0002 => "MS ADPCM".to_string(),
        0x0011 => "IMA ADPCM".to_string(),
        0x0055 => "MP3".to_string(),
        other => format!("format tag 0x{other:04x}"),
    };
    format!(
        "{name} at {} bits per sample (supported: PCM 8/16/24/32-bit, float 32/64-bit, 8-bit μ-law and A-law)",
        format.bits
    )
}

fn decode_flac(bytes: &[u8], path: &Path) -> Result<Audio, DecodeError> {
    let invalid = |e: claxon::Error| DecodeError::Invalid { path: path.to_path_buf(), reason: format!("bad FLAC: {e}") };
    let mut reader = claxon::FlacReader::new(std::io::Cursor::new(bytes)).map_err(invalid)?;
    let info = reader.streaminfo();
    if info.channels == 0 || info.sample_rate == 0 {
        return Err(DecodeError::Invalid { path: path.to_path_buf(), reason: "FLAC stream with no channels".into() });
    }
    let scale = 1.0 / (1u64 << (info.bits_per_sample - 1)) as f32;
    let mut interleaved = Vec::new();
    for sample in reader.samples() {
        interleaved.push(sample.map_err(invalid)? as f32 * scale);
    }
    Ok(Audio::new(downmix(&interleaved, info.channels as usize), info.sample_rate))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a WAV file by hand so every encoding can be tested without fixtures.
    fn wav(tag: u16, channels: u16, rate: u32, bits: u16, data: &[u8], extensible: bool) -> Vec<u8> {
        let block_align = channels * bits.div_ceil(8);
        let mut fmt = Vec::new();
        fmt.extend((if extensible { FORMAT_EXTENSIBLE } else { tag }).to_le_bytes());
        fmt.extend(channels.to_le_bytes());
        fmt.extend(rate.to_le_bytes());
        fmt.extend((rate * block_align as u32).to_le_bytes());
        fmt.extend(block_align.to_le_bytes());
        fmt.extend(bits.to_le_bytes());
        if extensible {
            fmt.extend(22u16.to_le_bytes());
            fmt.extend(bits.to_le_bytes());
            fmt.extend(0u32.to_le_bytes());
            fmt.extend(tag.to_le_bytes());
            fmt.extend([0u8; 14]);
        }
        let mut out = b"RIFF".to_vec();
        out.extend(((4 + 8 + fmt.len() + 8 + 8 + data.len()) as u32).to_le_bytes());
        out.extend(b"WAVE");
        out.extend(b"fmt ");
        out.extend((fmt.len() as u32).to_le_bytes());
        out.extend(&fmt);
        out.extend(b"LIST");
        out.extend(0u32.to_le_bytes());
        out.extend(b"data");
        out.extend((data.len() as u32).to_le_bytes());
        out.extend(data);
        out
    }

    fn decode(bytes: &[u8]) -> Result<Audio, DecodeError> {
        decode_bytes(bytes, Path::new("test.wav"))
    }

    const HALF: f32 = 0.5;

    #[test]
    fn every_pcm_width() {
        let cases: Vec<(u16, Vec<u8>)> = vec![
            (8, vec![192]),
            (16, 16_384i16.to_le_bytes().to_vec()),
            (24, (4_194_304i32).to_le_bytes()[..3].to_vec()),
            (32, (1_073_741_824i32).to_le_bytes().to_vec()),
        ];
        for (bits, data) in cases {
            let audio = decode(&wav(FORMAT_PCM, 1, 8_000, bits, &data, false)).unwrap();
            assert_eq!(audio.rate, 8_000);
            assert!((audio.samples[0] - HALF).abs() < 1e-3, "{bits}-bit decoded to {}", audio.samples[0]);
        }
    }

    #[test]
    fn float_mulaw_alaw_and_extensible() {
        let float = decode(&wav(FORMAT_FLOAT, 1, 48_000, 32, &HALF.to_le_bytes(), false)).unwrap();
        assert_eq!(float.samples, vec![HALF]);
        let double = decode(&wav(FORMAT_FLOAT, 1, 48_000, 64, &0.5f64.to_le_bytes(), false)).unwrap();
        assert_eq!(double.samples, vec![HALF]);
        let mulaw = decode(&wav(FORMAT_MULAW, 1, 8_000, 8, &[g711::linear_to_mulaw(16_384)], false)).unwrap();
        assert!((mulaw.samples[0] - HALF).abs() < 0.02);
        let alaw = decode(&wav(FORMAT_ALAW, 1, 8_000, 8, &[g711::linear_to_alaw(-16_384)], false)).unwrap();
        assert!((alaw.samples[0] + HALF).abs() < 0.02);
        let ext = decode(&wav(FORMAT_PCM, 1, 16_000, 16, &16_384i16.to_le_bytes(), true)).unwrap();
        assert_eq!(ext.samples, vec![HALF]);
    }

    #[test]
    fn stereo_is_downmixed() {
        let mut data = Vec::new();
        data.extend(16_384i16.to_le_bytes());
        data.extend(0i16.to_le_bytes());
        let audio = decode(&wav(FORMAT_PCM, 2, 44_100, 16, &data, false)).unwrap();
        assert_eq!(audio.samples, vec![0.25]);
    }

    #[test]
    fn bad_files_name_the_problem() {
        let empty = decode(b"").unwrap_err().to_string();
        assert!(empty.contains("test.wav") && empty.contains("empty"), "{empty}");
        let text = decode(b"hello world").unwrap_err().to_string();
        assert!(text.contains("not a WAV or FLAC"), "{text}");
        let adpcm = decode(&wav(0x0002, 1, 8_000, 4, &[0, 0], false)).unwrap_err().to_string();
        assert!(adpcm.contains("MS ADPCM"), "{adpcm}");
        let truncated = decode(b"RIFF\x00\x00\x00\x00WAVEfmt ").unwrap_err().to_string();
        assert!(truncated.contains("no fmt chunk"), "{truncated}");
        let no_data = wav(FORMAT_PCM, 1, 8_000, 16, &[], false);
        let no_data = &no_data[..no_data.len() - 8];
        assert!(decode(no_data).unwrap_err().to_string().contains("no data chunk"));
    }

    #[test]
    fn flac_round_trip_via_sox() {
        // sox is a build prerequisite (see README); it encodes a reference FLAC.
        let dir = tempfile::tempdir().unwrap();
        let wav_path = dir.path().join("tone.wav");
        let flac_path = dir.path().join("tone.flac");
        let tone: Vec<f32> = (0..8_000).map(|i| 0.3 * (i as f32 * 0.1).sin()).collect();
        Audio::new(tone.clone(), 8_000).write_wav(&wav_path).unwrap();
        let status = std::process::Command::new("sox").arg(&wav_path).arg(&flac_path).status();
        let status = status.expect("sox is installed by .ci/setup");
        assert!(status.success());
        let audio = decode_file(&flac_path).unwrap();
        assert_eq!(audio.rate, 8_000);
        assert_eq!(audio.samples.len(), tone.len());
        let max_err = audio.samples.iter().zip(&tone).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        assert!(max_err < 1e-3, "FLAC differs by {max_err}");
    }

    // Fuzzing: any bytes, and valid files with one byte changed, decode or are refused with
    // an error; none panics. Bounded so the suite's time stays fixed.
    mod fuzz {
        use super::*;
        use proptest::prelude::*;

        fn valid_files() -> Vec<Vec<u8>> {
            let pcm: Vec<u8> = (0..64i16).flat_map(|i| (i * 500).to_le_bytes()).collect();
            vec![
                wav(FORMAT_PCM, 1, 8_000, 16, &pcm, false),
                wav(FORMAT_PCM, 2, 44_100, 24, &pcm[..96], true),
                wav(FORMAT_MULAW, 1, 8_000, 8, &pcm[..64], false),
                wav(FORMAT_ALAW, 1, 8_000, 8, &pcm[..64], false),
                wav(FORMAT_FLOAT, 1, 16_000, 32, &pcm, false),
            ]
        }

        /// A small FLAC made by sox once (a build prerequisite, like the round-trip test).
        fn flac_file() -> Vec<u8> {
            static FLAC: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
            FLAC.get_or_init(|| {
                let dir = tempfile::tempdir().unwrap();
                let wav_path = dir.path().join("t.wav");
                let flac_path = dir.path().join("t.flac");
                Audio::new((0..800).map(|i| 0.2 * (i as f32 * 0.05).sin()).collect(), 8_000).write_wav(&wav_path).unwrap();
                let status = std::process::Command::new("sox").arg(&wav_path).arg(&flac_path).status().expect("sox is installed by .ci/setup");
                assert!(status.success());
                std::fs::read(&flac_path).unwrap()
            })
            .clone()
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(400))]

            #[test]
            fn arbitrary_bytes_never_panic(prefix in 0..3usize, bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
                let mut input = [b"RIFF".to_vec(), b"fLaC".to_vec(), Vec::new()][prefix].clone();
                input.extend(bytes);
                let _ = decode(&input);
                let _ = g711::decode_mulaw(&input);
                let _ = g711::decode_alaw(&input);
                let _ = decode_raw_pcm16(&input, 8_000, 1);
            }

            #[test]
            fn a_changed_byte_in_a_valid_file_never_panics(which in 0..6usize, position in any::<prop::sample::Index>(), byte in any::<u8>(), cut in any::<prop::sample::Index>()) {
                let mut files = valid_files();
                files.push(flac_file());
                let mut file = files[which].clone();
                let at = position.index(file.len());
                file[at] = byte;
                let _ = decode(&file);
                let end = cut.index(file.len());
                let _ = decode(&file[..end]);
            }
        }
    }
}
