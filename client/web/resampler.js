// A streaming windowed-sinc resampler for mono Float32 audio, shared by the capture and playback
// worklets. The AudioContext runs at the device rate (44.1 or 48 kHz) and the wire is 24 kHz.
//
// Why resample here rather than open the AudioContext at 24000 Hz: Chromium accepts a 24 kHz context
// and resamples the microphone into it, but Firefox refuses to connect a microphone stream to a
// context whose rate differs from the device's, and a context away from the device rate makes the
// browser resample the output a second time. So the context keeps the device rate and both worklets
// convert to and from 24 kHz with this band-limited interpolator.
//
// Each output sample is a dot product of the input with a Blackman-windowed sinc centred on its
// fractional input position. The kernel is tabulated at PHASES points per input sample and linearly
// interpolated, so the audio thread never calls Math.sin. When downsampling, the cutoff follows the
// output rate so nothing above the new Nyquist frequency folds back as aliasing.

const ZERO_CROSSINGS = 8; // kernel half-width in output-rate periods: ~70 dB stopband, 0.3 ms delay
const PHASES = 256;
const PASSBAND = 0.92; // fraction of the lower Nyquist frequency that is kept

export class StreamingResampler {
  constructor(inputRate, outputRate) {
    if (!(inputRate > 0 && outputRate > 0)) throw new RangeError(`bad sample rates ${inputRate} -> ${outputRate}`);
    this.inputRate = inputRate;
    this.outputRate = outputRate;
    this.step = inputRate / outputRate; // input samples per output sample
    const scale = Math.min(1, outputRate / inputRate);
    this.halfWidth = Math.ceil(ZERO_CROSSINGS / scale);
    const cutoff = 0.5 * scale * PASSBAND; // cycles per input sample
    const size = 2 * this.halfWidth * PHASES + 2;
    this.kernel = new Float32Array(size);
    for (let i = 0; i < size; i++) {
      const x = i / PHASES - this.halfWidth;
      this.kernel[i] = 2 * cutoff * sinc(2 * cutoff * x) * blackman(x / this.halfWidth);
    }
    this.history = new Float32Array(4096);
    this.reset();
  }

  // Forget buffered input, e.g. after a playback flush, so stale audio cannot leak into what follows.
  reset() {
    this.length = this.halfWidth; // the kernel's left half starts on silence
    this.history.fill(0, 0, this.length);
    this.position = this.halfWidth; // fractional input index of the next output sample
  }

  // Resample one block. Returns a new Float32Array with as many output samples as the input so far
  // allows; the last halfWidth input samples wait for the next block.
  process(input) {
    this._append(input);
    const last = this.length - 1 - this.halfWidth;
    const count = this.position > last ? 0 : Math.floor((last - this.position) / this.step) + 1;
    const output = new Float32Array(count);
    const { history, kernel, halfWidth, step } = this;
    let position = this.position;
    for (let n = 0; n < count; n++) {
      const first = Math.ceil(position - halfWidth);
      const end = Math.floor(position + halfWidth);
      let sum = 0;
      for (let k = first; k <= end; k++) {
        const t = (position - k + halfWidth) * PHASES;
        const i = t | 0;
        const frac = t - i;
        sum += history[k] * (kernel[i] + frac * (kernel[i + 1] - kernel[i]));
      }
      output[n] = sum;
      position += step;
    }
    this.position = position;
    this._discardConsumed();
    return output;
  }

  _append(input) {
    if (this.length + input.length > this.history.length) {
      const grown = new Float32Array(2 * (this.length + input.length));
      grown.set(this.history.subarray(0, this.length));
      this.history = grown;
    }
    this.history.set(input, this.length);
    this.length += input.length;
  }

  _discardConsumed() {
    const drop = Math.max(0, Math.floor(this.position) - this.halfWidth - 1);
    if (drop === 0) return;
    this.history.copyWithin(0, drop, this.length);
    this.length -= drop;
    this.position -= drop;
  }
}

function sinc(x) {
  if (x === 0) return 1;
  const px = Math.PI * x;
  return Math.sin(px) / px;
}

function blackman(u) {
  // u in [-1, 1]; zero at both ends
  const a = Math.PI * (u + 1);
  return 0.42 - 0.5 * Math.cos(a) + 0.08 * Math.cos(2 * a);
}
