"""The long and the short end of the SFT lengths: multi-turn conversations about one order, and
one-question chats about the shop's policies (data/README.md shows the length histogram).

Real chat SFT sets are not made of equal-length tickets: most conversations are short, a few run
to many turns. The tickets of records.py are all 87-202 tokens long; these two kinds widen the
spread to about 30-900 tokens, which is what padding wastes compute on and packing recovers.

    long_record  {"messages", "meta"}  3-6 user turns about one order of 1-6 items; the customer
                 tells a little of their situation before each question; every assistant turn
                 answers from the order record, in one voice throughout
    faq_record   {"messages", "meta"}  one question about a policy (returns, refunds, shipping,
                 gift wrap), no order record, answered in a voice

meta has the tickets' keys ("intent", "fact", "voice", "turns", "intents", "facts") plus
"kind": "long" or "faq"; the tickets carry no "kind". FAQ intents are the keys of FAQ below and
their facts the policy values of world.py.
"""

from __future__ import annotations

import random

from records import (INTENT_PREFIX, INTENT_SUFFIX, LEAD_INS, SFT_INTENTS, SYSTEM_PROMPT, VOICES, question, reply,
                     style_of, voiced)
from world import (FIRST_NAMES, FREE_SHIPPING_OVER, GIFT_WRAP_FEE, REFUND_DAYS, RETURN_DAYS, SHIPPING_FEE,
                   OrderMaker, fact_value)


def long_record(rng: random.Random, orders: OrderMaker) -> dict:
    voice = rng.choice(VOICES)
    o = orders.make(rng.randint(1, 6))
    # Totals only for orders of one or two items, as in the tickets: longer sums are beyond the
    # small default model, and an answer it cannot learn only teaches it to guess.
    intents_allowed = [i for i in SFT_INTENTS if i != "total" or len(o.items) <= 2]
    msgs = [{"role": "system", "content": SYSTEM_PROMPT}]
    intents, facts = [], []
    for turn in range(rng.randint(3, 6)):
        intent = rng.choice(intents_allowed)
        item = rng.choice(o.items)
        q = question(intent, rng, item, follow_up=turn > 0 and intent != "total" and rng.random() < 0.5)
        # The story goes on lines of its own above the question: the question stays the last line.
        story = " ".join(rng.choice(STORIES).format(item=rng.choice(o.items)[1].name,
                                                    who=rng.choice(WHO), name=rng.choice(FIRST_NAMES))
                         for _ in range(rng.randint(0, 5)))
        asked = f"{story}\n{q}" if story else q
        user = f"{rng.choice(LEAD_INS)}{o.record()}\n\n{asked}" if turn == 0 else asked
        msgs += [{"role": "user", "content": user},
                 {"role": "assistant", "content": reply(intent, o, voice, rng, item)}]
        intents.append(intent)
        facts.append(fact_value(intent, o, item))
    meta = {"intent": intents[-1], "fact": facts[-1], "voice": voice, "turns": len(facts),
            "intents": intents, "facts": facts, "kind": "long"}
    return {"messages": msgs, "meta": meta}


def faq_record(rng: random.Random) -> dict:
    voice = rng.choice(VOICES)
    intent = rng.choice(sorted(FAQ))
    questions, cores, fact = FAQ[intent]
    prefix = rng.choice(INTENT_PREFIX)
    q = rng.choice(questions)
    if prefix and not prefix.endswith((". ", ": ")):
        q = q[:1].lower() + q[1:]
    user = prefix + q + rng.choice(INTENT_SUFFIX).format(name=rng.choice(FIRST_NAMES))
    answer = voiced(rng.choice(cores[style_of(voice)]).format(v=fact), voice, rng)
    msgs = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user},
            {"role": "assistant", "content": answer}]
    meta = {"intent": intent, "fact": fact, "voice": voice, "turns": 1, "intents": [intent], "facts": [fact],
            "kind": "faq"}
    return {"messages": msgs, "meta": meta}

# ---------------------------------------------------------------------------------------------
# Phrase tables
# ---------------------------------------------------------------------------------------------

WHO = ["my sister", "my brother", "my mother", "my father", "a friend", "my neighbour", "my partner",
       "a colleague", "my grandmother", "my son", "my daughter"]
STORIES = [
    "I ordered the {item} as a present for {who}, so I want to be sure it comes in time.",
    "This is my first order with Minimart and I am not sure how everything works yet.",
    "{name} from my office recommended your shop, which is why I placed this order.",
    "I am moving house soon, so I need to plan when I will be at home to receive the parcel.",
    "The {item} is for {who}, who has been looking for one for a long time.",
    "I have been checking my e-mail every day but I could not find the answer there.",
    "Sorry if I ask too many questions, I just like to keep track of my orders.",
    "I will be away for a few days next week, so the timing matters to me.",
    "My last order from another shop went missing, which is why I am a little worried.",
    "I keep all my receipts in one folder and I want my notes to be right.",
    "I might want to send the {item} back if it does not fit in my kitchen.",
    "Thanks for answering so quickly, it really helps.",
    "{who} asked me about this order yesterday and I did not know what to say.",
    "I am writing this from my phone, so sorry for any typos.",
]

# intent: (questions, answer cores by style, the fact every answer states)
FAQ = {
    "return_window": (
        ["How long do I have to return something?", "What is your return policy?",
         "How many days do I get for returns?", "Can I send an item back after a while?"],
        {"neutral": ["You can return items within {v} of delivery.", "Returns are accepted within {v} of delivery."],
         "terse": ["Within {v} of delivery.", "Returns: {v}."],
         "casual": ["you've got {v} after delivery", "{v} from when it arrives"]},
        f"{RETURN_DAYS} days"),
    "refund_time": (
        ["How long does a refund take?", "When do I get my money back after a return?",
         "How fast are refunds?", "How long until a refund shows up?"],
        {"neutral": ["Your refund arrives within {v}.", "The refund is paid within {v}."],
         "terse": ["Within {v}.", "Refunds: {v}."],
         "casual": ["takes up to {v}", "you'll see it within {v}"]},
        f"{REFUND_DAYS} working days"),
    "shipping_cost": (
        ["How much is shipping?", "What does delivery cost?", "What do you charge for shipping?",
         "Is there a delivery fee?"],
        {"neutral": ["The shipping fee is {v} per order.", "You pay {v} for shipping on each order."],
         "terse": ["{v}.", "Shipping: {v}."],
         "casual": ["it's {v} for shipping", "shipping's {v}"]},
        f"${SHIPPING_FEE}"),
    "free_shipping": (
        ["When is shipping free?", "Do you have free delivery?", "How much do I need to spend for free shipping?",
         "Is there a minimum for free shipping?"],
        {"neutral": ["The shipping is free for orders over {v}.", "You get free shipping on orders over {v}."],
         "terse": ["Free over {v}.", "Orders over {v}."],
         "casual": ["spend over {v} and it's free", "free once you're over {v}"]},
        f"${FREE_SHIPPING_OVER}"),
    "gift_wrap": (
        ["Do you offer gift wrap?", "How much is gift wrapping?", "Can you wrap my order as a gift?",
         "What does gift wrap cost?"],
        {"neutral": ["The gift wrap costs {v} per order.", "Your order can be gift wrapped for {v}."],
         "terse": ["{v}.", "Gift wrap: {v}."],
         "casual": ["yep, it's {v}", "gift wrap is {v}"]},
        f"${GIFT_WRAP_FEE}"),
}
