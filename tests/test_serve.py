"""Tests of explain.py serve through its HTTP API: the next-token distribution the page shows is
the sampler's, after its filters; greedy text from the page is sample.py's; the same seed gives
the same text; attention, the lens and the embedding map are explain.py's; every bad request
gets a 4xx and {"error": ...} and the server goes on answering; only the page's files are served;
a mistake at start is one line and exit status 2."""

import base64
import io
import json
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

import explain
import sample
from gptkit import inside, serve
from conftest import train_tiny_char_model
from gptkit.hf import export_hf
from gptkit.sampling import load_chosen, sampling_probs
from gptkit.serve import Explorer
from gptkit.settings import load_settings
from model import GPT, GPTConfig

ROOT = Path(__file__).resolve().parent.parent
TEXT = "ROMEO:\nBut soft, what light through yonder window breaks?\nIt is the east.\n\n" * 30
PROMPT = "ROMEO:\nBut"
BLOCK = 32


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny character model trained for a few steps, as train.py writes it: its out_dir."""
    return train_tiny_char_model(tmp_path_factory.mktemp("serve"), TEXT, block_size=BLOCK)


@pytest.fixture(scope="module")
def explorer(trained):
    path, model, codec = load_chosen("resume", trained, None, "cpu")
    return Explorer(model, codec, path)


@pytest.fixture
def url(explorer, serve_page):
    return serve_page(explorer)


def request(url, path, body=None, raw=None, content_type="application/json", method=None):
    """(status, the answer: JSON decoded, else bytes)"""
    data = raw if raw is not None else None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": content_type} if data is not None else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url + path, data, headers, method=method), timeout=60) as r:
            status, content, kind = r.status, r.read(), r.headers.get_content_type()
    except urllib.error.HTTPError as e:
        status, content, kind = e.code, e.read(), e.headers.get_content_type()
    return status, json.loads(content) if kind == "application/json" else content


def post(url, path, body):
    status, answer = request(url, path, body)
    assert status == 200, answer
    return answer


def generated(url, body):
    """The token ids /api/generate streams, and its last line."""
    status, content = request(url, "/api/generate", body)
    assert status == 200, content
    lines = [json.loads(line) for line in content.decode().splitlines()]
    return [line["drawn"]["id"] for line in lines[:-1]], lines[-1]


def sent_attention(answer, layers, heads):
    """The attention weights an analysis sent (layers, heads, T, T): row i's weights 0..i, in 1/255 steps."""
    T = len(answer["ids"])
    sent = torch.frombuffer(bytearray(base64.b64decode(answer["attention"]["weights"])), dtype=torch.uint8)
    weights = torch.zeros(layers, heads, T, T)
    weights[:, :, torch.ones(T, T, dtype=torch.bool).tril()] = sent.float().view(layers, heads, -1) / 255
    return weights


def model_logits(explorer, ids):
    with torch.no_grad():
        return explorer.model(torch.tensor([ids]))[0][0, -1, :explorer.vocab_size]


# ----------------------------------------------------------------------------- the page's files

def test_the_page_and_only_its_files_are_served(url):
    status, html = request(url, "/")
    assert status == 200 and b'<script src="/page.js">' in html and b'href="/page.css"' in html
    for path in ("/page.js", "/page.css"):
        assert request(url, path)[0] == 200
    # no path from the browser is opened: the files are a fixed table, not the folder
    for path in ("/index.html", "/web/page.js", "/gptkit/web/page.js", "/../model.py", "/page.js/..", "/%2e%2e/model.py"):
        status, answer = request(url, path)
        assert status == 404 and "error" in answer
    assert b"http://" not in html and b"https://" not in html  # nothing from the internet: no CDN


# ----------------------------------------------------------------------------- the distribution

@pytest.mark.parametrize("settings", [{}, {"temperature": 0.5, "top_k": 3}, {"temperature": 2.0, "top_p": 0.5},
                                      {"temperature": 1.0, "top_k": 5, "top_p": 0.8}, {"temperature": 0}])
def test_the_distribution_sums_to_one_after_the_filters(url, explorer, settings):
    answer = post(url, "/api/analyse", {"text": PROMPT, **settings})
    ids = explorer.codec.encode(PROMPT)
    assert answer["ids"] == ids
    nxt = answer["next"]
    assert sum(nxt["probs"]) + nxt["rest"] == pytest.approx(1, abs=1e-4)
    logits = model_logits(explorer, ids)
    expected = sampling_probs(logits[None], settings.get("temperature", 1.0), settings.get("top_k"),
                              settings.get("top_p"))[0]
    assert nxt["ids"] == logits.argsort(descending=True, stable=True)[:20].tolist()
    torch.testing.assert_close(torch.tensor(nxt["probs"]), expected[nxt["ids"]], atol=1e-5, rtol=0)
    if settings.get("top_k") and not settings.get("top_p"):
        assert sum(p > 0 for p in nxt["probs"]) == settings["top_k"]
    # every token's logit, best first, for the page to filter as the sliders move
    sent = torch.frombuffer(bytearray(base64.b64decode(nxt["logits"])), dtype=torch.float32)
    torch.testing.assert_close(sent, logits.sort(descending=True).values, atol=1e-5, rtol=1e-5)


def test_each_tokens_probability_and_candidates_are_the_models(url, explorer):
    answer = post(url, "/api/analyse", {"text": PROMPT})
    ids = answer["ids"]
    with torch.no_grad():
        probs = F.softmax(explorer.model(torch.tensor([ids]))[0][0, :-1, :explorer.vocab_size], dim=-1)
    assert answer["given"][0] is None and answer["candidates"][0] is None
    for t in range(1, len(ids)):
        assert answer["given"][t] == pytest.approx(probs[t - 1, ids[t]].item(), abs=1e-5)
        assert [i for i, _ in answer["candidates"][t]] == probs[t - 1].topk(5).indices.tolist()
    assert {str(i) for i in ids} <= set(answer["vocab"])
    assert answer["vocab"][str(ids[-1])] == {"label": "t", "text": "t"}
    assert answer["vocab"][str(ids[6])] == {"label": "\\n", "text": "\n"}


def test_attention_and_the_lens_are_explains(url, explorer):
    answer = post(url, "/api/analyse", {"text": PROMPT})
    idx = torch.tensor([answer["ids"]])
    weights = sent_attention(answer, explorer.model.config.n_layer, explorer.model.config.n_head)
    torch.testing.assert_close(weights, inside.attention_weights(explorer.model, idx), atol=0.5 / 255 + 1e-6, rtol=0)
    _, streams, _ = inside.trace(explorer.model, idx)
    lens = F.softmax(inside.logit_lens(explorer.model, streams)[..., :explorer.vocab_size], dim=-1).topk(3)
    assert answer["lens"]["ids"] == lens.indices.tolist()
    torch.testing.assert_close(torch.tensor(answer["lens"]["probs"]), lens.values, atol=1e-4, rtol=0)
    assert answer["lens"]["depths"] == ["embeddings", "layer 1", "layer 2"]
    assert answer["attention"]["layers"] == [0, 1]


def test_where_every_layers_attention_is_too_much_the_layer_shown_comes_alone(url, explorer, monkeypatch):
    monkeypatch.setattr(serve, "ATTENTION_LIMIT", 0)  # as for GPT-2 and a long text
    answer = post(url, "/api/analyse", {"text": PROMPT, "layer": 1})
    idx = torch.tensor([answer["ids"]])
    assert answer["attention"]["layers"] == [1]
    weights = sent_attention(answer, 1, explorer.model.config.n_head)
    torch.testing.assert_close(weights, inside.attention_weights(explorer.model, idx)[1:], atol=0.5 / 255 + 1e-6, rtol=0)
    assert request(url, "/api/analyse", {"text": PROMPT, "layer": 2})[0] == 400  # 2 layers: 0 and 1


def test_the_embedding_map_and_neighbours_are_explains(url, explorer):
    answer = request(url, "/api/embeddings")[1]
    table = inside.embedding_table(explorer.model, explorer.codec)
    assert answer["ids"] == inside.map_tokens(explorer.codec, 150)
    points, variance = inside.pca_2d(table[answer["ids"]])
    torch.testing.assert_close(torch.tensor(answer["points"]), points, atol=1e-4, rtol=0)
    token = explorer.codec.encode("e")[0]
    found = request(url, f"/api/neighbours?token={token}")[1]
    assert [i for i, _ in found["neighbours"]] == [i for i, _ in inside.nearest(table, table[token], 10, {token})]


# ----------------------------------------------------------------------------- drawing tokens

def sample_py(trained, prompt, count, **settings):
    config = load_settings(sample.SampleConfig, [f"--out_dir={trained}", f"--start={prompt}", "--device=cpu",
                                                 "--dtype=float32", f"--max_new_tokens={count}", "--show_probs=0"]
                           + [f"--{k}={v}" for k, v in settings.items()])
    return sample.sample(config, out=io.StringIO())[0]


def test_greedy_text_from_the_page_is_sample_pys(url, explorer, trained):
    count = BLOCK - len(PROMPT)
    tokens, last = generated(url, {"text": PROMPT, "n": count, "temperature": 0})
    assert last == {"done": count, "stopped": None}
    assert explorer.codec.decode(tokens) == sample_py(trained, PROMPT, count, temperature=0)
    ids, rng = explorer.codec.encode(PROMPT), None  # Sample, pressed again and again: the same text
    for _ in range(count):
        answer = post(url, "/api/sample", {"ids": ids, "temperature": 0, "rng": rng})
        ids, rng = ids + [answer["drawn"]["id"]], answer["drawn"]["rng"]
        assert answer["analysis"]["ids"] == ids
    assert ids[len(PROMPT):] == tokens


def test_the_same_seed_gives_the_same_text(url, explorer, trained):
    body = {"text": PROMPT, "n": 12, "temperature": 1.5, "top_p": 0.95, "seed": 7}
    first, _ = generated(url, body)
    assert generated(url, body)[0] == first
    assert generated(url, {**body, "seed": 8})[0] != first
    # as sample.py draws with that seed, and the same when drawn a few tokens at a time
    assert explorer.codec.decode(first) == sample_py(trained, PROMPT, 12, temperature=1.5, top_p=0.95, seed=7)
    ids, rng = explorer.codec.encode(PROMPT), None
    for count in (1, 4, 7):
        status, content = request(url, "/api/generate", {**body, "ids": ids, "rng": rng, "n": count})
        lines = [json.loads(line) for line in content.decode().splitlines()]
        ids, rng = ids + [line["drawn"]["id"] for line in lines[:-1]], lines[-2]["drawn"]["rng"]
    assert ids[len(PROMPT):] == first


def test_a_drawn_token_comes_with_the_distribution_it_was_drawn_from(url, explorer):
    answer = post(url, "/api/sample", {"text": PROMPT, "temperature": 0.7, "top_k": 4, "seed": 3})
    drawn = answer["drawn"]
    probs = sampling_probs(model_logits(explorer, explorer.codec.encode(PROMPT))[None], 0.7, 4)[0]
    assert drawn["prob"] == pytest.approx(probs[drawn["id"]].item(), abs=1e-5)
    assert [i for i, _ in drawn["candidates"]][:4] == probs.topk(4).indices.tolist()
    assert sum(p for _, p in drawn["candidates"]) == pytest.approx(1, abs=1e-5)


def test_generate_stops_at_the_context(url, explorer):
    tokens, last = generated(url, {"text": PROMPT, "n": 100, "temperature": 0})
    assert len(tokens) == BLOCK - len(PROMPT) and last["done"] == len(tokens)
    assert "context" in last["stopped"]
    status, answer = request(url, "/api/sample", {"ids": explorer.codec.encode(PROMPT) + tokens})
    assert status == 400 and "fills the model's context" in answer["error"]


# ----------------------------------------------------------------------------- bad requests

BAD = [  # (path, body or raw bytes, status, a fragment of the message)
    ("/api/analyse", {"text": ""}, 400, "the prompt is empty"),
    ("/api/analyse", {"text": "R" * (BLOCK + 1)}, 400, f"longer than the model's context ({BLOCK})"),
    ("/api/analyse", {"text": "ROMEO@"}, 400, "outside the model's vocabulary: '@'"),
    ("/api/analyse", {"ids": [0, 999]}, 400, "token 999 is outside the vocabulary"),
    ("/api/analyse", {"ids": [0, -1]}, 400, "token -1 is outside the vocabulary"),
    ("/api/analyse", {"ids": "abc"}, 400, "list of token ids"),
    ("/api/analyse", {"ids": [1.5]}, 400, "list of token ids"),
    ("/api/analyse", {}, 400, 'give the prompt as "text"'),
    ("/api/analyse", b"{not json", 400, "not JSON"),
    ("/api/analyse", b"[1, 2]", 400, "a JSON object"),
    ("/api/analyse", b"\xff\xfe", 400, "not JSON"),
    ("/api/analyse", {"text": "R", "temperature": -1}, 400, "temperature must be"),
    ("/api/analyse", {"text": "R", "temperature": "hot"}, 400, "temperature must be a number"),
    ("/api/analyse", {"text": "R", "top_k": 0}, 400, "top_k must be at least 1"),
    ("/api/analyse", {"text": "R", "top_p": 1.5}, 400, "top_p must be in (0, 1]"),
    ("/api/sample", {"text": "R", "seed": -1}, 400, "seed must be an integer"),
    ("/api/sample", {"text": "R", "rng": "AAAA.forged"}, 400, "not a sampler state this server gave"),
    ("/api/sample", {"text": "R", "rng": "AAAA.é"}, 400, "not a sampler state this server gave"),
    ("/api/sample", {"text": "R", "rng": 12}, 400, "not a sampler state this server gave"),
    ("/api/generate", {"text": "R", "n": 0}, 400, "n must be an integer from 1"),
    ("/api/generate", {"text": "R", "n": True}, 400, "n must be an integer"),
    ("/api/nothing", {"text": "R"}, 404, "no such request"),
]


@pytest.mark.parametrize("path, body, status, fragment", BAD)
def test_a_bad_request_gets_4xx_and_the_server_goes_on(url, path, body, status, fragment):
    raw = body if isinstance(body, bytes) else None
    got, answer = request(url, path, None if raw else body, raw=raw)
    assert (got, list(answer)) == (status, ["error"]), answer
    assert fragment in answer["error"]
    assert "Traceback" not in answer["error"]
    assert request(url, "/api/analyse", {"text": PROMPT})[0] == 200


def test_malformed_http_gets_4xx_json_and_the_server_goes_on(url):
    assert request(url, "/api/analyse", {"text": "R"}, content_type="text/plain")[0] == 415
    assert request(url, "/api/neighbours?token=abc")[0] == 400
    assert request(url, "/api/neighbours?token=99999")[0] == 400
    status, answer = request(url, "/api/model", {"x": 1}, method="PUT")
    assert status == 501 and "error" in answer
    for raw, status in [(b"NONSENSE\r\n\r\n", None),  # not even HTTP/1: answered as HTTP/0.9, a body alone
                        (json_post(url) + b"\r\n", "411"),
                        (json_post(url) + b"Content-Length: 99999999\r\n\r\n", "413"),
                        (json_post(url) + "Content-Length: ²\r\n\r\n".encode(), "400"),  # a digit to str.isdigit
                        (json_post(url) + b"Content-Length: " + b"9" * 5000 + b"\r\n\r\n", "400"),
                        (json_post(url) + b"Content-Length: -5\r\n\r\n", "400")]:
        answer = raw_exchange(url, raw)
        assert status is None or answer.split()[1] == status, answer
        assert '{"error": ' in answer
    assert request(url, "/api/model")[0] == 200


def json_post(url, path="/api/analyse", host=None):
    """The head of a JSON POST, without its Content-Length and the blank line that ends the head."""
    host = url.removeprefix("http://") if host is None else host
    return f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n".encode()


def raw_exchange(url, raw, timeout=10):
    """Send raw bytes to the server and read its answer to the end, as text."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(raw)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    return answer.decode("latin-1")


def status_and_error(answer):
    return int(answer.split()[1]), json.loads(answer.split("\r\n\r\n", 1)[1])["error"]


@pytest.mark.parametrize("host", ["attacker.example:{port}", "127.0.0.1.nip.io:{port}", "127.0.0.1:1", "localhost",
                                  ""])
def test_a_request_for_another_host_is_refused(url, host):
    """DNS rebinding: a web site points its own name at 127.0.0.1, and the browser then sends that
    name as Host. Only this server's own addresses are answered: 403 otherwise, GET or POST."""
    port = url.rsplit(":", 1)[1]
    host = host.format(port=port)
    for raw in (f"GET /api/model HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode(),
                json_post(url, host=host) + b"Content-Length: 13\r\nConnection: close\r\n\r\n{\"text\": \"R\"}"):
        status, error = status_and_error(raw_exchange(url, raw))
        assert status == 403 and "is not this server's address" in error
    for own in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", f"LOCALHOST:{port}"):
        answer = raw_exchange(url, f"GET /api/model HTTP/1.1\r\nHost: {own}\r\nConnection: close\r\n\r\n".encode())
        assert answer.split()[1] == "200", answer


@pytest.mark.parametrize("origin", ["http://attacker.example", "null", "http://127.0.0.1:1"])
def test_a_post_from_another_sites_page_is_refused(url, origin):
    body = b'{"text": "R"}'
    raw = json_post(url) + f"Origin: {origin}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
    status, error = status_and_error(raw_exchange(url, raw + body))
    assert status == 403 and "another site" in error
    own = json_post(url) + f"Origin: {url}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
    assert raw_exchange(url, own + body).split()[1] == "200"


def test_a_stalled_request_is_dropped_and_the_page_still_answers(url, monkeypatch):
    """A client that sends half a request and waits is dropped after the socket timeout (30 s; 1
    here), so stalled clients cannot hold the server's threads."""
    monkeypatch.setattr(serve.PageHandler, "timeout", 1)
    host, port = url.removeprefix("http://").split(":")
    stalled = [socket.create_connection((host, int(port)), timeout=10) for _ in range(20)]
    for i, s in enumerate(stalled):  # half a head, or a head and half a body
        s.sendall(b"GET /api/mo" if i % 2 else json_post(url) + b"Content-Length: 100\r\n\r\n{\"te")
    assert request(url, "/api/model")[0] == 200  # answered meanwhile
    for i, s in enumerate(stalled):
        answer = b""
        while chunk := s.recv(65536):  # the server ends the connection (with a 408 for the body)
            answer += chunk
        assert i % 2 or answer.split()[1] == b"408", answer
        s.close()
    assert request(url, "/api/model")[0] == 200


def test_generate_streams_beyond_the_limit_get_503(url, explorer, monkeypatch):
    monkeypatch.setattr(explorer, "streams", threading.BoundedSemaphore(serve.MAX_STREAMS))
    for _ in range(serve.MAX_STREAMS):  # as if that many were streaming
        explorer.streams.acquire()
    status, answer = request(url, "/api/generate", {"text": PROMPT, "n": 3})
    assert status == 503 and "being generated already" in answer["error"]
    explorer.streams.release()
    assert generated(url, {"text": PROMPT, "n": 3})[1]["done"] == 3


@pytest.mark.parametrize("body, fragment", [
    (b"[" * 100_000, "nested too deeply"),
    (b'{"text": "R", "temperature": ' + b"9" * 400 + b"}", "within a float's range"),
    (b'{"text": "R", "top_p": ' + b"9" * 400 + b"}", "within a float's range"),
])
def test_deep_or_huge_json_gets_400(url, body, fragment):
    status, answer = request(url, "/api/analyse", raw=body)
    assert status == 400 and fragment in answer["error"], answer


def test_an_error_about_a_long_prompt_stays_short(url):
    status, answer = request(url, "/api/analyse", {"text": "".join(chr(0x4E00 + i) for i in range(20_000))})
    assert status == 400 and "outside the model's vocabulary" in answer["error"] and "19,980 more" in answer["error"]
    assert len(answer["error"]) < 300


def test_every_answer_forbids_sniffing_and_foreign_scripts_and_head_is_answered(url):
    with urllib.request.urlopen(url + "/", timeout=10) as r:
        assert r.headers["X-Content-Type-Options"] == "nosniff"
        assert r.headers["Content-Security-Policy"].startswith("default-src 'self'")
        page = r.read()
    with urllib.request.urlopen(urllib.request.Request(url + "/", method="HEAD"), timeout=10) as r:
        assert r.status == 200 and r.read() == b"" and int(r.headers["Content-Length"]) == len(page)
    status, answer = request(url, "/api/analyse", {"ids": "abc"})
    assert status == 400  # errors carry the same headers (send() writes them all)


@pytest.mark.parametrize("host, warned", [("127.0.0.1", False), ("localhost", False), ("0.0.0.0", True)])
def test_a_host_beyond_this_machine_is_warned_of(explorer, monkeypatch, host, warned):
    monkeypatch.setattr(serve.PageServer, "serve_forever", lambda self: None)
    out = io.StringIO()
    serve.serve(explorer, host, 0, out)
    assert ("warning: --host=0.0.0.0 serves the page beyond this machine" in out.getvalue()) == warned


def test_neighbours_normalise_the_table_once(url, explorer, monkeypatch):
    calls = []
    table = inside.embedding_table
    monkeypatch.setattr(serve, "embedding_table", lambda *a: calls.append(1) or table(*a))
    monkeypatch.setattr(explorer, "unit_table", None)
    for token in (1, 2, 3):
        assert request(url, f"/api/neighbours?token={token}")[0] == 200
    assert len(calls) == 1


def test_a_bug_of_ours_gets_500_with_what_failed_and_the_server_goes_on(url, explorer, monkeypatch, capsys):
    def broken(*args):
        raise RuntimeError("a bug")
    monkeypatch.setattr(explorer, "analyse", broken)
    status, answer = request(url, "/api/analyse", {"text": PROMPT})
    assert status == 500 and "RuntimeError: a bug" in answer["error"] and "still up" in answer["error"]
    assert "Traceback" in capsys.readouterr().err  # for whoever runs the server: where the bug is
    monkeypatch.undo()
    assert request(url, "/api/analyse", {"text": PROMPT})[0] == 200


def test_two_tabs_at_once_get_their_own_answers(url):
    prompts = ["ROMEO:\nBut", "It is the east", "But soft, what", "light through"]
    alone = {p: post(url, "/api/analyse", {"text": p}) for p in prompts}
    answers = {}

    def ask(prompt, n):
        answers[prompt, n] = request(url, "/api/analyse", {"text": prompt})

    threads = [threading.Thread(target=ask, args=(p, n)) for n in range(8) for p in prompts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(answers) == len(threads)
    for (prompt, _), (status, answer) in answers.items():
        assert status == 200, answer
        assert {**answer, "model_ms": 0} == {**alone[prompt], "model_ms": 0}


def test_a_bpe_model_shows_a_piece_of_a_character_as_its_id(gpt2_codec, serve_page):
    model = GPT(GPTConfig(block_size=16, vocab_size=50304, n_layer=1, n_head=2, n_embd=16))
    url = serve_page(Explorer(model.eval(), gpt2_codec, "gpt2-shaped"))
    ids = gpt2_codec.encode("a 🦜")
    answer = post(url, "/api/analyse", {"text": "a 🦜"})
    assert answer["ids"] == ids and len(ids) > 2
    labels = [answer["vocab"][str(i)] for i in ids]
    assert labels[0] == {"label": "a", "text": "a"}
    pieces = [t for t in labels if t["text"] is None]
    assert pieces and all(t["label"].startswith("#") for t in pieces)
    assert len(base64.b64decode(answer["next"]["logits"])) == 4 * gpt2_codec.vocab_size  # no padding rows
    tokens, _ = generated(url, {"ids": ids, "n": 3, "temperature": 0})
    assert all(t < gpt2_codec.vocab_size for t in tokens)


def test_a_model_of_its_own_bpe_and_newer_parts_is_served(tmp_path, serve_page):
    from gptkit.datasets import train_bpe
    from gptkit.data import BPECodec

    text = "Naïve café owners sang déjà vu, and the river flowed on.\n" * 30
    codec = BPECodec(train_bpe([text], 300)[0])
    model = GPT(GPTConfig(block_size=16, vocab_size=320, n_layer=2, n_head=2, n_embd=16, pos_encoding="rope",
                          norm="rmsnorm", qk_norm=True, activation="relu2", tie_embeddings=False, logit_softcap=15.0))
    url = serve_page(Explorer(model.eval(), codec, "own-bpe"))
    ids = codec.encode("the café 🦜")
    answer = post(url, "/api/analyse", {"text": "the café 🦜"})
    assert answer["ids"] == ids
    labels = [answer["vocab"][str(i)] for i in ids]
    assert labels[0]["text"] == "the" and "".join(t["text"] or "" for t in labels[:-4]) == "the café "
    assert all(t["text"] is None and t["label"] == f"#{i}" for t, i in zip(labels[-4:], ids[-4:]))  # 🦜's 4 bytes
    assert bytes.fromhex("".join(t["bytes"] for t in labels[-4:])).decode() == "🦜"  # the page joins them
    assert all("bytes" not in t for t in labels[:-4])
    assert len(base64.b64decode(answer["next"]["logits"])) == 4 * codec.vocab_size
    assert len(answer["lens"]["depths"]) == 3 and answer["attention"]["heads"] == 2
    tokens, _ = generated(url, {"ids": ids, "n": 3, "temperature": 0})
    assert len(tokens) == 3 and all(t < codec.vocab_size for t in tokens)


# ----------------------------------------------------------------------------- the command

def test_the_command_serves_gpt2_weights_from_a_folder(gpt2_codec, tmp_path, monkeypatch, capsys):
    model = GPT(GPTConfig(block_size=32, vocab_size=50257, n_layer=1, n_head=2, n_embd=16))
    export_hf(model, gpt2_codec, tmp_path / "gpt2-local")  # a Hugging Face GPT-2 folder, as --init_from=FOLDER reads
    served = []
    monkeypatch.setattr(explain, "serve", lambda explorer, host, port: served.append((explorer, host, port)))
    assert explain.main(["serve", f"--init_from={tmp_path / 'gpt2-local'}", "--port=8123", "--device=cpu"]) == 0
    (explorer, host, port), = served
    assert (host, port, explorer.source, explorer.vocab_size) == ("127.0.0.1", 8123, str(tmp_path / "gpt2-local"), 50257)
    assert explorer.analyse(gpt2_codec.encode("Hello world"))["vocab"][str(gpt2_codec.encode(" world")[0])]["label"] == "␣world"
    # the other views take --init_from too
    assert explain.main(["lens", f"--init_from={tmp_path / 'gpt2-local'}", "--start=Hello world", "--device=cpu",
                         f"--out={tmp_path / 'lens.png'}"]) == 0
    assert "position 1, ' world'" in capsys.readouterr().out


def error_line(capsys, excinfo):
    assert excinfo.value.code == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("args, fragment", [
    (["--out_dir=nothing-here"], "no checkpoint at nothing-here"),
    (["--port=70000"], "port must be in 0 to 65535"),
    (["--port=eighty"], "port: expected int"),
    (["--host=10.9.9.9"], "cannot listen on 10.9.9.9:8000 (Cannot assign requested address)"),
    (["--init_from=no-such-folder"], "init_from must be"),
])
def test_a_mistake_at_start_is_one_line(trained, capsys, args, fragment):
    with pytest.raises(SystemExit) as excinfo:
        explain.main(["serve", f"--out_dir={trained}", "--device=cpu", *args])
    assert fragment in error_line(capsys, excinfo)


def test_a_port_in_use_is_one_line(trained, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SystemExit) as excinfo:
            explain.main(["serve", f"--out_dir={trained}", "--device=cpu", f"--port={port}"])
    assert f"port {port} on 127.0.0.1 is in use" in error_line(capsys, excinfo)


@pytest.mark.slow
def test_the_command_prints_the_url_serves_and_ends_quietly_at_ctrl_c(trained):
    server = subprocess.Popen([sys.executable, "explain.py", "serve", f"--out_dir={trained}", "--port=0",
                               "--device=cpu"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = [server.stdout.readline(), server.stdout.readline()]
        assert "2 layers, 2 heads, 32 wide" in lines[0], lines
        url = lines[1].split("serving the page at ")[1].split()[0].rstrip("/")
        assert request(url, "/api/model")[1]["block_size"] == BLOCK
        assert request(url, "/api/analyse", {"text": PROMPT})[0] == 200
        server.send_signal(signal.SIGINT)
        _, err = server.communicate(timeout=30)
    finally:
        server.kill()
    assert server.returncode == 130 and err.strip() == "", err
