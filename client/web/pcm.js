// pcm16 <-> base64, the audio encoding of the Realtime protocol. Int16Array uses the platform's byte
// order, which is little-endian on every platform browsers run on, as the wire format requires.

export function pcm16ToBase64(buffer) {
  const bytes = new Uint8Array(buffer);
  let binary = "";
  const block = 0x8000; // String.fromCharCode takes its bytes as arguments; keep the argument list short
  for (let i = 0; i < bytes.length; i += block) binary += String.fromCharCode(...bytes.subarray(i, i + block));
  return btoa(binary);
}

export function base64ToPcm16(text) {
  const binary = atob(text);
  const bytes = new Uint8Array(binary.length & ~1); // a stray odd byte cannot form a sample
  for (let i = 0; i < bytes.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes.buffer;
}
