"""Tests of explain.py: the parameter counts (a real model's, and GPT-3 175B's to the parameter,
built on the meta device), the next-token probabilities the sampler draws from, attention weights
that rebuild the model's own attention output, nearest tokens and analogies, the logit lens, the
pictures (valid PNGs holding the data shown), and one line for each user's mistake."""

import re
from pathlib import Path

import pytest
import torch
from matplotlib.image import imread

import explain
import sample
from gptkit import sampling
from model import GPT, GPTConfig
from conftest import train_tiny_char_model
from gptkit.data import CharCodec
from gptkit.hardware import flops_per_token

ROOT = Path(__file__).resolve().parent.parent
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# A small text (this module's own) for the model it trains once.
TEXT = "ROMEO:\nBut soft, what light through yonder window breaks?\nIt is the east.\n\n" * 30


def make_model(config, seed=0):
    torch.manual_seed(seed)
    return GPT(config).eval()


def prompt(config, length=9, seed=1):
    return torch.randint(0, config.vocab_size, (1, length), generator=torch.Generator().manual_seed(seed))


def assert_png(path, size=None):
    """A whole PNG (decoded, not only its header) of size (width, height) in pixels, if given."""
    assert Path(path).read_bytes()[:8] == PNG_SIGNATURE
    height, width, _ = imread(path).shape
    assert (width, height) == size if size else min(width, height) > 100


def pixels(figure):
    return tuple(round(x) for x in figure.get_size_inches() * figure.dpi)


# ----------------------------------------------------------------------------- summary

@pytest.mark.parametrize("changes", [{}, {"bias": False}, {"pos_encoding": "sinusoidal"}])
def test_summary_counts_each_kind_as_numel_of_a_real_model(tiny_config, changes):
    config = GPTConfig(**{**tiny_config.__dict__, **changes})
    model = make_model(config)
    blocks = model.transformer.h

    def numel(tensors):
        return sum(t.numel() for t in tensors if t is not None)
    third = numel(b.attn.c_attn.weight for b in blocks) // 3
    expected = {
        "token embedding": model.transformer.wte.weight.numel(),
        "position embedding": model.transformer.wpe.weight.numel() if "wpe" in model.transformer else 0,
        "query": third, "key": third, "value": third,
        "attention output": numel(b.attn.c_proj.weight for b in blocks),
        "MLP up": numel(b.mlp.c_fc.weight for b in blocks),
        "MLP down": numel(b.mlp.c_proj.weight for b in blocks),
        "unembedding": 0,  # tied: lm_head.weight is the token embedding
        "layer norms": numel(p for m in model.modules() if isinstance(m, torch.nn.LayerNorm) for p in (m.weight, m.bias)),
        "biases": numel(m.bias for m in model.modules() if isinstance(m, torch.nn.Linear)),
    }
    assert model.lm_head.weight is model.transformer.wte.weight
    counts = explain.parameter_counts(model)
    assert counts == expected
    assert sum(counts.values()) == sum(p.numel() for p in model.parameters())
    on_meta = explain.meta_model(config)
    assert all(p.is_meta for p in on_meta.parameters())
    assert explain.parameter_counts(on_meta) == counts
    untied = explain.parameter_counts(on_meta, untied=True)
    assert untied == {**counts, "unembedding": config.vocab_size * config.n_embd}


def test_summary_of_a_model_with_the_newer_parts_names_their_shapes(tmp_path, capsys):
    # An untied model's unembedding is counted as its own (not shown as tied), SwiGLU's up
    # projection holds a gate and a value, and RMSNorm has a gain and no bias.
    config_file = tmp_path / "newer.py"
    config_file.write_text("n_layer = 2\nn_head = 2\nn_embd = 64\nblock_size = 32\nactivation = 'swiglu'\n"
                           "norm = 'rmsnorm'\ntie_embeddings = False\npos_encoding = 'rope'\nbias = False\n")
    assert explain.main(["summary", str(config_file), "--vocab_size=65", f"--out={tmp_path / 's.png'}"]) == 0
    rows = {line.split()[0] + (" " + line.split()[1] if not line.split()[1][0].isdigit() else ""): line
            for line in capsys.readouterr().out.splitlines() if line.strip()}
    printed = "\n".join(rows.values())
    assert "unembedding untied" in printed
    assert re.search(r"^unembedding\s+4,160\s", rows["unembedding"]), rows["unembedding"]  # 65 x 64
    assert "layers x width x 2 x 171 (gate and value)" in rows["MLP up"]
    assert "layers x 171 x width" in rows["MLP down"]
    assert "gain, 2 a layer + 1" in rows["layer norms"] and "bias" not in rows["layer norms"]


def test_summary_of_gpt3_175b_is_the_papers_to_the_parameter(tmp_path, capsys):
    config, _ = explain.summary_config(explain.ExplainConfig(), [str(ROOT / "configs/gpt3/175b.py")])
    model = explain.meta_model(config)  # 175B parameters: on the meta device, no memory
    assert all(p.is_meta for p in model.parameters())
    counts = explain.parameter_counts(model, untied=True)
    assert counts["token embedding"] == counts["unembedding"] == 617_558_016
    for kind in ("query", "key", "value", "attention output"):
        assert counts[kind] == 14_495_514_624
    assert counts["MLP up"] == counts["MLP down"] == 57_982_058_496
    assert sum(counts[kind] for kind in explain.MATRICES) == 175_181_291_520
    # The paper's 3.14e23 training FLOPs over 300B tokens: 6N a token.
    flops = flops_per_token(model)
    assert flops["training"][0] == pytest.approx(3.14e23 / 300e9, rel=0.01)

    out = tmp_path / "summary.png"
    assert explain.main(["summary", "--untied", str(ROOT / "configs/gpt3/175b.py"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "175,181,291,520" in printed and "57,982,058,496" in printed and "untied" in printed
    figure = explain.summary(explain.ExplainConfig(untied=True), [str(ROOT / "configs/gpt3/175b.py")])
    assert_png(out, pixels(figure))
    bars = figure.axes[0].containers[0]
    shown = [kind for kind in explain.KINDS if counts[kind]][::-1]
    assert [bar.get_width() for bar in bars] == [counts[kind] for kind in shown]


@pytest.mark.parametrize("name, size", [("125m", 125e6), ("350m", 350e6), ("760m", 760e6), ("1.3b", 1.3e9),
                                        ("2.7b", 2.7e9), ("6.7b", 6.7e9), ("13b", 13e9), ("175b", 175e9)])
def test_every_gpt3_config_builds_at_the_papers_size(name, size):
    config, _ = explain.summary_config(explain.ExplainConfig(), [str(ROOT / f"configs/gpt3/{name}.py")])
    assert (config.block_size, config.vocab_size) == (2048, 50257)
    total = sum(explain.parameter_counts(explain.meta_model(config)).values())  # tied, as the paper's sizes are
    assert total == pytest.approx(size, rel=0.02)


# ----------------------------------------------------------------------------- next

def test_next_probabilities_are_those_the_sampler_draws_from(tiny_config, monkeypatch):
    model = make_model(tiny_config)
    idx = prompt(tiny_config)
    temperatures = [0.5, 1.0, 2.0]
    _, probs = explain.next_token_probs(model, idx, temperatures, vocab_limit=30)
    assert probs.shape == (3, 30)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(3))
    logits = model(idx)[0][:, -1, :30]
    for row, temperature in zip(probs, temperatures):
        torch.testing.assert_close(row, sampling.sampling_probs(logits, temperature)[0])
        # exactly what TokenSampler hands torch.multinomial when sampling.py draws the next token
        drawn_from = []
        real_multinomial = torch.multinomial
        monkeypatch.setattr(torch, "multinomial", lambda p, n, **kw: drawn_from.append(p) or real_multinomial(p, n, **kw))
        model.generate(idx, 1, sample.TokenSampler(temperature, vocab_limit=30))
        monkeypatch.undo()
        assert torch.equal(drawn_from[0][0], row)
    _, cut = explain.next_token_probs(model, idx, [1.0], top_k=3, vocab_limit=30)
    assert (cut > 0).sum() == 3 and torch.equal(cut, sampling.sampling_probs(logits, 1.0, top_k=3))
    long = prompt(tiny_config, length=tiny_config.block_size + 5)  # read as the sampler reads it: its last block_size
    _, probs = explain.next_token_probs(model, long, [1.0])
    torch.testing.assert_close(probs, sampling.sampling_probs(model(long[:, -tiny_config.block_size:])[0][:, -1], 1.0))


def test_next_picture_shows_the_probabilities(tiny_config, tmp_path):
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.5, 0.3, 0.2]])
    figure = explain.next_figure(probs, [0.5, 1.0], ["a", "␣", "\\n"], "after 'x'")
    ax = figure.axes[0]
    assert [[bar.get_height() for bar in bars] for bars in ax.containers] == probs.tolist()
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "␣", "\\n"]
    explain.save_png(figure, tmp_path / "next.png")
    assert_png(tmp_path / "next.png", pixels(figure))


# ----------------------------------------------------------------------------- attention

def rebuilt_attention_output(attn, x, weights):
    """The attention output rebuilt from weights (B, nh, T, T): weights @ v, heads merged, c_proj."""
    _, _, v = attn.heads(x)
    y = (weights @ v).transpose(1, 2).reshape(x.shape)
    return attn.c_proj(y)


def test_attention_weights_are_those_the_model_uses(tiny_config):
    model = make_model(tiny_config)
    idx = prompt(tiny_config, length=tiny_config.block_size)
    weights = explain.attention_weights(model, idx)
    T = idx.size(1)
    assert weights.shape == (tiny_config.n_layer, tiny_config.n_head, T, T)
    torch.testing.assert_close(weights.sum(dim=-1), torch.ones(weights.shape[:-1]))
    assert (weights.triu(diagonal=1) == 0).all()
    _, _, inputs = explain.trace(model, idx)
    with torch.no_grad():
        for layer, (block, x) in enumerate(zip(model.transformer.h, inputs)):
            torch.testing.assert_close(rebuilt_attention_output(block.attn, x, weights[layer:layer + 1]),
                                       block.attn(x), atol=1e-6, rtol=1e-5)


def test_attention_picture_shows_every_layer_and_head(tiny_config, tmp_path):
    model = make_model(tiny_config)
    weights = explain.attention_weights(model, prompt(tiny_config, length=6))
    labels = list("abcdef")
    figure = explain.attention_figure(weights, labels, position=4)
    panels = [ax for ax in figure.axes if ax.images and ax.get_title()]
    assert len(panels) == tiny_config.n_layer * tiny_config.n_head
    for i, ax in enumerate(panels):
        layer, head = divmod(i, tiny_config.n_head)
        assert ax.get_title() == f"layer {layer + 1}, head {head + 1}"
        assert (ax.images[0].get_array() == weights[layer, head].numpy()).all()
    assert [t.get_text() for t in panels[0].get_yticklabels()] == labels
    explain.save_png(figure, tmp_path / "attention.png")
    assert_png(tmp_path / "attention.png", pixels(figure))


# ----------------------------------------------------------------------------- embeddings

# A hand-built table: royalty, male, female and fruit directions, and a near-copy of 'apple'.
WORDS = ["king", "queen", "man", "woman", "apple", "pear", "banana"]
TABLE = torch.tensor([
    [1.0, 1.0, 0.0, 0.0],   # king = royal + male
    [1.0, 0.0, 1.0, 0.0],   # queen = royal + female
    [0.0, 1.0, 0.0, 0.0],   # man
    [0.0, 0.0, 1.0, 0.0],   # woman
    [0.0, 0.1, 0.1, 1.0],   # apple
    [0.0, 0.12, 0.1, 1.0],  # pear: nearly apple
    [0.3, 0.0, 0.3, 1.0],   # banana: fruit, further off
])


def test_nearest_and_analogy_find_the_planted_answers():
    king, queen, man, woman, apple, pear, banana = range(len(WORDS))
    close = explain.nearest(TABLE, TABLE[apple], 2, exclude={apple})
    assert [i for i, _ in close] == [pear, banana]
    assert close[0][1] == pytest.approx(torch.cosine_similarity(TABLE[apple], TABLE[pear], dim=0).item())
    assert explain.analogy(TABLE, king, man, woman, 1) == [(queen, pytest.approx(1.0))]
    assert explain.analogy(TABLE, queen, woman, man, 1)[0][0] == king
    everyone_else = explain.nearest(TABLE, TABLE[king], 10, exclude={king, queen})
    assert sorted(i for i, _ in everyone_else) == [man, woman, apple, pear, banana]
    assert [s for _, s in everyone_else] == sorted((s for _, s in everyone_else), reverse=True)


def test_pca_keeps_a_flat_cloud_whole():
    flat = torch.randn(30, 2, dtype=torch.float64) * torch.tensor([3.0, 1.0], dtype=torch.float64)
    rotation = torch.linalg.qr(torch.randn(5, 5, dtype=torch.float64))[0][:2]  # the plane, turned into 5-D
    points, variance = explain.pca_2d(flat @ rotation + 7.0)
    torch.testing.assert_close(torch.cdist(points, points), torch.cdist(flat, flat))
    assert sum(variance) == pytest.approx(1.0) and variance[0] > variance[1]


def test_embeddings_picture_places_each_token(tmp_path):
    points, variance = explain.pca_2d(TABLE)
    colours = ["tab:red"] + ["tab:blue"] * (len(WORDS) - 1)
    figure = explain.embeddings_figure(points, WORDS, colours, variance)
    ax = figure.axes[0]
    torch.testing.assert_close(torch.tensor(ax.collections[0].get_offsets().data, dtype=torch.float32), points)
    assert {t.get_text(): t.xy for t in ax.texts} == {w: tuple(p) for w, p in zip(WORDS, points.tolist())}
    explain.save_png(figure, tmp_path / "embeddings.png")
    assert_png(tmp_path / "embeddings.png", pixels(figure))


# ----------------------------------------------------------------------------- lens

def test_logit_lens_reads_each_layer_and_ends_at_the_models_logits(tiny_config):
    model = make_model(tiny_config)
    idx = prompt(tiny_config)
    logits, streams, _ = explain.trace(model, idx)
    lens = explain.logit_lens(model, streams)
    assert lens.shape == (tiny_config.n_layer + 1, idx.size(1), tiny_config.vocab_size)
    torch.testing.assert_close(lens[-1], model(idx)[0][0], atol=0, rtol=0)
    with torch.no_grad():  # row d: after d blocks
        x = model.transformer.wte(idx) + model.positions(0, idx.size(1), "cpu")
        for d, block in enumerate([None, *model.transformer.h]):
            x = block(x) if block is not None else x
            torch.testing.assert_close(lens[d], model.lm_head(model.transformer.ln_f(x))[0])


def test_lens_picture_names_the_top_guesses(tmp_path):
    codec = CharCodec("abc ")
    probs = torch.tensor([[0.9, 0.5, 0.4], [0.3, 0.8, 0.7]])
    guesses = torch.tensor([[0, 1, 3], [2, 2, 0]])
    figure = explain.lens_figure(probs, guesses, [0, 2, 1], ["embeddings", "layer 1"],
                                 lambda token: explain.label(codec, token, picture=True))
    ax = figure.axes[0]
    assert (ax.images[0].get_array() == probs.numpy()).all()
    assert [t.get_text() for t in ax.texts] == ["a", "b", "␣", "c", "c", "a"]
    bold = [t.get_text() for t in ax.texts if t.get_fontweight() == "bold"]
    assert bold == ["b", "c"]  # the prompt is a c b: guesses b at position 1 (layer 0), c at position 0 (layer 1)
    explain.save_png(figure, tmp_path / "lens.png")
    assert_png(tmp_path / "lens.png", pixels(figure))


def test_lens_picture_keeps_its_title_within_the_picture(tmp_path):
    # A one-token prompt makes the narrowest picture: its title is still drawn whole.
    codec = CharCodec("abc ")
    figure = explain.lens_figure(torch.tensor([[0.9], [0.3]]), torch.tensor([[0], [2]]), [1], ["embeddings", "layer 1"],
                                 lambda token: explain.label(codec, token, picture=True))
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    canvas = FigureCanvasAgg(figure)
    canvas.draw()  # lays the picture out, as saving it does
    renderer = canvas.get_renderer()
    title = figure.axes[0].title.get_window_extent(renderer)
    picture = figure.bbox
    assert picture.x0 <= title.x0 and title.x1 <= picture.x1 and title.y1 <= picture.y1, (title, picture)


def test_tables_line_up_wide_characters():
    # A Chinese character takes two columns on a terminal: the columns after it still line up.
    table = explain.format_table(["token", "probability"], [["'大語'", "0.50"], ["'a'", "0.25"], ["'語'", "0.125"]])
    lines = table.splitlines()
    assert len({explain.display_width(line) for line in lines}) == 1, table
    assert explain.display_width("'大語'") == 6 and explain.display_width("abc") == 3


# ----------------------------------------------------------------------------- the command line

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny character model trained once for the command-line tests: its out_dir."""
    return train_tiny_char_model(tmp_path_factory.mktemp("explain"), TEXT, block_size=16)


def test_summary_of_a_config_file_takes_the_vocabulary_of_its_data(trained, tmp_path):
    config_file = tmp_path / "tiny.py"
    config_file.write_text(f"data_dir = {str(trained.parent / 'data')!r}\ndataset = 'tiny'\n"
                           "n_layer = 2\nn_head = 2\nn_embd = 32\nblock_size = 16\n")
    config, _ = explain.summary_config(explain.ExplainConfig(), [str(config_file)])
    assert config.vocab_size == len(set(TEXT))  # a character model's: as train.py sizes it
    config, _ = explain.summary_config(explain.ExplainConfig(vocab_size=100), [str(config_file)])
    assert config.vocab_size == 100


@pytest.mark.parametrize("view, args, printed", [
    ("summary", [], "position embedding"),
    ("next", ["--start=ROMEO:", "--temperatures=0,1"], "T=0"),
    ("attention", ["--start=ROMEO:", "--position=2"], "layer 2 head 2"),
    ("embeddings", ["--token=e", "--analogy=R,r,o"], "nearest 'R' - 'r' + 'o'"),
    ("lens", ["--start=ROMEO:"], "layer 2"),
])
def test_each_view_prints_a_table_and_writes_a_picture(trained, tmp_path, capsys, view, args, printed):
    out = tmp_path / f"{view}.png"
    assert explain.main([view, f"--out_dir={trained}", f"--out={out}", "--device=cpu", *args]) == 0
    text = capsys.readouterr().out
    assert printed in text and f"wrote {out}" in text
    assert_png(out)


@pytest.mark.parametrize("argv, fragment", [
    ([], "name a view first"),
    (["explode"], "name a view first"),
    (["next", "--start="], "the prompt is empty"),
    (["next", "--start=ROMEO@"], "outside the model's vocabulary"),
    (["next", "--temperatures=hot"], "temperatures must be numbers"),
    (["next", "configs/shakespeare_cpu.py"], "reads a checkpoint"),
    (["embeddings", "--token=ab"], "2 tokens"),
    (["embeddings", "--token=@"], "not in the model's vocabulary"),
    (["embeddings", "--token=#999"], "outside the vocabulary"),
    (["embeddings", "--analogy=a,b"], "three tokens"),
    (["attention", "--start=ROMEO:", "--position=6"], "outside the prompt's 6 tokens"),
    (["lens", "--start=" + "ROMEO:" * 3], "longer than the model's context (16)"),
    (["summary", "missing.py"], "config file not found"),
    (["summary", "bad.py"], "must be divisible by n_head"),
    (["summary", "bad_key.py"], "unknown setting 'n_layers'"),
    (["summary", str(ROOT / "configs/shakespeare_cpu.py")], "give --vocab_size=N"),
    (["summary", str(ROOT / "configs/shakespeare_cpu.py"), "--vocab_size=0"], "vocab_size must be at least 1"),
])
def test_a_mistake_is_one_line_and_exit_status_2(trained, tmp_path, monkeypatch, capsys, argv, fragment):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.py").write_text("n_embd = 30\nn_head = 4\nvocab_size = 10\n")
    (tmp_path / "bad_key.py").write_text("n_layers = 3\n")
    settings = [f"--out_dir={trained}", "--device=cpu"] if argv and argv[0] != "summary" else []
    with pytest.raises(SystemExit) as excinfo:
        explain.main(argv + settings)
    assert excinfo.value.code == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "Traceback" not in err, err
    assert fragment in err
    assert not list(tmp_path.glob("*.png"))


def test_a_missing_checkpoint_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as excinfo:
        explain.main(["lens", f"--out_dir={tmp_path / 'nothing'}"])
    assert excinfo.value.code == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "no checkpoint at" in err


# ----------------------------------------------------------------------------- any language in the pictures

def draw_chinese(tmp_path):
    """A picture with a Chinese title, drawn within picture_fonts: (stderr's hint, warnings let out)."""
    import io
    import warnings

    from gptkit.plots import figure, picture_fonts, save_png

    hint = io.StringIO()
    with warnings.catch_warnings(record=True) as let_out:
        warnings.simplefilter("always")
        with picture_fonts(out=hint):
            fig = figure(4, 2)
            fig.add_subplot().set_title("大語言模型 ROMEO")
            save_png(fig, tmp_path / "chinese.png")
    return hint.getvalue(), [str(w.message) for w in let_out]


def test_a_chinese_label_is_drawn_where_a_cjk_font_is_installed(tmp_path):
    from gptkit.plots import fallback_fonts

    if not fallback_fonts():
        pytest.skip("no CJK font here (apt-get install fonts-noto-cjk)")
    hint, let_out = draw_chinese(tmp_path)
    assert hint == "" and let_out == []  # every glyph found
    assert (tmp_path / "chinese.png").is_file()


def test_without_a_cjk_font_one_line_names_the_package_instead_of_a_warning_a_glyph(tmp_path, monkeypatch):
    import warnings

    from gptkit import plots

    monkeypatch.setattr(plots, "fallback_fonts", lambda: [])
    filters = list(warnings.filters)
    hint, let_out = draw_chinese(tmp_path)
    assert let_out == [] and hint.count("\n") == 1
    assert hint.startswith("5 character(s) drawn as boxes") and "apt-get install fonts-noto-cjk" in hint
    assert warnings.filters == filters


def test_explain_next_on_a_chinese_model_draws_its_characters(tmp_path, monkeypatch, capsys):
    from gptkit.plots import fallback_fonts

    if not fallback_fonts():
        pytest.skip("no CJK font here (apt-get install fonts-noto-cjk)")
    out_dir = train_tiny_char_model(tmp_path, "大語言模型是一種語言模型，由具有許多參數的人工神經網絡組成。\n" * 60, 16)
    monkeypatch.chdir(tmp_path)
    assert explain.main(["next", f"--out_dir={out_dir}", "--start=大語言模型", "--device=cpu"]) == 0
    captured = capsys.readouterr()
    assert "drawn as boxes" not in captured.out + captured.err and "Glyph" not in captured.err
    assert (tmp_path / "explain_next.png").is_file()
