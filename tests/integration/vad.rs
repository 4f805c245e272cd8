//! Silero VAD on real speech: silence is silence, speech is speech, with the right timing.

use ringline::audio::Audio;
use ringline::models::ModelStore;
use ringline::tts::piper::PiperVoice;
use ringline::tts::TextToSpeech;
use ringline::vad::silero::{SileroStream, SileroVad};
use ringline::vad::{VadDetector, VadEvent, VadParams, FRAME_MS, FRAME_SAMPLES};

use crate::support::models_dir;

fn store() -> ModelStore {
    ModelStore::new(models_dir(), ringline::models::Manifest::parse(ringline::models::MANIFEST).unwrap())
}

#[test]
fn silero_finds_the_speech_between_silences() {
    let store = store();
    // Unsampled Piper (both noises 0): the same audio every run.
    let mut voice = PiperVoice::load(&store, "en_US-joe-medium", 1).unwrap();
    (voice.scales_mut().noise_scale, voice.scales_mut().noise_w) = (0.0, 0.0);
    let speech = voice.speak_all("I would like to book a table for two.").unwrap().to_rate(16_000).unwrap();
    let mut samples = Audio::silence(1.0, 16_000).samples;
    samples.extend(&speech.samples);
    samples.extend(Audio::silence(1.0, 16_000).samples);
    let vad = SileroVad::load(&store).unwrap();
    let mut stream = SileroStream::default();
    let mut detector = VadDetector::new(VadParams::default());
    let mut events = Vec::new();
    for frame in samples.chunks_exact(FRAME_SAMPLES) {
        if let Some(event) = detector.push(vad.probability(&mut stream, frame).unwrap()) {
            events.push(event);
        }
    }
    // Suspected on the first speech frame (the agent would pause there), then started from
    // that same frame once the hysteresis is satisfied, then stopped.
    assert_eq!(events.len(), 3, "{events:?}");
    let ms = |frame: u64| frame as f32 * FRAME_MS as f32;
    let VadEvent::SpeechSuspected { onset_frame: suspected } = events[0] else { panic!("{events:?}") };
    let VadEvent::SpeechStarted { onset_frame } = events[1] else { panic!("{events:?}") };
    let VadEvent::SpeechStopped { last_speech_frame } = events[2] else { panic!("{events:?}") };
    assert_eq!(suspected, onset_frame, "{events:?}");
    // Piper leaves a little silence around its speech; allow for it.
    assert!((ms(onset_frame) - 1000.0).abs() < 250.0, "speech began at {} ms", ms(onset_frame));
    let speech_end = 1000.0 + speech.duration_secs() * 1000.0;
    assert!((ms(last_speech_frame) - speech_end).abs() < 300.0, "speech ended at {} ms, expected ~{speech_end}", ms(last_speech_frame));
}
