# The character-level Shakespeare model for a CPU: 4 layers, 4 heads, 128 wide, context 64
# (0.80M parameters). About 3 minutes on 2 cores; configs/shakespeare.py is the GPU model.
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
activation = "gelu_exact"  # nanoGPT's GELU; on a CPU ~2.5x faster than GPT-2's tanh form
compile = True  # ~20 s to compile, then ~1.35x faster steps in bfloat16 (dtype auto picks it where the CPU has it)

optimizer = "muon"  # measured: best val 1.593 in 2,500 steps, where AdamW needed 6,000 for 1.619
learning_rate = 3e-3  # measured with AdamW (4,000 steps, float32): best val 1.665, against 1.723 at 1e-3
max_iters = 2500  # 2:48 on a 2-core AMD Zen 5 (AVX512-BF16) in a slow hour, the compile included
lr_decay_iters = max_iters
min_lr = learning_rate / 10
beta2 = 0.99
warmup_iters = 100
