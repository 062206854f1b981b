# GPT-3 13B: Table 2.1 of "Language Models are Few-Shot Learners" (Brown et al., 2020).
#   python explain.py summary configs/gpt3/13b.py --untied                # parameters, memory, FLOPs
#   python train.py configs/gpt3/13b.py configs/gpt3/schedule.py          # the paper's recipe
n_layer = 40
n_head = 40
n_embd = 5120  # the table's 5140 is a typo: 40 heads of 128 are 5120
block_size = 2048  # every size
vocab_size = 50257  # GPT-2's BPE, not padded: the parameter counts are the paper's
bias = True
learning_rate = 1.0e-4
batch_size = 16  # x 64 micro-batches x 2048 tokens: 2M tokens a step, as in the paper
gradient_accumulation_steps = 64
