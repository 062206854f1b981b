# The loss of OpenAI's gpt2-large on a prepared corpus (default: OpenWebText, python prepare/openwebtext.py).
# python train.py configs/eval_gpt2_large.py --dataset=shakespeare   (any GPT-2 BPE data set)
batch_size = 8
eval_iters = 500  # 500 x 8 sequences of 1,024 tokens: a close estimate
eval_only = True
wandb_log = False
init_from = "gpt2-large"
