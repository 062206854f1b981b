# The character-level Shakespeare model for one GPU: 6 layers, 6 heads, 384 wide, context 256
# (10.65M parameters). On a CPU use configs/shakespeare_cpu.py instead: this one takes hours there
# (its step on a CPU: docs/performance.md#beside-nanogpt).
out_dir = "out-shakespeare-char"
eval_interval = 250  # the model overfits this small data set: evaluate often, keep the best
eval_iters = 200
log_interval = 10
always_save_checkpoint = False  # only save when val improves

dataset = "shakespeare_char"
gradient_accumulation_steps = 1
batch_size = 64
block_size = 256  # characters of context

n_layer = 6
n_head = 6
n_embd = 384
dropout = 0.2
activation = "gelu_exact"  # nanoGPT's GELU, cheaper on a CPU than GPT-2's tanh form

learning_rate = 1e-3  # a small model can take a larger learning rate
max_iters = 5000
lr_decay_iters = max_iters
min_lr = learning_rate / 10
beta2 = 0.99  # few tokens per step: average the second moment over more steps
warmup_iters = 100
