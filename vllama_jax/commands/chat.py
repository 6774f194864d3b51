"""`vllama-jax chat --model DIR [--video F | --image F] [--audio F | --av] ["question"]`: streams the answer.

Without a question it is interactive: one question per line, the history kept (multi-turn), empty line
or Ctrl-D to quit.
"""
import sys

from vllama_jax.commands.flags import add_model_flags, load_model

HELP = "ask a VideoLLaMA 2 checkpoint about a video / image / audio file (streams the answer)"


def add_arguments(p):
    add_model_flags(p)
    p.add_argument("--video", help="video file (mp4, mkv, webm, avi, gif) or a folder of frames")
    p.add_argument("--image", help="image file")
    p.add_argument("--audio", help="audio file (wav, mp3, flac, or a video's sound track)")
    p.add_argument("--av", action="store_true", help="with --video: also listen to the video's own sound track")
    p.add_argument("--start", type=float, help="video start (s)")
    p.add_argument("--end", type=float, help="video end (s)")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("question", nargs="?", help="the question (interactive when left out)")


def main(args) -> int:
    model = load_model(args)
    audio = True if args.av else args.audio
    session = model.new_chat(video=args.video, image=args.image, audio=audio, start=args.start, end=args.end)
    gen = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
               top_k=args.top_k, seed=args.seed)

    def emit(text):
        sys.stdout.write(text)
        sys.stdout.flush()

    questions = [args.question] if args.question else None
    while True:
        if questions is not None:
            if not questions:
                return 0
            q = questions.pop(0)
        else:
            try:
                q = input("you> ").strip()
            except EOFError:
                return 0
            if not q:
                return 0
            sys.stdout.write("assistant> ")
        session.ask(q, stream=emit, **gen)
        sys.stdout.write("\n")
