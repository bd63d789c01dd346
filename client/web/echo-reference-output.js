// Assistant audio out through a WebRTC loopback, so Chromium's echo canceller can subtract it.
//
// Chromium's acoustic echo canceller only uses audio that WebRTC itself renders as its reference
// signal: audio played straight from Web Audio (context.destination) is not subtracted, so with
// speakers the assistant's own voice reaches the server as "user speech" and interrupts it (barge-in
// on its own echo). Routing the playback node into a MediaStreamAudioDestinationNode, sending that
// track over a pair of RTCPeerConnections inside this page, and playing the received track in an
// <audio> element makes the assistant's voice remote WebRTC audio, which the echo canceller sees.
//
// The cost is the loopback's jitter buffer and an Opus encode (bitrate raised to 128 kb/s below),
// typically 20-60 ms. If the loopback cannot connect (WebRTC disabled, no usable network interface
// at all), playback falls back to context.destination and the page tells the user to wear
// headphones.

const CONNECT_TIMEOUT_MS = 3000;
const OPUS_BITRATE = 128000;

export async function connectOutput(context, source) {
  try {
    return await connectLoopback(context, source);
  } catch (error) {
    console.warn("voxloop: echo-reference loopback unavailable, playing directly", error);
    source.connect(context.destination);
    return { mode: "direct", reason: String(error?.message ?? error), stats: async () => null, close() {} };
  }
}

async function connectLoopback(context, source) {
  if (typeof RTCPeerConnection === "undefined") throw new Error("this browser has no WebRTC");
  const destination = context.createMediaStreamDestination();
  source.connect(destination);
  const sender = new RTCPeerConnection();
  const receiver = new RTCPeerConnection();
  const element = new Audio();
  const close = () => {
    source.disconnect(destination);
    element.srcObject = null;
    sender.close();
    receiver.close();
  };
  try {
    sender.onicecandidate = (event) => event.candidate && receiver.addIceCandidate(event.candidate).catch(() => {});
    receiver.onicecandidate = (event) => event.candidate && sender.addIceCandidate(event.candidate).catch(() => {});
    const remoteTrack = new Promise((resolve) => {
      receiver.ontrack = (event) => resolve(event);
    });
    sender.addTrack(destination.stream.getAudioTracks()[0], destination.stream);
    const offer = await sender.createOffer();
    await sender.setLocalDescription(offer);
    await receiver.setRemoteDescription(offer);
    const answer = await receiver.createAnswer();
    const tunedAnswer = { type: answer.type, sdp: raiseOpusBitrate(answer.sdp) };
    await receiver.setLocalDescription(tunedAnswer);
    await sender.setRemoteDescription(tunedAnswer);
    const track = await remoteTrack;
    if ("jitterBufferTarget" in track.receiver) track.receiver.jitterBufferTarget = 0; // a loopback has no jitter to absorb
    await connected(receiver);
    element.srcObject = track.streams[0] ?? new MediaStream([track.track]);
    await element.play();
  } catch (error) {
    close();
    throw error;
  }
  return { mode: "webrtc-loopback", reason: null, stats: () => loopbackStats(receiver), close };
}

function connected(peer) {
  return new Promise((resolve, reject) => {
    const check = () => {
      if (peer.connectionState === "connected") resolve();
      else if (peer.connectionState === "failed" || peer.connectionState === "closed") reject(new Error(`loopback ${peer.connectionState}`));
    };
    peer.addEventListener("connectionstatechange", check);
    setTimeout(() => reject(new Error("loopback did not connect in time")), CONNECT_TIMEOUT_MS);
    check();
  });
}

function raiseOpusBitrate(sdp) {
  const payload = /a=rtpmap:(\d+) opus\/48000/i.exec(sdp)?.[1];
  if (!payload) return sdp;
  return sdp.replace(new RegExp(`a=fmtp:${payload} [^\\r\\n]*`), (line) => `${line};maxaveragebitrate=${OPUS_BITRATE}`);
}

// What the loopback adds (the receiver's mean jitter-buffer delay plus one 20 ms Opus frame) and how
// much audio has come through it.
async function loopbackStats(receiver) {
  const stats = await receiver.getStats();
  for (const report of stats.values()) {
    if (report.type === "inbound-rtp" && report.kind === "audio") {
      const emitted = report.jitterBufferEmittedCount;
      return {
        latencyMs: emitted > 0 ? (1000 * report.jitterBufferDelay) / emitted + 20 : null,
        samplesReceived: report.totalSamplesReceived ?? 0,
      };
    }
  }
  return null;
}
