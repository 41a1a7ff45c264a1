from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from distill import data as data_module
from distill.config import DataConfig
from distill.corpus import load_corpus
from distill.data import BlockOrder, load_tokenizer, pack, prepare_data, split_block
from distill.errors import UserError


def test_stdlib_corpus_is_deterministic_and_split(cache_dir):
    cfg = DataConfig(max_chars=200_000, validation_fraction=0.1)
    first, second = load_corpus(cfg), load_corpus(cfg)
    assert first.train == second.train and first.validation == second.validation
    assert first.train and first.validation
    assert not set(first.validation) & set(first.train)
    assert sum(map(len, first.train + first.validation)) == 200_000


def test_packing_gives_next_token_labels():
    class Tok:  # a stand-in tokenizer whose ids are known in advance
        eos_token_id = 0

        def __call__(self, texts, add_special_tokens=False):
            return {"input_ids": [[int(w) for w in t.split()] for t in texts]}

    blocks = pack(["1 2 3", "4 5 6 7", "8"], Tok(), block_size=4, what="train")
    # stream: 1 2 3 0 4 5 6 7 0 8 0 (11 tokens) -> (11 - 1) // 4 = 2 blocks of 5, overlapping by 1
    assert blocks.tolist() == [[1, 2, 3, 0, 4], [4, 5, 6, 7, 0]]
    batch = split_block(blocks)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 0], [4, 5, 6, 7]]
    assert batch["labels"].tolist() == [[2, 3, 0, 4], [5, 6, 7, 0]]


def test_too_little_text_for_one_block():
    class Tok:
        eos_token_id = 0

        def __call__(self, texts, add_special_tokens=False):
            return {"input_ids": [[1] for _ in texts]}

    with pytest.raises(UserError, match="fewer than data.block_size"):
        pack(["a"], Tok(), block_size=16, what="validation")


def test_bpe_tokenizer_is_cached_and_reused(cache_dir, monkeypatch):
    cfg = DataConfig(max_chars=50_000, vocab_size=400, cache_dir=str(cache_dir / "tok"))
    corpus = load_corpus(cfg)
    tokenizer = load_tokenizer(cfg, corpus)
    assert len(tokenizer) == 400 and tokenizer.eos_token == data_module.EOS_TOKEN
    text = "def f(x):\n    return x + 1\n"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text

    def must_not_train(*args, **kwargs):
        raise AssertionError("the cached tokenizer should have been reused")

    monkeypatch.setattr(data_module, "_train_bpe", must_not_train)
    again = load_tokenizer(cfg, corpus)
    assert again(text)["input_ids"] == tokenizer(text)["input_ids"]


def test_local_files_txt_jsonl_parquet(tmp_path, cache_dir):
    lines = [f"line number {i} says hello to the world of tokens" for i in range(400)]
    (tmp_path / "a.txt").write_text("\n".join(lines[:200]))
    with open(tmp_path / "b.jsonl", "w") as handle:
        for line in lines[200:300]:
            handle.write(json.dumps({"body": line, "id": 1}) + "\n")
    import datasets

    datasets.Dataset.from_dict({"body": lines[300:]}).to_parquet(str(tmp_path / "c.parquet"))
    cfg = DataConfig(source="files", files=[str(tmp_path / "a.txt"), str(tmp_path / "*.jsonl"),
                                            str(tmp_path / "c.parquet")],
                     text_field="body", vocab_size=300, block_size=16, document="line",
                     validation_fraction=0.1, cache_dir=str(cache_dir))
    corpus = load_corpus(cfg)
    assert sorted(corpus.train + corpus.validation) == sorted(lines)
    packed = prepare_data(cfg, corpus)
    assert packed.train.shape[1] == 17 and len(packed.validation) > 0
    # by default a text file is one document, its newlines kept; rows stay one each
    whole = load_corpus(DataConfig(source="files", files=cfg.files, text_field="body"))
    documents = whole.train + whole.validation
    assert len(documents) == 1 + 100 + 100 and "\n".join(lines[:200]) in documents


def test_hub_dataset_path_with_local_dataset_dir(tmp_path, cache_dir):
    # load_dataset(name) also takes a local dataset directory: the hub code path, offline.
    (tmp_path / "ds").mkdir()
    with open(tmp_path / "ds" / "train.jsonl", "w") as handle:
        for i in range(50):
            handle.write(json.dumps({"content": f"document {i} " * 20}) + "\n")
    cfg = DataConfig(source="hub", hub_name=str(tmp_path / "ds"), text_field="content")
    corpus = load_corpus(cfg)
    assert len(corpus.train) + len(corpus.validation) == 50
    # streamed (datasets' streaming=True): the same documents, in the same split
    streamed = load_corpus(DataConfig(source="hub", hub_name=str(tmp_path / "ds"),
                                      text_field="content", streaming=True))
    assert (streamed.train, streamed.validation) == (corpus.train, corpus.validation)
    with pytest.raises(UserError, match="has no column 'text'.*content"):
        load_corpus(DataConfig(source="hub", hub_name=str(tmp_path / "ds"))).train


@pytest.mark.parametrize("make, message", [
    (lambda d: [str(d / "nope.txt")], "file not found"),
    (lambda d: [str(d / "*.missing")], "no file matches"),
    (lambda d: [_write(d / "empty.txt", "\n\n")], "is empty"),
    (lambda d: [_write(d / "x.bin", "a,b")], r"x\.bin \(extension '\.bin'\).*data\.format: text"),
    (lambda d: [_write(d / "x.jsonl", '{"other": "hi"}\n')],
     r"x\.jsonl, line 1: no field 'text' \(data.text_field\); its fields are: other"),
])
def test_bad_files_get_clear_errors(tmp_path, make, message):
    with pytest.raises(UserError, match=message):
        load_corpus(DataConfig(source="files", files=make(tmp_path))).train


def _write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_any_transformers_tokenizer_by_path(tmp_path, cache_dir):
    cfg = DataConfig(max_chars=30_000, vocab_size=350, cache_dir=str(cache_dir / "tok2"))
    corpus = load_corpus(cfg)
    load_tokenizer(cfg, corpus).save_pretrained(tmp_path / "tok")
    other = DataConfig(max_chars=30_000, tokenizer=str(tmp_path / "tok"))
    assert len(load_tokenizer(other, corpus)) == 350
    with pytest.raises(UserError, match=rf"^data.tokenizer: could not load "
                                        rf"'{tmp_path / 'missing'}': it does not exist"):
        load_tokenizer(DataConfig(tokenizer=str(tmp_path / "missing")), corpus)


def test_block_order_resumes_exactly_and_shards_processes():
    order = BlockOrder(num_blocks=20, micro_batch_size=3, seed=7)
    seen = [order.next_indices().tolist() for _ in range(5)]
    resumed = BlockOrder(num_blocks=20, micro_batch_size=3, seed=7)
    replay = BlockOrder(num_blocks=20, micro_batch_size=3, seed=7)
    for _ in range(4):
        replay.next_indices()
    resumed.load_state_dict(replay.state_dict())
    assert [resumed.next_indices().tolist() for _ in range(3)] == \
        [replay.next_indices().tolist() for _ in range(3)]
    # 20 // 3 = 6 batches per epoch: batch 7 starts a fresh permutation
    assert len(set(sum(seen[:5], []))) == 15
    ranks = [BlockOrder(20, 2, seed=1, rank=r, world_size=2) for r in range(2)]
    single = BlockOrder(20, 4, seed=1)
    assert torch.cat([r.next_indices() for r in ranks]).tolist() == single.next_indices().tolist()
