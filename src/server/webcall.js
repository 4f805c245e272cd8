// Ringline web call widget: one script tag, no build step, no framework.
//
//   <script src="https://YOUR-RINGLINE/webcall.js"></script>
//   <div data-ringline-token-url="/your-backend/ringline-token"></div>   (your backend answers
//        {"token": …} from POST /v1/webcall/token, made with your API key)
//   or: <div data-ringline-token="…"></div>, or RinglineWebCall.mount(element, {token}).
//
// The microphone is captured at 16 kHz in an AudioWorklet and sent as PCM16 in 20 ms frames;
// the agent's PCM16 is scheduled as it arrives and stopped at once when the server says
// `clear` (the caller barged in). The live transcript is shown under the button.
(function () {
  "use strict";
  var script = document.currentScript;
  var origin = script ? new URL(script.src, location.href).origin : location.origin;
  var RATE = 16000, FRAME = 320;

  var WORKLET = "class Capture extends AudioWorkletProcessor {" +
    " process(inputs) { var ch = inputs[0] && inputs[0][0]; if (ch) this.port.postMessage(ch.slice(0)); return true; } }" +
    " registerProcessor('ringline-capture', Capture);";

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text) node.textContent = text;
    return node;
  }

  function mount(root, options) {
    options = options || {};
    var server = options.server || origin;
    var button = el("button", "ringline-button", "Call");
    var status = el("div", "ringline-status", "Ready");
    var transcript = el("div", "ringline-transcript");
    var partial = el("div", "ringline-partial");
    root.appendChild(button); root.appendChild(status); root.appendChild(transcript); root.appendChild(partial);
    var call = null;

    function show(text) { status.textContent = text; root.setAttribute("data-state", text); }
    function line(speaker, text, replacesLast) {
      // The caller went on after a pause: their last line, heard again whole, takes its place.
      var rows = transcript.querySelectorAll(".ringline-caller");
      if (replacesLast && rows.length) transcript.removeChild(rows[rows.length - 1]);
      var row = el("div", "ringline-line ringline-" + speaker);
      row.appendChild(el("b", null, speaker === "agent" ? "Agent: " : "You: "));
      row.appendChild(document.createTextNode(text));
      transcript.appendChild(row);
      partial.textContent = "";
    }

    async function token() {
      if (options.token) { var t = options.token; options.token = null; return t; }
      if (!options.tokenUrl) throw new Error("no token: give data-ringline-token or data-ringline-token-url");
      var response = await fetch(options.tokenUrl, { method: "POST" });
      if (!response.ok) throw new Error("the token request failed: " + response.status);
      return (await response.json()).token;
    }

    async function start() {
      show("Connecting…");
      var ctx = new AudioContext({ sampleRate: RATE });
      var mic = await navigator.mediaDevices.getUserMedia({ audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true, channelCount: 1 } });
      await ctx.audioWorklet.addModule(URL.createObjectURL(new Blob([WORKLET], { type: "text/javascript" })));
      var source = ctx.createMediaStreamSource(mic);
      var capture = new AudioWorkletNode(ctx, "ringline-capture");
      source.connect(capture);
      var ws = new WebSocket(server.replace(/^http/, "ws") + "/v1/webcall/ws?token=" + encodeURIComponent(await token()));
      ws.binaryType = "arraybuffer";
      var state = { ctx: ctx, mic: mic, ws: ws, playing: [], playhead: 0, answered: false };
      call = state;
      var pending = new Float32Array(FRAME), filled = 0;
      capture.port.onmessage = function (event) {
        var samples = event.data;
        for (var i = 0; i < samples.length; i++) {
          pending[filled++] = samples[i];
          if (filled === FRAME) {
            var pcm = new Int16Array(FRAME);
            for (var j = 0; j < FRAME; j++) pcm[j] = Math.max(-1, Math.min(1, pending[j])) * 32767;
            if (state.answered && ws.readyState === 1) ws.send(pcm.buffer);
            filled = 0;
          }
        }
      };
      ws.onopen = function () { show("Connecting…"); button.textContent = "Hang up"; };
      ws.onmessage = function (event) {
        if (typeof event.data !== "string") return play(state, event.data);
        var message = JSON.parse(event.data);
        if (message.type === "clear") stopPlayback(state);
        else if (message.type === "transcript") line(message.speaker, message.text, message.replaces_last);
        else if (message.type === "partial") partial.textContent = message.text;
        else if (message.type === "call") root.setAttribute("data-call-id", message.call_id);
        else if (message.type === "answered") { state.answered = true; show("In call"); }
        else if (message.type === "ended") show("Call ended: " + message.reason);
      };
      ws.onclose = function () { finish(state, false); };
      ws.onerror = function () { show("Connection failed"); };
    }

    function play(state, buffer) {
      var pcm = new Int16Array(buffer);
      var audio = state.ctx.createBuffer(1, pcm.length, RATE);
      var channel = audio.getChannelData(0);
      for (var i = 0; i < pcm.length; i++) channel[i] = pcm[i] / 32768;
      var node = state.ctx.createBufferSource();
      node.buffer = audio;
      node.connect(state.ctx.destination);
      // A little lead absorbs network jitter; the server sends in real time.
      var at = Math.max(state.playhead, state.ctx.currentTime + 0.06);
      node.start(at);
      state.playhead = at + audio.duration;
      state.playing.push(node);
      node.onended = function () { var k = state.playing.indexOf(node); if (k >= 0) state.playing.splice(k, 1); };
    }

    function stopPlayback(state) {
      state.playing.forEach(function (node) { try { node.stop(); } catch (e) {} });
      state.playing = [];
      state.playhead = 0;
    }

    function finish(state, hangUp) {
      if (call !== state) return;
      call = null;
      if (hangUp && state.ws.readyState === 1) { state.ws.send(JSON.stringify({ type: "hangup" })); state.ws.close(); }
      stopPlayback(state);
      state.mic.getTracks().forEach(function (track) { track.stop(); });
      state.ctx.close();
      button.textContent = "Call";
      if (!/^Call ended/.test(status.textContent)) show("Call ended");
    }

    button.addEventListener("click", function () {
      if (call) return finish(call, true);
      start().catch(function (error) { show("Cannot start the call: " + error.message); });
    });
    return {
      start: function () { return start(); },
      hangUp: function () { if (call) finish(call, true); },
      keypad: function (digit) { if (call && call.ws.readyState === 1) call.ws.send(JSON.stringify({ type: "dtmf", digit: String(digit) })); },
    };
  }

  window.RinglineWebCall = { mount: mount };
  document.querySelectorAll("[data-ringline-token],[data-ringline-token-url]").forEach(function (root) {
    var widget = mount(root, { token: root.getAttribute("data-ringline-token"), tokenUrl: root.getAttribute("data-ringline-token-url") });
    if (root.hasAttribute("data-autostart")) widget.start().catch(function (error) { root.setAttribute("data-state", "Cannot start the call: " + error.message); });
  });
})();
