// Assistant audio (24 kHz pcm16 from `response.output_audio.delta`) -> the speakers, through a small
// jitter buffer.
//
// Playback of an item starts once JITTER_BUFFER_MS is queued (or its audio is complete), so the
// server's 100 ms deltas arriving with network jitter play without gaps; if the queue runs dry
// mid-item it waits for the buffer to refill rather than crackling sample by sample. A `flush`
// (sent on `input_audio_buffer.speech_started`) drops everything queued at once and answers with
// how many milliseconds of the interrupted item were actually rendered: the page sends that as
// `conversation.item.truncate.audio_end_ms`.

import { StreamingResampler } from "./resampler.js";

const WIRE_RATE = 24000;
const JITTER_BUFFER_MS = 80;
const STATS_INTERVAL_MS = 100;

class PlaybackProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    this.resampler = new StreamingResampler(WIRE_RATE, sampleRate);
    this.jitterFrames = Math.round((sampleRate * JITTER_BUFFER_MS) / 1000);
    this.statsFrames = Math.round((sampleRate * STATS_INTERVAL_MS) / 1000);
    this.queue = []; // {itemId, data: Float32Array, offset}
    this.queuedFrames = 0;
    this.buffering = true;
    this.completeItems = new Set();
    this.items = new Map(); // itemId -> {receivedMs, playedFrames, started}
    this.currentItem = null;
    this.framesPlayed = 0;
    this.underruns = 0;
    this.sinceStats = 0;
    this.port.onmessage = (event) => this._onMessage(event.data);
  }

  _onMessage(message) {
    if (message.type === "audio") {
      const pcm = new Int16Array(message.pcm);
      const samples = new Float32Array(pcm.length);
      for (let i = 0; i < pcm.length; i++) samples[i] = pcm[i] / 0x8000;
      this._item(message.itemId).receivedMs += (pcm.length / WIRE_RATE) * 1000;
      this._enqueue(message.itemId, this.resampler.process(samples));
    } else if (message.type === "end") {
      if (!this.items.has(message.itemId)) return; // no audio came for it: nothing to finish
      // Push the resampler's last few input samples out so the item's tail is not held back.
      this._enqueue(message.itemId, this.resampler.process(new Float32Array(this.resampler.halfWidth + 1)));
      this.completeItems.add(message.itemId);
    } else if (message.type === "flush") {
      this._flush();
    }
  }

  _item(itemId) {
    let item = this.items.get(itemId);
    if (!item) {
      item = { receivedMs: 0, playedFrames: 0, started: false };
      this.items.set(itemId, item);
    }
    return item;
  }

  _enqueue(itemId, data) {
    if (data.length === 0) return;
    this.queue.push({ itemId, data, offset: 0 });
    this.queuedFrames += data.length;
  }

  _playedMs(itemId) {
    const item = this.items.get(itemId);
    if (!item) return 0;
    // The resampler's tail padding can render a fraction of a millisecond more than was received.
    return Math.min(item.receivedMs, (item.playedFrames / sampleRate) * 1000);
  }

  _flush() {
    const itemId = this.queue.length ? this.queue[0].itemId : this.currentItem;
    const droppedMs = (this.queuedFrames / sampleRate) * 1000;
    this.port.postMessage({ type: "flushed", itemId, playedMs: this._playedMs(itemId), droppedMs });
    this.queue = [];
    this.queuedFrames = 0;
    this.buffering = true;
    this.resampler.reset();
  }

  process(inputs, outputs) {
    const out = outputs[0][0];
    let written = 0;
    if (this.buffering && this.queue.length) {
      const head = this.queue[0].itemId;
      if (this.queuedFrames >= this.jitterFrames || this.completeItems.has(head)) this.buffering = false;
    }
    while (!this.buffering && written < out.length && this.queue.length) {
      const segment = this.queue[0];
      const item = this._item(segment.itemId);
      if (!item.started) {
        item.started = true;
        this.port.postMessage({ type: "started", itemId: segment.itemId, frame: currentFrame + written });
      }
      this.currentItem = segment.itemId;
      const count = Math.min(out.length - written, segment.data.length - segment.offset);
      out.set(segment.data.subarray(segment.offset, segment.offset + count), written);
      segment.offset += count;
      written += count;
      item.playedFrames += count;
      this.queuedFrames -= count;
      this.framesPlayed += count;
      if (segment.offset === segment.data.length) {
        this.queue.shift();
        const next = this.queue[0];
        if (this.completeItems.has(segment.itemId) && (!next || next.itemId !== segment.itemId)) {
          this.port.postMessage({ type: "finished", itemId: segment.itemId, playedMs: this._playedMs(segment.itemId),
                                  framesPlayed: this.framesPlayed });
          this.completeItems.delete(segment.itemId);
          this.buffering = true; // the next item gets its own jitter buffer
        }
      }
    }
    if (written < out.length) {
      out.fill(0, written);
      if (!this.buffering && this.queue.length === 0) {
        this.underruns += 1; // ran dry in the middle of an item: wait for the buffer to refill
        this.buffering = true;
      }
    }
    for (let channel = 1; channel < outputs[0].length; channel++) outputs[0][channel].set(out);
    this.sinceStats += out.length;
    if (this.sinceStats >= this.statsFrames) {
      this.sinceStats = 0;
      this.port.postMessage({
        type: "stats", framesPlayed: this.framesPlayed, queuedMs: (this.queuedFrames / sampleRate) * 1000,
        underruns: this.underruns, currentItem: this.currentItem,
        currentItemPlayedMs: this._playedMs(this.currentItem),
      });
    }
    return true;
  }
}

registerProcessor("voxloop-playback", PlaybackProcessor);
