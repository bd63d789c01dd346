"""The embedded models, each run for real on the shared speech clips."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from contextlib import aclosing, contextmanager

import numpy as np
import pytest

from voxloop.bench.speech_end import speech_end
from voxloop.bench.wer import word_error_rate
from voxloop.codecs.audiofile import load_audio
from voxloop.voice.asr import Transcript, WhisperTranscriber, hallucination_reason, without_restart
from voxloop.voice.errors import ModelNotFoundError
from voxloop.voice.llm import GenerationSettings, LlamaCppLLM
from voxloop.voice.tts import OUTPUT_RATE, PiperSynthesizer
from voxloop.voice.turns import SpeechStarted, SpeechStopped, TurnDetectionConfig, TurnDetector
from voxloop.voice.vad import FRAME_MS, FRAME_SAMPLES, SileroVAD

pytestmark = pytest.mark.models

# tiny.en with greedy decoding on these clean clips; the bound leaves room for a word or two.
WER_BOUND = 0.25


@pytest.fixture(scope="module")
def whisper():
    return WhisperTranscriber()


@pytest.fixture(scope="module")
def llm():
    model = LlamaCppLLM()
    yield model
    model.close()


def test_silero_separates_speech_from_silence_and_the_turn_detector_finds_the_turn(clips):
    clip = clips["arctic_a0039_1592747680"]  # silence-trimmed: speech from the first to the last sample
    speech = load_audio(clip.path, 16000)
    audio = np.concatenate([np.zeros(16000, np.float32), speech, np.zeros(16000, np.float32)])
    stream = SileroVAD().stream()
    detector = TurnDetector(TurnDetectionConfig(silence_duration_ms=500), FRAME_MS)
    events = []
    for i in range(0, audio.size - FRAME_SAMPLES + 1, FRAME_SAMPLES):
        event = detector.process(stream.probability(audio[i:i + FRAME_SAMPLES]))
        if isinstance(event, (SpeechStarted, SpeechStopped)):
            events.append(event)
    assert [type(e) for e in events] == [SpeechStarted, SpeechStopped]
    speech_end_ms = 1000 + 1000 * speech.size / 16000
    assert abs(events[0].audio_start_ms - 1000) < 200
    assert abs(events[1].audio_end_ms - speech_end_ms) < 300


@pytest.mark.parametrize("name", ["jfk", "arctic_a0039_1592747680", "p301_102", "1089-134691-0001"])
def test_whisper_transcribes_real_speech(whisper, clips, name):
    clip = clips[name]
    transcript = whisper.transcribe(load_audio(clip.path, 16000))
    assert transcript.rejected is None
    assert word_error_rate(clip.transcript, transcript.text) <= WER_BOUND, transcript.text


def test_short_window_decoding_agrees_with_the_standard_30_s_window(clips):
    standard = WhisperTranscriber(window_padding_s=None)
    short = WhisperTranscriber()  # the server's default window
    # p301_410 is one Whisper transcribes three times over on a 5 s window (without_restart).
    for name in ("p301_102", "1089-134691-0001", "jfk", "p301_410"):
        audio = load_audio(clips[name].path, 16000)
        reference = clips[name].transcript
        standard_wer = word_error_rate(reference, standard.transcribe(audio).text)
        # At most one word worse on these 7-22 word clips ("I am" -> "I'm" is one).
        assert word_error_rate(reference, short.transcribe(audio).text) <= standard_wer + 0.26


# Each cut is the quietest 10 ms between two words inside a clause (bench/paused_speech.py's placement).
@pytest.mark.parametrize("name, cut_s, heard_before_cut", [("p301_410", 2.36, "hopefully we can"),
                                                           ("3752-4944-0000", 1.56, "captain frere says"),
                                                           ("arctic_a0039_1592747680", 1.29, "the ship should be in with")])
def test_whisper_hears_whether_the_speaker_finished_the_sentence(whisper, clips, name, cut_s, heard_before_cut):
    """Its probability of the final stop, 100 ms into a pause: high at the end of the clip's whole
    sentence, low where the same voice stops mid-sentence."""
    audio = load_audio(clips[name].path, 16000)
    pause = np.zeros(1600, np.float32)

    def heard_up_to(seconds: float):
        return whisper.transcribe(np.concatenate([audio[: int(seconds * 16000)], pause]))

    whole = heard_up_to(speech_end(clips[name]))
    half = heard_up_to(cut_s)
    assert whole.text.endswith(".") and whole.stop_p is not None and whole.stop_p > 0.7, (whole.text, whole.stop_p)
    assert word_error_rate(heard_before_cut, half.text) <= 0.5, half.text
    assert half.stop_p is not None and half.stop_p < 0.3, (half.text, half.stop_p)


def test_the_stop_probability_reads_logits_a_gpu_decoder_left_on_its_device(whisper):
    import ctranslate2

    class OnTheGpu:  # what numpy cannot read: a StorageView in device memory
        device = "cuda"

        def __init__(self, logits):
            self.logits = logits

        def to_device(self, device):
            assert device == ctranslate2.Device.cpu
            return ctranslate2.StorageView.from_array(self.logits)

    logits = np.full(whisper.model.hf_tokenizer.get_vocab_size(), -30.0, np.float32)
    logits[whisper._stop_tokens[0]] = 0.0  # all but certain of a full stop after the last word
    word = whisper.model.hf_tokenizer.encode(" Hello", add_special_tokens=False).ids
    assert whisper._stop_probability(word, [OnTheGpu(logits)] * (len(word) + 1)) > 0.99


def test_a_transcript_started_over_keeps_its_first_telling():
    assert without_restart("Hopefully we can learn from our mistakes. Hopefully we can learn from our mistak") == \
        "Hopefully we can learn from our mistakes."
    assert without_restart("The ship is in. The ship is in. The ship") == "The ship is in."


def test_a_speaker_who_repeats_themselves_keeps_every_word():
    for said in ("I went home, I went home and slept.", "no no no no", "Stop. Stop. Stop.", "a b c d a b x"):
        assert without_restart(said) == said


def test_whisper_says_nothing_on_silence_and_noise(whisper):
    rng = np.random.default_rng(0)
    assert whisper.transcribe(np.zeros(16000 * 2, np.float32)).text == ""
    assert whisper.transcribe((0.01 * rng.standard_normal(16000 * 2)).astype(np.float32)).text == ""


def test_hallucination_guard_keeps_a_confident_thank_you():
    assert hallucination_reason(Transcript("Thank you.", 1.0, no_speech_prob=0.05, avg_logprob=-0.2)) is None
    assert hallucination_reason(Transcript("Thank you.", 1.0, no_speech_prob=0.5, avg_logprob=-0.9)) is not None
    assert hallucination_reason(Transcript("the the the the the the the the", 1.0)) == "repetition loop"


def test_missing_models_give_clear_errors(tmp_path):
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        WhisperTranscriber(str(tmp_path / "no-such-whisper"))
    with pytest.raises(ModelNotFoundError, match="no model.bin"):
        WhisperTranscriber(str(tmp_path))
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        LlamaCppLLM(str(tmp_path / "missing.gguf"))
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        PiperSynthesizer(str(tmp_path / "missing.onnx"))


def test_llm_streams_tokens_and_stops_when_closed(llm, monkeypatch):
    sampled = 0
    sample = llm.llama.sample

    def counting(*args, **kwargs):
        nonlocal sampled
        sampled += 1
        return sample(*args, **kwargs)

    monkeypatch.setattr(llm.llama, "sample", counting)

    async def run():
        messages = [{"role": "user", "content": "Tell me a long story about a dragon."}]
        pieces = []
        async with aclosing(llm.stream(messages, GenerationSettings(max_tokens=200))) as stream:
            async for piece in stream:
                pieces.append(piece)
                if len(pieces) == 5:
                    break
        async with aclosing(llm.stream(messages, GenerationSettings(max_tokens=1))) as stream:
            first = [piece async for piece in stream]
        return pieces, first

    pieces, first = asyncio.run(run())
    assert len(pieces) == 5 and "".join(pieces).strip()
    assert first
    # The worker stopped soon after the close, not at 200 tokens: the next request waited for
    # whatever the first one still sampled (a few tokens may run ahead of the reader).
    assert sampled < 100, sampled


def test_piper_speaks_at_the_protocol_rate():
    tts = PiperSynthesizer()

    async def run():
        async with aclosing(tts.synthesize("Hello, how can I help you today?")) as chunks:
            return [chunk async for chunk in chunks]

    chunks = asyncio.run(run())
    audio = np.concatenate(chunks)
    seconds = audio.size / OUTPUT_RATE
    assert audio.dtype == np.float32
    assert 1.0 < seconds < 5.0  # eight words of speech
    assert np.sqrt(np.mean(audio ** 2)) > 0.01
    assert tts.default_voice == "en_US-joe-medium"


def test_piper_threads_sleep_between_clauses():
    for tts in (PiperSynthesizer(), PiperSynthesizer(whole_sentences=True)):
        for session in tts.voice.sessions:
            assert session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_numpy_blas_is_kept_to_one_thread():
    from threadpoolctl import ThreadpoolController

    from voxloop.voice.models import keep_numpy_single_threaded

    controller = ThreadpoolController()
    openblas = controller.select(internal_api="openblas")
    if not openblas.lib_controllers:
        pytest.fail("numpy is expected to bring OpenBLAS on this project's platforms")
    with openblas.limit(limits=2):
        keep_numpy_single_threaded()
        assert [info["num_threads"] for info in ThreadpoolController().select(internal_api="openblas").info()] == [1] * len(openblas.lib_controllers)


def test_the_cascade_never_loads_torch_so_llama_cpp_keeps_its_own_openmp():
    """torch brings its own libgomp under the name llama.cpp's CPU backend links against; with it
    loaded, SmolLM2 ran 3-6x slower per token once Whisper had run. The Piper cascade needs no
    torch, so a server process must load all its models without it (a fresh interpreter, as
    this test process may already hold torch)."""
    import subprocess

    check = ("import sys\n"
             "from voxloop.voice.models import ModelOptions, load_cascade\n"
             "models = load_cascade(ModelOptions())\n"
             "assert models.vad.session is not None\n"
             "loaded = sorted(m for m in ('torch', 'torchaudio', 'silero_vad') if m in sys.modules)\n"
             "print('loaded:', loaded)\n"
             "sys.exit(1 if loaded else 0)\n")
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


def _thread_nice_values() -> dict[int, int]:
    """The nice value of each of this process's threads (Linux: field 19 of /proc/self/task/TID/stat)."""
    values = {}
    for tid in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{tid}/stat") as stat:
            values[int(tid)] = int(stat.read().rsplit(")", 1)[1].split()[16])
    return values


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread CPU priority is a Linux facility")
def test_partial_transcripts_have_their_own_low_priority_whisper_so_a_final_pass_never_waits(clips):
    from voxloop.voice.models import CascadeModels, _partial_whisper

    baseline = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    before = set(_thread_nice_values())
    model, worker = _partial_whisper(lambda threads: WhisperTranscriber(cpu_threads=threads))
    started = {tid: nice for tid, nice in _thread_nice_values().items() if tid not in before}
    # The worker and the threads CTranslate2 started for the model all run at the lowest priority.
    assert len(started) >= 2 and set(started.values()) == {19}, started
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == baseline  # the caller is untouched

    final = WhisperTranscriber(cpu_threads=1)
    models = CascadeModels(vad=None, asr=final, llm=None, tts=None, partial_asr=(model, worker))
    audio = load_audio(clips["1089-134691-0001"].path, 16000)
    release = threading.Event()
    worker.submit(release.wait)  # a partial pass in flight, for as long as the test likes

    async def final_pass_during_a_partial_one():
        partial = asyncio.create_task(models.transcribe(audio, urgent=False))
        transcript = await asyncio.wait_for(models.transcribe(audio), 30)
        assert not partial.done()
        release.set()
        return transcript, await asyncio.wait_for(partial, 30)

    try:
        final_text, partial_text = asyncio.run(final_pass_during_a_partial_one())
    finally:
        release.set()
        worker.shutdown()
        models._asr_worker.shutdown()
    reference = clips["1089-134691-0001"].transcript
    assert word_error_rate(reference, final_text.text) <= WER_BOUND
    assert word_error_rate(reference, partial_text.text) <= WER_BOUND


@contextmanager
def whisper_steps(whisper: WhisperTranscriber, label, hold):
    """Records each half of `whisper`'s passes as (half, label(audio)) and holds the first encoder
    whose audio `hold` picks until `release` is set. Yields (steps, encoding, release)."""
    steps: list[tuple[str, str]] = []
    encoding, release = threading.Event(), threading.Event()
    encode, decode = whisper.encode, whisper.decode

    def recorded_encode(audio):
        steps.append(("encode", label(audio)))
        if hold(audio) and not encoding.is_set():
            encoding.set()
            release.wait(30)
        return encode(audio)

    def recorded_decode(speech):
        steps.append(("decode", label(speech.audio)))
        return decode(speech)

    whisper.encode, whisper.decode = recorded_encode, recorded_decode
    try:
        yield steps, encoding, release
    finally:
        release.set()
        del whisper.encode, whisper.decode


def test_a_final_pass_goes_before_the_decoder_of_a_partial_pass_already_encoding(whisper, clips):
    from voxloop.voice.models import CascadeModels

    clip = clips["1089-134691-0001"]
    final_audio = load_audio(clip.path, 16000)
    partial_audio = final_audio[: final_audio.size // 2]

    def which(audio: np.ndarray) -> str:
        return "partial" if audio.size == partial_audio.size else "final"

    models = CascadeModels(vad=None, asr=whisper, llm=None, tts=None)

    async def final_pass_during_a_partial_one(encoding, release):
        partial = asyncio.create_task(models.transcribe(partial_audio, urgent=False))
        assert await asyncio.to_thread(encoding.wait, 30)  # the partial pass's encoder runs until the final pass has come
        final = asyncio.create_task(models.transcribe(final_audio))
        await asyncio.sleep(0.05)  # the final pass is queued behind the encoder
        release.set()
        return await asyncio.wait_for(final, 30), await asyncio.wait_for(partial, 30)

    try:
        with whisper_steps(whisper, label=which, hold=lambda audio: which(audio) == "partial") as (steps, encoding, release):
            final_text, partial_text = asyncio.run(final_pass_during_a_partial_one(encoding, release))
    finally:
        models._asr_worker.shutdown()
    assert steps == [("encode", "partial"), ("encode", "final"), ("decode", "final"), ("decode", "partial")]
    assert word_error_rate(clip.transcript, final_text.text) <= WER_BOUND
    assert partial_text.text and partial_text.text == whisper.transcribe(partial_audio).text  # taken in two jobs, the same words


def test_a_final_pass_given_up_while_encoding_skips_its_decoder(whisper, clips):
    """A speculative pass whose pause ended (the user went on) is cancelled: the encoder cannot be
    stopped, but the decoder is not run, and the next pass starts right after the encoder."""
    from voxloop.voice.models import CascadeModels

    audio = load_audio(clips["1089-134691-0001"].path, 16000)
    models = CascadeModels(vad=None, asr=whisper, llm=None, tts=None)

    async def give_up_then_transcribe_again(encoding, release):
        speculative = asyncio.create_task(models.transcribe(audio))
        assert await asyncio.to_thread(encoding.wait, 30)  # the first pass is still encoding when its caller gives up
        speculative.cancel()
        await asyncio.gather(speculative, return_exceptions=True)
        following = asyncio.create_task(models.transcribe(audio))
        release.set()
        return speculative, await asyncio.wait_for(following, 30)

    try:
        with whisper_steps(whisper, label=lambda audio: "pass", hold=lambda audio: True) as (steps, encoding, release):
            speculative, following = asyncio.run(give_up_then_transcribe_again(encoding, release))
    finally:
        models._asr_worker.shutdown()
    assert speculative.cancelled()
    assert [half for half, _ in steps] == ["encode", "encode", "decode"]
    assert word_error_rate(clips["1089-134691-0001"].transcript, following.text) <= WER_BOUND


def test_whisper_threads_default_to_half_the_cores_unless_asked(monkeypatch):
    from voxloop.voice.models import ModelOptions, whisper_threads

    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert whisper_threads(ModelOptions()) == 1
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert whisper_threads(ModelOptions()) == 8
    assert whisper_threads(ModelOptions(threads=3)) == 3
    assert whisper_threads(ModelOptions(threads=3, asr_threads=2)) == 2
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    assert whisper_threads(ModelOptions()) == 1
