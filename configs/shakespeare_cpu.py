# The character-level Shakespeare model for a CPU: 4 layers, 4 heads, 128 wide, context 64
# (0.80M parameters), trained for 3 minutes on whatever CPU runs it; configs/shakespeare.py is
# the GPU model. Results and how they were measured: docs/performance.md.
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
dropout = 0.0  # 0.1 scores worse here (docs/performance.md#which-tokenizer)
activation = "gelu_exact"  # nanoGPT's GELU, cheaper on a CPU than GPT-2's tanh form
# GPT-2's parts: at these 3 minutes none of the newer ones beats them once each one's learning
# rate is tuned (docs/performance.md#the-newer-gpt-parts-on-the-cpu-recipe)
compile = True  # some seconds to compile, then faster steps (dtype auto takes bfloat16 where the CPU has it)

optimizer = "muon"  # learns more a step than AdamW here, for a step that costs a little more
learning_rate = 4.5e-3  # a small model takes a large one; the rates tried: docs/performance.md#the-newer-gpt-parts-on-the-cpu-recipe
time_budget = 180  # seconds, compiling and evaluations included: the steps that fit are chosen after 100 (--max_iters=N fixes them)
min_lr = learning_rate / 10
beta2 = 0.99
warmup_iters = 100
