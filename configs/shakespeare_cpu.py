# The character-level Shakespeare model for a CPU: 4 layers, 4 heads, 128 wide, context 64
# (0.80M parameters). About 4 minutes on 2 cores; configs/shakespeare.py is the GPU model.
out_dir = "out-shakespeare-char"  # the same folder as the GPU model: sample.py looks here
eval_interval = 500
eval_iters = 40
log_interval = 100
always_save_checkpoint = False  # only save when val improves

dataset = "shakespeare_char"
gradient_accumulation_steps = 1
batch_size = 12
block_size = 64  # characters of context

n_layer = 4
n_head = 4
n_embd = 128
dropout = 0.0  # too small a model to overfit in this many steps

dtype = "float32"  # a model this small runs faster in float32 than in bfloat16 on a CPU

learning_rate = 3e-3  # measured: best val 1.665 in 4,000 steps, against 1.723 at 1e-3 (same time)
max_iters = 4000
lr_decay_iters = max_iters
min_lr = learning_rate / 10
beta2 = 0.99
warmup_iters = 100
