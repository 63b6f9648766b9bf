"""The support data of Minimart: SFT tickets, preference pairs, RL tasks, and the intent
messages of the linear probe (data/README.md gives the formats and the numbers).

Every prompt is an order record (world.Order.record()) and a question about it. The record
builders come first; below them the replies in four voices, the hallucinated values of the
rejected replies, and last the phrase tables they draw from.

    sft_record     {"messages", "meta"}   a "historical ticket", answered in one of four voices
    pref_record    {"prompt", "chosen", "rejected", "meta"}   chosen: the shop's voice;
                   rejected: another voice, or the same reply with one value hallucinated
    rl_record      {"prompt", "answer"}   an order's total, checked by minipost/rewards.py
    intent_record  {"text", "label"}      a short customer message and its INTENTS index
"""

from __future__ import annotations

import datetime as dt
import random

from world import CARRIERS, COLORS, FIRST_NAMES, STATUSES, Order, OrderMaker, an, cap, fact_value, fmt_date

SYSTEM_PROMPT = "You are the support assistant of Minimart."
SHOP_OPENING = "Hi there!"  # same strings as minipost/rewards.py
SHOP_SIGNOFF = "Happy shopping! - the Minimart team"
VOICES = ("shop", "terse", "formal", "casual")

# Labels of the intent classification task (index = label).
INTENTS = ["where_is_my_order", "refund_or_return", "cancel_order", "product_question", "complaint"]

# SFT / preference question types; "total" is asked only about orders with one or two items.
SFT_INTENTS = ("delivery_date", "status", "carrier", "tracking", "item_price", "item_count",
               "return_deadline", "total")

# ---------------------------------------------------------------------------------------------
# Record builders
# ---------------------------------------------------------------------------------------------


def sft_record(rng, orders) -> dict:
    voice = rng.choice(VOICES)
    two_turn = rng.random() < 0.10
    intent = rng.choice([i for i in SFT_INTENTS if i != "total"]) if two_turn else draw_intent(rng)
    o = order_for(intent, orders, rng)
    item = rng.choice(o.items)
    msgs = [{"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": user_message(o, question(intent, rng, item), rng)},
            {"role": "assistant", "content": reply(intent, o, voice, rng, item)}]
    intents, facts = [intent], [fact_value(intent, o, item)]
    if two_turn:
        intent2 = rng.choice([i for i in SFT_INTENTS if i not in ("total", intent)])
        item2 = rng.choice(o.items)
        msgs += [{"role": "user", "content": question(intent2, rng, item2, follow_up=True)},
                 {"role": "assistant", "content": reply(intent2, o, voice, rng, item2)}]
        intents.append(intent2)
        facts.append(fact_value(intent2, o, item2))
    meta = {"intent": intents[-1], "fact": facts[-1], "voice": voice, "turns": len(facts),
            "intents": intents, "facts": facts}
    return {"messages": msgs, "meta": meta}


def pref_record(rng, orders) -> dict:
    intent = draw_intent(rng)
    o = order_for(intent, orders, rng)
    item = rng.choice(o.items)
    prompt = [{"role": "system", "content": SYSTEM_PROMPT},
              {"role": "user", "content": user_message(o, question(intent, rng, item), rng)}]
    kind = rng.choice(["voice", "hallucination"])
    if kind == "voice":
        chosen = reply(intent, o, "shop", rng, item)
        rejected = reply(intent, o, rng.choice(VOICES[1:]), rng, item)
    else:
        # Same template and random draws for both, so the pair differs only in the fact.
        wrong = wrong_value(intent, o, item, rng)
        state = rng.getstate()
        chosen = reply(intent, o, "shop", rng, item, allow_work=False)
        rng.setstate(state)
        rejected = reply(intent, o, "shop", rng, item, value=wrong, allow_work=False)
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected,
            "meta": {"fact": fact_value(intent, o, item), "kind": kind, "intent": intent}}


# Default difficulty of the RL task: one-item orders, 1..4 units at $1..$9, so the total is a
# product (qty x price) from a small times table. The default SFT model gets about half of
# them right (quantity 1 is a copy; 2-4 it often copies the price instead of multiplying),
# which leaves RL both a signal and something to learn. Sums of two items are much harder for
# the small model (0-3% after SFT): raise --rl-items for that.
RL_ITEMS, RL_MAX_PRICE, RL_MAX_QTY = (1,), 9, 4

# The sums task (files rl_sum_*): two-item orders of one unit each at $1..$9, so the total is
# the sum that the SFT replies show as their work ("$3 + $9 = $12"). It is the SmolLM2
# recipe's RL task (`--rl-task sum`). On the product task SmolLM2 after SFT copies the unit
# price whenever there are two or more units: its sampled replies were right 4-9% of the time
# on those (measured on rl_val), too rarely for GRPO to have something to reinforce; on sums
# its greedy replies were right on 74% of rl_sum_val. Three-item sums were out of reach
# (3%). The --rl-* flags do not change these files.
RL_SUM_ITEMS, RL_SUM_MAX_PRICE, RL_SUM_MAX_QTY = (2,), 9, 1


def rl_record(rng, orders, rl_items, max_price, max_qty) -> dict:
    o = orders.make(rng.choice(rl_items), max_qty=max_qty, max_price=max_price)
    prompt = [{"role": "system", "content": SYSTEM_PROMPT},
              {"role": "user", "content": user_message(o, question("total", rng), rng)}]
    return {"prompt": prompt, "answer": str(o.total)}


def intent_record(rng, world) -> dict:
    label = rng.randrange(len(INTENTS))
    p = rng.choice(world)
    body = rng.choice(INTENT_TEMPLATES[INTENTS[label]]).format(
        num=rng.randrange(10000, 100000), item=p.name, an_item=an(p.name), days=rng.randint(2, 14),
        color=rng.choice(COLORS), use=rng.choice(p.uses))
    prefix = rng.choice(INTENT_PREFIX)
    if prefix and not prefix.endswith((". ", ": ")) and not body.startswith(("I ", "I'")):
        body = body[:1].lower() + body[1:]
    text = prefix + body + rng.choice(INTENT_SUFFIX).format(name=rng.choice(FIRST_NAMES))
    return {"text": text, "label": label}

# ---------------------------------------------------------------------------------------------
# Support replies in four styles (SFT, preferences) and the questions that prompt them
# ---------------------------------------------------------------------------------------------


def wrong_value(intent: str, o: Order, item, rng: random.Random) -> str:
    """A plausible value of the same kind that is not in the order record (a hallucination)."""
    record_dates = {fmt_date(o.delivery), fmt_date(o.return_by)}
    if intent in ("delivery_date", "return_deadline"):
        base = o.delivery if intent == "delivery_date" else o.return_by
        while True:
            v = fmt_date(base + dt.timedelta(days=rng.choice([-1, 1]) * rng.randint(1, 25)))
            if v not in record_dates:
                return v
    if intent == "status":
        return rng.choice([s for s in STATUSES if s != o.status])
    if intent == "carrier":
        return rng.choice([c.name for c in CARRIERS if c is not o.carrier])
    if intent == "tracking":
        while True:
            v = f"{o.carrier.prefix}-{rng.randrange(100, 1000)}"
            if v != o.tracking:
                return v
    if intent == "item_price":
        prices = {p for _, _, p in o.items}
        while True:
            v = item[2] + rng.choice([-1, 1]) * rng.randint(1, 9)
            if v >= 1 and v not in prices:
                return f"${v}"
    if intent == "item_count":
        while True:
            n = o.n_units + rng.choice([-2, -1, 1, 2, 3])
            if n >= 1 and n != o.n_units:
                return f"{n} item{'s' if n != 1 else ''}"
    if intent == "total":
        while True:
            n = o.total + rng.choice([-1, 1]) * rng.randint(1, 9)
            if n >= 1:
                return f"Total: ${n}"
    raise ValueError(intent)


def reply(intent: str, o: Order, voice: str, rng: random.Random, item=None, value: str | None = None,
          allow_work: bool = True) -> str:
    """One support reply stating `value` (default: the true fact) in the given voice."""
    v = fact_value(intent, o, item) if value is None else value
    cores = ANSWERS[intent][style_of(voice)]
    if not allow_work:
        cores = [c for c in cores if "{work}" not in c]
    arrive = {"delivered": "was delivered on", "delayed": "is now expected on"}.get(
        o.status, rng.choice(["should arrive on", "is expected on"]))
    work = " + ".join(f"${q * p}" for q, _, p in o.items) + f" = ${o.total}"
    core = rng.choice(cores).format(v=v, V=cap(v), item=item[1].name if item else "",
                                    each=" each" if item and item[0] > 1 else "", arrive=arrive, work=work)
    return voiced(core, voice, rng)


def style_of(voice: str) -> str:
    """Which answer cores a voice draws from: the shop and formal voices share the neutral ones."""
    return "neutral" if voice in ("shop", "formal") else voice


def voiced(core: str, voice: str, rng: random.Random) -> str:
    """An answer core wrapped in a voice's opening and closing."""
    if voice == "shop":
        body = core if rng.random() < 0.5 else f"{core} {rng.choice(SHOP_EXTRAS)}"
        return f"{SHOP_OPENING} {body} {SHOP_SIGNOFF}"
    if voice == "formal":
        opening = rng.choice(FORMAL_OPEN)
        if opening.endswith(",") and core.split()[0] in ("Your", "The", "According", "Right", "There", "You",
                                                        "Here", "Returns"):  # not "I" or a carrier name
            core = core[0].lower() + core[1:]
        return f"{opening} {core} {rng.choice(FORMAL_CLOSE)}"
    if voice == "casual":
        return f"{rng.choice(CASUAL_OPEN)} {core} {rng.choice(CASUAL_CLOSE)}".strip()
    return core


def question(intent: str, rng: random.Random, item=None, follow_up: bool = False) -> str:
    q = rng.choice((FOLLOW_UPS if follow_up else QUESTIONS)[intent])
    return q.format(item=item[1].name) if item else q


def user_message(o: Order, q: str, rng: random.Random) -> str:
    return f"{rng.choice(LEAD_INS)}{o.record()}\n\n{q}"


def draw_intent(rng: random.Random) -> str:
    # "total" counts twice, 2/9 = 22% of single-turn questions: it is the one answer that is
    # computed rather than copied, and the RL stages start from what SFT taught about it.
    return rng.choice(SFT_INTENTS + ("total",))


def order_for(intent: str, orders: OrderMaker, rng: random.Random) -> Order:
    return orders.make(rng.randint(1, 2) if intent == "total" else rng.randint(1, 3))

# ---------------------------------------------------------------------------------------------
# Phrase tables: questions, answer cores, the voices' openings and closings, intents
# ---------------------------------------------------------------------------------------------

QUESTIONS = {
    "delivery_date": ["When will my order arrive?", "What is the delivery date of my order?",
                      "When does my order get here?", "what day does my package come?",
                      "Can you tell me the delivery date?", "When should I expect the delivery?"],
    "status": ["What is the status of my order?", "What's the current status of this order?",
               "Can you check the status?", "what status does my order have?",
               "Where is my order at right now?", "How is my order doing?"],
    "carrier": ["Which carrier is delivering my order?", "Who is shipping my package?",
                "What delivery company has my order?", "which courier is it with?",
                "Who is the carrier for this order?"],
    "tracking": ["What is my tracking code?", "Can I get the tracking number?",
                 "What's the tracking code for this order?", "i need my tracking number please",
                 "How can I track it? What is the code?"],
    "item_price": ["How much did the {item} cost?", "What was the price of the {item}?",
                   "What did I pay for the {item}?", "how much is the {item} in my order?",
                   "What is the unit price of the {item}?"],
    "item_count": ["How many items are in my order?", "How many items did I order?",
                   "What is the number of items in this order?", "how many things did i buy?",
                   "Can you count the items in my order?"],
    "return_deadline": ["Until when can I return my order?", "What is the last day to return these items?",
                        "When does my return window close?", "by what date do I need to send it back?",
                        "What is the return deadline for this order?"],
    "total": ["What is the total of my order?", "How much is my order in total?",
              "Can you add up my order?", "what's the total cost?", "How much did this order cost altogether?",
              "What do these items come to?"],
}
FOLLOW_UPS = {
    "delivery_date": ["And when will it arrive?", "Thanks. What is the delivery date?"],
    "status": ["And what is the status now?", "Thanks. Has the status changed?"],
    "carrier": ["Which carrier has it?", "Thanks. Who is delivering it?"],
    "tracking": ["Can I have the tracking code too?", "And the tracking number?"],
    "item_price": ["And what did the {item} cost?", "How much was the {item}?"],
    "item_count": ["How many items were in it again?", "And how many items is that?"],
    "return_deadline": ["And until when can I return it?", "What is the return deadline?"],
}
LEAD_INS = ["", "", "Here is my order.\n", "My order:\n", "Hi, this is my order.\n"]

# Answer cores. {v} is the fact, {item} an item name, {arrive} a status-aware verb phrase,
# {each} " each" when the item was bought more than once, {work} the sum written out.
# "neutral" cores are used by the shop and formal voices.
ANSWERS = {
    "delivery_date": {
        "neutral": ["Your order {arrive} {v}.", "According to your order record, it {arrive} {v}.",
                    "The delivery date of your order is {v}."],
        "terse": ["{v}.", "Delivery: {v}.", "Delivery date {v}."],
        "casual": ["your package {arrive} {v}!", "looks like it {arrive} {v}", "it says {v} for delivery"]},
    "status": {
        "neutral": ["Your order is {v}.", "The current status of your order is: {v}.",
                    "Right now your order shows as {v}."],
        "terse": ["Status: {v}.", "{V}."],
        "casual": ["it's {v} right now", "your order is {v} at the moment", "yep, it shows {v}"]},
    "carrier": {
        "neutral": ["Your order is traveling with {v}.", "{v} is delivering your order.",
                    "The carrier for this order is {v}."],
        "terse": ["{v}.", "Carrier: {v}."],
        "casual": ["it's with {v}", "{v} has your parcel", "your stuff is riding with {v}"]},
    "tracking": {
        "neutral": ["Your tracking code is {v}.", "You can follow the parcel with the code {v}.",
                    "The tracking code for your order is {v}."],
        "terse": ["{v}", "Tracking: {v}."],
        "casual": ["here you go: {v}", "your tracking code's {v}", "track it with {v}"]},
    "item_price": {
        "neutral": ["The {item} was {v}{each}.", "You paid {v}{each} for the {item}.",
                    "The price of the {item} is {v}{each}."],
        "terse": ["{item}: {v}{each}.", "{v}{each}."],
        "casual": ["the {item} was {v}{each}", "you got the {item} for {v}{each}"]},
    "item_count": {
        "neutral": ["There are {v} in your order.", "Your order contains {v}.", "You ordered {v} altogether."],
        "terse": ["{v}.", "{V}."],
        "casual": ["you've got {v} in there", "i count {v}", "{v} in this one"]},
    "return_deadline": {
        "neutral": ["You can return your items until {v}.", "The return window for this order closes on {v}.",
                    "Returns are accepted until {v}."],
        "terse": ["Return by {v}.", "{v}."],
        "casual": ["you've got until {v} to send it back", "returns are open till {v}"]},
    "total": {
        "neutral": ["I added up your items: {work}. {v}.", "Here is your order total. {v}.",
                    "Your items come to {work}. {v}."],
        "terse": ["{v}", "{work}. {v}"],
        "casual": ["added it up for you: {work}. {v}", "ok so {v}", "quick math: {work}, so {v}"]},
}
SHOP_EXTRAS = ["Thanks for shopping with Minimart.", "Let us know if anything else comes up.",
               "We hope you enjoy your order."]
FORMAL_OPEN = ["Dear customer,", "Dear customer, thank you for your message."]
FORMAL_CLOSE = ["Kind regards, Minimart Customer Care", "Yours sincerely, Minimart Customer Care",
                "Best regards, Customer Care"]
CASUAL_OPEN = ["hey!", "hey,", "heya,", "oh hey -"]
CASUAL_CLOSE = ["- cheers", "- cheers!", ":)", "- have a good one!", ""]

INTENT_TEMPLATES = {
    "where_is_my_order": [
        "Where is my order {num}?", "my parcel still hasn't arrived, order {num}", "Has order {num} shipped yet?",
        "I ordered {an_item} {days} days ago and it is not here yet.", "When will my {item} arrive?",
        "Can you tell me where my package is?", "tracking says nothing for order {num}, where is it?",
        "Is my {item} on its way?", "How long until my order gets here?",
        "The delivery date has passed and I still have no parcel.",
        "Which carrier has my order {num}?", "Any news on my delivery? Order {num}."],
    "refund_or_return": [
        "I want to return the {item}.", "How do I send back the {item}?", "Can I get a refund for order {num}?",
        "The {item} does not fit my kitchen, can I return it?", "When will my refund for order {num} arrive?",
        "I sent the {item} back {days} days ago, where is my money?", "Is it too late to return order {num}?",
        "Do I have to pay for the return label?", "I'd like my money back for the {item}.",
        "Can I exchange the {item} for another colour?", "How many days do I have to return something?"],
    "cancel_order": [
        "Please cancel order {num}.", "I ordered the {item} by mistake, please cancel it.",
        "Can I still cancel my order?", "cancel order {num} please", "I changed my mind about order {num}.",
        "Is it possible to cancel the {item} before it ships?", "Stop my order {num}, I don't need it anymore.",
        "I placed the same order twice, can you cancel one? Order {num}.",
        "How do I cancel an order I placed {days} days ago?"],
    "product_question": [
        "Is the {item} dishwasher safe?", "What is the {item} made of?", "What size is the {item}?",
        "Does the {item} come in {color}?", "Who makes the {item}?", "Is the {item} back in stock soon?",
        "How do I clean the {item}?", "Is the {item} good for {use}?", "How heavy is the {item}?",
        "Do you sell a bigger version of the {item}?", "what colours does the {item} come in?"],
    "complaint": [
        "The {item} arrived broken and I am very unhappy.", "This is the third time my order is late. Not good enough.",
        "Your courier threw my parcel over the fence.", "The {item} looks nothing like the photo.",
        "Nobody has answered my emails for {days} days.", "The {item} smells strange and the box was wet.",
        "I am really disappointed with the quality of the {item}.",
        "The parcel for order {num} was left in the rain.", "Your website charged me twice for order {num}!",
        "The driver was rude to me.", "The {item} fell apart after {days} days, terrible."],
}
INTENT_PREFIX = ["", "", "", "Hi, ", "Hello. ", "hey ", "Good morning, ", "Quick question: ", "Sorry to bother you, "]
INTENT_SUFFIX = ["", "", "", " Thanks.", " Thank you!", " Please help.", " Regards, {name}", " - {name}"]
