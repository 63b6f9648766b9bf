"""A role header and content that merge into one token ("\\n" + "\\n..." -> "\\n\\n"), as byte-level
BPE tokenizers do: the render follows the joint encoding, and the merged token is content."""
from minipost.chat import IGNORE_INDEX, chatml_template, render_chat


class MergingTokenizer:
    """Characters one id each (100 + code point), except "\\n\\n", one token (3)."""
    template = chatml_template(None)
    bos_id, end_id = 0, 2
    specials = {"<|im_start|>": 1, "<|im_end|>": 2}

    def special_id(self, text):
        return self.specials[text]

    def encode(self, text):
        ids, i = [], 0
        while i < len(text):
            if text.startswith("\n\n", i):
                ids, i = ids + [3], i + 2
            else:
                ids, i = ids + [100 + ord(text[i])], i + 1
        return ids


def chars(text):
    return [100 + ord(c) for c in text]


def test_header_and_content_encode_as_one_piece_and_the_merged_token_is_content():
    chat = [{"role": "user", "content": "\nhi"}, {"role": "assistant", "content": "ok"}]
    nl = chars("\n")
    # s, written out: <|im_start|> "user" "\n\n" "hi" <|im_end|> "\n" <|im_start|> "assistant\n" "ok" <|im_end|> "\n"
    s = [1, *chars("user"), 3, *chars("hi"), 2, *nl, 1, *chars("assistant\n"), *chars("ok"), 2, *nl]
    template_on = [False] * 5 + [True] * 4 + [False] * 12 + [True] * 3 + [False]
    prompt_on = [False] * 21 + [True] * 3 + [False]
    for mask, on in (("template", template_on), ("prompt", prompt_on), ("none", [True] * len(s))):
        input_ids, targets = render_chat(chat, MergingTokenizer(), mask)
        assert input_ids == s[:-1]
        assert targets == [tok if t else IGNORE_INDEX for tok, t in zip(s[1:], on[1:])]
