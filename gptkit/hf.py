"""Hugging Face folders in and out. In (load_gpt2): OpenAI's GPT-2 weights, or a folder in GPT-2's,
Llama's or Qwen3's layout that this GPT computes exactly. Out (export_hf): a model of GPT-2's parts
in GPT-2's layout, one of rotary + RMSNorm + SwiGLU without biases in Llama's (Qwen3's with
QK-norm); any other mix is refused.

A folder export_hf writes holds config.json and model.safetensors, and the tokenizer: for GPT-2's
BPE vocab.json, merges.txt and tokenizer_config.json; for a BPE of the data's own or a character
model, tokenizer.json and tokenizer_config.json.
In GPT-2's layout our parameter names are GPT-2's; two things differ. GPT-2 keeps each linear
layer's weight as (in, out), the layout of its Conv1D module, where nn.Linear keeps (out, in);
and a state saved from the Hub's base model has no 'transformer.' prefix. Llama's layout names
every weight its own way and splits c_attn into q, k and v, c_fc into gate and up (llama_tensors).
"""

import json
import os
from pathlib import Path

import torch

from gptkit.data import END_OF_TEXT, GPT2_META, TOKENIZER_FILE, BPECodec, CharCodec
from gptkit.files import atomic_write, plain_mode
from gptkit.settings import UserError, reason
from model import GPT, GPTConfig

PRETRAINED = {  # init_from names -> Hub repositories (124M, 350M, 774M, 1558M parameters)
    "gpt2": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
}
CHAR_UNKNOWN = "<not a character of the model>"  # a character tokenizer's unknown token: never in its vocabulary
CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
ACTIVATION_FROM_HF = {"gelu_new": "gelu", "gelu_pytorch_tanh": "gelu", "gelu": "gelu_exact", "relu": "relu"}
ACTIVATION_TO_HF = {"gelu": "gelu_new", "gelu_exact": "gelu", "relu": "relu"}
GPT2_TOKENIZER_FILES = {  # tiktoken's source files for GPT-2's BPE are Hugging Face's tokenizer files
    "vocab.json": ("https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json",
                   "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"),
    "merges.txt": ("https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
                   "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"),
}


def is_pretrained(init_from):
    """Whether init_from names Hugging Face weights: one of PRETRAINED, or a folder holding config.json."""
    return init_from in PRETRAINED or (Path(init_from) / "config.json").is_file()


def pretrained_folder(name_or_path):
    """The local folder of a GPT-2 name (downloaded from the Hub, or found in its cache) or of a path."""
    if name_or_path not in PRETRAINED:
        folder = Path(name_or_path)
        if not (folder / "config.json").is_file():
            raise UserError(f"init_from={name_or_path} is neither a GPT-2 model ({', '.join(PRETRAINED)}) nor a "
                            f"folder with config.json and model.safetensors (Hugging Face's GPT-2 format)")
        return folder
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(PRETRAINED[name_or_path], allow_patterns=["config.json", "model.safetensors"]))
    except Exception as e:
        raise UserError(f"cannot download {name_or_path} from the Hugging Face Hub ({reason(e, 120)}); with no internet, "
                        f"copy its folder (config.json, model.safetensors) here and pass --init_from=FOLDER") from None


def read_config(folder, dropout=0.0):
    """The GPTConfig of a folder's config.json (GPT-2's, or Llama's or Qwen3's: read_llama_config);
    a variant our model cannot compute is refused."""
    path = Path(folder) / "config.json"
    try:
        hf = json.loads(path.read_text())
        if hf.get("model_type") in LLAMA_LAYOUTS:
            return read_llama_config(hf, path, dropout)
        problems = [f"model_type {hf.get('model_type')!r}, not 'gpt2'"] if hf.get("model_type", "gpt2") != "gpt2" else []
        if hf.get("activation_function", "gelu_new") not in ACTIVATION_FROM_HF:
            problems.append(f"activation {hf['activation_function']!r}")
        if hf.get("n_inner") not in (None, 4 * hf["n_embd"]):
            problems.append(f"n_inner={hf['n_inner']} (not 4 x n_embd)")
        if hf.get("scale_attn_by_inverse_layer_idx") or not hf.get("scale_attn_weights", True):
            problems.append("attention scaled other than by 1/sqrt(head size)")
        if abs(hf.get("layer_norm_epsilon", 1e-5) - 1e-5) > 1e-12:
            problems.append(f"layer_norm_epsilon={hf['layer_norm_epsilon']}")
        if not hf.get("tie_word_embeddings", True):
            problems.append("an unembedding not tied to the token embedding")
        if problems:
            raise UserError(f"{path} describes a model this GPT cannot compute exactly: {'; '.join(problems)}")
        return GPTConfig(block_size=hf["n_positions"], vocab_size=hf["vocab_size"], n_layer=hf["n_layer"],
                         n_head=hf["n_head"], n_embd=hf["n_embd"], dropout=dropout, bias=True,
                         activation=ACTIVATION_FROM_HF[hf.get("activation_function", "gelu_new")])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"cannot read {path} as a GPT-2 config ({type(e).__name__}: {str(e)[:100]})") from None


def read_weights(folder):
    """name -> tensor from model.safetensors (or its shards, or pytorch_model.bin)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    if (folder / "model.safetensors").is_file():
        return load_file(folder / "model.safetensors")
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return {k: v for shard in shards for k, v in load_file(folder / shard).items()}
    if (folder / "pytorch_model.bin").is_file():
        return torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise UserError(f"{folder} has no model.safetensors; download the model's weights into it")


def load_gpt2(name_or_path, dropout=0.0):
    """A GPT with the weights of a GPT-2 name (see PRETRAINED) or of a folder in GPT-2's, Llama's or
    Qwen3's layout."""
    folder = pretrained_folder(name_or_path)
    model = GPT(read_config(folder, dropout))
    if model.config.pos_encoding == "rope":  # a Llama or Qwen3 folder
        try:
            model.load_state_dict(llama_state(read_weights(folder), model.config))
        except (RuntimeError, KeyError) as e:
            raise UserError(f"the weights in {folder} do not fit its config.json ({reason(e)})") from None
        return model
    state = {}
    try:
        for name, tensor in read_weights(folder).items():
            name = name.removeprefix("transformer.")
            if name.endswith((".attn.bias", ".attn.masked_bias")) or name == "lm_head.weight":
                continue  # the causal-mask buffers some saves hold; the unembedding is the tied wte
            state[name if name.startswith("lm_head") else f"transformer.{name}"] = \
                tensor.t() if name.endswith(CONV1D) else tensor
        state["lm_head.weight"] = state["transformer.wte.weight"]
        model.load_state_dict({k: v.float() for k, v in state.items()})
    except (RuntimeError, KeyError) as e:
        raise UserError(f"the weights in {folder} do not fit its config.json "
                        f"({reason(e)})") from None
    return model


def gpt2_meta(model, init_from):
    """The data a model loaded by load_gpt2 reads: its folder's own tokenizer (a character model's
    or a BPE of its own, as export.py writes them), else GPT-2's BPE."""
    meta = folder_meta(init_from) if init_from not in PRETRAINED else None
    if meta is not None:
        return meta
    if model.config.vocab_size < GPT2_META["vocab_size"]:
        raise UserError(f"init_from={init_from} has a vocabulary of {model.config.vocab_size} tokens, not GPT-2's "
                        f"BPE, and no tokenizer.json that names its tokens; use the checkpoint it was exported "
                        f"from (its out_dir), or export it again with export.py")
    return GPT2_META


def not_gpt2(config):
    """The first setting of a model's config that GPT-2's architecture has no room for, as
    'name=value', or None."""
    for name, gpt2 in (("pos_encoding", ("learned", "sinusoidal")), ("norm", ("layernorm",)),
                       ("qk_norm", (False,)), ("activation", tuple(ACTIVATION_TO_HF)), ("tie_embeddings", (True,)),
                       ("logit_softcap", (0.0,))):
        if getattr(config, name) not in gpt2:
            return f"{name}={getattr(config, name)!r}"
    return None


def export_hf(model, codec, folder):
    """Write model (a GPT) as a Hugging Face folder that transformers loads to the same logits: GPT-2's
    layout for GPT-2's parts (GPT2LMHeadModel), Llama's for rotary + RMSNorm + SwiGLU without biases
    (LlamaForCausalLM), Qwen3's for those with QK-norm (Qwen3ForCausalLM). The vocabulary is cut
    to the data's (padding rows are never a token). A mix no layout holds is refused in one line
    that names the part each layout cannot take, and what each takes."""
    if not_gpt2(model.config) is None:
        return export_gpt2(model, codec, folder)
    layout, problem = llama_layout(model.config)
    if problem:
        raise UserError(f"this model has {not_gpt2(model.config)}, which GPT-2's layout does not take, and {problem}, "
                        f"which Llama's does not: GPT-2's takes GPT-2's "
                        f"parts (configs/gpt2_parts.py), Llama's takes pos_encoding='rope', norm='rmsnorm', "
                        f"activation='swiglu', bias=False and no logit_softcap (Qwen3's with qk_norm too); "
                        f"train one of those")
    export_folder(model, codec, folder, llama_tensors(model, codec.vocab_size),
                  llama_config_json(model.config, codec.vocab_size, layout, eot_of(codec)))


def eot_of(codec):
    """The end-of-text id of a BPE codec (GPT-2's, or the data's own), else None."""
    return codec.eot_token if isinstance(codec, BPECodec) or getattr(codec, "encoding", None) is not None else None


def export_gpt2(model, codec, folder):
    """A model of GPT-2's parts as a GPT-2 folder. GPT-2's format has room for some more:
    sinusoidal positions are written as the position table they are, a model without biases gets
    zero biases, and relu and exact GELU are named in config.json."""
    folder = Path(folder)
    config, vocab_size = model.config, codec.vocab_size
    ours = model.state_dict()
    C = config.n_embd
    tensors = {"wte.weight": ours["transformer.wte.weight"][:vocab_size],
               "wpe.weight": model.positions(0, config.block_size, "cpu")}
    for name, size in (("ln_1", C), ("attn.c_attn", 3 * C), ("attn.c_proj", C), ("ln_2", C), ("mlp.c_fc", 4 * C),
                       ("mlp.c_proj", C)):
        for i in range(config.n_layer):
            weight = ours[f"transformer.h.{i}.{name}.weight"]
            tensors[f"h.{i}.{name}.weight"] = weight.t() if f"{name}.weight".endswith(CONV1D) else weight
            tensors[f"h.{i}.{name}.bias"] = ours.get(f"transformer.h.{i}.{name}.bias", torch.zeros(size))
    tensors["ln_f.weight"] = ours["transformer.ln_f.weight"]
    tensors["ln_f.bias"] = ours.get("transformer.ln_f.bias", torch.zeros(C))
    tensors = {f"transformer.{k}": v for k, v in tensors.items()}
    eot = eot_of(codec)
    hf_config = {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": vocab_size,
        "n_positions": config.block_size, "n_ctx": config.block_size, "n_embd": C, "n_layer": config.n_layer,
        "n_head": config.n_head, "n_inner": None, "activation_function": ACTIVATION_TO_HF[config.activation],
        "resid_pdrop": config.dropout, "embd_pdrop": config.dropout, "attn_pdrop": config.dropout,
        "layer_norm_epsilon": 1e-5, "initializer_range": 0.02, "scale_attn_weights": True,
        "tie_word_embeddings": True, "bos_token_id": eot, "eos_token_id": eot, "torch_dtype": "float32",
    }
    export_folder(model, codec, folder, tensors, hf_config)


def export_folder(model, codec, folder, tensors, hf_config):
    """Write a Hugging Face folder: the weights (float32), the codec's tokenizer, then config.json
    (last: a folder without it is unfinished). A folder that holds a model is never written over."""
    from safetensors.torch import save_file

    folder, config = Path(folder), model.config
    if folder.exists() and not folder.is_dir():
        raise UserError(f"--to {folder} is a file; name a folder to write the model into")
    if any((folder / name).exists() for name in ("config.json", "model.safetensors")):
        raise UserError(f"{folder} already holds a model; choose another folder, or delete that one first")
    tensors = {k: v.detach().float().cpu().contiguous() for k, v in tensors.items()}
    gpt2_bpe = getattr(codec, "encoding", None) is not None and codec.encoding.name == "gpt2"
    own_bpe, characters = isinstance(codec, BPECodec), isinstance(codec, CharCodec)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / ".model.safetensors.tmp"
    save_file(tensors, tmp, metadata={"format": "pt"})
    os.chmod(tmp, plain_mode())  # readable as the folder's other files are, not safetensors' 0600
    os.replace(tmp, folder / "model.safetensors")
    if gpt2_bpe:
        write_gpt2_tokenizer(folder, config.block_size)
    if own_bpe:
        write_own_tokenizer(folder, codec, config.block_size)
    if characters:
        write_char_tokenizer(folder, codec, config.block_size)
    with atomic_write(folder / "config.json", "w") as f:  # last: a folder without it is unfinished
        json.dump(hf_config, f, indent=2)


def write_own_tokenizer(folder, codec, max_length):
    """The data's own BPE as tokenizer.json, which transformers' AutoTokenizer reads as a fast
    tokenizer that encodes exactly as the codec does."""
    with atomic_write(Path(folder) / TOKENIZER_FILE, "w") as f:
        f.write(codec.tokenizer.to_str())
    with atomic_write(Path(folder) / "tokenizer_config.json", "w") as f:
        json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": max_length,
                   "bos_token": END_OF_TEXT, "eos_token": END_OF_TEXT, "unk_token": END_OF_TEXT}, f, indent=2)


LLAMA_LAYOUTS = {"llama": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM"}
LLAMA_PARTS = {"pos_encoding": "rope", "norm": "rmsnorm", "activation": "swiglu", "bias": False, "logit_softcap": 0.0}


def llama_layout(config):
    """('llama' or 'qwen3', None) for a model of Llama's parts (Qwen3's: with QK-norm), else
    (None, the first part neither has, as 'name=value')."""
    for name, value in LLAMA_PARTS.items():
        if getattr(config, name) != value:
            return None, f"{name}={getattr(config, name)!r}"
    return ("qwen3" if config.qk_norm else "llama"), None


def llama_names(config):
    """[(our name, Llama's name)] of every weight but the MLP's gate and up halves (c_fc)."""
    names = [("transformer.wte.weight", "model.embed_tokens.weight"), ("transformer.ln_f.weight", "model.norm.weight")]
    if not config.tie_embeddings:
        names.append(("lm_head.weight", "lm_head.weight"))
    for i in range(config.n_layer):
        ours, theirs = f"transformer.h.{i}.", f"model.layers.{i}."
        names += [(ours + "ln_1.weight", theirs + "input_layernorm.weight"),
                  (ours + "attn.c_proj.weight", theirs + "self_attn.o_proj.weight"),
                  (ours + "ln_2.weight", theirs + "post_attention_layernorm.weight"),
                  (ours + "mlp.c_proj.weight", theirs + "mlp.down_proj.weight")]
        if config.qk_norm:
            names += [(ours + "attn.q_norm.weight", theirs + "self_attn.q_norm.weight"),
                      (ours + "attn.k_norm.weight", theirs + "self_attn.k_norm.weight")]
    return names


def llama_tensors(model, vocab_size):
    """Our weights under Llama's names: c_attn split into q, k and v, c_fc into the gate and up halves."""
    ours, config = model.state_dict(), model.config
    tensors = {theirs: ours[name] for name, theirs in llama_names(config)}
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        if name in tensors:
            tensors[name] = tensors[name][:vocab_size]
    for i in range(config.n_layer):
        q, k, v = ours[f"transformer.h.{i}.attn.c_attn.weight"].chunk(3)
        gate, up = ours[f"transformer.h.{i}.mlp.c_fc.weight"].chunk(2)
        for name, tensor in (("self_attn.q_proj", q), ("self_attn.k_proj", k), ("self_attn.v_proj", v),
                             ("mlp.gate_proj", gate), ("mlp.up_proj", up)):
            tensors[f"model.layers.{i}.{name}.weight"] = tensor
    return tensors


def llama_state(tensors, config):
    """A Llama or Qwen3 folder's weights under our names (the inverse of llama_tensors)."""
    state = {name: tensors[theirs] for name, theirs in llama_names(config)}
    if config.tie_embeddings:
        state["lm_head.weight"] = state["transformer.wte.weight"]
    for i in range(config.n_layer):
        theirs = f"model.layers.{i}."
        state[f"transformer.h.{i}.attn.c_attn.weight"] = torch.cat(
            [tensors[theirs + f"self_attn.{x}_proj.weight"] for x in "qkv"])
        state[f"transformer.h.{i}.mlp.c_fc.weight"] = torch.cat(
            [tensors[theirs + "mlp.gate_proj.weight"], tensors[theirs + "mlp.up_proj.weight"]])
    return {k: v.float() for k, v in state.items()}


def llama_config_json(config, vocab_size, layout, eot):
    """config.json of a Llama or Qwen3 folder of this model."""
    head_size = config.n_embd // config.n_head
    return {"architectures": [LLAMA_LAYOUTS[layout]], "model_type": layout, "vocab_size": vocab_size,
            "hidden_size": config.n_embd, "intermediate_size": round(8 * config.n_embd / 3),
            "num_hidden_layers": config.n_layer, "num_attention_heads": config.n_head,
            "num_key_value_heads": config.n_head, "head_dim": head_size, "hidden_act": "silu",
            "max_position_embeddings": config.block_size, "rms_norm_eps": 1e-5,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}, "rope_theta": 10000.0,
            "attention_bias": False, "mlp_bias": False, "attention_dropout": config.dropout,
            "tie_word_embeddings": config.tie_embeddings, "bos_token_id": eot, "eos_token_id": eot,
            "torch_dtype": "float32"}


def read_llama_config(hf, path, dropout):
    """The GPTConfig of a Llama or Qwen3 config.json; what our model cannot compute is refused."""
    head_size = hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"]
    rope = hf.get("rope_parameters") or {}
    problems = []
    if hf.get("num_key_value_heads", hf["num_attention_heads"]) != hf["num_attention_heads"]:
        problems.append("grouped-query attention (num_key_value_heads)")
    if head_size * hf["num_attention_heads"] != hf["hidden_size"]:
        problems.append("head_dim x heads other than hidden_size")
    if hf["intermediate_size"] != round(8 * hf["hidden_size"] / 3):
        problems.append("intermediate_size other than 8/3 of hidden_size")
    if rope.get("rope_type", "default") != "default" or rope.get("rope_theta", hf.get("rope_theta", 10000.0)) != 10000.0:
        problems.append("rotary positions other than base 10000")
    if hf.get("hidden_act", "silu") != "silu" or hf.get("attention_bias") or hf.get("mlp_bias"):
        problems.append("an activation other than silu, or biases")
    if abs(hf.get("rms_norm_eps", 1e-5) - 1e-5) > 1e-12:
        problems.append(f"rms_norm_eps={hf['rms_norm_eps']}")
    if problems:
        raise UserError(f"{path} describes a model this GPT cannot compute exactly: {'; '.join(problems)}")
    return GPTConfig(block_size=hf["max_position_embeddings"], vocab_size=hf["vocab_size"],
                     n_layer=hf["num_hidden_layers"], n_head=hf["num_attention_heads"], n_embd=hf["hidden_size"],
                     dropout=dropout, qk_norm=hf["model_type"] == "qwen3",
                     tie_embeddings=hf.get("tie_word_embeddings", True), **LLAMA_PARTS)


def char_tokenizer(chars):
    """A Hugging Face tokenizer of one token per character (ids in the order of chars), decoded
    without spaces: what a character model reads, for transformers' AutoTokenizer. A character
    outside chars is an error, as in CharCodec."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    tokenizer = Tokenizer(models.WordLevel({ch: i for i, ch in enumerate(chars)}, unk_token=CHAR_UNKNOWN))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # every character
    tokenizer.decoder = decoders.Fuse()  # the characters joined as they are
    return tokenizer


def write_char_tokenizer(folder, codec, max_length):
    """A character model's characters as tokenizer.json and tokenizer_config.json: transformers'
    AutoTokenizer encodes and decodes as CharCodec does, and --init_from=FOLDER reads them back."""
    with atomic_write(Path(folder) / TOKENIZER_FILE, "w") as f:
        f.write(char_tokenizer(codec.chars).to_str())
    with atomic_write(Path(folder) / "tokenizer_config.json", "w") as f:
        json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": max_length,
                   "clean_up_tokenization_spaces": False}, f, indent=2)


def folder_meta(folder):
    """The data a Hugging Face folder's model reads, from its tokenizer.json when it has one (a
    character model's or a BPE of its own, as export.py writes them), else None: GPT-2's BPE,
    which a folder of GPT-2's (from the Hub) may also hold as a tokenizer.json."""
    path = Path(folder) / TOKENIZER_FILE
    if not path.is_file():
        return None
    text = path.read_text(encoding="utf-8")
    model = json.loads(text).get("model", {})
    if model.get("type") == "WordLevel" and model.get("unk_token") == CHAR_UNKNOWN:
        chars = "".join(sorted(model["vocab"], key=model["vocab"].get))
        return {"codec": "char", "vocab_size": len(chars), "chars": chars}
    vocab = model.get("vocab", {})
    if len(vocab) == GPT2_META["vocab_size"] and vocab.get("<|endoftext|>") == 50256 and vocab.get("\u0120the") == 262:
        return None  # GPT-2's own: its data is tiktoken's, as prepare/shakespeare.py writes it
    if model.get("type") == "BPE":
        return {"codec": "bpe", "vocab_size": BPECodec(text).vocab_size, "tokenizer": text}
    return None


def write_gpt2_tokenizer(folder, max_length):
    """vocab.json and merges.txt: the files tiktoken builds GPT-2's BPE from (read from its cache)."""
    from tiktoken.load import read_file_cached

    for name, (url, sha256) in GPT2_TOKENIZER_FILES.items():
        try:
            data = read_file_cached(url, sha256)
        except Exception as e:
            raise UserError(f"cannot read GPT-2's BPE files for the tokenizer ({str(e)[:100]}); with no internet, "
                            f"set TIKTOKEN_CACHE_DIR to a folder holding tiktoken's cached files") from None
        with atomic_write(Path(folder) / name) as f:
            f.write(data)
    with atomic_write(Path(folder) / "tokenizer_config.json", "w") as f:
        json.dump({"tokenizer_class": "GPT2Tokenizer", "model_max_length": max_length, "bos_token": "<|endoftext|>",
                   "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "add_prefix_space": False}, f, indent=2)
