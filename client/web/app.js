// The voxloop browser client: wires the microphone, the Realtime websocket, playback and the page.

import { AudioEngine, MicrophoneError, openMicrophone } from "./audio-engine.js";
import { ConversationView } from "./conversation-view.js";
import { base64ToPcm16, pcm16ToBase64 } from "./pcm.js";
import { RealtimeConnection } from "./realtime-connection.js";

const WIRE_RATE = 24000;

const $ = (id) => document.getElementById(id);
const ui = {
  talk: $("talk"), talkLabel: $("talk-label"), connection: $("connection"), connectionText: $("connection-text"),
  level: $("mic-level"), activity: $("activity"), notice: $("notice"), sessionInfo: $("session-info"),
  outputInfo: $("output-info"), audioStats: $("audio-stats"),
};
const view = new ConversationView($("conversation"));

// Counters for the curious and for the browser test: audio that actually went out and came back.
const stats = (window.voxloopStats = {
  samplesSent: 0, // 24 kHz samples sent with input_audio_buffer.append
  samplesPlayed: 0, // device-rate frames of assistant audio rendered by the playback worklet
  playbackSampleRate: null,
  deltasReceived: 0, underruns: 0, flushes: 0, truncatesSent: 0, reconnects: 0, speechStarted: 0,
  outputPath: null, outputPathReason: null, loopbackLatencyMs: null, loopbackSamplesReceived: 0,
  sessionId: null, serverEvents: {}, errors: [], turns: [],
  truncations: [], // {itemId, audioEndMs, receivedMs, droppedMs, confirmedMs}: one per barge-in on a playing reply
});

let running = null; // {engine, connection} while started

// Always the server that served this page: a URL parameter naming another server would let a
// crafted link send the user's microphone elsewhere.
function websocketUrl() {
  return `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/v1/realtime`;
}

// ----------------------------------------------------------------------------- start / stop

ui.talk.addEventListener("click", () => (running ? stop() : start()));

async function start() {
  ui.talk.disabled = true;
  hideNotice();
  let stream = null;
  try {
    stream = await openMicrophone();
    const engine = await AudioEngine.start(stream);
    const connection = new RealtimeConnection(websocketUrl());
    if (stats.sessionId) view.divider("New session");
    Object.assign(stats, { sessionId: null, reconnects: 0 });
    running = { engine, connection, turn: new TurnTracker() };
    stats.playbackSampleRate = engine.sampleRate;
    stats.outputPath = engine.output.mode;
    stats.outputPathReason = engine.output.reason;
    wireAudio(engine, connection);
    connection.addEventListener("state", (event) => showConnection(event.detail));
    connection.addEventListener("server-event", (event) => onServerEvent(event.detail));
    connection.open();
    showOutputPath(engine.output);
    setRunning(true);
  } catch (error) {
    for (const track of stream?.getTracks() ?? []) track.stop(); // do not leave the mic (and its indicator) on
    showNotice(error instanceof MicrophoneError ? error.message : `Could not start: ${error.message || error}`);
    if (error instanceof MicrophoneError) document.body.dataset.mic = error.kind;
    setRunning(false);
  } finally {
    ui.talk.disabled = false;
  }
}

async function stop() {
  const current = running;
  running = null;
  current.connection.close();
  setRunning(false);
  await current.engine.stop();
}

function setRunning(on) {
  ui.talk.setAttribute("aria-pressed", String(on));
  ui.talkLabel.textContent = on ? "Stop" : "Start";
  document.body.classList.toggle("running", on);
  if (!on) {
    showConnection({ state: "idle" });
    setActivity("Press Start and speak.");
    ui.level.style.transform = "scaleX(0)";
  }
}

// ----------------------------------------------------------------------------- audio

function wireAudio(engine, connection) {
  let level = 0;
  engine.addEventListener("chunk", ({ detail }) => {
    const samples = detail.pcm.byteLength / 2;
    if (connection.send({ type: "input_audio_buffer.append", audio: pcm16ToBase64(detail.pcm) })) stats.samplesSent += samples;
    // Meter on a dB scale from -60 dBFS to 0, falling slowly so short syllables stay visible.
    const db = 20 * Math.log10(Math.max(detail.rms, 1e-6));
    level = Math.max(Math.min(1, Math.max(0, (db + 60) / 60)), level * 0.85);
    ui.level.style.transform = `scaleX(${level.toFixed(3)})`;
  });
  engine.addEventListener("started", ({ detail }) => running?.turn.playbackStarted(detail.itemId));
  engine.addEventListener("finished", ({ detail }) => {
    // The periodic stats lag by up to one period: a finished reply's frames count at once.
    stats.samplesPlayed = Math.max(stats.samplesPlayed, detail.framesPlayed);
    running?.turn.playbackFinished(detail.itemId, detail.playedMs);
  });
  engine.addEventListener("stats", ({ detail }) => {
    stats.samplesPlayed = detail.framesPlayed;
    stats.underruns = detail.underruns;
    const sent = (stats.samplesSent / WIRE_RATE).toFixed(1);
    const played = (detail.framesPlayed / engine.sampleRate).toFixed(1);
    ui.audioStats.textContent = `sent ${sent} s · played ${played} s · underruns ${detail.underruns}`;
  });
  const pollLoopback = async () => {
    if (running?.engine !== engine) return;
    const loopback = await engine.output.stats();
    if (loopback) {
      stats.loopbackLatencyMs = loopback.latencyMs;
      stats.loopbackSamplesReceived = loopback.samplesReceived;
      showOutputPath(engine.output);
    }
    setTimeout(pollLoopback, 1000);
  };
  pollLoopback();
}

// ----------------------------------------------------------------------------- turn-taking

// Ties server events to the reply being played: which item to truncate after a barge-in, and when
// the user stopped speaking relative to the first sample the browser played back.
class TurnTracker {
  constructor() {
    this.speechStoppedAt = null; // performance.now() at the last speech_stopped, until a reply claims it
    this.referenceByItem = new Map(); // assistant item -> speech_stopped time its latency counts from
    this.pendingReference = null;
    this.finished = new Set(); // assistant items fully played
    this.dropped = new Set(); // assistant items flushed by a barge-in: late audio for them is ignored
    this.audioMs = new Map(); // assistant item -> ms of audio received
  }

  speechStopped() {
    this.speechStoppedAt = performance.now();
  }

  responseCreated() {
    this.pendingReference = this.speechStoppedAt;
    this.speechStoppedAt = null;
  }

  assistantItem(itemId) {
    this.referenceByItem.set(itemId, this.pendingReference);
    this.pendingReference = null;
  }

  playbackStarted(itemId) {
    const reference = this.referenceByItem.get(itemId);
    if (reference == null) return;
    const heardMs = performance.now() - reference;
    view.latency(itemId, { heardMs });
    turnRecord(itemId).clientFirstAudioMs = heardMs;
  }

  playbackFinished(itemId, playedMs) {
    this.finished.add(itemId);
    turnRecord(itemId).playedMs = playedMs;
    if (!this.dropped.has(itemId)) setActivity("Listening…");
  }
}

// The user started talking: stop the assistant now, and tell the server how much of its reply was
// actually heard, so its memory of the conversation matches what the user knows.
async function bargeIn(engine, connection, turn) {
  const flushed = await engine.flush();
  stats.flushes += 1;
  const itemId = flushed.itemId;
  if (!itemId || turn.finished.has(itemId) || turn.dropped.has(itemId)) return;
  turn.dropped.add(itemId);
  // Audio already handed to the output path (the WebRTC loopback's buffer) still reaches the
  // speakers, so everything the worklet rendered counts as heard.
  const receivedMs = turn.audioMs.get(itemId) ?? 0;
  const audioEndMs = Math.min(Math.floor(flushed.playedMs), Math.floor(receivedMs));
  if (connection.send({ type: "conversation.item.truncate", item_id: itemId, content_index: 0, audio_end_ms: audioEndMs })) {
    stats.truncatesSent += 1;
    stats.truncations.push({ itemId, audioEndMs, receivedMs, droppedMs: flushed.droppedMs, confirmedMs: null });
  }
  view.assistantInterrupted(itemId, audioEndMs);
}

function turnRecord(itemId) {
  let record = stats.turns.find((turn) => turn.itemId === itemId);
  if (!record) {
    record = { itemId, transcript: "", status: null, timings: null, clientFirstAudioMs: null, playedMs: null };
    stats.turns.push(record);
  }
  return record;
}

function onServerEvent(event) {
  if (!running) return;
  const { engine, connection, turn } = running;
  stats.serverEvents[event.type] = (stats.serverEvents[event.type] ?? 0) + 1;
  switch (event.type) {
    case "session.created":
      if (connection.reconnects > stats.reconnects) {
        view.divider("Reconnected: a new session (the server does not remember the turns above)");
        bargeIn(engine, connection, turn); // whatever was still playing belongs to the lost session
      }
      stats.sessionId = event.session.id;
      stats.reconnects = connection.reconnects;
      ui.sessionInfo.textContent = `${event.session.model} · voice ${event.session.audio?.output?.voice ?? "default"}`;
      setActivity("Listening…");
      break;
    case "input_audio_buffer.speech_started":
      stats.speechStarted += 1;
      turn.speechStoppedAt = null;
      view.userStarted(event.item_id);
      setActivity("You are speaking…");
      bargeIn(engine, connection, turn);
      break;
    case "input_audio_buffer.speech_stopped":
      turn.speechStopped();
      view.userStopped(event.item_id);
      setActivity("Thinking…");
      break;
    case "conversation.item.input_audio_transcription.delta":
      view.userPartial(event.item_id, event.delta);
      break;
    case "conversation.item.input_audio_transcription.completed":
      view.userFinal(event.item_id, event.transcript);
      if (!event.transcript.trim()) setActivity("Listening…");
      break;
    case "response.created":
      turn.responseCreated();
      break;
    case "response.output_item.added":
      turn.assistantItem(event.item.id);
      view.assistantStarted(event.item.id);
      break;
    case "response.output_audio_transcript.delta":
      view.assistantDelta(event.item_id, event.delta);
      break;
    case "response.output_audio_transcript.done":
      view.assistantFinal(event.item_id, event.transcript);
      turnRecord(event.item_id).transcript = event.transcript;
      break;
    case "response.output_audio.delta": {
      if (turn.dropped.has(event.item_id)) break;
      const pcm = base64ToPcm16(event.delta);
      turn.audioMs.set(event.item_id, (turn.audioMs.get(event.item_id) ?? 0) + (pcm.byteLength / 2 / WIRE_RATE) * 1000);
      engine.play(event.item_id, pcm);
      stats.deltasReceived += 1;
      setActivity("Assistant speaking…");
      break;
    }
    case "response.output_audio.done":
      // A reply cut off before it spoke, or flushed by a barge-in, has nothing left to play out.
      if (turn.audioMs.has(event.item_id) && !turn.dropped.has(event.item_id)) engine.endItem(event.item_id);
      break;
    case "response.done": {
      const response = event.response;
      const itemId = response.output?.[0]?.id;
      if (!itemId) break;
      const timings = response.voxloop?.timings ?? null;
      view.latency(itemId, { timings });
      if (response.status === "cancelled" && !turn.dropped.has(itemId)) view.assistantInterrupted(itemId, null);
      Object.assign(turnRecord(itemId), { status: response.status, timings });
      if (response.status === "failed") view.systemMessage(`The reply failed: ${response.status_details?.error?.message ?? "server error"}`, "error");
      break;
    }
    case "conversation.item.truncated": {
      const truncation = stats.truncations.find((t) => t.itemId === event.item_id && t.confirmedMs === null);
      if (truncation) truncation.confirmedMs = event.audio_end_ms;
      break;
    }
    case "error":
      stats.errors.push(event.error);
      view.systemMessage(`Server: ${event.error.message}`, "error");
      break;
  }
}

// ----------------------------------------------------------------------------- page state

function showConnection({ state, retryAt }) {
  ui.connection.dataset.state = state;
  const text = {
    idle: "Not connected", connecting: "Connecting…", open: "Connected", closed: "Not connected",
  }[state];
  if (text) {
    ui.connectionText.textContent = text;
    return;
  }
  // waiting: count down to the next attempt so a restarting server is visibly being waited for
  const tick = () => {
    if (ui.connection.dataset.state !== "waiting") return;
    const seconds = Math.max(0, (retryAt - performance.now()) / 1000);
    ui.connectionText.textContent = `Server unreachable · retrying in ${seconds.toFixed(1)} s`;
    setTimeout(tick, 100);
  };
  tick();
  setActivity("Waiting for the server…");
}

function showOutputPath(output) {
  if (output.mode === "webrtc-loopback") {
    const latency = stats.loopbackLatencyMs == null ? "" : ` (+${Math.round(stats.loopbackLatencyMs)} ms)`;
    ui.outputInfo.textContent = `echo-cancelled output${latency}`;
    ui.outputInfo.title = "Playback goes through a WebRTC loopback so the browser's echo canceller removes it from the microphone.";
  } else {
    ui.outputInfo.textContent = "direct output: use headphones";
    ui.outputInfo.title = `The echo-cancelling loopback is unavailable (${output.reason}); the assistant may hear itself through speakers.`;
  }
}

function setActivity(text) {
  ui.activity.textContent = text;
}

function showNotice(text) {
  ui.notice.textContent = text;
  ui.notice.hidden = false;
}

function hideNotice() {
  ui.notice.hidden = true;
  delete document.body.dataset.mic;
}
