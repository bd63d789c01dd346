// One Realtime websocket that comes back by itself: when the server goes away (restart, network
// drop) it reconnects with exponential backoff and jitter, so a restarted server is found within
// seconds without a crowd of clients hammering it in lock-step.

const FIRST_RETRY_MS = 500;
const MAX_RETRY_MS = 8000;

export class RealtimeConnection extends EventTarget {
  constructor(url) {
    super();
    this.url = url;
    this.socket = null;
    this.state = "idle"; // idle | connecting | open | waiting (to retry) | closed
    this.attempt = 0;
    this.reconnects = 0;
    this.retryTimer = null;
    this.retryAt = 0;
    this.everOpened = false;
  }

  open() {
    this.stopped = false;
    this._connect();
  }

  close() {
    this.stopped = true;
    clearTimeout(this.retryTimer);
    if (this.socket) this.socket.close(1000, "client stopped");
    this.socket = null;
    this._setState("closed");
  }

  get isOpen() {
    return this.socket !== null && this.socket.readyState === WebSocket.OPEN;
  }

  send(event) {
    if (!this.isOpen) return false; // audio from while we were away is stale; drop it rather than queue it
    this.socket.send(JSON.stringify(event));
    return true;
  }

  _connect() {
    this._setState("connecting");
    const socket = new WebSocket(this.url);
    this.socket = socket;
    socket.onopen = () => {
      if (this.everOpened) this.reconnects += 1;
      this.everOpened = true;
      this.attempt = 0;
      this._setState("open");
    };
    socket.onmessage = (message) => {
      let event;
      try {
        event = JSON.parse(message.data);
      } catch {
        console.warn("voxloop: ignoring a frame that is not JSON", message.data);
        return;
      }
      this.dispatchEvent(new CustomEvent("server-event", { detail: event }));
    };
    socket.onclose = (close) => {
      if (socket !== this.socket || this.stopped) return;
      this.socket = null;
      this._scheduleRetry(close);
    };
  }

  _scheduleRetry(close) {
    const backoff = Math.min(MAX_RETRY_MS, FIRST_RETRY_MS * 2 ** this.attempt);
    const delay = Math.round(backoff * (0.8 + 0.4 * Math.random()));
    this.attempt += 1;
    this.retryAt = performance.now() + delay;
    this.lastClose = { code: close.code, reason: close.reason };
    this._setState("waiting");
    this.retryTimer = setTimeout(() => this._connect(), delay);
  }

  _setState(state) {
    this.state = state;
    this.dispatchEvent(new CustomEvent("state", { detail: { state, retryAt: this.retryAt, attempt: this.attempt } }));
  }
}
