# GPT-3 XL, 1.3B: Table 2.1 of "Language Models are Few-Shot Learners" (Brown et al., 2020).
#   python explain.py summary configs/gpt3/1.3b.py --untied                # parameters, memory, FLOPs
#   python train.py configs/gpt3/1.3b.py configs/gpt3/schedule.py          # the paper's recipe
n_layer = 24
n_head = 16  # the table's 24 heads of 128 do not make 2048 wide: 16 heads of 128 do
n_embd = 2048
block_size = 2048  # every size
vocab_size = 50257  # GPT-2's BPE, not padded: the parameter counts are the paper's
bias = True
learning_rate = 2.0e-4
batch_size = 8  # x 64 micro-batches x 2048 tokens: 1M tokens a step, as in the paper
gradient_accumulation_steps = 64
