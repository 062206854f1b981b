# GPT-3 Small, 125M parameters, from Table 2.1 of "Language Models are Few-Shot Learners"
# (Brown et al., 2020). Its parameters, memory and FLOPs: python explain.py summary configs/gpt3/125m.py;
# add --untied to count an unembedding apart from the token embedding (ours are tied, one matrix).
out_dir = "out-gpt3-125m"
dataset = "openwebtext"  # GPT-3's own mix of web text, books and Wikipedia is not public

n_layer = 12
n_head = 12
n_embd = 768
block_size = 2048  # tokens of context, every size
vocab_size = 50257  # GPT-2's BPE as it is: not padded, so the counts match the paper's
bias = True
dropout = 0.0

# 0.5M tokens a step, as in the paper: 8 sequences x 32 micro-batches x 2048 tokens = 524,288
batch_size = 8
gradient_accumulation_steps = 32
learning_rate = 6.0e-4
min_lr = learning_rate / 10  # cosine decay to 10%
beta1 = 0.9
beta2 = 0.95
weight_decay = 0.1
# 300B tokens in all; warmup over the first 375M, decay over 260B
max_iters = 300_000_000_000 // (batch_size * gradient_accumulation_steps * block_size)
warmup_iters = 375_000_000 // (batch_size * gradient_accumulation_steps * block_size)
lr_decay_iters = 260_000_000_000 // (batch_size * gradient_accumulation_steps * block_size)
