"""The live page of `python explain.py serve`: one model, and a local web page that shows it
choosing each token (the next-token distribution, attention, the logit lens, the embeddings).

The server is the standard library's ThreadingHTTPServer. Each request is one JSON object in
and one out; Generate streams JSON lines, one a token. The model runs under a lock, one call
at a time, so two tabs cannot mix their work. The page's three files are read from
gptkit/web/ once, at start, into a fixed table: no path a browser sends is ever opened.
A request the server cannot answer gets a 4xx status and {"error": "..."}, never a traceback.

Only its own page may use it: a request whose Host is not the address the server listens on
(a web site that points its own name at 127.0.0.1, "DNS rebinding") gets 403, as does a POST
from a page of another origin. A client that stalls is dropped after SOCKET_TIMEOUT seconds.
"""

import base64
import errno
import hashlib
import hmac
import ipaddress
import json
import os
import re
import sys
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs

import torch
from torch.nn import functional as F

from gptkit.data import CharCodec
from gptkit.inside import embedding_table, head_weights, label, logit_lens, map_tokens, nearest, pca_2d, trace
from gptkit.sampling import GREEDY_BELOW, TokenSampler, check_sampling, filtered_probs, token_label, utf8_guard
from gptkit.settings import UserError

WEB = Path(__file__).resolve().parent / "web"
PAGES = {  # URL path: (file in WEB, its content type); nothing else is served
    "/": ("index.html", "text/html; charset=utf-8"),
    "/page.js": ("page.js", "text/javascript; charset=utf-8"),
    "/page.css": ("page.css", "text/css; charset=utf-8"),
}
BARS = 20  # the likeliest next tokens the page draws as bars (the rest summed in one more)
CANDIDATES = 10  # the candidates kept for each drawn token, shown when it is hovered
GIVEN = 5  # the candidates kept for each token of the text, at temperature 1
LENS = 3  # the guesses kept for each cell of the logit lens
NEIGHBOURS = 10
MAX_BODY = 1 << 20  # bytes: a prompt of the longest context is far smaller
# Attention weights sent at once, 1 byte each: a small model's every layer (6 x 6 x 256 x 256 / 2 is 1.2M);
# past this (GPT-2 past ~340 tokens), only the layer the page shows.
ATTENTION_LIMIT = 1 << 24
MAX_GENERATE = 1000
MAX_STREAMS = 4  # Generate streams at once (each holds a KV cache); more are answered 503
SOCKET_TIMEOUT = 30  # seconds a client may stall, mid-request or not reading a stream, before it is dropped
# Only the page's own files run and style it (the favicon is an empty data: URL); no other page may frame it.
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
                               "frame-ancestors 'none'",
}


class BadRequest(Exception):
    """A request the server will not answer: its message goes back as {"error": ...} with status."""

    def __init__(self, message, status=400):
        super().__init__(message)
        self.status = status


# ----------------------------------------------------------------------------- the model's side

class Explorer:
    """One model and its codec, and what the page asks of them. Every model call holds the lock."""

    def __init__(self, model, codec, source, points=150):
        self.model, self.codec, self.source = model.eval(), codec, str(source)
        self.device = next(model.parameters()).device
        self.vocab_size = codec.vocab_size  # ids past it pad the model's vocabulary: never shown or drawn
        self.points = points
        self.lock = threading.Lock()
        self.key = os.urandom(16)  # signs the sampler states handed to the page (see sign)
        self.map = None  # the embedding map, made at its first request
        self.unit_table = None  # the embeddings normalised, made at the first neighbours request
        self.pieces = None  # each token's bytes, made when a token that is part of a character is named
        self.streams = threading.BoundedSemaphore(MAX_STREAMS)

    def info(self):
        c = self.model.config
        return {"source": self.source, "n_layer": c.n_layer, "n_head": c.n_head, "n_embd": c.n_embd,
                "block_size": c.block_size, "vocab_size": self.vocab_size,
                "codec": "characters" if isinstance(self.codec, CharCodec) else "BPE",
                "parameters": sum(p.numel() for p in self.model.parameters())}

    def token(self, token):
        """{label, text} of a token: label as explain.py's pictures show it (␣the, \\n), text as it
        reads in the text. A token that is part of a character (a byte-level BPE's byte) has text
        None, its id as label and its UTF-8 bytes in hex, which the page joins into whole characters."""
        text = self.codec.decode([token])
        if not token_label(token, text).startswith("#"):
            return {"label": label(self.codec, token, picture=True), "text": text}
        if self.pieces is None:  # the bytes of every token, made at the first part of a character asked for
            self.pieces = self.codec.raw_bytes()
        return {"label": label(self.codec, token, picture=True), "text": None, "bytes": self.pieces[token].hex()}

    def vocab(self, ids):
        return {str(i): self.token(i) for i in sorted(set(ids))}

    def prompt(self, body):
        """The ids a request names: "ids" (a list of token ids) or "text" (encoded); they must fit the context."""
        if "ids" in body:
            ids = body["ids"]
            if not isinstance(ids, list) or not all(is_int(i) for i in ids):
                raise BadRequest("ids must be a list of token ids (integers)")
            outside = [i for i in ids if not 0 <= i < self.vocab_size]
            if outside:
                raise BadRequest(f"token {outside[0]} is outside the vocabulary (ids 0 to {self.vocab_size - 1})")
        elif isinstance(body.get("text"), str):
            try:
                ids = self.codec.encode(body["text"])
            except UserError as e:  # the codec's own words, less its hint for the command line
                raise BadRequest(re.sub(r" \([^()]*--start[^()]*\)$", "", str(e))) from None
        else:
            raise BadRequest('give the prompt as "text" (a string) or "ids" (a list of token ids)')
        if not ids:
            raise BadRequest("the prompt is empty; type some text")
        if len(ids) > self.model.config.block_size:
            raise BadRequest(f"the prompt is {len(ids)} tokens, longer than the model's context "
                             f"({self.model.config.block_size}); shorten it")
        return ids

    def analyse(self, ids, temperature=1.0, top_k=None, top_p=None, layer=0):
        """Everything the page shows of the text ids: the next-token distribution, each token's
        probability and candidates, every head's attention weights (of every layer, or of layer
        alone where they would be too many) and the logit lens."""
        V, started = self.vocab_size, time.perf_counter()
        c = self.model.config
        layers = list(range(c.n_layer)) if c.n_layer * c.n_head * len(ids) ** 2 / 2 <= ATTENTION_LIMIT else [layer]
        idx = torch.tensor([ids], device=self.device)
        with self.lock:
            logits, streams, inputs = trace(self.model, idx)  # (T, V), (L + 1, T, C)
            weights = head_weights(self.model, inputs, layers).float().cpu()  # (len(layers), H, T, T)
            guesses = []
            for stream in streams:  # one depth at a time: GPT-2's (L + 1, T, 50257) would be large
                probs = F.softmax(logit_lens(self.model, stream)[:, :V].float(), dim=-1)
                guesses.append(probs.topk(min(LENS, V), dim=-1))
        model_ms = (time.perf_counter() - started) * 1000
        logits = logits[:, :V].float().cpu()
        last = logits[-1]
        order = last.sort(descending=True, stable=True)  # the page applies temperature, top-k, top-p to these
        bars = order.indices[:BARS].tolist()
        probs = filtered_probs(last[None], temperature, top_k, top_p)[0]
        before = F.softmax(logits[:-1], dim=-1)  # (T - 1, V): the distribution each later token came from
        given = before.gather(1, torch.tensor(ids[1:], dtype=torch.long)[:, None])[:, 0].tolist()
        top = before.topk(min(GIVEN, V), dim=-1)
        lens_ids = torch.stack([g.indices for g in guesses]).cpu()  # (L + 1, T, LENS)
        lens_probs = torch.stack([g.values for g in guesses]).cpu()
        # 1/255 steps (enough for a picture and 2 decimals); row i's weights 0..i only, none above the diagonal
        lower = torch.ones(len(ids), len(ids), dtype=torch.bool).tril()
        quantised = (weights[:, :, lower] * 255).round().to(torch.uint8)  # (len(layers), H, T (T + 1) / 2)
        return {
            "ids": ids,
            "given": [None] + [significant(p) for p in given],
            "candidates": [None] + [[[i, significant(p)] for i, p in zip(row_ids, row_p)]
                                    for row_ids, row_p in zip(top.indices.tolist(), top.values.tolist())],
            "next": {"ids": bars, "probs": [significant(p) for p in probs[bars].tolist()],
                     "rest": max(0.0, 1 - probs[bars].sum().item()),
                     "settings": {"temperature": temperature, "top_k": top_k, "top_p": top_p},
                     "logits": encode(order.values.numpy().astype("<f4"))},  # every token's, best first
            "attention": {"layers": layers, "heads": weights.size(1), "weights": encode(quantised.numpy())},
            "lens": {"depths": ["embeddings"] + [f"layer {d}" for d in range(1, len(guesses))],
                     "ids": lens_ids.tolist(), "probs": lens_probs.round(decimals=4).tolist()},
            "vocab": self.vocab(ids + bars + lens_ids.flatten().tolist() + top.indices.flatten().tolist()),
            "model_ms": round(model_ms, 1),
        }

    def draw(self, ids, count, temperature, top_k, top_p, seed, state=None):
        """Yield count tokens drawn after ids, each {id, prob, candidates, vocab, rng}, exactly as
        sample.py draws them with these settings and seed (its sampler, its generator, its KV cache).
        state: a sampler state this server gave (rng), to go on where an earlier draw stopped.
        prob and candidates are the distribution drawn from (greedy: at temperature 1, as
        sample.py's --show_probs shows it)."""
        generator = torch.Generator(device=self.device)
        if state is None:
            generator.manual_seed(seed)
        else:
            generator.set_state(self.unsign(state))
        choose = TokenSampler(temperature, top_k, top_p, [generator], vocab_limit=self.vocab_size,
                              utf8=utf8_guard(self.codec), prompt=[ids])
        steps = self.model.generate_stream(torch.tensor([ids], device=self.device), count, choose)
        try:
            for _ in range(count):
                with self.lock:
                    token, logits = next(steps)
                token = token.item()
                shown = temperature if temperature >= GREEDY_BELOW else 1.0  # greedy: shown at temperature 1
                probs = filtered_probs(logits[:, :self.vocab_size], shown, top_k, top_p)[0].cpu()
                top = probs.topk(min(CANDIDATES, self.vocab_size))
                yield {"id": token, "prob": significant(probs[token].item()),
                       "candidates": [[i, significant(p)] for i, p in zip(top.indices.tolist(), top.values.tolist())],
                       "vocab": self.vocab([token] + top.indices.tolist()), "rng": self.sign(generator.get_state())}
                if token == self.codec.eot_token:
                    return
        finally:
            with self.lock:  # its own finally puts the model back in eval mode: a model call of sorts
                steps.close()

    def sign(self, state):
        """A generator's state as text the page hands back to go on drawing: base64, then an HMAC,
        so that only states this server made are ever loaded into a generator."""
        data = state.numpy().tobytes()
        return encode(data) + "." + hmac.new(self.key, data, hashlib.sha256).hexdigest()

    def unsign(self, text):
        data, _, mac = text.partition(".") if isinstance(text, str) else ("", "", "")
        try:
            data = base64.b64decode(data, validate=True)
        except ValueError:
            data = b""
        digest = hmac.new(self.key, data, hashlib.sha256).hexdigest()
        if not data or not hmac.compare_digest(mac.encode(), digest.encode()):
            raise BadRequest("rng is not a sampler state this server gave (it changes when the server "
                             "restarts); leave it out to start from the seed")
        return torch.frombuffer(bytearray(data), dtype=torch.uint8)

    def embeddings(self):
        """The 2-D map of explain.py embeddings: the tokens map_tokens chooses, projected (PCA)."""
        if self.map is None:
            shown = map_tokens(self.codec, self.points)
            points, variance = pca_2d(embedding_table(self.model, self.codec)[shown])
            self.map = {"ids": shown, "points": points.round(decimals=4).tolist(), "variance": variance,
                        "vocab": self.vocab(shown)}
        return self.map

    def neighbours(self, token):
        with self.lock:
            if self.unit_table is None:  # the embeddings at unit length, made once: a click is one matmul
                self.unit_table = F.normalize(embedding_table(self.model, self.codec), dim=-1)
            close = nearest(self.unit_table, self.unit_table[token], NEIGHBOURS, exclude={token})
        return {"id": token, "neighbours": [[i, round(s, 4)] for i, s in close],
                "vocab": self.vocab([token] + [i for i, _ in close])}


def significant(p):
    """A probability to 6 significant digits: a BPE model's small ones (2e-5) keep theirs in JSON."""
    return float(f"{p:.6g}")


def is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def encode(data):
    """bytes (or an array's) as base64 text, the page's typed arrays in JSON."""
    return base64.b64encode(data if isinstance(data, bytes) else data.tobytes()).decode("ascii")


def sampling_settings(body):
    """(temperature, top_k, top_p) of a request, checked as sample.py checks them."""
    temperature, top_k, top_p = body.get("temperature", 1.0), body.get("top_k"), body.get("top_p")
    if not isinstance(temperature, (int, float)) or isinstance(temperature, bool):
        raise BadRequest("temperature must be a number")
    if top_k is not None and not is_int(top_k):
        raise BadRequest("top_k must be an integer or null")
    if top_p is not None and (not isinstance(top_p, (int, float)) or isinstance(top_p, bool)):
        raise BadRequest("top_p must be a number or null")
    try:
        check_sampling(float(temperature), top_k, float(top_p) if top_p is not None else None)
    except (ValueError, OverflowError) as e:  # OverflowError: an integer too large for a float
        raise BadRequest(str(e) if isinstance(e, ValueError) else "temperature and top_p must be numbers within "
                         "a float's range") from None
    return float(temperature), top_k, None if top_p is None else float(top_p)


def whole(body, name, low, high, default=None):
    value = body.get(name, default)
    if not is_int(value) or not low <= value <= high:
        raise BadRequest(f"{name} must be an integer from {low} to {high}, got {json.dumps(value)}")
    return value


# ----------------------------------------------------------------------------- the HTTP side

class PageHandler(BaseHTTPRequestHandler):
    """The routes: the page's files, and the JSON API under /api/. make_server sets explorer and pages."""

    explorer: Explorer
    pages: dict
    server_version = "gpt-train"
    timeout = SOCKET_TIMEOUT  # the socket's: a stalled read or write raises TimeoutError, and the connection ends

    def log_message(self, format, *args):
        pass  # the page asks at every pause in typing: a line each would bury the URL

    def refused(self, post=False):
        """Send 403 and return True unless the request is the page's own: its Host names this server
        (as the page's address does), and a POST's Origin, where the browser sends one, is this server."""
        host = self.headers.get("Host", "")
        if not self.server.serves(host):
            self.fail(403, f"Host {host[:100]!r} is not this server's address; open the page at "
                           f"http://127.0.0.1:{self.server.server_address[1]}/")
            return True
        origin = self.headers.get("Origin")
        if post and origin is not None and origin != f"http://{host}":
            self.fail(403, f"a page of another site ({origin[:100]}) may not use this server")
            return True
        return False

    def do_HEAD(self):
        """As GET for the page's files, without the body (send leaves it out for HEAD)."""
        path = self.path.partition("?")[0]
        if self.refused():
            return
        if path in self.pages:
            self.send(200, *self.pages[path])
        else:
            self.fail(404, f"nothing here: {path[:100]}; the page is at /")

    def do_GET(self):
        path, _, query = self.path.partition("?")
        if self.refused():
            return
        if path in self.pages:
            self.send(200, *self.pages[path])
        elif path == "/api/model":
            self.answer(self.explorer.info)
        elif path == "/api/embeddings":
            self.answer(self.explorer.embeddings)
        elif path == "/api/neighbours":
            self.answer(lambda: self.explorer.neighbours(self.token_query(query)))
        else:
            self.fail(404, f"nothing here: {path[:100]}; the page is at /")

    def do_POST(self):
        routes = {"/api/analyse": self.analyse, "/api/sample": self.sample, "/api/generate": self.generate}
        path = self.path.partition("?")[0]
        if self.refused(post=True):
            self.close_connection = True  # its body, unread, must not be taken for the next request
            return
        if path not in routes:
            self.fail(404, f"no such request: POST {path[:100]}")
            return
        self.answer(lambda: routes[path](self.body()))

    def analyse(self, body):
        layer = whole(body, "layer", 0, self.explorer.model.config.n_layer - 1, default=0)
        return self.explorer.analyse(self.explorer.prompt(body), *sampling_settings(body), layer)

    def sample(self, body):
        """One token drawn after the text, and the analysis of the text it ends."""
        ids, settings, seed, state = self.draw_request(body)
        if len(ids) >= self.explorer.model.config.block_size:
            raise BadRequest(f"the text fills the model's context ({len(ids)} tokens); shorten it to draw more")
        layer = whole(body, "layer", 0, self.explorer.model.config.n_layer - 1, default=0)
        drawn = next(self.explorer.draw(ids, 1, *settings, seed, state))
        return {"drawn": drawn, "analysis": self.explorer.analyse(ids + [drawn["id"]], *settings, layer)}

    def generate(self, body):
        """Up to n tokens drawn after the text, streamed as JSON lines as they come; the last line
        says why it stopped. The text stays within the context, which the page shows whole."""
        ids, settings, seed, state = self.draw_request(body)
        room = self.explorer.model.config.block_size - len(ids)
        count = whole(body, "n", 1, MAX_GENERATE)
        if room < 1:
            raise BadRequest(f"the text fills the model's context ({len(ids)} tokens); shorten it to draw more")
        if not self.explorer.streams.acquire(blocking=False):
            raise BadRequest(f"{MAX_STREAMS} texts are being generated already; stop one, or try again when "
                             f"one ends", 503)
        try:
            return self.stream(ids, settings, seed, state, count, room)
        finally:
            self.explorer.streams.release()

    def stream(self, ids, settings, seed, state, count, room):
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Cache-Control", "no-store")
        for name, value in SECURITY_HEADERS.items():
            self.send_header(name, value)
        self.end_headers()
        drawn = 0
        try:
            for token in self.explorer.draw(ids, min(count, room), *settings, seed, state):
                self.wfile.write(json.dumps({"drawn": token}).encode() + b"\n")
                drawn += 1
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True
            return None  # Stop pressed, the tab closed, or a client that stopped reading: the draw ends here
        except Exception as e:  # a bug of ours, after the 200 went: say so on the stream
            traceback.print_exc()
            self.wfile.write(json.dumps({"error": f"the server failed ({type(e).__name__}: {e}); it is still up"})
                             .encode() + b"\n")
            return None
        if drawn and token["id"] == self.explorer.codec.eot_token:
            stopped = "the model ended the text (<|endoftext|>)"
        elif drawn < count:
            stopped = f"the text reached the model's context ({self.explorer.model.config.block_size} tokens)"
        else:
            stopped = None
        self.wfile.write(json.dumps({"done": drawn, "stopped": stopped}).encode() + b"\n")
        return None

    def draw_request(self, body):
        ids = self.explorer.prompt(body)
        settings = sampling_settings(body)
        seed = whole(body, "seed", 0, 2**63 - 1, default=1337)
        state = body.get("rng")
        if state is not None:
            self.explorer.unsign(state)  # checked now, while a 400 can still be sent
        return ids, settings, seed, state

    def token_query(self, query):
        values = parse_qs(query).get("token", [])
        if len(values) != 1 or not re.fullmatch(r"\d{1,9}", values[0]):
            raise BadRequest("name one token by its id: /api/neighbours?token=ID")
        token = int(values[0])
        if token >= self.explorer.vocab_size:
            raise BadRequest(f"token {token} is outside the vocabulary (ids 0 to {self.explorer.vocab_size - 1})")
        return token

    def body(self):
        """The request's JSON object."""
        if self.headers.get_content_type() != "application/json":
            # also keeps other web sites out: a browser asks before sending JSON across origins
            raise BadRequest("send the request as JSON (Content-Type: application/json)", 415)
        length = self.headers.get("Content-Length")
        if length is None:
            raise BadRequest("the request has no Content-Length", 411)
        if not re.fullmatch(r"[0-9]{1,12}", length.strip()):  # ASCII digits only: '²' is a digit to str.isdigit
            self.close_connection = True
            raise BadRequest(f"Content-Length must be a number of bytes, got {length[:20]!r}")
        if int(length) > MAX_BODY:
            self.close_connection = True
            raise BadRequest(f"the request is {int(length):,} bytes; the most is {MAX_BODY:,}", 413)
        try:
            data = self.rfile.read(int(length))
        except TimeoutError:
            self.close_connection = True
            raise BadRequest(f"the request's body did not arrive within {SOCKET_TIMEOUT} s", 408) from None
        if len(data) < int(length):
            self.close_connection = True
            raise BadRequest("the request's body is shorter than its Content-Length")
        try:
            body = json.loads(data)
        except (ValueError, UnicodeDecodeError) as e:
            raise BadRequest(f"the request is not JSON ({str(e)[:100]})") from None
        except RecursionError:
            raise BadRequest("the request's JSON is nested too deeply") from None
        if not isinstance(body, dict):
            raise BadRequest("the request must be a JSON object")
        return body

    def answer(self, work):
        """Run work() and send what it returns as JSON (None: it answered itself)."""
        try:
            result = work()
            body = None if result is None else json.dumps(result, allow_nan=False).encode()
        except BadRequest as e:
            self.fail(e.status, str(e))
        except (BrokenPipeError, ConnectionResetError):
            pass  # the page went away (a tab closed, Stop pressed): nothing to answer
        except Exception as e:  # a bug of ours: say so, and keep serving
            traceback.print_exc()
            self.fail(500, f"the server failed on this request ({type(e).__name__}: {e}); it is still up")
        else:
            if body is not None:
                self.send(200, body, "application/json")

    def fail(self, status, message):
        if len(message) > 500:  # an error names what is wrong; it need not repeat a whole request
            message = message[:500] + "..."
        self.send(status, json.dumps({"error": message}).encode(), "application/json")

    def send_error(self, code, message=None, explain=None):
        """The standard library's own errors (a malformed request line, an unknown method) as JSON too."""
        self.close_connection = True
        self.fail(code, message or self.responses.get(code, ("error",))[0])

    def send(self, status, body, content_type):
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            for name, value in SECURITY_HEADERS.items():
                self.send_header(name, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True


class PageServer(ThreadingHTTPServer):
    daemon_threads = True  # a page still streaming does not hold the program open at Ctrl-C
    request_queue_size = 64  # connections waiting to be accepted (the standard library's 5 turns a busy page away)

    def serves(self, host_header):
        """Whether a request's Host header names this server: a loopback name or the host it was
        started on, at its port. Started on every address (0.0.0.0, ::), any IP address at its
        port will do: a site that rebinds its own name to this machine sends that name, not an address."""
        match = re.fullmatch(r"(\[[0-9a-fA-F:.]+\]|[^:\[\]]+)(?::([0-9]+))?", host_header)
        if not match or (match.group(2) or "80") != str(self.server_address[1]):
            return False
        host = match.group(1).lower()
        if host in ("127.0.0.1", "localhost", "[::1]", self.host.lower(), f"[{self.host.lower()}]"):
            return True
        if self.host in ("0.0.0.0", "::", ""):
            try:
                ipaddress.ip_address(host.strip("[]"))
                return True
            except ValueError:
                return False
        return False


def make_server(explorer, host="127.0.0.1", port=8000):
    """A ThreadingHTTPServer for explorer on host:port (0: any free port), not yet serving."""
    pages = {path: ((WEB / name).read_bytes(), kind) for path, (name, kind) in PAGES.items()}
    handler = type("Handler", (PageHandler,), {"explorer": explorer, "pages": pages})
    try:
        server = PageServer((host, port), handler)
        server.host = host
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise UserError(f"port {port} on {host} is in use (is a page already served there?); "
                            f"choose another with --port=N") from None
        raise UserError(f"cannot listen on {host}:{port} ({e.strerror or e}); choose another --host or --port") from None
    return server


def is_loopback(host):
    """Whether host is an address of this machine alone (127.x, ::1, localhost)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def serve(explorer, host="127.0.0.1", port=8000, out=None):
    """Serve the page until Ctrl-C (which run_cli turns into a quiet exit)."""
    out = out or sys.stdout
    server = make_server(explorer, host, port)
    try:
        c = explorer.model.config
        print(f"{explorer.source}: {c.n_layer} layers, {c.n_head} heads, {c.n_embd} wide, context "
              f"{c.block_size}, {explorer.vocab_size:,} tokens", file=out)
        if not is_loopback(host):
            print(f"warning: --host={host} serves the page beyond this machine: anyone who can reach it on the "
                  f"network can use the model and read its checkpoint's path", file=out)
        print(f"serving the page at http://{host}:{server.server_address[1]}/  (Ctrl-C to stop)", file=out, flush=True)
        server.serve_forever()
    finally:
        server.server_close()
