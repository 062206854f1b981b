# GPT-3 Medium, 350M: Table 2.1 of "Language Models are Few-Shot Learners" (Brown et al., 2020).
#   python explain.py summary configs/gpt3/350m.py --untied                # parameters, memory, FLOPs
#   python train.py configs/gpt3/350m.py configs/gpt3/schedule.py          # the paper's recipe
n_layer = 24
n_head = 16
n_embd = 1024
block_size = 2048  # every size
vocab_size = 50257  # GPT-2's BPE, not padded: the parameter counts are the paper's
bias = True
learning_rate = 3.0e-4
batch_size = 8  # x 32 micro-batches x 2048 tokens: 0.5M tokens a step, as in the paper
gradient_accumulation_steps = 32
