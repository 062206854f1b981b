# The CPU speedrun's model with the newer GPT parts, on tiny Shakespeare in a BPE of its own
# (1,024 tokens, learned from the training text): in about the speedrun's time it scores better
# per byte than characters (docs/performance.md#which-tokenizer). Compare runs of different
# tokenizers by val_bpb (plot.py --y bpb), not by val loss, which is per token.
out_dir = "out-shakespeare-bpe-cpu"
eval_interval = 500
eval_iters = 40
log_interval = 100
always_save_checkpoint = False  # only save when val improves

dataset = "shakespeare_bpe"  # prepared on first use (prepare/shakespeare_bpe.py)
gradient_accumulation_steps = 1
batch_size = 12
block_size = 64  # tokens of context: about 155 characters

n_layer = 4
n_head = 4
n_embd = 128
dropout = 0.1  # 2.4 characters a token: the model sees its 411K training tokens 7 times, and overfits without
pos_encoding = "rope"  # the newer parts (configs/gpt2_parts.py after this file puts GPT-2's back)
norm = "rmsnorm"
qk_norm = True
activation = "relu2"
tie_embeddings = False
logit_softcap = 15.0
compile = True

optimizer = "muon"
learning_rate = 3e-3
time_budget = 180  # seconds, as configs/shakespeare_cpu.py: the steps that fit are chosen after 100 (--max_iters=N fixes them)
min_lr = learning_rate / 10
beta2 = 0.99
warmup_iters = 100
