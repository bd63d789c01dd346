// Microphone -> 24 kHz pcm16 chunks for `input_audio_buffer.append`.
// Runs on the audio thread: downmixes, resamples from the context rate, converts to 16-bit and posts
// one chunk every CHUNK_MS together with its level, so the page can draw the mic meter without
// touching the audio itself.

import { StreamingResampler } from "./resampler.js";

const WIRE_RATE = 24000;
const CHUNK_MS = 20; // small chunks: the server's VAD can only see the end of speech once it has the audio

class CaptureProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    this.resampler = new StreamingResampler(sampleRate, WIRE_RATE);
    this.chunkSamples = (WIRE_RATE * CHUNK_MS) / 1000;
    this.chunk = new Int16Array(this.chunkSamples);
    this.filled = 0;
    this.sumSquares = 0;
    this.peak = 0;
    this.capturing = true;
    this.port.onmessage = (event) => {
      if (event.data.type === "capture") this.capturing = event.data.on;
    };
  }

  process(inputs) {
    const channels = inputs[0];
    if (!this.capturing || channels.length === 0) return true;
    const mono = channels.length === 1 ? channels[0] : downmix(channels);
    const wire = this.resampler.process(mono);
    for (let i = 0; i < wire.length; i++) {
      const sample = Math.max(-1, Math.min(1, wire[i]));
      this.sumSquares += sample * sample;
      this.peak = Math.max(this.peak, Math.abs(sample));
      this.chunk[this.filled++] = sample < 0 ? sample * 0x8000 : sample * 0x7fff;
      if (this.filled === this.chunkSamples) this._post();
    }
    return true; // keep running: the microphone never ends on its own
  }

  _post() {
    const pcm = this.chunk.buffer;
    const rms = Math.sqrt(this.sumSquares / this.chunkSamples);
    this.port.postMessage({ type: "chunk", pcm, rms, peak: this.peak }, [pcm]); // transferring detaches this.chunk
    this.chunk = new Int16Array(this.chunkSamples);
    this.filled = 0;
    this.sumSquares = 0;
    this.peak = 0;
  }
}

function downmix(channels) {
  const mono = new Float32Array(channels[0].length);
  for (const channel of channels) for (let i = 0; i < mono.length; i++) mono[i] += channel[i] / channels.length;
  return mono;
}

registerProcessor("voxloop-capture", CaptureProcessor);
