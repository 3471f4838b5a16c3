"""Reference tokenizer outputs from transformers.AutoTokenizer, for tests/unit/tokenizer.test.ts.

usage: tokenizer_reference.py <tokenizer folder> <cases.json> <out.json>
cases.json: {"texts": [str], "chats": [{"messages", "add_generation_prompt", "enable_thinking"?, "tools"?}],
             "tokens": [str]}
"""

import json
import sys

from transformers import AutoTokenizer


def main() -> None:
    folder, cases_path, out_path = sys.argv[1:4]
    tok = AutoTokenizer.from_pretrained(folder)
    with open(cases_path, encoding="utf-8") as f:
        cases = json.load(f)

    texts = []
    for text in cases["texts"]:
        ids = tok.encode(text, add_special_tokens=True)
        texts.append(
            {
                "ids": ids,
                "idsNoSpecial": tok.encode(text, add_special_tokens=False),
                "decoded": tok.decode(ids, skip_special_tokens=False),
                "decodedSkipSpecial": tok.decode(ids, skip_special_tokens=True),
            }
        )

    chats = []
    for chat in cases["chats"]:
        kwargs = {"add_generation_prompt": chat["add_generation_prompt"]}
        if "enable_thinking" in chat:
            kwargs["enable_thinking"] = chat["enable_thinking"]
        if "tools" in chat:
            kwargs["tools"] = chat["tools"]
        text = tok.apply_chat_template(chat["messages"], tokenize=False, **kwargs)
        encoded = tok.apply_chat_template(chat["messages"], tokenize=True, return_dict=True, **kwargs)
        ids = list(encoded["input_ids"])
        chats.append(
            {
                "text": text,
                "ids": ids,
                "decodedSkipSpecial": tok.decode(ids, skip_special_tokens=True),
            }
        )

    out = {
        "texts": texts,
        "chats": chats,
        "tokenIds": [tok.convert_tokens_to_ids(t) for t in cases["tokens"]],
        "len": len(tok),
        "eosTokenId": tok.eos_token_id,
        "padTokenId": tok.pad_token_id,
        "bosTokenId": tok.bos_token_id,
    }
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False)


if __name__ == "__main__":
    main()
