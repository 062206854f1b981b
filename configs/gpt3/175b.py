# GPT-3 175B, from Table 2.1 of "Language Models are Few-Shot Learners"
# (Brown et al., 2020). Its parameters, memory and FLOPs: python explain.py summary configs/gpt3/175b.py;
# add --untied to count an unembedding apart from the token embedding (ours are tied, one matrix).
out_dir = "out-gpt3-175b"
dataset = "openwebtext"  # GPT-3's own mix of web text, books and Wikipedia is not public

n_layer = 96
n_head = 96
n_embd = 12288
block_size = 2048  # tokens of context, every size
vocab_size = 50257  # GPT-2's BPE as it is: not padded, so the counts match the paper's
bias = True
dropout = 0.0

# 3.2M tokens a step, as in the paper: 16 sequences x 100 micro-batches x 2048 tokens = 3,276,800
batch_size = 16
gradient_accumulation_steps = 100
learning_rate = 0.6e-4
min_lr = learning_rate / 10  # cosine decay to 10%
beta1 = 0.9
beta2 = 0.95
weight_decay = 0.1
# 300B tokens in all; warmup over the first 375M, decay over 260B
max_iters = 300_000_000_000 // (batch_size * gradient_accumulation_steps * block_size)
warmup_iters = 375_000_000 // (batch_size * gradient_accumulation_steps * block_size)
lr_decay_iters = 260_000_000_000 // (batch_size * gradient_accumulation_steps * block_size)
