# GPT-3 13B, from Table 2.1 of "Language Models are Few-Shot Learners"
# (Brown et al., 2020). Its parameters, memory and FLOPs: python explain.py summary configs/gpt3/13b.py;
# add --untied to count an unembedding apart from the token embedding (ours are tied, one matrix).
out_dir = "out-gpt3-13b"
dataset = "openwebtext"  # GPT-3's own mix of web text, books and Wikipedia is not public

n_layer = 40
n_head = 40
n_embd = 5120  # the paper's table says 5140, a typo: 40 heads of 128 are 5120
block_size = 2048  # tokens of context, every size
vocab_size = 50257  # GPT-2's BPE as it is: not padded, so the counts match the paper's
bias = True
dropout = 0.0

# 2M tokens a step, as in the paper: 16 sequences x 64 micro-batches x 2048 tokens = 2,097,152
batch_size = 16
gradient_accumulation_steps = 64
learning_rate = 1.0e-4
min_lr = learning_rate / 10  # cosine decay to 10%
beta1 = 0.9
beta2 = 0.95
weight_decay = 0.1
# 300B tokens in all; warmup over the first 375M, decay over 260B
max_iters = 300_000_000_000 // (batch_size * gradient_accumulation_steps * block_size)
warmup_iters = 375_000_000 // (batch_size * gradient_accumulation_steps * block_size)
lr_decay_iters = 260_000_000_000 // (batch_size * gradient_accumulation_steps * block_size)
