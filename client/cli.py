"""The `voxloop` command line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from dataclasses import replace

from rich.console import Console

from voxloop.client.realtime_client import DEFAULT_URL
from voxloop.voice.asr import WINDOW_PADDING_S
from voxloop.voice.llm import GenerationSettings
from voxloop.voice.llm_quant import BUNDLED_MODEL_QUANT, QUANT_CHOICES
from voxloop.voice.piper_pieces import PIECE_FRAMES
from voxloop.voice.config import SessionConfig
from voxloop.voice.turns import EAGERNESS, UNFINISHED_RULES, TurnDetectionConfig, semantic_vad

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("models (defaults: the embedded models that ship as packages)")
    group.add_argument("--asr-model", help="faster-whisper model name or CTranslate2 directory (default: bundled tiny.en)")
    group.add_argument("--asr-device", default="cpu", help="cpu or cuda (default: cpu)")
    group.add_argument("--asr-compute-type", default="int8", help="CTranslate2 compute type (default: int8)")
    group.add_argument("--asr-window", type=float, default=WINDOW_PADDING_S, metavar="SECONDS",
                       help="encode the utterance plus this much silence instead of Whisper's 30 s window "
                            f"(default: {WINDOW_PADDING_S:g}; 0 for the standard 30 s window)")
    group.add_argument("--llm-gguf", help="path to a GGUF chat model (default: bundled SmolLM2-135M-Instruct)")
    group.add_argument("--llm-url", help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1 (vLLM, llama.cpp server, Ollama)")
    group.add_argument("--llm-model", default="default", help="model name to send to --llm-url")
    group.add_argument("--llm-api-key-env", default="VOXLOOP_LLM_API_KEY", help="environment variable holding the --llm-url API key")
    group.add_argument("--llm-gpu-layers", type=int, default=0, help="llama.cpp layers to offload to the GPU (-1: all)")
    group.add_argument("--llm-cache-copies-mib", type=int, default=0, metavar="MIB",
                       help="memory for copies of the embedded LLM's KV cache, kept when another session's request "
                            "displaces a conversation, so its next turn need not evaluate its history again; for many "
                            "sessions with long conversations, e.g. 256, with --llm-slots 0 (default: 0, no copies)")
    group.add_argument("--llm-slots", type=int, default=4, metavar="N",
                       help="serve the embedded LLM's requests together, one decode step for all, with a KV cache of "
                            "its own for each of N conversations; more sessions than that take turns in the caches "
                            "(default: 4; 0: one request at a time, in one shared cache)")
    group.add_argument("--llm-quant", default="auto", choices=QUANT_CHOICES,
                       help="re-quantize the embedded LLM's GGUF, once, into ~/.cache/voxloop (or $VOXLOOP_CACHE_DIR): "
                            f"'auto' makes the bundled Q4_1 model {BUNDLED_MODEL_QUANT}, which llama.cpp evaluates prompts "
                            "with about twice as fast on a CPU, and uses a GGUF you name as it is (default: auto)")
    group.add_argument("--tts", default="piper", choices=["piper", "xtts"], help="TTS backend (default: piper)")
    group.add_argument("--piper-voice", help="path to a Piper voice .onnx (its .onnx.json beside it; default: bundled voice)")
    group.add_argument("--piper-whole-sentences", action=argparse.BooleanOptionalAction, default=False,
                       help="decode each sentence in one pass, as Piper does (default: its decoder runs a few latent "
                            "frames at a time, so a clause's first audio comes after a fraction of its decoding)")
    group.add_argument("--piper-piece-frames", type=_frame_counts, default=PIECE_FRAMES, metavar="N,N,...",
                       help="the sizes of the pieces Piper's decoder runs on, in latent frames of 11.6 ms, the last one "
                            "repeated (default: %s)" % ",".join(map(str, PIECE_FRAMES)))
    group.add_argument("--xtts-dir", help="local XTTS-v2 checkpoint folder (default: download it, once COQUI_TOS_AGREED=1)")
    group.add_argument("--xtts-device", default="auto", help="auto, cpu or cuda (default: auto, cuda when available)")
    group.add_argument("--xtts-language", default="en", help="XTTS language code (default: en)")
    group.add_argument("--xtts-voice", help="default XTTS voice: a built-in speaker name or a reference wav to clone")
    group.add_argument("--xtts-voice-dir", metavar="DIR", help="reference clips that clients may choose as their voice by "
                       "file name (session voice 'alice' -> DIR/alice.wav); clients never name a server path")
    group.add_argument("--xtts-chunk-tokens", type=int, help="XTTS audio tokens (about 46 ms each) per streamed chunk "
                       "(default: 8 on a GPU, 20 on a CPU)")
    group.add_argument("--xtts-half", action="store_true", help="XTTS in float16 autocast on CUDA (not faster on an H100)")
    group.add_argument("--threads", type=int, default=0, help="CPU threads per model (default: all cores)")
    group.add_argument("--asr-threads", type=int, default=None,
                       help="CPU threads for Whisper (default: --threads if given, else half the cores: on 2 cores "
                            "one thread transcribed faster than two, beside the LLM and TTS)")
    group.add_argument("--separate-partial-asr", action="store_true",
                       help="on a CPU, partial transcripts on their own one-thread Whisper at the lowest priority, so "
                            "that a final pass never waits for a partial one in flight (default: one Whisper, which "
                            "serves final passes first; the separate one did not pay on 2 cores)")
    group.add_argument("--asr-in-steps", "--partial-asr-in-steps", action=argparse.BooleanOptionalAction, default=True,
                       help="take a partial transcript's Whisper pass in two jobs, encoder then decoder, so that a "
                            "final pass that comes meanwhile waits only for the encoder, and stop a speculative pass "
                            "after its encoder once its pause has ended (default: on)")
    group.add_argument("--spinning-threads", action="store_true",
                       help="let numpy's BLAS (several threads) and Piper's onnxruntime threads busy-wait between calls, "
                            "as they do by default; on a small CPU that spinning takes the cores from the next model "
                            "(default: they sleep, and numpy uses one thread)")


def _frame_counts(text: str) -> tuple[int, ...]:
    try:
        counts = tuple(int(part) for part in text.split(","))
    except ValueError:
        counts = ()
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"expected whole numbers of frames, 1 or more, separated by commas, not {text!r}")
    return counts


def _generation_settings(args: argparse.Namespace) -> GenerationSettings:
    return GenerationSettings(first_clause_max_chars=args.first_clause_chars or None,
                              first_clause_phrases=args.first_clause_phrases, first_audio_first=args.first_audio_first,
                              synthesize_ahead=args.synthesize_ahead, tts_deadlines=args.tts_deadlines,
                              cut_early_below_s=args.cut_early_below_s, max_sentences=args.reply_sentences or None,
                              repeat_penalty=args.repeat_penalty)


def _model_options(args: argparse.Namespace):
    from voxloop.voice.models import ModelOptions

    return ModelOptions(asr_model=args.asr_model, asr_device=args.asr_device, asr_compute_type=args.asr_compute_type,
                        asr_window_padding_s=args.asr_window or None,
                        llm_gguf=args.llm_gguf, llm_url=args.llm_url, llm_model=args.llm_model,
                        llm_api_key_env=args.llm_api_key_env, llm_gpu_layers=args.llm_gpu_layers,
                        llm_cache_copies_mib=args.llm_cache_copies_mib, llm_slots=args.llm_slots,
                        llm_quant=args.llm_quant, tts=args.tts,
                        piper_voice=args.piper_voice, piper_whole_sentences=args.piper_whole_sentences,
                        piper_piece_frames=args.piper_piece_frames,
                        xtts_dir=args.xtts_dir, xtts_device=args.xtts_device,
                        xtts_language=args.xtts_language, xtts_voice=args.xtts_voice,
                        xtts_voice_dir=args.xtts_voice_dir,
                        xtts_chunk_tokens=args.xtts_chunk_tokens, xtts_half=args.xtts_half, threads=args.threads,
                        asr_threads=args.asr_threads, separate_partial_asr=args.separate_partial_asr,
                        asr_in_steps=args.asr_in_steps,
                        spinning_threads=args.spinning_threads)


def _add_native_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("native path (--path native: EnCodec tokens -> full-duplex speech LM -> EnCodec)")
    group.add_argument("--speech-lm", metavar="DIR", help="trained speech LM: a directory with config.json and model.safetensors "
                       "(`voxloop train-native PAIRS OUT_DIR` writes OUT_DIR/model)")
    group.add_argument("--encodec-checkpoint", metavar="PATH", help="local EnCodec 24 kHz checkpoint (.th/.pt/.safetensors, or a "
                       "directory holding encodec_24khz-d7cc33bc.th; default: the encodec package's download, which needs network once)")
    group.add_argument("--random-weights", action="store_true", help="random speech LM (and random EnCodec unless "
                       "--encodec-checkpoint): noise, not speech; for latency benchmarking only")
    group.add_argument("--speech-lm-config", choices=["tiny", "production"], help="size of the random speech LM "
                       "(with --random-weights; default: tiny)")
    group.add_argument("--native-device", default="cpu", help="cpu or cuda for the codec and the speech LM (default: cpu)")
    group.add_argument("--lm-temperature", type=float, default=0.8, help="speech LM sampling temperature; 0: greedy (default: 0.8)")
    group.add_argument("--lm-top-k", type=int, default=250, help="speech LM top-k sampling; 0: off (default: 250)")
    group.add_argument("--native-chunk-ms", type=int, default=80, help="audio per model call, in 40/3 ms codec frames "
                       "(rounded); more is cheaper per frame, less is lower latency (default: 80; 27 keeps up on a GPU)")
    group.add_argument("--reply-silence-ms", type=int, default=800, help="silent model output that completes a response (default: 800)")
    group.add_argument("--max-reply-s", type=float, default=30.0, help="longest response in seconds (default: 30)")


def _native_options(args: argparse.Namespace):
    from voxloop.voice.native_models import NativeOptions
    from voxloop.voice.speech_lm import SamplingSettings

    return NativeOptions(speech_lm=args.speech_lm, encodec_checkpoint=args.encodec_checkpoint, random_weights=args.random_weights,
                         random_config=args.speech_lm_config or "tiny", device=args.native_device,
                         sampling=SamplingSettings(temperature=args.lm_temperature, top_k=args.lm_top_k),
                         chunk_frames=max(1, round(args.native_chunk_ms * 75 / 1000)))


def _native_option_error(args: argparse.Namespace) -> str | None:
    if args.speech_lm_config and not args.random_weights:
        return "--speech-lm-config sizes random weights only (with --random-weights); a trained model's config.json sets its size"
    if args.random_weights and args.speech_lm:
        return "--random-weights and --speech-lm exclude each other"
    if args.path != "native" and (args.speech_lm or args.random_weights or args.encodec_checkpoint):
        return "--speech-lm, --random-weights and --encodec-checkpoint belong to the native path: add --path native"
    return None


def _turn_detection(args: argparse.Namespace) -> TurnDetectionConfig:
    """server_vad from the flags; with --eagerness, semantic_vad's preset, changed by the flags
    that differ from their defaults (a flag repeating its default cannot be told from one left out)."""
    flags = dict(silence_duration_ms=args.silence_ms, unfinished_silence_ms=args.unfinished_silence_ms,
                 eager_after_ms=args.eager_ms, min_speech_ms=args.min_speech_ms, unfinished_rule=args.unfinished_rule,
                 unpunctuated_silence_ms=args.unpunctuated_silence_ms, sentence_end_threshold=args.sentence_end_threshold,
                 finished_silence_ms=args.finished_silence_ms, finished_threshold=args.finished_threshold,
                 heard_stop_threshold=args.heard_stop_threshold,
                 heard_stop_overrule_threshold=args.heard_stop_overrule_threshold, end_after_judgment=args.end_after_judgment,
                 judge_by_words_when_llm_busy=args.judge_by_words_when_llm_busy)
    if args.eagerness is None:
        return TurnDetectionConfig(**flags)
    defaults = TurnDetectionConfig()
    return semantic_vad(args.eagerness, **{name: value for name, value in flags.items() if value != getattr(defaults, name)})


def _serve(args: argparse.Namespace) -> int:
    console = Console(stderr=True)
    if args.host not in LOOPBACK and not args.allow_remote:
        console.print(f"[bold red]refusing to listen on {args.host}: that exposes the server beyond this machine. "
                      "Pass --allow-remote if that is what you want.[/]")
        return 2
    if problem := _native_option_error(args):
        console.print(f"[bold red]{problem}[/]")
        return 2
    from voxloop.streaming.server import VoxloopServer
    from voxloop.voice.errors import ModelNotFoundError
    from voxloop.voice.models import load_cascade
    from voxloop.voice.config import SessionConfig
    from voxloop.voice.session import VoiceSession

    try:
        if args.path == "native":
            from voxloop.voice.native_models import load_native

            models = load_native(_native_options(args), console)
        else:
            models = load_cascade(_model_options(args), console)
    except ModelNotFoundError as exc:
        console.print(f"[bold red]model not found:[/] {exc}")
        return 2

    async def serve_forever() -> None:
        with console.status("warming up the models"):
            await models.warm_up()
        turn_detection = _turn_detection(args)
        if args.path == "native":
            from voxloop.voice.native_models import NO_TRANSCRIPTION
            from voxloop.voice.native_session import NativeSession, ResponsePolicy

            policy = ResponsePolicy(end_silence_ms=args.reply_silence_ms, max_reply_s=args.max_reply_s)
            if models.random_weights:
                console.print("[bold yellow]random weights: the assistant speaks noise; for latency benchmarking only[/]")
            server = VoxloopServer(lambda emit: NativeSession(models, emit, SessionConfig(turn_detection=replace(turn_detection),
                                                                                          partial_transcripts=False), policy),
                                   model_name=models.name, transcription_model=NO_TRANSCRIPTION)
        else:
            generation = _generation_settings(args)
            server = VoxloopServer(lambda emit: VoiceSession(models, emit, SessionConfig(turn_detection=replace(turn_detection),
                                                                                    generation=replace(generation),
                                                                                    history_window=args.history_window,
                                                                                    llm_prewarm=args.llm_prewarm,
                                                                                    llm_prewarm_words=args.llm_prewarm_words,
                                                                                    judge_in_reply=args.judge_in_reply,
                                                                                    settle_pauses=args.settle_pauses,
                                                                                    drop_partial_at_pause=args.drop_partial_at_pause)),
                                   model_name=f"voxloop-cascade/{models.llm.name}",
                                   transcription_model=models.asr.name)
        listener = await server.start(args.host, args.port)
        console.print(f"[bold green]voxloop is listening[/]: Realtime websocket ws://{args.host}:{args.port}/v1/realtime, "
                      f"browser http://{args.host}:{args.port}/")
        await listener.serve_forever()

    try:
        asyncio.run(serve_forever())
    except KeyboardInterrupt:
        console.print("stopped")
    except OSError as exc:
        console.print(f"[bold red]cannot listen on {args.host}:{args.port}: {exc}[/]")
        return 1
    return 0


def _talk(args: argparse.Namespace) -> int:
    if args.list_devices:
        from voxloop.client.mic_cli import print_devices

        return print_devices(Console())
    if not args.input:
        from voxloop.client.audio_io import parse_device
        from voxloop.client.mic import LiveOptions
        from voxloop.client.mic_cli import run_live_talk

        if args.output:
            Console(stderr=True).print("[bold red]--output needs --input (live replies go to the speaker)[/]")
            return 2
        options = LiveOptions(aec=not args.no_aec, noise_suppression=not args.no_noise_suppression,
                              half_duplex=args.half_duplex, push_to_talk=args.push_to_talk, instructions=args.instructions)
        return run_live_talk(args.url, options, parse_device(args.input_device), parse_device(args.output_device))
    from voxloop.client.talk import run_talk

    return run_talk(args.input, args.output, args.url, args.instructions)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="voxloop", description="Real-time duplex voice assistant.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what the server does")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the Realtime-compatible voice server")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8765, help="port (default: 8765)")
    serve.add_argument("--allow-remote", action="store_true", help="allow listening on a non-loopback address")
    serve.add_argument("--path", choices=["cascade", "native"], default="cascade",
                       help="cascade: VAD -> Whisper -> LLM -> TTS; native: EnCodec tokens through a full-duplex speech LM "
                            "(default: cascade)")
    turns = serve.add_argument_group("turn-taking defaults (clients can change them with session.update)")
    defaults = TurnDetectionConfig()
    turns.add_argument("--silence-ms", type=int, default=defaults.silence_duration_ms,
                       help=f"pause that ends a turn (default: {defaults.silence_duration_ms})")
    turns.add_argument("--unfinished-silence-ms", type=int, default=defaults.unfinished_silence_ms,
                       help=f"pause that ends a turn whose words sound unfinished (default: {defaults.unfinished_silence_ms})")
    turns.add_argument("--unfinished-rule", choices=UNFINISHED_RULES, default=defaults.unfinished_rule,
                       help="when words sound unfinished: 'punctuation' (no final stop, or a word like 'and'/'that' even "
                            "after a stop) holds --unfinished-silence-ms; 'evidence' holds it only for a word like "
                            "'and'/'the' or a trailing comma, and --unpunctuated-silence-ms when only the final stop is "
                            "missing; 'llm' holds it for a word like 'and'/'the', or when the LLM finds a sentence end "
                            "after the words (final punctuation removed) less likely than --sentence-end-threshold "
                            "(default: %(default)s)")
    turns.add_argument("--sentence-end-threshold", type=float, default=defaults.sentence_end_threshold,
                       help="with --unfinished-rule llm: sentence-end probability below which a pause is held "
                            "(default: %(default)s)")
    turns.add_argument("--eagerness", choices=EAGERNESS,
                       help="turn detection is the Realtime API's semantic_vad at this eagerness: 'high' ends a clearly "
                            "finished sentence after 200 ms, 'low' waits 800 ms (1.5 s "
                            "for unfinished words), 'auto'/'medium' are the server_vad defaults; the other turn flags, "
                            "where they differ from their defaults, change that preset (default: server_vad)")
    turns.add_argument("--finished-silence-ms", type=int, default=defaults.finished_silence_ms,
                       help="with --unfinished-rule llm: pause that ends a turn whose words sound clearly finished (a "
                            "final stop from Whisper, and a sentence end at least --finished-threshold likely to the "
                            "LLM); 0: off, such turns wait --silence-ms like any other (default: %(default)s)")
    turns.add_argument("--finished-threshold", type=float, default=defaults.finished_threshold,
                       help="sentence-end probability from which --finished-silence-ms applies (default: %(default)s)")
    turns.add_argument("--heard-stop-threshold", type=float, default=defaults.heard_stop_threshold,
                       help="with --unfinished-rule llm: Whisper's own probability of the final stop it wrote, from which "
                            "--finished-silence-ms applies whatever the LLM's score (unless the LLM finds the words "
                            "unfinished); 0: off (default: %(default)s)")
    turns.add_argument("--heard-stop-overrule-threshold", type=float, default=defaults.heard_stop_overrule_threshold,
                       help="with --unfinished-rule llm: Whisper's probability of the final stop it wrote, from which "
                            "the LLM's finding the words unfinished no longer holds them: the turn ends after "
                            "--silence-ms; 0: off (default: %(default)s)")
    turns.add_argument("--unpunctuated-silence-ms", type=int, default=defaults.unpunctuated_silence_ms,
                       help="with --unfinished-rule evidence: pause that ends a turn whose transcript only lacks final "
                            "punctuation (default: %(default)s)")
    turns.add_argument("--end-after-judgment", action=argparse.BooleanOptionalAction, default=defaults.end_after_judgment,
                       help="a pause ends the turn no sooner than the speculative transcript is judged finished or not "
                            "(default: %(default)s)")
    turns.add_argument("--judge-by-words-when-llm-busy", action=argparse.BooleanOptionalAction,
                       default=defaults.judge_by_words_when_llm_busy,
                       help="when the LLM, serving other sessions, cannot start judging the words before the pause "
                            "reaches --silence-ms, judge them by the words alone (default: %(default)s)")
    turns.add_argument("--eager-ms", type=int, default=defaults.eager_after_ms,
                       help=f"pause after which the reply starts speculatively; 0: off (default: {defaults.eager_after_ms})")
    turns.add_argument("--first-clause-chars", type=int, default=GenerationSettings().first_clause_max_chars,
                       help="cut the reply's first clause for TTS by this many characters even without punctuation; "
                            "0: only at punctuation (default: %(default)s)")
    turns.add_argument("--first-clause-phrases", action=argparse.BooleanOptionalAction,
                       default=GenerationSettings.first_clause_phrases,
                       help="from 12 characters on, also end the first clause after the first word that does not lead "
                            "into the next ('I'm glad | you asked', never 'Here's a | revised') (default: %(default)s)")
    turns.add_argument("--reply-sentences", type=int, default=GenerationSettings.max_sentences,
                       help="under the default instructions, end a reply after this many whole sentences (a client's "
                            "own instructions lift the limit); 0: no limit (default: %(default)s)")
    turns.add_argument("--repeat-penalty", type=float, default=GenerationSettings.repeat_penalty,
                       help="the embedded LLM's penalty on repeating tokens; 1: none (default: %(default)s)")
    turns.add_argument("--first-audio-first", action=argparse.BooleanOptionalAction,
                       default=GenerationSettings.first_audio_first,
                       help="hold the embedded LLM from its first clause until TTS has the first audio, so the two do "
                            "not share the CPU for the sound the user waits for (default: %(default)s)")
    turns.add_argument("--synthesize-ahead", action=argparse.BooleanOptionalAction,
                       default=GenerationSettings.synthesize_ahead,
                       help="synthesize each clause of a reply as soon as the LLM has written it, not once the previous "
                            "clause's audio has been sent, so later clauses keep ahead of playback (default: %(default)s)")
    turns.add_argument("--cut-early-below-s", type=float, default=GenerationSettings.cut_early_below_s,
                       help="once a reply is playing, TTS has spoken every clause written, and less than this many "
                            "seconds of its audio are left, cut the next clause as early as the first (at a comma or "
                            "the end of a phrase), so playback does not run dry while the LLM writes a long sentence; "
                            "0: never (default: %(default)s)")
    turns.add_argument("--tts-deadlines", action=argparse.BooleanOptionalAction,
                       default=GenerationSettings.tts_deadlines,
                       help="tell TTS when each clause's audio is needed, so that Piper, shared by the sessions, decodes "
                            "the piece needed soonest first; without, clauses are served in the order they were asked for "
                            "(default: %(default)s)")
    turns.add_argument("--history-window", choices=["stable", "sliding"], default="stable",
                       help="trim old conversation half a window at a time, keeping the LLM's cached prompt "
                            "(stable, default), or one item at a time (sliding)")
    turns.add_argument("--llm-prewarm", action=argparse.BooleanOptionalAction, default=SessionConfig.llm_prewarm,
                       help="after each reply, evaluate the next prompt's system prompt and history on the LLM in the "
                            "background (embedded llama.cpp only; default: %(default)s)")
    turns.add_argument("--llm-prewarm-words", action=argparse.BooleanOptionalAction, default=SessionConfig.llm_prewarm_words,
                       help="with --llm-prewarm, also evaluate the user's words as the partial transcripts settle them, "
                            "while the user is still speaking (default: %(default)s)")
    turns.add_argument("--judge-in-reply", action=argparse.BooleanOptionalAction, default=SessionConfig.judge_in_reply,
                       help="with --unfinished-rule llm, judge the words before a pause in the speculative reply's own "
                            "prompt evaluation, so the verdict and the first token come from one decode (embedded "
                            "batched LLM only; default: %(default)s)")
    turns.add_argument("--settle-pauses", action=argparse.BooleanOptionalAction, default=SessionConfig.settle_pauses,
                       help="settle the words before a pause inside a turn once a later partial transcript agrees with "
                            "them, so Whisper's final pass transcribes only what follows: a long turn is answered "
                            "sooner, but the words just after such a pause are heard with less context (WER +0.01 on "
                            "the bench's clips; default: %(default)s)")
    turns.add_argument("--drop-partial-at-pause", action=argparse.BooleanOptionalAction,
                       default=SessionConfig.drop_partial_at_pause,
                       help="at a pause, drop the partial transcription in flight, whose audio the pause's own pass "
                            "covers, so that it does not run beside the reply's first token (default: %(default)s)")
    turns.add_argument("--min-speech-ms", type=int, default=defaults.min_speech_ms,
                       help=f"speech shorter than this neither starts a turn nor interrupts (default: {defaults.min_speech_ms})")
    _add_model_options(serve)
    _add_native_options(serve)
    serve.set_defaults(run=_serve)

    talk = commands.add_parser("talk", help="talk to a running server")
    talk.add_argument("--input", help="WAV/FLAC file to speak (any rate and channel count)")
    talk.add_argument("--output", help="where to write the assistant's reply audio (WAV)")
    talk.add_argument("--url", default=DEFAULT_URL, help=f"server websocket URL (default: {DEFAULT_URL})")
    talk.add_argument("--instructions", help="system prompt for this conversation")
    live = talk.add_argument_group("live microphone mode (without --input)")
    live.add_argument("--list-devices", action="store_true", help="list the audio devices and exit")
    live.add_argument("--input-device", help="microphone: index from --list-devices or part of its name (default: system default)")
    live.add_argument("--output-device", help="speaker: index from --list-devices or part of its name (default: system default)")
    live.add_argument("--no-aec", action="store_true", help="no echo cancellation (fine with headphones)")
    live.add_argument("--no-noise-suppression", action="store_true", help="no noise suppression on the microphone")
    live.add_argument("--half-duplex", action="store_true", help="mute the microphone while the assistant speaks (no barge-in)")
    live.add_argument("--push-to-talk", action="store_true", help="no voice detection: space starts your turn, space again sends it")
    talk.set_defaults(run=_talk)
    # Listed for --help; main() hands `voxloop bench ...` to voxloop.bench.cli before parsing.
    commands.add_parser("bench", add_help=False, help="measure voice-to-voice latency (voxloop bench --help)")
    commands.add_parser("train-native", add_help=False,
                        help="train the native path's speech LM on (user, reply) audio pairs (voxloop train-native --help)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:  # its options are its own; argparse would claim the leading ones
        from voxloop.bench.cli import main as bench_main

        return bench_main(argv[1:])
    if argv[:1] == ["train-native"]:  # likewise
        from voxloop.voice.train_native import main as train_native_main

        train_native_main(argv[1:])
        return 0
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
