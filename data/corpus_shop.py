"""Pretraining documents about the catalogue and the shop: product pages, customer reviews,
store news, FAQ and policy paragraphs, care articles and gift guides. corpus_pretrain.pretrain_doc()
mixes them with the documents about orders.
"""

from __future__ import annotations

from world import (CARE, CARRIERS, FIRST_NAMES, FREE_SHIPPING_OVER, GIFT_WRAP_FEE, MATERIAL_NOTES, REFUND_DAYS,
                   RETURN_DAYS, SHIPPING_FEE, STAFF, TOWNS, an, cap, fmt_date, pick, plural, rand_date)

HOBBIES = ["long walks by the river", "baking bread", "reading crime novels", "growing tomatoes",
           "cycling to the coast", "playing the piano badly", "repairing old radios", "swimming in the lake",
           "drawing birds", "cooking for friends", "running on Sunday mornings", "knitting scarves"]
ADJECTIVES = ["simple", "sturdy", "handsome", "practical", "quiet", "honest", "lovely", "well made",
              "everyday", "beautiful", "useful", "good looking", "timeless", "cheerful", "solid", "modest"]


def doc_product(rng, world) -> str:
    p = rng.choice(world)
    noun = p.noun.lower()
    adj = rng.choice(ADJECTIVES)
    use = rng.choice(p.uses)
    openers = [
        f"The {p.name} is {an(adj)} {noun} for {use}.",
        f"Meet the {p.name}, {an(adj)} {noun} that is made for {use}.",
        f"Our {p.name} is one of the quiet favourites of the shop.",
        f"If you are looking for {an(noun)} for {use}, the {p.name} is a good place to start.",
        f"This {noun} has been in our catalogue for years, and the {p.name} is still the one people ask for.",
        f"The {p.name} does one job and does it well.",
        f"Some things are simply nice to own, and the {p.name} is one of them.",
        f"We looked at a lot of {plural(noun)} before we chose the {p.name}.",
        f"The {p.name} is {adj}, {rng.choice(ADJECTIVES)} and made to last.",
        f"Think of the {p.name} the next time you need something for {use}.",
    ]
    body = [
        rng.choice(MATERIAL_NOTES[p.material]),
        f"It comes in {p.color}" + rng.choice([".", " and looks good next to almost anything.",
                                                 ", a colour that suits most rooms.", ", which our customers love."]),
        f"It is made by {p.maker} in {p.town}" + rng.choice([".", ", a workshop we have worked with for years.",
                                                              ", where every piece is checked by hand.",
                                                              ", a small team of four people."]),
        rng.choice(CARE[p.category]),
        rng.choice([f"People also use it for {rng.choice(p.uses)}.",
                    f"It works just as well for {rng.choice(p.uses)}.",
                    f"One customer wrote that she uses hers for {rng.choice(p.uses)}."]),
        rng.choice([f"The size is {p.size}.", f"It comes in one size that we call {p.size}."])
        if p.size != "one size" else "It comes in one size.",
        rng.choice([f"It ships with {rng.choice(CARRIERS).name} within two working days.",
                    f"Orders over ${FREE_SHIPPING_OVER} ship for free.",
                    f"Gift wrapping is available for ${GIFT_WRAP_FEE}.",
                    f"Like everything in the shop, it can be returned within {RETURN_DAYS} days of delivery."]),
        rng.choice(["It makes a thoughtful gift.", "It is the kind of thing you keep for years.",
                    "It is packed in recycled card.", "No two pieces are exactly alike."]),
    ]
    rng.shuffle(body)
    sents = [rng.choice(openers)] + body[: rng.randint(3, len(body))]
    sents.append(rng.choice([f"Price: ${p.price}.", f"It costs ${p.price}.", f"The {p.name} sells for ${p.price}.",
                             f"${p.price} each.", f"All this for ${p.price}."]))
    title = rng.choice([p.name, f"{p.name} - ${p.price}", f"Product: {p.name}", f"New in: {p.name}",
                        f"{p.name} ({p.category})", f"Staff pick: {p.name}"])
    return title + "\n" + " ".join(sents)


REVIEW_GOOD = ["I love it.", "Exactly what I hoped for.", "Really happy with this one.", "Better than the photos.",
               "It feels solid and well made.", "Worth every dollar.", "I have already ordered a second one as a gift.",
               "My partner keeps stealing it.", "The quality is lovely for the price.", "Simple and beautiful.",
               "It has quickly become something I use every day.", "The colour is even nicer in person.",
               "You can tell it was made with care."]
REVIEW_MID = ["It is fine, nothing special.", "Nice, but smaller than I expected.",
              "Good quality, although the colour is a bit darker than on the website.", "It does the job.",
              "Decent for the price.", "Pretty, but it took a while to arrive.", "I like it, my kids less so.",
              "Solid enough, though the finish is a little rough in places.", "Not bad at all."]
REVIEW_BAD = ["Sadly it arrived with a scratch.", "Not what I expected.", "The colour was quite different from the photo.",
              "It broke after two weeks.", "Too small for what I needed.", "The box was crushed when it arrived.",
              "I wanted to like it, but it feels cheap.", "It wobbles on the table."]
REVIEW_UPDATE = ["Update after a month: still going strong.", "Update: it has aged nicely.",
                 "Update: customer care answered my question within a day.", "Update: bought another one."]


def doc_review(rng, world) -> str:
    p = rng.choice(world)
    stars = rng.choices([5, 4, 3, 2, 1], weights=[5, 4, 2, 1, 1])[0]
    pool = REVIEW_GOOD if stars >= 4 else REVIEW_MID if stars == 3 else REVIEW_BAD
    c = rng.choice(CARRIERS)
    days = rng.randint(*c.days)
    sents = pick(rng, pool, rng.randint(1, 3))
    sents.insert(rng.randint(0, len(sents)), rng.choice([
        f"I bought the {p.name} for {rng.choice(p.uses)}.", f"I use the {p.name} for {rng.choice(p.uses)}.",
        f"Got the {p.name} in {p.color}.", f"We needed {an(p.noun.lower())} and picked the {p.name}.",
        f"I ordered the {p.name} as a present for my {rng.choice(['mother', 'brother', 'neighbour', 'friend', 'aunt'])}.",
        f"This is my second {p.noun.lower()} from Minimart.",
    ]))
    sents.append(rng.choice([
        f"It came with {c.name} in {days} day{'s' if days > 1 else ''}.", f"Delivery by {c.name} was quick.",
        f"{c.name} left it with a neighbour, which was fine.",
        f"At ${p.price} it is {'a fair price' if stars >= 3 else 'not cheap'}.",
        "The packaging was all paper, no plastic.", f"The {p.material.lower()} feels {rng.choice(['nice', 'good', 'solid'])}.",
    ]))
    if stars <= 2:
        sents.append(rng.choice(["Customer care sorted out a return quickly, at least.",
                                 f"I sent it back within the {RETURN_DAYS} days and got a refund.",
                                 "I have asked for a replacement."]))
    elif rng.random() < 0.2:
        sents.append(rng.choice(REVIEW_UPDATE))
    title = rng.choice(["Great buy", "Lovely", "Would buy again", "Nice gift", "Five stars from me"] if stars == 5
                       else ["Solid", "As described", "Nice gift", "Does the job", "Good value"] if stars == 4
                       else ["Okay", "Mixed feelings", "Hmm", "Does the job"] if stars == 3
                       else ["Disappointed", "Not for me", "Hmm", "Could be better"])
    name = f"{rng.choice(FIRST_NAMES)} {rng.choice('ABCDEFGHJKLMNPRSTW')}."
    return f"{stars} out of 5 stars - {title}\n{' '.join(sents)}\n- {name}, {rng.choice(TOWNS)}"


def doc_news(rng, world) -> str:
    d = fmt_date(rand_date(rng))
    p, q = pick(rng, world, 2)
    c = rng.choice(CARRIERS)
    staff = rng.choice(STAFF)
    topics = [
        (f"New from {p.maker}",
         [f"This week we added the {p.name} to the shop.", f"It is made in {p.town} and costs ${p.price}.",
          rng.choice(MATERIAL_NOTES[p.material]), f"We think it is perfect for {rng.choice(p.uses)}."]),
        ("Faster delivery",
         [f"From {d}, more of our parcels travel with {c.name}.",
          f"Most orders now arrive in {c.days[0]} to {c.days[1]} days.",
          f"Every parcel still gets a tracking code that starts with {c.prefix}.",
          "You will find it in your order confirmation email."]),
        ("Holiday opening hours",
         [f"Our customer care team takes a short break around {d}.",
          "Orders placed during the break are packed the first working day after.",
          "Messages are answered in the order they arrive.", "Thank you for your patience."]),
        (f"Small sale on {plural(p.noun.lower())}",
         [f"Until {d}, all {plural(p.noun.lower())} in the shop are $3 off.", f"That includes the {p.name}.",
          "No code is needed; the price in your basket is already lower.",
          f"The usual {RETURN_DAYS} day return window applies."]),
        ("A visit to the workshop",
         [f"Last month {staff} visited {p.maker} in {p.town}.",
          f"They make the {p.name} there, one piece at a time.", rng.choice(MATERIAL_NOTES[p.material]),
          f"We also talked about a new {q.noun.lower()} that may join the shop next season."]),
        ("Less plastic in our parcels",
         ["All our parcels are now packed with paper tape and recycled card.",
          "Fragile items are wrapped in corrugated paper instead of bubble wrap.",
          "Everything can go in the paper recycling."]),
        ("Meet the team",
         [f"{cap(staff)} has been with Minimart for {rng.randint(2, 9)} years.",
          f"Their favourite item in the shop is the {p.name}.", f"Outside work they love {rng.choice(HOBBIES)}."]),
        ("Back in stock",
         [f"The {p.name} is back in stock after a long wait.", f"{p.maker} made a new batch in {p.town}.",
          f"It still costs ${p.price}.", "Last time it sold out in a week, so do not wait too long."]),
        ("Weather delays",
         [f"Storms around {d} slowed down {c.name} in some areas.",
          "If your order status says delayed, the carrier has already set a new delivery date.",
          "You can see it in your order record.", "Nothing is lost; it just takes a little longer."]),
        ("A note on prices",
         [f"From {d}, the {p.name} costs ${p.price}.",
          f"{p.maker} pays more for {p.material.lower()} this year, and we want them to keep a fair wage.",
          "Orders placed before then keep the old price."]),
        ("Customer photo of the month",
         [f"This month's photo comes from {rng.choice(FIRST_NAMES)} in {rng.choice(TOWNS)}.",
          f"It shows the {p.name} next to the {q.name} on a sunny windowsill.",
          "Thank you for sharing, and keep the photos coming."]),
    ]
    head, sents = rng.choice(topics)
    return f"{rng.choice(['Minimart news', 'From the shop', 'Minimart journal'])}, {d}: {head}\n" + " ".join(sents)


FAQ = [
    ("How long do I have to return something?",
     [f"You can return any item within {RETURN_DAYS} days of delivery.",
      "Your order record shows the exact last day under Return by.",
      "Items should be unused and in their original packaging."]),
    ("When will I get my refund?",
     [f"Refunds are sent within {REFUND_DAYS} working days after the return reaches our warehouse.",
      "The money goes back to the card you paid with."]),
    ("How much does shipping cost?",
     [f"Standard shipping is ${SHIPPING_FEE}.", f"Orders over ${FREE_SHIPPING_OVER} ship for free."]),
    ("Which carriers do you use?",
     ["We ship with " + ", ".join(c.name for c in CARRIERS[:-1]) + f" and {CARRIERS[-1].name}.",
      "The carrier is chosen by the size of the parcel and where it is going."]),
    ("How do I track my parcel?",
     ["Every order gets a tracking code once it ships.",
      "The code starts with the letters of the carrier, for example " + ", ".join(
          f"{c.prefix} for {c.name}" for c in CARRIERS) + "."]),
    ("Can I cancel my order?",
     ["You can cancel an order until it ships.", "After that, you can return it once it arrives."]),
    ("My item arrived damaged. What now?",
     ["We are sorry. Send us a photo and your order number.",
      "We will send a replacement or a full refund, whichever you prefer."]),
    ("Do you offer gift wrapping?",
     [f"Yes, gift wrapping costs ${GIFT_WRAP_FEE} per item.", "We use paper and a cotton ribbon."]),
    ("Can I change my delivery address?",
     ["You can change it until the order ships.", "Just reply to your order confirmation."]),
    ("What does the order status mean?",
     ["Shipped means the parcel has left our warehouse.", "In transit means it is on its way with the carrier.",
      "Out for delivery means it arrives today.", "Delayed means the carrier has set a new delivery date."]),
    ("Do you ship abroad?", ["Not yet. We only ship within the country for now."]),
    ("Can I exchange an item for another colour?",
     [f"Yes. Return the first item within {RETURN_DAYS} days and place a new order.",
      "We refund the first one as soon as it arrives."]),
    ("How is the order total worked out?",
     ["Each line of your receipt is the quantity times the unit price.",
      "The total is the sum of all lines, shown as Total followed by the amount."]),
    ("Do you have a shop I can visit?",
     ["We are online only, but our warehouse in Millbrook opens its doors one Saturday a month."]),
]


def doc_faq(rng, world) -> str:
    qas = pick(rng, FAQ, rng.randint(2, 4))
    style = rng.randrange(3)
    parts = []
    for q, ans in qas:
        a = " ".join(ans[: rng.randint(1, len(ans))])
        parts.append(f"Q: {q}\nA: {a}" if style == 0 else f"{q}\n{a}" if style == 1 else a)
    head = rng.choice(["Frequently asked questions", "Minimart help", "Shipping and returns",
                       "Good to know", "Our policies", "Help centre"])
    return head + "\n" + ("\n\n".join(parts) if style < 2 else " ".join(parts))


def doc_care_article(rng, world) -> str:
    p = rng.choice(world)
    mat = p.material
    sents = [f"How to look after {mat.lower()}",
             rng.choice([f"{mat} is one of the materials we get asked about most.",
                         f"Many things in the shop are made of {mat.lower()}, from the {p.name} to smaller pieces."])]
    sents += MATERIAL_NOTES[mat][:2]
    sents += pick(rng, CARE[p.category], 2)
    sents.append(rng.choice([f"Treated this way, your {p.noun.lower()} will last for many years.",
                             "A little care now and then goes a long way.",
                             "If something goes wrong, write to us and we will help."]))
    return sents[0] + "\n" + " ".join(sents[1:])


def doc_guide(rng, world) -> str:
    cat = rng.choice(sorted({p.category for p in world}))
    budget = rng.choice([10, 15, 20, 25, 30])
    cands = [p for p in world if p.category == cat and p.price <= budget]
    if len(cands) < 2:
        cands = sorted((p for p in world if p.category == cat), key=lambda p: p.price)[:3]
        budget = max(p.price for p in cands)
    chosen = pick(rng, cands, min(len(cands), rng.randint(2, 4)))
    head = rng.choice([f"Gift ideas under ${budget}", f"Our {cat} picks under ${budget}",
                       f"Small {cat} treats for ${budget} or less"])
    lines = [head]
    for p in chosen:
        lines.append(rng.choice([f"- The {p.name} (${p.price}): good for {rng.choice(p.uses)}.",
                                 f"- {p.name}, ${p.price}. {rng.choice(MATERIAL_NOTES[p.material])}"]))
    lines.append(rng.choice([f"Add gift wrapping for ${GIFT_WRAP_FEE} per item.",
                             f"Orders over ${FREE_SHIPPING_OVER} ship for free.",
                             "All of them can be returned if they are not quite right."]))
    return "\n".join(lines)
