"""Pretraining corpus: general Minimart English, one document at a time from pretrain_doc().

The documents about orders are here: receipts, order stories, shipping e-mails, support
conversations, and the two kinds written to teach looking facts up in the context (an order
record with questions about it, an order record restated). The documents about the catalogue
and the shop (product pages, reviews, news, FAQ, care articles, gift guides) are in
corpus_shop.py. The corpus never mentions the CPT domain (corpus_cpt.py) and never uses the
shop-voice phrases of records.py (both tested).
"""

from __future__ import annotations

from corpus_shop import doc_care_article, doc_faq, doc_guide, doc_news, doc_product, doc_review
from world import (CARE, FIRST_NAMES, MATERIAL_NOTES, REFUND_DAYS, RETURN_DAYS, TOWNS, OrderMaker, fact_value,
                   fmt_date)


def pretrain_doc(rng, world, orders) -> str:
    # Order records with questions about them, receipts and order stories restate facts given
    # earlier in the document: that is where a model learns to look things up in its context
    # (induction heads, Olsson et al., 2022), which every later stage relies on. Hence their weight.
    # Every order fact a document states (a date, a status, a tracking code) has the order's
    # record before it, so it can be looked up rather than guessed: a model trained to state facts
    # its context does not support learns to make facts up (compare Gekhman et al., 2024).
    kind = rng.choices(range(12), weights=[2, 2, 1, 1, 3, 4, 3, 1, 2, 1, 8, 8])[0]
    if kind == 0:
        return doc_product(rng, world)
    if kind == 1:
        return doc_review(rng, world)
    if kind == 2:
        return doc_news(rng, world)
    if kind == 3:
        return doc_faq(rng, world)
    if kind == 4:
        return doc_receipt(rng, world, orders)
    if kind == 5:
        return doc_order(rng, world, orders)
    if kind == 6:
        return doc_conversation(rng, world, orders)
    if kind == 7:
        return doc_guide(rng, world)
    if kind == 8:
        return doc_email(rng, world, orders)
    if kind == 9:
        return doc_care_article(rng, world)
    if kind == 10:
        return doc_lookup(rng, world, orders)
    return doc_restate(rng, world, orders)

# ---------------------------------------------------------------------------------------------
# Documents about orders: every order fact they state has the order's record before it
# ---------------------------------------------------------------------------------------------


def receipt_lines(items) -> list[str]:
    return [f"{q} x {prod.name} at ${p} = ${q * p}" for q, prod, p in items]


def doc_receipt(rng, world, orders: OrderMaker) -> str:
    o = orders.make(rng.randint(1, 5), max_qty=4)
    head = rng.choice(["Minimart receipt", "Receipt", "Your Minimart receipt", "Order receipt"])
    lines = [head, f"Order #{o.number} - {fmt_date(o.placed)}"] + receipt_lines(o.items)
    lines.append(f"Total: ${o.total}")
    lines.append(rng.choice(["Thank you for your order.", "Thanks for shopping at Minimart.",
                             f"Keep this receipt for returns within {RETURN_DAYS} days of delivery.", ""]))
    return "\n".join(lines).rstrip()


def doc_order(rng, world, orders: OrderMaker) -> str:
    o = orders.make(rng.randint(1, 4))
    who = f"{rng.choice(FIRST_NAMES)} from {rng.choice(TOWNS)}"
    first = o.items[0][1].name
    n = o.n_units
    story = [f"This order was placed by {who} on {fmt_date(o.placed)}.",
             f"It contains {n} items, including the {first}." if n > 1 else f"It contains one item, the {first}."]
    arrive = {"delivered": f"It was delivered on {fmt_date(o.delivery)}.",
              "delayed": f"It is delayed and now expected on {fmt_date(o.delivery)}.",
              "out for delivery": f"It is out for delivery and arrives today, {fmt_date(o.delivery)}."}
    story.append(f"The parcel travels with {o.carrier.name} under tracking code {o.tracking}.")
    story.append(arrive.get(o.status, f"It is {o.status} and should arrive on {fmt_date(o.delivery)}."))
    story.append(rng.choice([f"Items can be returned until {fmt_date(o.return_by)}.",
                             f"The return window closes on {fmt_date(o.return_by)}.",
                             f"The order comes to ${o.total} in all."]))
    # The record comes first, so every fact in the story can be looked up (see pretrain_doc).
    return o.record() + "\n" + " ".join(story)


def doc_email(rng, world, orders: OrderMaker) -> str:
    o = orders.make(rng.randint(1, 3))
    name = rng.choice(FIRST_NAMES)
    first = o.items[0][1].name
    kind = rng.randrange(4)
    if kind == 0:
        subject = f"Your order #{o.number} is on its way"
        body = [f"Good news: your order left our warehouse on {fmt_date(o.placed)}.",
                f"It travels with {o.carrier.name}, and your tracking code is {o.tracking}.",
                f"We expect it to arrive on {fmt_date(o.delivery)}."]
    elif kind == 1:
        subject = f"Delivered: order #{o.number}"
        body = [f"Your parcel was delivered on {fmt_date(o.delivery)}.",
                f"We hope you enjoy the {first}.",
                f"If anything is not right, you can return it until {fmt_date(o.return_by)}."]
    elif kind == 2:
        subject = f"A delay with order #{o.number}"
        body = [f"{o.carrier.name} has told us that your parcel is running late.",
                f"The new delivery date is {fmt_date(o.delivery)}.",
                f"You can follow it with the code {o.tracking}.", "We are sorry for the wait."]
    else:
        subject = f"Your refund for order #{o.number}"
        amount = o.items[0][0] * o.items[0][2]
        body = [f"We received the {first} you sent back.",
                f"A refund of ${amount} is on its way to your card.",
                f"It can take up to {REFUND_DAYS} working days to show."]
    sign = rng.choice(["The Minimart team", "Minimart customer care", "Best wishes, Minimart"])
    details = "" if kind == 3 else f"\nYour order details:\n{o.record()}"
    return f"Subject: {subject}\nHello {name},{details}\n" + " ".join(body) + f"\n{sign}"


def doc_conversation(rng, world, orders: OrderMaker) -> str:
    o = orders.make(rng.randint(1, 3))
    cust = rng.choice(["Customer", rng.choice(FIRST_NAMES)])
    agent = rng.choice(["Agent", "Support", rng.choice(["Tom", "Ines", "Dana", "Ravi", "Lena"])])
    p = o.items[0][1]
    thanks = ["Thanks!", "Great, thank you.", "ok thanks", "Perfect.", "Thank you, that helps."]
    kind = rng.randrange(7)
    if kind == 0:
        turns = [(cust, rng.choice([f"Hello, where is my order {o.number}?", f"hi, my order #{o.number} has not arrived yet",
                                    f"Can you check order {o.number} for me?"])),
                 (agent, f"Order {o.number} is {o.status}. It travels with {o.carrier.name}, tracking code {o.tracking}."),
                 (cust, "And when will it get here?"),
                 (agent, f"The delivery date is {fmt_date(o.delivery)}."),
                 (cust, rng.choice(thanks))]
    elif kind == 1:
        turns = [(cust, f"I would like to return the {p.name} from order {o.number}."),
                 (agent, f"No problem. You can return it until {fmt_date(o.return_by)}. "
                         f"We send the refund within {REFUND_DAYS} working days after it arrives."),
                 (cust, "Do I pay for the return?"),
                 (agent, rng.choice(["Returns are free if the item is faulty. Otherwise the label costs $4.",
                                     "The return label is in the parcel, and it is free."]))]
    elif kind == 2:
        turns = [(cust, rng.choice([f"Is the {p.name} easy to clean?", f"What is the {p.name} made of?",
                                    f"Who makes the {p.name}?"])),
                 (agent, f"It is made by {p.maker} in {p.town}. {rng.choice(MATERIAL_NOTES[p.material])} "
                         f"{rng.choice(CARE[p.category])}"),
                 (cust, "And how much is it?"),
                 (agent, f"It is ${p.price}.")]
    elif kind == 3:
        turns = [(cust, f"Can I still cancel order {o.number}?"),
                 (agent, f"It was delivered on {fmt_date(o.delivery)}, so it cannot be cancelled, but you can "
                         f"return it until {fmt_date(o.return_by)}." if o.status == "delivered" else
                  ("It has already left our warehouse, so it cannot be cancelled. "
                   f"You can return it until {fmt_date(o.return_by)} once it arrives.")
                  if o.status != "delayed" else
                  "It is delayed with the carrier, so I have asked them to send it back to us. "
                  f"You will get a refund within {REFUND_DAYS} working days."),
                 (cust, rng.choice(thanks))]
    elif kind == 4:
        turns = [(cust, f"My {p.name} arrived {rng.choice(['cracked', 'scratched', 'bent', 'damaged'])}."),
                 (agent, "I am sorry to hear that. Could you send a photo and the order number?"),
                 (cust, f"Sure, it is order {o.number}. Photo attached."),
                 (agent, rng.choice(["Thank you. A replacement leaves the warehouse tomorrow.",
                                     f"Thank you. I have refunded the ${o.items[0][2]} to your card."]))]
    elif kind == 5:
        turns = [(cust, f"What is the tracking code for order {o.number}?"),
                 (agent, f"It is {o.tracking}, with {o.carrier.name}."),
                 (cust, "It says the parcel is still on the way."),
                 (agent, f"Yes, the status is {o.status} and the delivery date is {fmt_date(o.delivery)}.")]
    else:
        turns = [(cust, f"Hi, I sent back the {p.name} last week. When do I get my money?"),
                 (agent, f"Refunds go out within {REFUND_DAYS} working days after the item reaches us."),
                 (cust, "Okay, I will wait a few more days then."),
                 (agent, rng.choice(["Let me know if it has not arrived by then.", "Sounds good."]))]
    chat = "\n".join(f"{who}: {text}" for who, text in turns)
    # What the agent sees on screen comes first: the order's facts are then copied, not guessed.
    return chat if kind in (2, 4, 6) else f"{o.record()}\n{chat}"


def doc_lookup(rng, world, orders: OrderMaker) -> str:
    """An order record, then questions about it answered from the record: the plainest
    lesson in looking a fact up in the context."""
    o = orders.make(rng.randint(1, 3))
    qty, product, price = rng.choice(o.items)
    questions = {
        "delivery_date": ["When does it arrive?", "What is the delivery date?"],
        "status": ["What is the status?", "Where is the order now?"],
        "carrier": ["Which carrier has it?", "Who delivers it?"],
        "tracking": ["What is the tracking code?", "How can it be tracked?"],
        "item_price": [f"How much is the {product.name}?", f"What does the {product.name} cost?"],
        "item_count": ["How many items are in it?", "How many items were ordered?"],
        "return_deadline": ["Until when can it be returned?", "When does the return window close?"],
    }
    head = rng.choice(["Support notes", "Questions about this order", "Order lookup", "Notes"])
    lines = [o.record(), head + ":"]
    for intent in rng.sample(sorted(questions), rng.randint(3, 5)):
        answer = fact_value(intent, o, (qty, product, price))
        lines.append(f"Q: {rng.choice(questions[intent])} A: {answer}.")
    return "\n".join(lines)


def doc_restate(rng, world, orders: OrderMaker) -> str:
    """An order record, then every field of it said again in a sentence: nearly each token
    after the record is copied from it, the densest lesson in reading the context."""
    o = orders.make(rng.randint(1, 3))
    parts = [f"status {o.status}", f"carrier {o.carrier.name}", f"tracking code {o.tracking}",
             f"delivery on {fmt_date(o.delivery)}", f"returns until {fmt_date(o.return_by)}"]
    rng.shuffle(parts)
    items = ", ".join(f"{q} x {prod.name} at ${p}" for q, prod, p in o.items)
    head = rng.choice(["In short", "Summary", "To recap", "Order summary"])
    return f"{o.record()}\n{head}: order #{o.number}, " + ", ".join(parts) + f"; items: {items}."
