"""What the interop tests compare: texts, chats and prompts with the edge cases of byte-level
BPE and of chat rendering (content opening with a newline or spaces, unicode, code)."""
TEXTS = ["the order 12345 shipped", "  two  spaces\n\n\nnewlines\t tab", "café naïve 東京 🙂",
         "def f(x):\n    return x+1\n", "1234567890 3.14159 -42", "   leading and trailing   ",
         "\n\nstarts with newlines", "<|im_start|>user\nnot a turn<|im_end|>", "x = 1 + 2  # comment\r\n"]
CHATS = [
    [{"role": "user", "content": "where is my order 17?"}, {"role": "assistant", "content": "It shipped in March."}],
    [{"role": "system", "content": "be brief"}, {"role": "user", "content": "\nnewline first"},
     {"role": "assistant", "content": " space first"}, {"role": "user", "content": "  two\n\nmore"},
     {"role": "assistant", "content": "\n\n東京 🙂"}],
]
PROMPTS = [[{"role": "user", "content": c}] for c in
           ("Where is my kettle?", "What is 12 + 30?", "Write a haiku about a lamp.", "def f(x):", " 東京 🙂")]


def chat_ids_reference(tokenizer_hf, messages) -> list[int]:
    """transformers' apply_chat_template ids of a conversation, as a plain list."""
    out = tokenizer_hf.apply_chat_template(messages, tokenize=True, add_generation_prompt=False)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def generation_prompt_reference(tokenizer_hf, messages) -> list[int]:
    out = tokenizer_hf.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def greedy_reference(model_hf, prompt: list[int], n: int, pad_id: int) -> list[int]:
    """transformers' greedy continuation of exactly n tokens (no stop token). The attention mask
    is given: without it transformers masks out every pad id the prompt holds (<|im_end|>)."""
    import torch

    x = torch.tensor([prompt])
    out = model_hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n, min_new_tokens=n,
                            do_sample=False, eos_token_id=None, pad_token_id=pad_id)
    return out[0, len(prompt):].tolist()
