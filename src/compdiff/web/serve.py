"""compdiff serve: a local web page to compose concepts and generate images (Gradio).

The web app's own sub-command (``add_parser`` / ``run``, as every compdiff.cli module has):
compdiff.__main__ adds it to the ``compdiff`` command, so the CLI never imports the web app nor the
web app the CLI. Bad input is an InputError (exit 2), as in the CLI."""
from __future__ import annotations

import argparse
import ipaddress
import sys
import time

from compdiff.devices import pick_device
from compdiff.errors import InputError
from compdiff.web.validate import Limits

DEFAULTS = Limits()


def _int_at_least(lo: int):
    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer >= {lo}, got {text!r}") from None
        if value < lo:
            raise argparse.ArgumentTypeError(f"must be an integer >= {lo}, got {value}")
        return value

    parse.__name__ = "int"
    return parse


def _port(text: str) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a port number 0..65535, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number 0..65535, got {value}")
    return value


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve", help="a local web page: type or click an expression, generate, see the images",
        description="Serve a web page (Gradio) on this machine: an expression box parsed as you type\n"
        "(tree, effective weights, errors with their column), one weight slider per concept, a canvas\n"
        "to click positions for the objects model, sampler settings, a Generate button with progress,\n"
        "the images with their seeds, and the 'compdiff sample' command that reproduces them.\n"
        "Serves the shipped world models, plus every --model; models load once, at start.\n"
        "Needs the extra: pip install 'compdiff[web]'.",
        epilog="""examples:
  compdiff serve                      # http://127.0.0.1:7860
  compdiff serve --model runs/objects32/model --port 8000
  compdiff serve --host 0.0.0.0       # reachable from the network (no login: trusted networks only)""",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", default=[], metavar="NAME_OR_DIR",
                   help="also serve this model: a shipped model's name or a model directory (a 'compdiff "
                   "train' output or a local diffusers pipeline); repeat for several. The page offers "
                   "only the models named here and the shipped ones")
    p.add_argument("--no-shipped", action="store_true", help="serve only the --model models")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=_port, default=7860, help="port (default 7860)")
    p.add_argument("--device", default="auto",
                   help="where the models run: auto (cuda if torch sees a GPU, else cpu), cpu, cuda, cuda:1, ...")
    g = p.add_argument_group("limits (per request)")
    g.add_argument("--max-n", type=_int_at_least(1), default=DEFAULTS.max_n,
                   help=f"most images per Generate (default {DEFAULTS.max_n})")
    g.add_argument("--max-steps", type=_int_at_least(1), default=DEFAULTS.max_steps,
                   help=f"most sampling steps (default {DEFAULTS.max_steps})")
    g.add_argument("--max-concepts", type=_int_at_least(1), default=DEFAULTS.max_concepts,
                   help=f"most concepts in an expression (default {DEFAULTS.max_concepts})")
    g.add_argument("--max-length", type=_int_at_least(1), default=DEFAULTS.max_length,
                   help=f"most characters in an expression (default {DEFAULTS.max_length})")
    g.add_argument("--max-candidates", type=_int_at_least(1), default=DEFAULTS.max_candidates,
                   help=f"most candidates per image under Selection (default {DEFAULTS.max_candidates}; each "
                   "costs one more sample)")
    g.add_argument("--queue-size", type=_int_at_least(1), default=DEFAULTS.queue_size,
                   help=f"most generations waiting; beyond it the page says busy, try again "
                   f"(default {DEFAULTS.queue_size}; one runs at a time)")
    p.set_defaults(func=run)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run(args: argparse.Namespace) -> int:
    from compdiff.web.store import ModelStore

    limits = Limits(max_n=args.max_n, max_steps=args.max_steps, max_concepts=args.max_concepts,
                    max_length=args.max_length, queue_size=args.queue_size, max_candidates=args.max_candidates)
    try:
        from compdiff.web.app import build_app, launch
    except ImportError as err:
        raise RuntimeError(f"compdiff serve needs Gradio ({err}); install it with: pip install 'compdiff[web]'") \
            from None
    device = pick_device(args.device)
    if args.no_shipped and not args.model:
        raise InputError("--no-shipped needs at least one --model")
    store = ModelStore(args.model, shipped=not args.no_shipped, device=device,
                       device_flag=None if args.device == "auto" else args.device)
    # weights load once per server, here, not per click; said once loaded, so that a model that fails
    # to load is the FIRST line on stderr (compdiff: error: ...), never after a "loading ..." line
    t0 = time.perf_counter()
    store.load_all()
    print(f"compdiff serve: loaded {', '.join(store.names())} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr,
          flush=True)
    demo = build_app(store, limits)
    try:
        url = launch(demo, limits, host=args.host, port=args.port)
    except OSError as err:
        why = "" if "Cannot find empty port" in str(err) else f" ({err})"
        raise InputError(f"cannot serve on {args.host}:{args.port}{why}: the port is in use or cannot be bound "
                         "there; pick another with --port") from None
    if not _loopback(args.host):
        print(f"compdiff serve: warning: bound to {args.host}, reachable from other machines; there is no "
              "login", file=sys.stderr, flush=True)
    print(f"compdiff serve: {url} (Ctrl-C stops)", flush=True)
    try:
        while demo.is_running:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        demo.close()
    return 0
