//! G.711 μ-law and A-law, the codecs of the telephone network.
//!
//! Twilio Media Streams and SIP/RTP carry 8 kHz G.711; WAV files can hold it too. These are
//! the ITU-T G.711 segment encodings, written as arithmetic (no tables) so that the encoder
//! and decoder are obviously each other's inverse; property tests bound the round-trip error.

const MULAW_BIAS: i32 = 0x84;
const MULAW_CLIP: i32 = 32_635;

/// Encodes one 16-bit linear sample as μ-law.
pub fn linear_to_mulaw(sample: i16) -> u8 {
    let mut pcm = sample as i32;
    let sign = if pcm < 0 {
        pcm = -pcm;
        0x80
    } else {
        0
    };
    pcm = pcm.min(MULAW_CLIP) + MULAW_BIAS;
    let exponent = (7 - (pcm as u32).leading_zeros().saturating_sub(17)).min(7) as i32;
    let mantissa = (pcm >> (exponent + 3)) & 0x0F;
    !(sign | (exponent << 4) as u8 as i32 | mantissa) as u8
}

/// Decodes one μ-law byte to a 16-bit linear sample.
pub fn mulaw_to_linear(byte: u8) -> i16 {
    let value = !byte as i32;
    let sign = value & 0x80;
    let exponent = (value >> 4) & 0x07;
    let mantissa = value & 0x0F;
    let magnitude = (((mantissa << 3) + MULAW_BIAS) << exponent) - MULAW_BIAS;
    if sign != 0 {
        -magnitude as i16
    } else {
        magnitude as i16
    }
}

/// Encodes one 16-bit linear sample as A-law.
pub fn linear_to_alaw(sample: i16) -> u8 {
    let pcm = sample as i32;
    let (sign, magnitude) = if pcm >= 0 { (0x80, pcm) } else { (0x00, -pcm - 1) };
    let magnitude = magnitude.min(0x7FFF) >> 3; // 13-bit magnitude
    let encoded = if magnitude < 32 {
        magnitude >> 1
    } else {
        let exponent = 31 - (magnitude as u32).leading_zeros() as i32 - 4; // 1..=7
        let mantissa = (magnitude >> exponent) & 0x0F;
        (exponent << 4) | mantissa
    };
    ((sign | encoded) ^ 0x55) as u8
}

/// Decodes one A-law byte to a 16-bit linear sample.
pub fn alaw_to_linear(byte: u8) -> i16 {
    let value = (byte ^ 0x55) as i32;
    let sign = value & 0x80;
    let exponent = (value >> 4) & 0x07;
    let mantissa = value & 0x0F;
    let magnitude = if exponent == 0 {
        (mantissa << 4) + 8
    } else {
        ((mantissa << 4) + 0x108) << (exponent - 1)
    };
    if sign != 0 {
        magnitude as i16
    } else {
        -magnitude as i16
    }
}

pub fn encode_mulaw(samples: &[f32]) -> Vec<u8> {
    samples.iter().map(|s| linear_to_mulaw(super::f32_to_i16(*s))).collect()
}

pub fn decode_mulaw(bytes: &[u8]) -> Vec<f32> {
    bytes.iter().map(|b| super::i16_to_f32(mulaw_to_linear(*b))).collect()
}

pub fn encode_alaw(samples: &[f32]) -> Vec<u8> {
    samples.iter().map(|s| linear_to_alaw(super::f32_to_i16(*s))).collect()
}

pub fn decode_alaw(bytes: &[u8]) -> Vec<f32> {
    bytes.iter().map(|b| super::i16_to_f32(alaw_to_linear(*b))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// G.711 keeps about 4 significant bits: the error grows with the magnitude.
    fn allowed_error(sample: i16) -> i32 {
        (sample as i32).abs() / 16 + 16
    }

    proptest! {
        #[test]
        fn mulaw_round_trip_is_bounded(sample in any::<i16>()) {
            let back = mulaw_to_linear(linear_to_mulaw(sample));
            let clipped = (sample as i32).clamp(-MULAW_CLIP, MULAW_CLIP);
            prop_assert!((back as i32 - clipped).abs() <= allowed_error(sample), "{sample} -> {back}");
        }

        #[test]
        fn alaw_round_trip_is_bounded(sample in any::<i16>()) {
            let back = alaw_to_linear(linear_to_alaw(sample));
            prop_assert!((back as i32 - sample as i32).abs() <= allowed_error(sample), "{sample} -> {back}");
        }

        #[test]
        fn decoding_is_a_fixed_point(byte in any::<u8>()) {
            // Decode ∘ encode ∘ decode == decode: every code word is reproduced exactly.
            let mu = mulaw_to_linear(byte);
            prop_assert_eq!(mulaw_to_linear(linear_to_mulaw(mu)), mu);
            let a = alaw_to_linear(byte);
            prop_assert_eq!(alaw_to_linear(linear_to_alaw(a)), a);
        }
    }

    #[test]
    fn known_code_words() {
        assert_eq!(linear_to_mulaw(0), 0xFF);
        assert_eq!(mulaw_to_linear(0xFF), 0);
        assert_eq!(mulaw_to_linear(0x00), -32124);
        assert_eq!(mulaw_to_linear(0x80), 32124);
        assert_eq!(linear_to_alaw(0), 0xD5);
        assert_eq!(alaw_to_linear(0xD5), 8);
        assert_eq!(alaw_to_linear(0xAA), 32256);
    }
}
