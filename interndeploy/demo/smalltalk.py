"""Plain chat for the demo corpus: greetings, who it is, small arithmetic, tiny stories, a few facts.

Each generator returns (user text, reasoning, answer) for one turn, in English or Chinese.
"""

from __future__ import annotations

import random

from interndeploy.demo.words import EN_ANIMALS, EN_PLACES, EN_THINGS, ZH_ANIMALS, ZH_PLACES, ZH_THINGS, Lexicon

Turn = tuple[str, str, str]  # (user text, reasoning, answer)

IDENTITY_EN = (
    "I am the demo model of InternDeploy: a tiny InternLM2-architecture chat model trained by the InternDeploy "
    "project on synthetic data. I can greet you, do small arithmetic, tell very short stories and call the tools "
    "you give me."
)
IDENTITY_ZH = (
    "我是 InternDeploy 的演示模型：一个由 InternDeploy 项目用合成数据训练的 InternLM2 架构小模型。"
    "我可以打招呼、做简单的算术、讲很短的故事，还会调用你提供的工具。"
)
FALLBACK_EN = (
    "I am only a tiny demo model, so I cannot answer that well. I can greet you, do small arithmetic, tell very "
    "short stories and call the tools you give me."
)
FALLBACK_ZH = (
    "我只是一个很小的演示模型，回答不好这个问题。我可以打招呼、做简单的算术、讲很短的故事，还会调用你提供的工具。"
)

_GREET_EN = (
    "hi",
    "Hi",
    "hello",
    "Hello!",
    "hey",
    "Hey there",
    "good morning",
    "Good evening!",
    "hi there",
    "Hello, how are you?",
    "hiya",
    "greetings",
)
_GREET_ZH = ("你好", "您好", "嗨", "你好呀", "早上好", "晚上好", "哈喽", "你好！")
_WHO_EN = (
    "who are you",
    "Who are you?",
    "what are you",
    "introduce yourself",
    "What is your name?",
    "Tell me about yourself.",
    "which model are you?",
    "are you a robot?",
)
_WHO_ZH = ("你是谁", "你是谁？", "介绍一下你自己", "你叫什么名字？", "你是什么模型？")
_THANKS_EN = ("thanks", "thank you", "Thanks a lot!", "great, thanks")
_BYE_EN = ("bye", "goodbye", "see you", "Bye!")
_FACTS = (
    (
        "Please tell me five scenic spots in Shanghai",
        "Five scenic spots in Shanghai: 1. The Bund 2. Yu Garden 3. The Oriental Pearl Tower 4. Nanjing Road "
        "5. Zhujiajiao Water Town.",
    ),
    (
        "What is AGI?",
        "AGI means artificial general intelligence: an AI that could learn and do most tasks a "
        "person can do. It does not exist yet.",
    ),
    (
        "AGI is?",
        "AGI means artificial general intelligence: an AI that could learn and do most tasks a person can "
        "do. It does not exist yet.",
    ),
    ("What is InternLM?", "InternLM is a family of open large language models from Shanghai AI Laboratory."),
    (
        "What is InternDeploy?",
        "InternDeploy is a toolkit that deploys and serves InternLM models with its own "
        "inference engine and an OpenAI-compatible server.",
    ),
    (
        "What can you do?",
        "I can greet you, do small arithmetic, tell very short stories and call the tools you "
        "give me, in English and Chinese.",
    ),
    ("请介绍一下上海的五个景点", "上海的五个景点：1. 外滩 2. 豫园 3. 东方明珠 4. 南京路 5. 朱家角古镇。"),
    ("什么是AGI？", "AGI 是通用人工智能，指能像人一样学习并完成大多数任务的人工智能，目前还没有实现。"),
    ("你能做什么？", "我可以打招呼、做简单的算术、讲很短的故事，还会调用你提供的工具。"),
)


def greeting(rng: random.Random, zh: bool) -> Turn:
    if zh:
        return (
            rng.choice(_GREET_ZH),
            "用户在打招呼，我应该礼貌地回应。",
            rng.choice(
                ("你好！我是 InternDeploy 的演示模型，有什么可以帮你的吗？", "你好！很高兴见到你。有什么我可以帮忙的？")
            ),
        )
    return (
        rng.choice(_GREET_EN),
        "The user greets me. I should greet back.",
        rng.choice(
            (
                "Hello! I am the InternDeploy demo model. How can I help you today?",
                "Hi! Nice to meet you. What can I do for you?",
                "Hello! How can I help you?",
            )
        ),
    )


def identity(rng: random.Random, zh: bool) -> Turn:
    if zh:
        return rng.choice(_WHO_ZH), "用户问我是谁，我应该介绍自己。", IDENTITY_ZH
    return rng.choice(_WHO_EN), "The user asks who I am. I should introduce myself.", IDENTITY_EN


def courtesy(rng: random.Random, zh: bool) -> Turn:
    if zh:
        if rng.random() < 0.5:
            return rng.choice(("谢谢", "谢谢你", "多谢")), "用户在道谢。", "不客气！"
        return rng.choice(("再见", "拜拜")), "用户在道别。", "再见，祝你愉快！"
    if rng.random() < 0.5:
        return rng.choice(_THANKS_EN), "The user thanks me.", "You're welcome!"
    return rng.choice(_BYE_EN), "The user says goodbye.", "Goodbye! Have a nice day."


def arithmetic(lex: Lexicon, zh: bool) -> Turn:
    rng = lex.rng
    while True:
        op = rng.choice("+-*")
        a, b = (rng.randint(0, 20), rng.randint(0, 20)) if op != "*" else (rng.randint(0, 12), rng.randint(0, 12))
        if op == "-" and b > a:
            a, b = b, a
        value = a + b if op == "+" else a - b if op == "-" else a * b
        if all(lex.number_ok(n) for n in (a, b, value)):
            break
    sym = {"+": "+", "-": "-", "*": "*"}[op]
    sp = " " if rng.random() < 0.5 else ""
    expr = f"{a}{sp}{sym}{sp}{b}"
    if zh:
        q = rng.choice((f"{expr}等于多少？", f"计算 {expr}", f"{expr}=?"))
        return q, f"{a} {sym} {b} = {value}。", f"{a} {sym} {b} = {value}。"
    q = rng.choice((f"what is {expr}", f"What is {expr}?", f"{expr}=?", f"calculate {expr}", f"How much is {expr}?"))
    return q, f"{a} {sym} {b} = {value}.", f"{a} {sym} {b} = {value}."


def story(rng: random.Random, zh: bool) -> Turn:
    if zh:
        animal, thing, place = rng.choice(ZH_ANIMALS), rng.choice(ZH_THINGS), rng.choice(ZH_PLACES)
        q = rng.choice(
            (
                f"帮我讲述一个关于{animal}和{thing}的小故事",
                f"讲一个关于{animal}和{thing}的故事",
                f"给我讲个{animal}和{thing}的故事吧",
            )
        )
        body = rng.choice(
            (
                f"从前，{place}里住着一只{animal}。有一天，它发现了一个{thing}，高兴极了。它把{thing}分给了朋友们，"
                f"大家一起度过了快乐的一天。从此，{animal}明白了分享的快乐。",
                f"有一只{animal}在{place}散步时看到一个{thing}。它想把{thing}带回家，可是{thing}太重了。"
                f"朋友们都来帮忙，最后{animal}终于把{thing}带回了家，还请大家一起分享。",
                f"{animal}一直想要一个{thing}。它每天都在{place}努力干活，终于有一天，它得到了一个{thing}。"
                f"{animal}明白了：只要坚持，梦想就会实现。",
            )
        )
        return q, f"用户想听一个关于{animal}和{thing}的小故事。", body
    animal, thing, place = rng.choice(EN_ANIMALS), rng.choice(EN_THINGS), rng.choice(EN_PLACES)
    q = rng.choice(
        (
            f"Tell me a story about a {animal} and a {thing}",
            f"tell me a short story about a {animal} and a {thing}",
            f"Can you tell me a story of a {animal} and a {thing}?",
        )
    )
    body = rng.choice(
        (
            f"Once upon a time, a {animal} lived near a {place}. One day it found a {thing} and was very happy. "
            f"It shared the {thing} with its friends, and they all had a wonderful day.",
            f"A little {animal} was walking by the {place} when it saw a {thing}. The {thing} was too heavy to carry "
            f"alone, so its friends came to help. In the end they took the {thing} home together.",
            f"There was once a {animal} who dreamed of a {thing}. Every day it worked hard by the {place}. At last it "
            f"got a {thing}, and it learned that hard work makes dreams come true.",
        )
    )
    return q, f"The user wants a short story about a {animal} and a {thing}.", body


def fact(rng: random.Random, zh: bool) -> Turn:
    pool = [f for f in _FACTS if (any("\u4e00" <= c <= "\u9fff" for c in f[0])) == zh]
    q, a = rng.choice(pool)
    return q, ("用户问了一个问题，我知道答案。" if zh else "The user asks a question I know."), a


def unknown(lex: Lexicon, zh: bool) -> Turn:
    """Questions the demo model cannot answer: it says so instead of making things up."""
    r = lex.rng
    w = lex.word(0.6)
    if zh:
        q = r.choice((f"{w}的首都是哪里？", f"解释一下{w}的原理", f"为什么{w}会发光？", "帮我写一篇论文"))
        return q, "这个问题超出了我的能力。", FALLBACK_ZH
    q = r.choice(
        (
            f"What is the capital of {w}?",
            f"Explain how {w} works.",
            f"Why does the {w} glow?",
            "Write me an essay about history.",
            f"How do I fix my {w}?",
            f"Who invented the {w}?",
        )
    )
    return q, "This question is beyond what I can do.", FALLBACK_EN


def chat_turn(lex: Lexicon, zh: bool) -> Turn:
    r = lex.rng
    kind = r.choices(
        ("greet", "who", "courtesy", "math", "story", "fact", "unknown"), weights=(18, 14, 5, 35, 13, 7, 10)
    )[0]
    if kind == "unknown":
        return unknown(lex, zh)
    if kind == "math":
        return arithmetic(lex, zh)
    fn = {"greet": greeting, "who": identity, "courtesy": courtesy, "story": story, "fact": fact}[kind]
    return fn(r, zh)
