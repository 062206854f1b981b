# GPT-3 Small, 125M: Table 2.1 of "Language Models are Few-Shot Learners" (Brown et al., 2020).
#   python explain.py summary configs/gpt3/125m.py --untied                # parameters, memory, FLOPs
#   python train.py configs/gpt3/125m.py configs/gpt3/schedule.py          # the paper's recipe
n_layer = 12
n_head = 12
n_embd = 768
block_size = 2048  # every size
vocab_size = 50257  # GPT-2's BPE, not padded: the parameter counts are the paper's
bias = True
learning_rate = 6.0e-4
batch_size = 8  # x 32 micro-batches x 2048 tokens: 0.5M tokens a step, as in the paper
gradient_accumulation_steps = 32
