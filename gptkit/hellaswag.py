"""HellaSwag (Zellers et al., 2019), the benchmark GPT-2 reproductions report, scored as llm.c and
build-nanogpt score it: each example is a context and 4 endings; the model reads the context
followed by each ending, and the ending it finds most likely wins. acc takes the ending whose
tokens have the lowest summed loss, acc_norm the lowest mean loss per token (the figures
reported for OpenAI's models: docs/hellaswag.md).

hellaswag.py scores a model with it; train.py every hellaswag_interval iterations."""

import json
from pathlib import Path

import torch
from torch.nn import functional as F

from gptkit.data import CharCodec
from gptkit.datasets import find_or_download
from gptkit.runlog import progress
from gptkit.settings import UserError

HELLASWAG_URL = "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl"
ENDINGS = 4


def hellaswag_file(path, data_dir):
    """The validation file: path if given, else data_dir/hellaswag/hellaswag_val.jsonl, downloaded
    there the first time."""
    if path:
        if not Path(path).is_file():
            raise UserError(f"hellaswag_file not found: {path}; name the hellaswag_val.jsonl file, or leave "
                            f"hellaswag_file unset to download it from {HELLASWAG_URL}")
        return Path(path)
    return find_or_download(Path(data_dir) / "hellaswag", "hellaswag_val.jsonl", HELLASWAG_URL,
                            other_way="pass --hellaswag_file=PATH naming a copy of it")


def read_examples(path, limit=None):
    """The examples of a HellaSwag jsonl file as {ctx, endings, label}, the first `limit` of them."""
    examples = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if limit is not None and len(examples) == limit:
                break
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                example = {"ctx": row["ctx"], "endings": row["endings"], "label": int(row["label"])}
                if len(example["endings"]) != ENDINGS or not 0 <= example["label"] < ENDINGS:
                    raise ValueError(f"{len(example['endings'])} endings, label {example['label']}")
            except (ValueError, KeyError, TypeError) as e:
                raise UserError(f"{path} line {number} is not a HellaSwag example ({type(e).__name__}: "
                                f"{str(e)[:80]}); use the file from {HELLASWAG_URL}") from None
            examples.append(example)
    if not examples:
        raise UserError(f"{path} holds no HellaSwag examples; use the file from {HELLASWAG_URL}")
    return examples


def check_vocabulary(codec, source, remedy="use a model trained on GPT-2 BPE data"):
    """HellaSwag's figures are GPT-2's, in GPT-2's BPE: a model that reads other tokens is refused."""
    if not (getattr(codec, "encoding", None) and codec.encoding.name == "gpt2"):
        kind = "characters" if isinstance(codec, CharCodec) else "tokens"
        raise not_gpt2_bpe(source, f"{codec.vocab_size:,} {kind}", remedy)


def not_gpt2_bpe(source, vocabulary, remedy="use a model trained on GPT-2 BPE data"):
    return UserError(f"{source} reads a vocabulary of {vocabulary}, not GPT-2's BPE; HellaSwag is scored in "
                     f"GPT-2's BPE, as GPT-2's figures are: {remedy}")


def render(example, codec, block_size):
    """(rows, starts, label): the context followed by each ending, as 4 lists of token ids, and
    where in each row its ending begins. An ending follows the context after a space, as GPT-2's
    BPE reads a word inside a sentence. A row longer than the model reads (block_size, plus the
    last token, which is only predicted) loses its first tokens, as lm-evaluation-harness cuts."""
    context = codec.encoding.encode_ordinary(example["ctx"])
    rows, starts = [], []
    for ending in example["endings"]:
        row = context + codec.encoding.encode_ordinary(" " + ending)
        cut = max(0, len(row) - (block_size + 1))
        rows.append(row[cut:])
        starts.append(max(len(context) - cut, 1))  # the first token is never predicted
    return rows, starts, example["label"]


def batches(rendered, max_tokens):
    """Consecutive examples together, while their rows, padded to the longest, hold at most
    max_tokens tokens (one example at least): [(tokens (4n, T) int64, mask (4n, T) bool, labels
    (n,))], where mask marks the ending tokens that are scored."""
    groups, group, longest = [], [], 0
    for example in rendered:
        example_longest = max(map(len, example[0]))
        if group and ENDINGS * (len(group) + 1) * max(longest, example_longest) > max_tokens:
            groups.append(group)
            group, longest = [], 0
        group.append(example)
        longest = max(longest, example_longest)
    if group:
        groups.append(group)
    return [stack(group) for group in groups]


def stack(group):
    rows = [row for rows, _, _ in group for row in rows]
    starts = [start for _, starts, _ in group for start in starts]
    tokens = torch.zeros(len(rows), max(map(len, rows)), dtype=torch.long)
    mask = torch.zeros(tokens.shape, dtype=torch.bool)
    for i, (row, start) in enumerate(zip(rows, starts)):
        tokens[i, :len(row)] = torch.tensor(row)
        mask[i, start:len(row)] = True
    return tokens, mask, torch.tensor([label for _, _, label in group])


def ending_losses(model, tokens, mask):
    """(summed, mean) loss of each row's ending tokens, (R,) each, for tokens and mask (R, T)."""
    logits, _ = model(tokens[:, :-1])  # (R, T - 1, V): position t predicts token t + 1
    targets, scored = tokens[:, 1:], mask[:, 1:]
    losses = torch.zeros(scored.shape, dtype=torch.float32, device=tokens.device)
    losses[scored] = F.cross_entropy(logits[scored].float(), targets[scored], reduction="none")
    summed = losses.sum(dim=1)
    return summed, summed / scored.sum(dim=1)


class HellaSwag:
    """The examples one process scores (i % world_size == rank), rendered for a model of
    block_size and batched, with at most max_tokens tokens a forward."""

    def __init__(self, path, codec, block_size, max_tokens, limit=None, rank=0, world_size=1):
        examples = read_examples(path, limit)
        self.total = len(examples)  # across every process
        self.batches = batches([render(e, codec, block_size) for e in examples[rank::world_size]], max_tokens)

    @torch.no_grad()
    def count_correct(self, model, device, autocast, forwards=0):
        """(correct by summed loss, correct by mean loss, examples) of this process's share.
        forwards: run at least that many forwards, the extra ones not counted (under FSDP every
        process runs as many, each gathering the weights)."""
        was_training = model.training
        model.eval()
        correct, examples = torch.zeros(2, dtype=torch.long, device=device), 0
        rounds = max(forwards, len(self.batches))
        for i in progress(range(rounds), desc="hellaswag", unit="batch"):
            tokens, mask, labels = self.batches[i] if i < len(self.batches) else idle_batch()
            tokens, mask, labels = tokens.to(device), mask.to(device), labels.to(device)
            with autocast:
                summed, mean = ending_losses(model, tokens, mask)
            if i < len(self.batches):
                chosen = [loss.view(-1, ENDINGS).argmin(dim=1) for loss in (summed, mean)]  # (n,) each
                correct += torch.stack([(choice == labels).sum() for choice in chosen])
                examples += len(labels)
        model.train(was_training)
        return *correct.tolist(), examples


def idle_batch():
    """A forward for a process with no batch left to run: 4 rows of two tokens."""
    return torch.zeros(ENDINGS, 2, dtype=torch.long), torch.ones(ENDINGS, 2, dtype=torch.bool), torch.zeros(1)
