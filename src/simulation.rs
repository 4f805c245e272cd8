//! Simulated callers: a caller script (YAML) and the [`ScriptedCaller`] that plays it into a
//! loopback line — lines spoken in a voice other than the agent's, pauses inside a sentence,
//! barge-ins timed against the agent's speech, coughs, keypad digits, recordings, and lines
//! that wait for a phrase of the agent. The sandbox line, `simulate`, `demo` and the eval
//! harness use them; nothing here knows a server or a real line.
//!
//! **The sandbox.** Numbers under `+1 500 555` (`+1500555XXXX`) reach the simulated line: a
//! scripted caller answers through the real pipeline. The last four digits choose what
//! happens, like a provider's test numbers: `0001` never answers (no-answer), `0002` is busy,
//! `0003` fails, anything else answers.

use std::time::Duration;

use serde::Deserialize;

use crate::audio::Audio;
use crate::transport::loopback::{LoopbackLine, TICK};
use crate::transport::AudioOut;

pub const SANDBOX_PREFIX: &str = "+1500555";

/// What the sandbox line does with a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sandbox {
    Answer,
    NoAnswer,
    Busy,
    Fail,
}

/// The sandbox behaviour of an E.164 number, if it is a sandbox number.
pub fn sandbox(e164: &str) -> Option<Sandbox> {
    let rest = e164.strip_prefix(SANDBOX_PREFIX)?;
    if rest.len() != 4 || !rest.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    Some(match rest {
        "0001" => Sandbox::NoAnswer,
        "0002" => Sandbox::Busy,
        "0003" => Sandbox::Fail,
        _ => Sandbox::Answer,
    })
}

/// A caller script (YAML): what the synthetic caller says and when.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallerScript {
    /// The caller's voice: `espeak:VOICE` or a Piper voice name.
    #[serde(default = "default_caller_voice")]
    pub voice: String,
    pub lines: Vec<CallerLine>,
    /// How long the caller waits for the agent's last answer before hanging up.
    #[serde(default = "default_final_wait_ms")]
    pub final_wait_ms: u64,
    /// The agent's voice leaks back into the caller's side (a handset or speakerphone).
    pub echo: Option<EchoSpec>,
    /// Phrases that ask the caller to say it again ("didn't catch"): when the agent's answer
    /// to a line holds one, the caller says that line again (at most [`MAX_REPEATS`] times in a
    /// row) before going on, as a person would. Empty: every line is said once.
    #[serde(default)]
    pub repeat_on: Vec<String>,
}

/// How many times in a row a caller says a line again when asked to.
pub const MAX_REPEATS: usize = 2;

/// An echo of the agent on the caller's side: its audio, `delay_ms` late, scaled by `gain`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EchoSpec {
    pub delay_ms: u32,
    pub gain: f32,
}

fn default_caller_voice() -> String {
    "espeak:en-us".into()
}
fn default_final_wait_ms() -> u64 {
    8_000
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallerLine {
    /// Words to say; `...` inside marks a pause of `inner_pause_ms`.
    pub say: Option<String>,
    /// A burst of noise this long (a cough), instead of words.
    pub noise_ms: Option<u32>,
    /// Keypad digits to press, instead of words.
    pub dtmf: Option<String>,
    /// Silence to leave after the agent stops talking before this line (600 ms unless set);
    /// with `at_once`, the caller's own pause after the line before it (none unless set).
    pub pause_ms: Option<u64>,
    /// Speak this long after the agent *starts* answering (a barge-in), instead of waiting; a
    /// time that falls in a pause of the agent's waits (up to 5 s) for its next words.
    pub barge_in_after_ms: Option<u64>,
    /// Say this line as soon as the one before it ends (or `pause_ms` after), before the agent
    /// answers that one: a key pressed right after words, or the rest of "Hold on, one more
    /// thing." Otherwise the caller waits for the answer to begin.
    #[serde(default)]
    pub at_once: bool,
    /// The pause that `...` stands for.
    #[serde(default = "default_inner_pause_ms")]
    pub inner_pause_ms: u64,
    /// Stay silent this long after the line (to test idle handling).
    #[serde(default)]
    pub then_silence_ms: u64,
    /// A recording to play as this turn, instead of synthesized words (any format `transcribe`
    /// reads, at any rate; a path relative to the script or scenario file). Not over the API.
    pub audio: Option<std::path::PathBuf>,
    /// What the recording says: the reference its transcript is scored against.
    pub text: Option<String>,
    /// Wait until the agent has said this phrase (then for it to finish) before the line, so
    /// the script stays in step with an agent that answers differently; after
    /// [`PHRASE_TIMEOUT`] the line is said anyway.
    pub after: Option<String>,
}

/// How long a line with `after:` waits for its phrase.
pub const PHRASE_TIMEOUT: Duration = Duration::from_secs(30);

/// The silence a caller leaves after the agent stops talking, unless a line sets `pause_ms`.
const DEFAULT_PAUSE_MS: u64 = 600;

impl CallerLine {
    /// The quiet before this line: after the agent's answer, or with `at_once` after the line
    /// before it.
    fn pause(&self) -> Duration {
        Duration::from_millis(self.pause_ms.unwrap_or(if self.at_once { 0 } else { DEFAULT_PAUSE_MS }))
    }
}

fn default_inner_pause_ms() -> u64 {
    900
}

/// The bounds a caller script sent over the API must keep (it is synthesized and played in
/// real time on the server, so every length is work).
const MAX_SCRIPT_LINES: usize = 40;
const MAX_LINE_CHARS: usize = 500;
const MAX_SCRIPT_WAIT_MS: u64 = 120_000;

impl CallerScript {
    /// Every bound this script breaks, as (field, message with the fix); checked before a
    /// call is stored, so a bad script never reaches the line.
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        match crate::tts::espeak_voice(&self.voice) {
            Some(voice) if voice.is_empty() || voice.len() > 32 || !voice.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '+') => {
                out.push(("voice".into(), format!("`{}` is not an espeak voice; use e.g. espeak:en-us", crate::assistant::check::clip(&self.voice))))
            }
            Some(_) => {}
            None => {
                let known = crate::models::Manifest::load().ok().is_none_or(|m| m.get(&format!("piper-{}", self.voice)).is_ok());
                if !known {
                    out.push(("voice".into(), format!("no voice `{}`; use espeak:en-us or an installed Piper voice", crate::assistant::check::clip(&self.voice))));
                }
            }
        }
        if let Some(echo) = self.echo {
            if echo.delay_ms > 1_000 {
                out.push(("echo.delay_ms".into(), format!("{} is more than 1000; an echo comes back within a second", echo.delay_ms)));
            }
            if !(0.0..=1.0).contains(&echo.gain) {
                out.push(("echo.gain".into(), format!("{} is outside 0..1; use e.g. 0.3 for a loud handset", echo.gain)));
            }
        }
        if self.lines.len() > MAX_SCRIPT_LINES {
            out.push(("lines".into(), format!("has {} lines; the most is {MAX_SCRIPT_LINES}", self.lines.len())));
        }
        if self.repeat_on.len() > 8 {
            out.push(("repeat_on".into(), format!("has {} phrases; the most is 8", self.repeat_on.len())));
        }
        for (i, phrase) in self.repeat_on.iter().enumerate() {
            if phrase.chars().count() > 200 || crate::text::normalized_words(phrase).is_empty() {
                out.push((format!("repeat_on.{i}"), "must be a phrase of words, at most 200 characters (e.g. \"didn't catch\")".into()));
            }
        }
        if self.final_wait_ms > MAX_SCRIPT_WAIT_MS {
            out.push(("final_wait_ms".into(), format!("{} is more than {MAX_SCRIPT_WAIT_MS}", self.final_wait_ms)));
        }
        for (i, line) in self.lines.iter().enumerate() {
            let field = |name: &str| format!("lines.{i}.{name}");
            if line.say.as_deref().is_some_and(|s| s.chars().count() > MAX_LINE_CHARS) {
                out.push((field("say"), format!("is longer than {MAX_LINE_CHARS} characters")));
            }
            if line.after.as_deref().is_some_and(|a| a.chars().count() > 200 || crate::text::normalized_words(a).is_empty()) {
                out.push((field("after"), "must be a phrase of words, at most 200 characters".into()));
            }
            if line.audio.is_some() && (line.say.is_some() || line.dtmf.is_some() || line.noise_ms.is_some()) {
                out.push((field("audio"), "a line plays a recording, or says words, or presses keys, or coughs: one of them".into()));
            }
            if line.text.as_deref().is_some_and(|t| t.chars().count() > MAX_LINE_CHARS) {
                out.push((field("text"), format!("is longer than {MAX_LINE_CHARS} characters")));
            }
            if let Some(digits) = &line.dtmf {
                if let Err(fix) = crate::audio::check_keys(digits) {
                    out.push((field("dtmf"), fix));
                }
            }
            if line.noise_ms.is_some_and(|ms| ms > 5_000) {
                out.push((field("noise_ms"), "is more than 5000".into()));
            }
            if line.at_once && i == 0 {
                out.push((field("at_once"), "the first line follows the agent's greeting; at_once is for a line right after another".into()));
            }
            if line.at_once && line.barge_in_after_ms.is_some() {
                out.push((field("at_once"), "a line is said at once after the one before it, or barge_in_after_ms into the answer: one of them".into()));
            }
            let waits = [("pause_ms", line.pause_ms.unwrap_or(0)), ("inner_pause_ms", line.inner_pause_ms), ("then_silence_ms", line.then_silence_ms), ("barge_in_after_ms", line.barge_in_after_ms.unwrap_or(0))];
            for (name, ms) in waits {
                if ms > MAX_SCRIPT_WAIT_MS {
                    out.push((field(name), format!("{ms} is more than {MAX_SCRIPT_WAIT_MS}")));
                }
            }
        }
        out
    }

    pub fn load(path: &std::path::Path) -> anyhow::Result<CallerScript> {
        let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let mut script: CallerScript = serde_yaml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        script.resolve_recordings(path.parent().unwrap_or(std::path::Path::new(".")));
        Ok(script)
    }

    /// Makes recordings' paths relative to `dir` (the file that named them) absolute.
    pub fn resolve_recordings(&mut self, dir: &std::path::Path) {
        for line in &mut self.lines {
            if let Some(audio) = &line.audio {
                if audio.is_relative() && dir.join(audio).is_file() {
                    line.audio = Some(dir.join(audio));
                }
            }
        }
    }

    /// [`CallerScript::problems`], and what a script sent over the API may not do: play a
    /// file from the server's disk.
    pub fn problems_over_api(&self) -> Vec<(String, String)> {
        let mut out = self.problems();
        for (i, line) in self.lines.iter().enumerate() {
            if line.audio.is_some() {
                out.push((format!("lines.{i}.audio"), "recordings are files on the server: a script sent over the API may only `say` words".into()));
            }
        }
        out
    }

    /// What the caller says, in order: the reference for the transcript of their turns.
    pub fn reference_text(&self) -> String {
        self.reference_of(0..self.lines.len())
    }

    /// What the caller said, given the lines in the order they were said (repeats included):
    /// the reference for a call in which the caller was asked to say something again.
    pub fn reference_of(&self, said: impl IntoIterator<Item = usize>) -> String {
        said.into_iter().filter_map(|i| self.lines.get(i)).filter_map(|l| l.text.as_deref().or(l.say.as_deref())).map(|t| t.replace("...", " ")).collect::<Vec<_>>().join(" ")
    }
}

/// Plays a [`CallerScript`] into a line, taking turns with the agent.
pub struct ScriptedCaller {
    pub script: CallerScript,
    /// Each line's audio at the line's rate (empty for keypad lines).
    audio: Vec<Vec<f32>>,
    /// The agent opens the call (a first message, or a flow's start node): wait to hear it.
    greeted: bool,
}

/// How long the caller waits for the agent to begin answering before speaking anyway.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a caller about to interrupt waits for the agent's next words when its time to
/// interrupt falls in a pause; past it the answer is taken as over and the line is said anyway.
const GAP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an agent cut off by the caller may stay silent hearing the words before the caller
/// takes it as done (a debug build on loaded cores took 2.8 s).
const CUT_HEARING: Duration = Duration::from_secs(5);

impl ScriptedCaller {
    /// Synthesizes every line up front (so synthesis never delays the caller's timing).
    pub fn prepare(script: CallerScript, voice: &dyn crate::tts::TextToSpeech, rate: u32) -> anyhow::Result<ScriptedCaller> {
        let mut audio = Vec::new();
        for line in &script.lines {
            let mut samples = Vec::new();
            if let Some(path) = &line.audio {
                let recording = crate::audio::decode::decode_file(path).map_err(|e| anyhow::anyhow!("the caller's recording {}: {e}", path.display()))?;
                samples = trim_silence(&recording.to_rate(rate)?.samples);
            } else if let Some(text) = &line.say {
                for (i, part) in text.split("...").map(str::trim).filter(|p| !p.is_empty()).enumerate() {
                    if i > 0 {
                        samples.extend(Audio::silence(line.inner_pause_ms as f32 / 1000.0, rate).samples);
                    }
                    let spoken = voice.speak_all(part)?.to_rate(rate)?;
                    samples.extend(trim_silence(&spoken.samples));
                }
            } else if let Some(ms) = line.noise_ms {
                samples = cough(ms, rate);
            }
            audio.push(samples);
        }
        Ok(ScriptedCaller { script, audio, greeted: false })
    }

    /// The caller waits for the agent's opening words, however long the agent takes to start
    /// them (within [`ANSWER_TIMEOUT`]), as a person who answered the phone does: on a slow
    /// box a greeting that started later than the caller's first pause was talked over.
    pub fn greeted_by(mut self, assistant: &crate::assistant::AssistantSpec) -> Self {
        self.greeted = assistant.opens_the_call();
        self
    }

    /// Runs the script on `line`; `agent_idle` tells whether the agent is silent.
    pub async fn run(self, line: LoopbackLine) {
        if let Some(echo) = self.script.echo {
            line.echo(Duration::from_millis(echo.delay_ms as u64), echo.gain);
        }
        // Let the agent say its first message.
        if self.greeted {
            wait_for_agent_to_speak(&line).await;
        }
        wait_for_quiet(&line, Duration::from_millis(600), tokio::time::Instant::now() + ANSWER_TIMEOUT).await;
        let lines = &self.script.lines;
        // The next line to say, the last one said, and how many times it was said again.
        let (mut next, mut last, mut repeats) = (0usize, None::<usize>, 0usize);
        loop {
            if line.is_hung_up() {
                return;
            }
            let upcoming = lines.get(next);
            // Whether the agent's answer to the line about to be said is waited for.
            let answered = !lines.get(next + 1).is_some_and(|spec| spec.at_once);
            if let Some(spec) = upcoming.filter(|spec| spec.at_once) {
                // Said right after the line before (after the caller's own pause), without
                // waiting for its answer.
                tokio::time::sleep(spec.pause()).await;
            } else if let Some(after) = upcoming.and_then(|spec| spec.barge_in_after_ms) {
                // Wait for the agent to start talking, then talk over it: over its words, as a
                // person who interrupts does, not into a pause between two of its sentences
                // (a slow box synthesizes a long answer with gaps).
                wait_for_agent_to_speak(&line).await;
                tokio::time::sleep(Duration::from_millis(after)).await;
                wait_for_agent_to_speak_within(&line, GAP_TIMEOUT).await;
            } else {
                // Hear the agent's answer out (the last one: longer, and no longer than the
                // script allows), then see whether it asked for the line again.
                let (quiet, deadline) = match upcoming {
                    Some(spec) => (spec.pause(), tokio::time::Instant::now() + ANSWER_TIMEOUT),
                    None => (Duration::from_millis(1_500), tokio::time::Instant::now() + Duration::from_millis(self.script.final_wait_ms)),
                };
                wait_for_quiet(&line, quiet, deadline).await;
                if let Some(again) = last.filter(|_| repeats < MAX_REPEATS && self.asked_again(&line)) {
                    repeats += 1;
                    self.say(&line, again, answered).await;
                    continue;
                }
                let Some(spec) = upcoming else { break };
                if let Some(phrase) = &spec.after {
                    if !line.agent_has_said(phrase) {
                        let deadline = tokio::time::Instant::now() + PHRASE_TIMEOUT;
                        while !line.agent_has_said(phrase) && tokio::time::Instant::now() < deadline && !line.is_hung_up() {
                            tokio::time::sleep(TICK).await;
                        }
                        wait_for_quiet(&line, spec.pause(), tokio::time::Instant::now() + ANSWER_TIMEOUT).await;
                    }
                }
            }
            self.say(&line, next, answered).await;
            (last, repeats) = (Some(next), 0);
            next += 1;
        }
        line.caller_hangs_up();
    }

    /// Whether the agent's answer to the last line asked for it again.
    fn asked_again(&self, line: &LoopbackLine) -> bool {
        self.script.repeat_on.iter().any(|phrase| line.agent_has_said(phrase))
    }

    /// Says line `index` (words, a recording, a cough or keypad digits), and waits until it
    /// has been heard and, when `answered`, until the agent has begun to answer.
    async fn say(&self, line: &LoopbackLine, index: usize, answered: bool) {
        let (spec, samples) = (&self.script.lines[index], &self.audio[index]);
        line.record_caller_line(index);
        if let Some(digits) = &spec.dtmf {
            line.caller_presses(digits);
            if answered {
                wait_for_agent_to_speak(line).await;
            }
            return;
        }
        if samples.is_empty() {
            // A line with nothing to say may still be silence to keep (a voicemail).
            if spec.then_silence_ms > 0 {
                tokio::time::sleep(Duration::from_millis(spec.then_silence_ms)).await;
            }
            return;
        }
        let (start, end) = line.caller_says(samples);
        line.record_caller_speech(start, end);
        // Wait until the line has played our words, plus any scripted silence.
        while line.caller_is_speaking() && !line.is_hung_up() {
            tokio::time::sleep(TICK).await;
        }
        if spec.then_silence_ms > 0 {
            tokio::time::sleep(Duration::from_millis(spec.then_silence_ms)).await;
        }
        // Give the agent a moment to begin answering before judging it idle — after words
        // said over it too: once they cut it, it is silent while it hears them, and on a slow
        // box that silence outlasted the quiet the caller waits for and it spoke (or hung up)
        // unanswered.
        if answered {
            wait_for_agent_to_speak(line).await;
        }
    }
}

/// Waits until the agent has been silent for `quiet` (or the deadline, or a hang-up). An agent
/// cut off by the caller's words is silent while it hears them: that silence counts as quiet
/// only after [`CUT_HEARING`] — words that end a turn early ("Yes." of "Yes, that's right.")
/// and cut the answer with the rest once left a caller hanging up on the answer still to come.
async fn wait_for_quiet(line: &LoopbackLine, quiet: Duration, deadline: tokio::time::Instant) {
    let mut silent_since = tokio::time::Instant::now();
    while tokio::time::Instant::now() < deadline && !line.is_hung_up() {
        let quiet = if line.agent_was_cut() { quiet.max(CUT_HEARING) } else { quiet };
        if !line.is_idle() {
            silent_since = tokio::time::Instant::now();
        } else if silent_since.elapsed() >= quiet {
            return;
        }
        tokio::time::sleep(TICK).await;
    }
}

/// Waits until agent audio is on the line (at most [`ANSWER_TIMEOUT`]).
async fn wait_for_agent_to_speak(line: &LoopbackLine) {
    wait_for_agent_to_speak_within(line, ANSWER_TIMEOUT).await;
}

/// Waits until agent audio is on the line, at most `limit`.
async fn wait_for_agent_to_speak_within(line: &LoopbackLine, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    while line.is_idle() && tokio::time::Instant::now() < deadline && !line.is_hung_up() {
        tokio::time::sleep(TICK).await;
    }
}

/// Drops leading and trailing silence so a line's end is the end of its speech (nothing is
/// left of a line that is all silence).
fn trim_silence(samples: &[f32]) -> Vec<f32> {
    crate::audio::trim_to_sound(samples, 0.01, 0).unwrap_or_default().to_vec()
}

/// A short burst of loud noise shaped like a cough.
fn cough(ms: u32, rate: u32) -> Vec<f32> {
    let n = (rate as u64 * ms as u64 / 1000) as usize;
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    (0..n)
        .map(|i| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let noise = (seed >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0;
            let envelope = (std::f32::consts::PI * i as f32 / n as f32).sin();
            0.5 * noise * envelope
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_script_over_the_api_may_not_play_files_and_lines_do_one_thing() {
        let script: CallerScript = serde_yaml::from_str("lines: [{ audio: /etc/passwd }]").unwrap();
        assert!(script.problems().is_empty(), "an eval scenario may play recordings");
        assert!(script.problems_over_api().iter().any(|(field, _)| field == "lines.0.audio"));
        let script: CallerScript = serde_yaml::from_str("lines: [{ audio: a.wav, say: hi, text: hi }]").unwrap();
        assert!(script.problems().iter().any(|(field, _)| field == "lines.0.audio"));
        let script: CallerScript = serde_yaml::from_str("lines: [{ say: 'one ... two' }, { audio: a.wav, text: three }, { dtmf: '1' }]").unwrap();
        assert_eq!(script.reference_text(), "one   two three");
    }

    #[test]
    fn a_line_said_at_once_follows_another_and_does_not_also_barge_in() {
        let script: CallerScript = serde_yaml::from_str("lines: [{ say: hi }, { dtmf: '1', at_once: true }]").unwrap();
        assert!(script.problems().is_empty(), "{:?}", script.problems());
        let script: CallerScript = serde_yaml::from_str("lines: [{ say: hi, at_once: true }]").unwrap();
        assert!(script.problems().iter().any(|(field, _)| field == "lines.0.at_once"));
        let script: CallerScript = serde_yaml::from_str("lines: [{ say: hi }, { say: wait, at_once: true, barge_in_after_ms: 500 }]").unwrap();
        assert!(script.problems().iter().any(|(field, message)| field == "lines.1.at_once" && message.contains("barge_in_after_ms")));
    }

    #[test]
    fn a_line_said_at_once_waits_only_the_pause_it_sets() {
        let script: CallerScript = serde_yaml::from_str("lines: [{ say: hi }, { say: wait }, { say: more, at_once: true }, { say: rest, at_once: true, pause_ms: 400 }, { say: later, pause_ms: 50 }]").unwrap();
        let pauses: Vec<u128> = script.lines.iter().map(|line| line.pause().as_millis()).collect();
        assert_eq!(pauses, [600, 600, 0, 400, 50]);
    }
}
