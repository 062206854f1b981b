# Finetune OpenAI's GPT-2 (124M) on Shakespeare in GPT-2's BPE. First: python prepare/shakespeare.py
# Meant for a GPU (on a CPU: docs/gpt2.md); init_from='gpt2-xl' (1.5B) needs ~40 GB of GPU memory.
# Without internet, point init_from at a folder in Hugging Face's format: --init_from=PATH.
out_dir = "out-shakespeare"
eval_interval = 5
eval_iters = 40
wandb_log = False
always_save_checkpoint = False  # only save when val improves

dataset = "shakespeare"
init_from = "gpt2"  # or gpt2-medium, gpt2-large, gpt2-xl, or a local folder

# 32 sequences of 1,024 tokens per step: about 33k tokens, 9 steps per pass over the 302k training tokens
batch_size = 1
gradient_accumulation_steps = 32
max_iters = 20

learning_rate = 3e-5  # finetune at a constant, small learning rate
decay_lr = False
