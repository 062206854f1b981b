# GPT-2 (124M) from scratch on OpenWebText, nanoGPT's recipe: ~0.5M tokens per step
# (12 sequences x 1,024 tokens x 40 micro-batches = 491,520), 600k steps, ~300B tokens.
# First: python prepare/openwebtext.py (~54 GB download, ~17 GB of token files).
# What nanoGPT reports for it on 8 A100 40GB GPUs (its time and val loss): docs/data.md.
wandb_log = True
wandb_project = "owt"
wandb_run_name = "gpt2-124M"
out_dir = "out-gpt2"

dataset = "openwebtext"
batch_size = 12
block_size = 1024
gradient_accumulation_steps = 5 * 8

n_layer = 12
n_head = 12
n_embd = 768
dropout = 0.0
bias = False

learning_rate = 6e-4
max_iters = 600000
lr_decay_iters = 600000
min_lr = learning_rate / 10
warmup_iters = 2000
weight_decay = 1e-1

eval_interval = 1000
eval_iters = 200
log_interval = 10
