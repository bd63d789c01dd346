"""The `voxloop` command line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from rich.console import Console

from voxloop.client.realtime_client import DEFAULT_URL

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("models (defaults: the embedded models that ship as packages)")
    group.add_argument("--asr-model", help="faster-whisper model name or CTranslate2 directory (default: bundled tiny.en)")
    group.add_argument("--asr-device", default="cpu", help="cpu or cuda (default: cpu)")
    group.add_argument("--asr-compute-type", default="int8", help="CTranslate2 compute type (default: int8)")
    group.add_argument("--llm-gguf", help="path to a GGUF chat model (default: bundled SmolLM2-135M-Instruct)")
    group.add_argument("--llm-url", help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1 (vLLM, llama.cpp server, Ollama)")
    group.add_argument("--llm-model", default="default", help="model name to send to --llm-url")
    group.add_argument("--llm-api-key-env", default="VOXLOOP_LLM_API_KEY", help="environment variable holding the --llm-url API key")
    group.add_argument("--llm-gpu-layers", type=int, default=0, help="llama.cpp layers to offload to the GPU (-1: all)")
    group.add_argument("--tts", default="piper", choices=["piper"], help="TTS backend (default: piper)")
    group.add_argument("--piper-voice", help="path to a Piper voice .onnx (its .onnx.json beside it; default: bundled voice)")
    group.add_argument("--threads", type=int, default=0, help="CPU threads per model (default: all cores)")


def _model_options(args: argparse.Namespace):
    from voxloop.voice.models import ModelOptions

    return ModelOptions(asr_model=args.asr_model, asr_device=args.asr_device, asr_compute_type=args.asr_compute_type,
                        llm_gguf=args.llm_gguf, llm_url=args.llm_url, llm_model=args.llm_model,
                        llm_api_key_env=args.llm_api_key_env, llm_gpu_layers=args.llm_gpu_layers, tts=args.tts,
                        piper_voice=args.piper_voice, threads=args.threads)


def _serve(args: argparse.Namespace) -> int:
    console = Console(stderr=True)
    if args.host not in LOOPBACK and not args.allow_remote:
        console.print(f"[bold red]refusing to listen on {args.host}: that exposes the server beyond this machine. "
                      "Pass --allow-remote if that is what you want.[/]")
        return 2
    from voxloop.streaming.server import VoxloopServer
    from voxloop.voice.errors import ModelNotFoundError
    from voxloop.voice.models import load_cascade
    from voxloop.voice.session import VoiceSession

    try:
        models = load_cascade(_model_options(args), console)
    except ModelNotFoundError as exc:
        console.print(f"[bold red]model not found:[/] {exc}")
        return 2

    async def serve_forever() -> None:
        with console.status("warming up the models"):
            await models.warm_up()
        server = VoxloopServer(lambda emit: VoiceSession(models, emit), model_name=f"voxloop-cascade/{models.llm.name}",
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
    from voxloop.client.talk import run_talk

    if not args.input:
        Console(stderr=True).print("[bold red]--input is required (live microphone mode is not built yet)[/]")
        return 2
    return run_talk(args.input, args.output, args.url, args.instructions)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="voxloop", description="Real-time duplex voice assistant.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what the server does")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the Realtime-compatible voice server")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8765, help="port (default: 8765)")
    serve.add_argument("--allow-remote", action="store_true", help="allow listening on a non-loopback address")
    _add_model_options(serve)
    serve.set_defaults(run=_serve)

    talk = commands.add_parser("talk", help="talk to a running server")
    talk.add_argument("--input", help="WAV/FLAC file to speak (any rate and channel count)")
    talk.add_argument("--output", help="where to write the assistant's reply audio (WAV)")
    talk.add_argument("--url", default=DEFAULT_URL, help=f"server websocket URL (default: {DEFAULT_URL})")
    talk.add_argument("--instructions", help="system prompt for this conversation")
    talk.set_defaults(run=_talk)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
