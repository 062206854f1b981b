# GPT-2's parts, after another config: `python train.py configs/shakespeare_bpe_cpu.py
# configs/gpt2_parts.py` trains that config's model as GPT-2 builds it, which export.py can then
# write as a Hugging Face GPT-2 folder (configs/shakespeare_cpu.py has these parts already).
pos_encoding = "learned"  # a table of positions
norm = "layernorm"
qk_norm = False
activation = "gelu_exact"  # nanoGPT's GELU (GPT-2's tanh form is "gelu"; export.py writes either)
tie_embeddings = True  # the output layer is the input embedding
logit_softcap = 0.0  # off
