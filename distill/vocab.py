"""Logit distillation needs one vocabulary: checks made before training starts."""

from __future__ import annotations

from distill.errors import UserError


def _teacher_tokenizer(name_or_path: str | None):
    if not name_or_path:
        return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError):
        return None  # a checkpoint without tokenizer files: only the sizes can be checked


def _describe_difference(ours: dict[str, int], theirs: dict[str, int]) -> str:
    for token, index in sorted(ours.items(), key=lambda item: item[1]):
        if theirs.get(token) != index:
            where = "absent" if token not in theirs else f"id {theirs[token]}"
            return f"e.g. token {token!r} is id {index} in the data's tokenizer, {where} in the teacher's"
    extra = sorted(set(theirs) - set(ours), key=theirs.get)[:1]
    return f"e.g. the teacher's tokenizer has {extra[0]!r} (id {theirs[extra[0]]}) besides" \
        if extra else "their special tokens differ"


def shared_vocab_rows(tokenizer, student_rows: int, teacher_rows: int | None,
                      teacher_name_or_path: str | None = None) -> int:
    """How many output-head rows the losses compare: the tokenizer's size. Heads padded
    beyond it (e.g. 152064 rows for a 151936-token tokenizer) have their padding rows
    ignored. Refuses (exit status 2) heads that cannot score every token, and a teacher
    whose own tokenizer differs from the data's."""
    tokens = len(tokenizer)
    if student_rows < tokens:
        raise UserError(f"vocabulary: the student's output head has {student_rows} rows but "
                        f"the tokenizer has {tokens} tokens.")
    if teacher_rows is not None and teacher_rows < tokens:
        raise UserError(f"vocabulary: the teacher's output head has {teacher_rows} rows but "
                        f"the tokenizer has {tokens} tokens; teacher and student must share "
                        "one vocabulary (set data.tokenizer to the teacher's tokenizer).")
    theirs = _teacher_tokenizer(teacher_name_or_path)
    if theirs is not None:
        ours_vocab, their_vocab = tokenizer.get_vocab(), theirs.get_vocab()
        if ours_vocab != their_vocab:
            raise UserError(
                f"vocabulary: the teacher's tokenizer ({len(theirs)} tokens, "
                f"{teacher_name_or_path}) differs from the data's ({tokens} tokens); "
                f"{_describe_difference(ours_vocab, their_vocab)}. Set data.tokenizer to "
                "the teacher's tokenizer.")
    return tokens
