# GPT-3 175B: Table 2.1 of "Language Models are Few-Shot Learners" (Brown et al., 2020).
#   python explain.py summary configs/gpt3/175b.py --untied                # parameters, memory, FLOPs
#   python train.py configs/gpt3/175b.py configs/gpt3/schedule.py          # the paper's recipe
# Its state is 2.8 TB (16 bytes a parameter): FSDP over 64+ GPUs holds that, but one sequence's
# activations (~82 GB, not recomputed here) exceed an 80 GB GPU, so it does not train as it is:
# docs/distributed.md#fsdp-what-fits-where.
n_layer = 96
n_head = 96
n_embd = 12288
block_size = 2048  # every size
vocab_size = 50257  # GPT-2's BPE, not padded: the parameter counts are the paper's
bias = True
learning_rate = 0.6e-4
batch_size = 16  # x 100 micro-batches x 2048 tokens: 3.2M tokens a step, as in the paper
gradient_accumulation_steps = 100
