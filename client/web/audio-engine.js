// The page's audio graph: microphone -> capture worklet (24 kHz pcm16 chunks out), and assistant
// audio -> playback worklet (jitter buffer, flush on barge-in) -> echo-referenced output.

import { connectOutput } from "./echo-reference-output.js";

export class MicrophoneError extends Error {
  constructor(kind, message) {
    super(message);
    this.kind = kind; // denied | missing | busy | insecure | failed
  }
}

// The browser's own echo cancellation, noise suppression and gain control: the server's VAD and ASR
// expect clean, level speech, and without echo cancellation the assistant would hear itself.
const MICROPHONE_CONSTRAINTS = {
  audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true, channelCount: 1 },
};

export async function openMicrophone() {
  if (!window.isSecureContext || !navigator.mediaDevices?.getUserMedia) {
    throw new MicrophoneError("insecure", "The browser only allows the microphone on secure pages. Open this page at " +
      "http://localhost:PORT (or 127.0.0.1) on the machine running voxloop, or serve it over HTTPS.");
  }
  try {
    return await navigator.mediaDevices.getUserMedia(MICROPHONE_CONSTRAINTS);
  } catch (error) {
    if (error.name === "NotAllowedError" || error.name === "SecurityError") {
      throw new MicrophoneError("denied", "Microphone access was denied. Allow the microphone for this site " +
        "(the camera/microphone icon in the address bar, or the site settings) and press Start again.");
    }
    if (error.name === "NotFoundError" || error.name === "OverconstrainedError") {
      throw new MicrophoneError("missing", "No microphone was found. Connect one and press Start again.");
    }
    if (error.name === "NotReadableError" || error.name === "AbortError") {
      throw new MicrophoneError("busy", "The microphone could not be opened; another application may be using it.");
    }
    throw new MicrophoneError("failed", `The microphone could not be opened: ${error.message || error.name}`);
  }
}

export class AudioEngine extends EventTarget {
  static async start(stream) {
    // The device's own rate; both worklets resample to and from 24 kHz (see resampler.js for why).
    const context = new AudioContext({ latencyHint: "interactive" });
    await context.resume();
    await context.audioWorklet.addModule(new URL("capture-worklet.js", import.meta.url));
    await context.audioWorklet.addModule(new URL("playback-worklet.js", import.meta.url));
    const engine = new AudioEngine(context, stream);
    engine.output = await connectOutput(context, engine.playback);
    return engine;
  }

  constructor(context, stream) {
    super();
    this.context = context;
    this.stream = stream;
    this.microphone = context.createMediaStreamSource(stream);
    // One silent output wired to the destination keeps the capture node in the rendered graph.
    this.capture = new AudioWorkletNode(context, "voxloop-capture", { numberOfInputs: 1, numberOfOutputs: 1, outputChannelCount: [1] });
    this.playback = new AudioWorkletNode(context, "voxloop-playback", { numberOfInputs: 0, numberOfOutputs: 1, outputChannelCount: [1] });
    this.microphone.connect(this.capture).connect(context.destination);
    this.pendingFlushes = [];
    for (const node of [this.capture, this.playback]) {
      node.onprocessorerror = (event) => {
        console.error("voxloop: audio worklet failed", event);
        this._emit("worklet-error", { node: node === this.capture ? "capture" : "playback" });
      };
    }
    this.capture.port.onmessage = (event) => this._emit("chunk", event.data);
    this.playback.port.onmessage = (event) => {
      const message = event.data;
      if (message.type === "flushed") this.pendingFlushes.shift()?.(message);
      this._emit(message.type, message);
    };
  }

  get sampleRate() {
    return this.context.sampleRate;
  }

  play(itemId, pcm) {
    this.playback.port.postMessage({ type: "audio", itemId, pcm }, [pcm]);
  }

  endItem(itemId) {
    this.playback.port.postMessage({ type: "end", itemId });
  }

  // Drop all queued assistant audio now; resolves with {itemId, playedMs, droppedMs}.
  flush() {
    return new Promise((resolve) => {
      this.pendingFlushes.push(resolve);
      this.playback.port.postMessage({ type: "flush" });
    });
  }

  async stop() {
    for (const track of this.stream.getTracks()) track.stop();
    this.output?.close();
    await this.context.close();
  }

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}
