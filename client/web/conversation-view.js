// The conversation as the page shows it: user and assistant turns keyed by Realtime item id, live
// partial transcripts, and each reply's latency.

export class ConversationView {
  constructor(root) {
    this.root = root;
    this.turns = new Map(); // itemId -> {element, text, partial, ...}
  }

  userStarted(itemId) {
    const turn = this._turn(itemId, "user", "You");
    turn.element.classList.add("live");
    this._render(turn);
  }

  userPartial(itemId, delta) {
    const turn = this._turn(itemId, "user", "You");
    turn.partial += delta;
    this._render(turn);
  }

  userStopped(itemId) {
    const turn = this.turns.get(itemId);
    if (turn) turn.element.classList.add("transcribing");
  }

  userFinal(itemId, transcript) {
    const turn = this._turn(itemId, "user", "You");
    if (!transcript.trim()) {
      // Noise or a cough: the server gives no reply, so the turn goes away instead of an empty bubble.
      turn.element.remove();
      this.turns.delete(itemId);
      return;
    }
    turn.text = transcript;
    turn.partial = "";
    turn.element.classList.remove("live", "transcribing");
    turn.element.classList.add("final");
    this._render(turn);
  }

  assistantStarted(itemId) {
    const turn = this._turn(itemId, "assistant", "Assistant");
    turn.element.classList.add("live");
    this._render(turn);
  }

  assistantDelta(itemId, delta) {
    const turn = this._turn(itemId, "assistant", "Assistant");
    turn.text += delta;
    this._render(turn);
  }

  // `transcript` is what the server keeps: after a barge-in only the words the user heard. The rest
  // of what was said stays on the page, struck through, so the user sees where they cut in.
  assistantFinal(itemId, transcript) {
    const turn = this._turn(itemId, "assistant", "Assistant");
    if (turn.text.startsWith(transcript) && transcript.length < turn.text.length) {
      turn.unheard = turn.text.slice(transcript.length);
    }
    turn.text = transcript;
    turn.element.classList.remove("live");
    turn.element.classList.add("final");
    this._render(turn);
  }

  assistantInterrupted(itemId, heardMs) {
    const turn = this.turns.get(itemId);
    if (!turn) return;
    turn.element.classList.remove("live");
    turn.element.classList.add("interrupted");
    if (heardMs != null) turn.note = `interrupted after ${(heardMs / 1000).toFixed(1)} s`;
    else turn.note = turn.text || turn.unheard ? "interrupted" : "interrupted before it spoke";
    this._render(turn);
  }

  // timings: the server's `response.voxloop.timings`; heardMs: the browser's own measure from the
  // arrival of speech_stopped to the first sample of this reply leaving the playback worklet.
  latency(itemId, { timings, heardMs }) {
    const turn = this.turns.get(itemId);
    if (!turn) return;
    if (timings !== undefined) turn.timings = timings;
    if (heardMs !== undefined) turn.heardMs = heardMs;
    this._render(turn);
  }

  divider(text) {
    const line = document.createElement("div");
    line.className = "divider";
    line.textContent = text;
    this._append(line);
  }

  systemMessage(text, kind = "info") {
    const line = document.createElement("div");
    line.className = `system-line ${kind}`;
    line.textContent = text;
    this._append(line);
  }

  _turn(itemId, role, label) {
    let turn = this.turns.get(itemId);
    if (turn) return turn;
    const element = document.createElement("article");
    element.className = `turn ${role}`;
    element.dataset.itemId = itemId;
    element.innerHTML = `<div class="who"></div><div class="bubble"><span class="text"></span><span class="unheard"></span><span class="partial"></span></div><div class="meta"></div>`;
    element.querySelector(".who").textContent = label;
    turn = { element, role, text: "", unheard: "", partial: "", note: null, timings: null, heardMs: null };
    this.turns.set(itemId, turn);
    this._append(element);
    return turn;
  }

  _render(turn) {
    const { element } = turn;
    element.querySelector(".text").textContent = turn.text;
    element.querySelector(".unheard").textContent = turn.unheard;
    element.querySelector(".partial").textContent = turn.partial;
    const meta = element.querySelector(".meta");
    meta.replaceChildren(...this._metaChips(turn));
    this._scroll();
  }

  _metaChips(turn) {
    const chips = [];
    const chip = (text, className = "", title = "") => {
      const span = document.createElement("span");
      span.className = `chip ${className}`.trim();
      span.textContent = text;
      if (title) span.title = title;
      chips.push(span);
    };
    if (turn.note) chip(turn.note, "warn");
    const t = turn.timings;
    if (t && t.first_audio_sent_ms != null) {
      chip(`server ${ms(t.first_audio_sent_ms)}`, "primary",
        `the server sent the first reply audio ${ms(t.first_audio_sent_ms)} after ${t.reference.replace("_", " ")} ` +
        "(the end of speech plus the silence hangover)");
    }
    if (turn.heardMs != null) {
      chip(`browser ${ms(turn.heardMs)}`, "primary",
        "this page played the first reply sample this long after speech_stopped arrived");
    }
    if (t) {
      const stages = [["transcript_final_ms", "ASR"], ["llm_first_token_ms", "LLM"], ["tts_first_audio_ms", "TTS"]]
        .filter(([key]) => t[key] != null)
        .map(([key, label]) => `${label} ${ms(t[key])}`);
      if (stages.length) chip(stages.join(" · "), "", `stage times after ${t.reference}`);
    }
    return chips;
  }

  _append(element) {
    this.root.querySelector(".empty")?.remove();
    this.root.append(element);
    this._scroll();
  }

  _scroll() {
    this.root.scrollTop = this.root.scrollHeight;
  }
}

function ms(value) {
  return `${Math.round(value)} ms`;
}
