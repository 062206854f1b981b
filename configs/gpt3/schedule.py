# What every size of GPT-3 shares, after its config: python train.py configs/gpt3/175b.py configs/gpt3/schedule.py
# The sizes' files set the shape, learning rate and batch; this file reads them (a config sees
# the settings before it). AdamW's betas (0.9, 0.95) and weight decay 0.1 are train.py's defaults.
dropout = 0.0
dataset = "openwebtext"  # GPT-3's own mix of web text, books and Wikipedia is not public
out_dir = "out-gpt3"
min_lr = learning_rate / 10  # cosine decay to 10%
# 300B tokens in all; warmup over the first 375M, decay over 260B
max_iters = 300_000_000_000 // (batch_size * gradient_accumulation_steps * block_size)
warmup_iters = 375_000_000 // (batch_size * gradient_accumulation_steps * block_size)
lr_decay_iters = 260_000_000_000 // (batch_size * gradient_accumulation_steps * block_size)
