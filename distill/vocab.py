"""Logit distillation needs one vocabulary: checks made before training starts."""

from __future__ import annotations

from typing import Sequence

from distill.errors import UserError


def _teacher_tokenizer(name_or_path: str, trusted: Sequence[str]):
    """The teacher's own tokenizer, or None when it has no tokenizer files."""
    from transformers import AutoTokenizer

    from students import sources

    try:
        return sources.pretrained(AutoTokenizer, name_or_path,
                                  sources.is_trusted(name_or_path, trusted),
                                  key="teacher.hf.name_or_path")
    except sources.CustomCodeRefused as exc:
        raise UserError(str(exc)) from None
    except (OSError, ValueError):
        return None


def _describe_difference(ours: dict[str, int], theirs: dict[str, int]) -> str:
    for token, index in sorted(ours.items(), key=lambda item: item[1]):
        if theirs.get(token) != index:
            where = "absent" if token not in theirs else f"id {theirs[token]}"
            return f"e.g. token {token!r} is id {index} in the data's tokenizer, {where} in the teacher's"
    extra = sorted(set(theirs) - set(ours), key=theirs.get)[:1]
    return f"e.g. the teacher's tokenizer has {extra[0]!r} (id {theirs[extra[0]]}) besides" \
        if extra else "their special tokens differ"


def shared_vocab_rows(tokenizer, student_rows: int, teacher_rows: int | None,
                      teacher_name_or_path: str | None = None,
                      data_tokenizer: str | None = None, trusted: Sequence[str] = ()) -> int:
    """How many output-head rows the losses compare: the tokenizer's size. Heads padded
    beyond it (e.g. 152064 rows for a 151936-token tokenizer) have their padding rows
    ignored. Refuses (exit status 2) heads that cannot score every token, a pretrained
    teacher whose own tokenizer differs from the data's, and one without tokenizer files
    (whose vocabulary cannot be checked) unless the data's tokenizer is loaded from the
    teacher's own path (``data_tokenizer``, the recipe's data.tokenizer)."""
    tokens = len(tokenizer)
    if student_rows < tokens:
        raise UserError(f"vocabulary: the student's output head has {student_rows} rows but "
                        f"the tokenizer has {tokens} tokens.")
    if teacher_rows is not None and teacher_rows < tokens:
        raise UserError(f"vocabulary: the teacher's output head has {teacher_rows} rows but "
                        f"the tokenizer has {tokens} tokens; teacher and student must share "
                        "one vocabulary (set data.tokenizer to the teacher's tokenizer).")
    if not teacher_name_or_path:
        return tokens  # no teacher, or one built here on the data's own tokenizer
    from students import sources

    if data_tokenizer and sources.same(data_tokenizer, teacher_name_or_path):
        return tokens  # the data's tokenizer is the teacher's own, by construction
    theirs = _teacher_tokenizer(teacher_name_or_path, trusted)
    if theirs is None:
        # A head of the right size says nothing of which token each row is: a teacher
        # trained on another vocabulary would teach noise without a word.
        raise UserError(
            f"vocabulary: the teacher {teacher_name_or_path} has no tokenizer files, so "
            f"whether its vocabulary is the data's ({tokens} tokens) cannot be checked. Save "
            "the tokenizer the teacher was trained with beside its weights "
            "(tokenizer.save_pretrained) and set data.tokenizer to that directory.")
    ours_vocab, their_vocab = tokenizer.get_vocab(), theirs.get_vocab()
    if ours_vocab != their_vocab:
        raise UserError(
            f"vocabulary: the teacher's tokenizer ({len(theirs)} tokens, "
            f"{teacher_name_or_path}) differs from the data's ({tokens} tokens); "
            f"{_describe_difference(ours_vocab, their_vocab)}. Set data.tokenizer to "
            "the teacher's tokenizer.")
    return tokens
