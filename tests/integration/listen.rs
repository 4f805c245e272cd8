//! The listener stage on the real VAD and Smart Turn models, with a speech-to-text stand-in
//! that holds each transcription until the test lets it go: how callers count themselves
//! among those about to want a transcript, and how many cores their transcriptions get.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use ringline::assistant::TurnSpec;
use ringline::audio::Audio;
use ringline::models::ModelStore;
use ringline::pipeline::frames::Frame;
use ringline::pipeline::listen::{Answers, Listener};
use ringline::pipeline::pool::{stt_cores, Talkers};
use ringline::stt::{SpeechToText, SttError, Transcript};
use ringline::transport::live::{self, LiveSender};
use ringline::tts::piper::PiperVoice;
use ringline::tts::TextToSpeech;
use ringline::vad::silero::SileroVad;
use ringline::vad::smart_turn::SmartTurn;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::support::models_dir;

const LINE: &str = "I would like to book a table for two.";

/// Transcribes every utterance as [`LINE`], once let go; records the threads each
/// transcription that ran to the end was given.
#[derive(Default)]
struct HeldStt {
    open: Mutex<bool>,
    opened: Condvar,
    /// Threads of each transcription waiting or done (not stopped).
    threads: Mutex<Vec<usize>>,
}

impl HeldStt {
    fn let_go(&self) {
        *self.open.lock().unwrap() = true;
        self.opened.notify_all();
    }
}

impl SpeechToText for HeldStt {
    fn transcribe(&self, _: &[f32]) -> Result<Transcript, SttError> {
        unreachable!("the listener transcribes stoppably")
    }

    fn transcribe_until(&self, _: &[f32], stop: &AtomicBool) -> Result<Transcript, SttError> {
        let threads = ringline::stt::threads_or(0);
        self.threads.lock().unwrap().push(threads);
        let mut open = self.open.lock().unwrap();
        while !*open {
            if stop.load(Ordering::Relaxed) {
                drop(open);
                let mut seen = self.threads.lock().unwrap();
                if let Some(at) = seen.iter().rposition(|&t| t == threads) {
                    seen.remove(at);
                }
                return Err(SttError::Stopped);
            }
            open = self.opened.wait_timeout(open, Duration::from_millis(10)).unwrap().0;
        }
        Ok(Transcript { text: LINE.into(), ..Transcript::default() })
    }
}

struct Caller {
    audio: LiveSender,
    stt: Arc<HeldStt>,
    finals: mpsc::UnboundedReceiver<String>,
}

fn chunks(samples: &[f32]) -> impl Iterator<Item = Vec<f32>> + '_ {
    samples.chunks(320).map(<[f32]>::to_vec)
}

/// Waits (a bounded while) until `seen()` is `want`; the pipeline runs on its own tasks and
/// threads.
async fn until<T: PartialEq + std::fmt::Debug>(what: &str, want: T, seen: impl Fn() -> T) {
    for _ in 0..3000 {
        if seen() == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{what}: wanted {want:?}, still {:?}", seen());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_count_themselves_from_their_first_word_until_their_transcript_and_share_the_cores() {
    let store = ModelStore::new(models_dir(), ringline::models::Manifest::parse(ringline::models::MANIFEST).unwrap());
    let mut voice = PiperVoice::load(&store, "en_US-joe-medium", 1).unwrap();
    (voice.scales_mut().noise_scale, voice.scales_mut().noise_w) = (0.0, 0.0);
    let speech = voice.speak_all(LINE).unwrap().to_rate(16_000).unwrap().samples;
    let silence = |secs| Audio::silence(secs, 16_000).samples;
    let vad = Arc::new(SileroVad::load(&store).unwrap());
    let smart_turn = Arc::new(SmartTurn::load(&store).unwrap());
    // A count of its own: other tests' calls in this process do not disturb it.
    let talkers: &'static Talkers = Box::leak(Box::new(Talkers::new()));
    let cancel = CancellationToken::new();
    let start = |name: &'static str| {
        let (audio, audio_in) = live::channel(4096);
        let stt = Arc::new(HeldStt::default());
        let listener = Listener {
            vad: vad.clone(),
            smart_turn: smart_turn.clone(),
            stt: stt.clone(),
            turn: TurnSpec::default(),
            input_rate: 16_000,
            partial_every: None,
            prompt: Default::default(),
            answers: Answers::default(),
            played: None,
            talkers,
            continuation: Default::default(),
        };
        let (out, mut frames) = mpsc::channel(64);
        let (finals_tx, finals) = mpsc::unbounded_channel();
        tokio::spawn(listener.run(audio_in, out, cancel.clone()));
        tokio::spawn(async move {
            while let Some(frame) = frames.recv().await {
                match frame {
                    Frame::TranscriptFinal(turn) => {
                        let _ = finals_tx.send(turn.text);
                    }
                    Frame::Error { message, .. } => panic!("{name}'s listener: {message}"),
                    _ => {}
                }
            }
        });
        Caller { audio, stt, finals }
    };
    let (mut ann, mut bob) = (start("Ann"), start("Bob"));

    // Ann starts talking: counted from her first words, before she pauses.
    for chunk in chunks(&silence(0.5)).chain(chunks(&speech[..speech.len() * 2 / 3])) {
        ann.audio.push(chunk);
    }
    until("callers counted with Ann talking", 1, || talkers.count()).await;
    // Bob starts talking too.
    for chunk in chunks(&silence(0.5)).chain(chunks(&speech[..speech.len() * 2 / 3])) {
        bob.audio.push(chunk);
    }
    until("callers counted with Bob talking too", 2, || talkers.count()).await;

    // Ann finishes and pauses while Bob is mid-sentence: her transcription takes one core,
    // leaving the other for Bob's, and she stays counted until it is done.
    for chunk in chunks(&speech[speech.len() * 2 / 3..]).chain(chunks(&silence(1.5))) {
        ann.audio.push(chunk);
    }
    until("threads of Ann's transcription beside Bob talking", vec![1], || ann.stt.threads.lock().unwrap().clone()).await;
    assert_eq!(talkers.count(), 2, "Ann is counted while her transcript is being made");
    ann.stt.let_go();
    assert_eq!(tokio::time::timeout(Duration::from_secs(30), ann.finals.recv()).await.unwrap().as_deref(), Some(LINE));
    until("callers counted once Ann was heard", 1, || talkers.count()).await;

    // Bob finishes alone: his transcription may take every core a transcription may have.
    for chunk in chunks(&speech[speech.len() * 2 / 3..]).chain(chunks(&silence(1.5))) {
        bob.audio.push(chunk);
    }
    until("threads of Bob's transcription alone", vec![stt_cores()], || bob.stt.threads.lock().unwrap().clone()).await;
    assert_eq!(talkers.count(), 1, "Bob is counted while his transcript is being made");
    bob.stt.let_go();
    assert_eq!(tokio::time::timeout(Duration::from_secs(30), bob.finals.recv()).await.unwrap().as_deref(), Some(LINE));
    until("callers counted once both were heard", 0, || talkers.count()).await;
    cancel.cancel();
}
