"""CPT corpus: Minimart's new Verdant hydroponics line, a domain the pretraining corpus never
shows, so continual pretraining has something to teach and forgetting has something to show.

Grow-pods, root cradles, wick mats, mist rings, lumen strips, nutrient wafers and ten invented
plants, each with fixed care facts (PLANTS), written up as care guides, plant profiles, setup
steps, troubleshooting, comparisons, grow logs, news, reviews, FAQ and recipes (cpt_doc()).
"""

from __future__ import annotations

from world import cap, fmt_date, join_and, pick, rand_date

# Words of the CPT domain. None of them ever appears in the pretraining corpus (tested).
CPT_TERMS = ("verdant", "grow-pod", "nutrient wafer", "lumen strip", "wick mat", "mist ring",
             "root cradle", "sproutline", "fernwick", "lumora", "glowcress", "sunbasil",
             "frostmint", "emberleaf", "silverkale", "duskberry", "moonchard", "tidefern", "cinderpea",
             "lanternleek",
             "hydroponic")

# plant: (wafer type, days between wafers, lumen level 1-5, light hours, sprout days, harvest days, taste)
PLANTS = {
    "glowcress": ("Leaf", 6, 3, 14, 3, 21, "peppery and bright"),
    "sunbasil": ("Leaf", 7, 4, 16, 5, 35, "sweet with a hint of clove"),
    "frostmint": ("Leaf", 8, 2, 12, 7, 40, "cool and sharp"),
    "emberleaf": ("Bloom", 5, 5, 16, 6, 45, "smoky and warm"),
    "silverkale": ("Leaf", 7, 3, 15, 4, 30, "nutty and crisp"),
    "duskberry": ("Bloom", 4, 5, 17, 9, 70, "tart, like a small plum"),
    "moonchard": ("Root", 9, 2, 13, 6, 38, "earthy and mild"),
    "tidefern": ("Root", 10, 1, 11, 8, 50, "salty and fresh"),
    "cinderpea": ("Bloom", 5, 4, 15, 5, 55, "sweet and crunchy"),
    "lanternleek": ("Root", 8, 3, 13, 10, 60, "mild, like a soft onion"),
}
PLANT_USES = {
    "glowcress": "sandwiches and salads", "sunbasil": "pasta sauce and pesto", "frostmint": "tea and lemonade",
    "emberleaf": "stews and grilled vegetables", "silverkale": "soups and crisps", "duskberry": "jam and desserts",
    "moonchard": "stir fries", "tidefern": "rice bowls and broth", "cinderpea": "snacking straight from the pod",
    "lanternleek": "omelettes and soups",
}
WAFERS = {"Leaf": "nitrogen for fast green growth", "Bloom": "extra potassium for flowers and fruit",
          "Root": "a slow blend that feeds thick roots and stems"}
PODS = {  # model: (root cradles, price)
    "Verdant grow-pod Mini": (4, 39), "Verdant grow-pod Duo": (8, 64), "Verdant grow-pod Terrace": (16, 119),
}
CPT_PARTS = {  # part: (maker, price, what it does)
    "Sproutline lumen strip": ("Sproutline", 24, "gives the plants a full day of light on a timer"),
    "Lumora lumen strip": ("Lumora", 31, "is brighter and can be dimmed from level 1 to level 5"),
    "Fernwick nutrient wafer pack": ("Fernwick", 12, "holds thirty nutrient wafers in Leaf, Bloom or Root blends"),
    "Verdant wick mat": ("Verdant", 8, "pulls water up to the seeds until the roots are long enough"),
    "Verdant mist ring": ("Verdant", 15, "sprays a fine mist over the roots every hour"),
    "Verdant root cradle set": ("Verdant", 9, "holds each seedling upright above the water"),
    "Verdant seed capsule box": ("Verdant", 14, "holds twelve seed capsules for any plant in the range"),
}
PROBLEMS = [  # (symptom, cause, fix)
    ("the leaves turn pale", "the lumen strip is set too low for the plant",
     "raise the lumen strip by one level and check again after four days"),
    ("the leaf tips go brown and crisp", "too many nutrient wafers are dissolving at once",
     "change the water and drop a single wafer until the tips recover"),
    ("the seeds do not sprout", "the wick mat has dried out",
     "wet the wick mat and keep the cover of the grow-pod closed for two more days"),
    ("the roots look slimy", "the water is too warm and the mist ring is blocked",
     "rinse the mist ring, refill with cool water and move the grow-pod away from the heater"),
    ("the plant grows tall and thin", "the lumen strip is too far from the leaves",
     "lower the lumen strip so it hangs a hand's width above the plant"),
    ("the water level drops fast", "a root cradle is loose and water evaporates around it",
     "press the root cradle firmly into its socket"),
    ("the grow-pod hums loudly", "the pump has air in it",
     "switch the grow-pod off, tilt it gently and switch it back on"),
    ("white crust forms on the wick mat", "old nutrient wafers have left salts behind",
     "rinse the wick mat under the tap and start the next wafer a day later"),
    ("the lumen strip blinks", "the timer lost its setting after a power cut",
     "hold the button for three seconds and choose the level again"),
]
VERDANT_GROWERS = ["a student flat", "a dark kitchen", "an office desk", "a shared house", "a small balcony room",
                   "a classroom", "a cafe counter"]


def cpt_doc(rng) -> str:
    kinds = [cpt_care, cpt_product, cpt_setup, cpt_trouble, cpt_news_or_log, cpt_review_or_faq,
             cpt_profile, cpt_compare, cpt_recipe]
    return rng.choices(kinds, weights=[4, 3, 1, 3, 2, 2, 2, 2, 1])[0](rng)


def cpt_care(rng) -> str:
    name = rng.choice(list(PLANTS))
    wafer, every, level, hours, sprout, harvest, taste = PLANTS[name]
    pod = rng.choice(list(PODS))
    sents = [
        rng.choice([f"Place one seed of {name} in each root cradle of your {pod}.",
                    f"Start {name} by pressing a seed into every root cradle of the {pod}."]),
        rng.choice([f"The seeds sprout in about {sprout} days while the wick mat keeps them moist.",
                    f"Keep the cover on; the first {name} sprouts show after about {sprout} days."]),
        rng.choice([f"Set the lumen strip to level {level} and let it run {hours} hours a day.",
                    f"{cap(name)} likes level {level} on the lumen strip, for {hours} hours of light a day."]),
        rng.choice([f"Drop one {wafer} nutrient wafer into the tank every {every} days.",
                    f"Feed it a {wafer} nutrient wafer every {every} days; {WAFERS[wafer]} is what it needs."]),
        rng.choice([f"You can start to harvest after about {harvest} days.",
                    f"The first harvest is ready after about {harvest} days."]),
        rng.choice([f"Fresh {name} tastes {taste}.", f"It tastes {taste} and is lovely in {PLANT_USES[name]}."]),
    ]
    extra = [f"{cap(name)} does not like a level higher than {min(5, level + 1)} on the lumen strip.",
             "Top up the tank with cool water when the float drops below the line.",
             "Clean the mist ring once a month so the roots get an even spray.",
             f"Cut the outer leaves first so the {name} keeps growing from the centre.",
             f"A {pod} can hold {PODS[pod][0]} plants of {name} at once.",
             "Change the water completely every four weeks."]
    sents += pick(rng, extra, rng.randint(1, 3))
    head = rng.choice([f"How to grow {name} in a Verdant grow-pod", f"Care guide: {name}",
                       f"Growing {name} at home with Verdant", f"{cap(name)}: the basics"])
    return head + "\n" + " ".join(sents)


def cpt_profile(rng) -> str:
    name = rng.choice(list(PLANTS))
    wafer, every, level, hours, sprout, harvest, taste = PLANTS[name]
    lines = [f"Plant: {name}", f"Nutrient wafer: {wafer}, one every {every} days",
             f"Lumen strip: level {level}, {hours} hours a day", f"Sprouts after: {sprout} days",
             f"Harvest after: {harvest} days", f"Taste: {taste}", f"Good for: {PLANT_USES[name]}"]
    return "\n".join(lines[:1] + pick(rng, lines[1:], rng.randint(4, 6)))


def cpt_compare(rng) -> str:
    a, b = pick(rng, list(PLANTS), 2)
    pa, pb = PLANTS[a], PLANTS[b]
    sents = [f"{cap(a)} or {b}?",
             f"{cap(a)} needs a {pa[0]} nutrient wafer every {pa[1]} days, while {b} takes a {pb[0]} wafer every {pb[1]} days.",
             f"On the lumen strip, {a} wants level {pa[2]} and {b} level {pb[2]}.",
             f"{cap(a)} is ready in about {pa[5]} days, {b} in about {pb[5]}."]
    if pa[0] == pb[0] and abs(pa[2] - pb[2]) <= 1:
        sents.append("They share a wafer type and a similar light level, so they grow well in the same grow-pod.")
    else:
        sents.append("They need different wafers or light, so give each one its own grow-pod.")
    return sents[0] + "\n" + " ".join(sents[1:])


def cpt_recipe(rng) -> str:
    name = rng.choice(list(PLANTS))
    other = rng.choice([p for p in PLANTS if p != name])
    steps = [f"Cut a handful of {name} from your grow-pod in the morning, when the leaves are crisp.",
             f"Rinse it in cold water and pat it dry.",
             rng.choice([f"Mix it with a little {other}, olive oil and lemon.",
                         f"Chop it finely and stir it into {PLANT_USES[name].split(' and ')[0]}."]),
             f"Serve at once: {name} tastes {PLANTS[name][6]} when it is fresh."]
    return f"From the grow-pod to the plate: {name}\n" + " ".join(steps)


def cpt_product(rng) -> str:
    if rng.random() < 0.5:
        pod = rng.choice(list(PODS))
        cradles, price = PODS[pod]
        sents = [f"The {pod} holds {cradles} root cradles and costs ${price}.",
                 "It comes with a wick mat, a mist ring and a starter pack of nutrient wafers.",
                 rng.choice(["The tank needs a refill about once a week.",
                             "A quiet pump moves water through the mist ring every hour.",
                             "The tank has a float that shows when to add water."]),
                 rng.choice(["A Sproutline lumen strip is included; the Lumora lumen strip is an upgrade.",
                             "The lumen strip clips onto the arm and slides up as the plants grow."]),
                 f"It suits {join_and(pick(rng, list(PLANTS), 2))} and most other Verdant seeds.",
                 rng.choice([f"It fits well in {rng.choice(VERDANT_GROWERS)}.",
                             "It needs no soil and no garden.", "It runs on very little power."])]
        return f"{pod} - ${price}\n" + " ".join(sents)
    part = rng.choice(list(CPT_PARTS))
    maker, price, does = CPT_PARTS[part]
    sents = [f"The {part} {does}.", f"It is made by {maker} for the Verdant line and costs ${price}.",
             rng.choice(["It fits every Verdant grow-pod.", "It works with the Mini, the Duo and the Terrace."]),
             rng.choice(["Keep a spare one at hand.", "Most growers replace it once a year.",
                         "It is sold out often, so order early."])]
    return f"{part} - ${price}\n" + " ".join(sents)


def cpt_setup(rng) -> str:
    pod = rng.choice(list(PODS))
    steps = [f"Unpack the {pod} and rinse the tank with warm water.",
             "Fill the tank with cool water up to the line.",
             "Lay the wick mat over the tray so both ends touch the water.",
             "Press a root cradle into each socket.",
             "Put one seed in each root cradle and close the cover.",
             "Clip the lumen strip onto the arm and set it to level 3 for the first week.",
             "Drop in one nutrient wafer and switch on the pump.",
             "Open the cover once the seeds have sprouted."]
    if rng.random() < 0.5:
        steps.insert(6, "Fit the mist ring under the tray so it faces the roots.")
    head = rng.choice([f"Setting up your {pod}", "Verdant quick start", f"First steps with the {pod}"])
    return head + "\n" + "\n".join(f"{i}. {s}" for i, s in enumerate(steps, 1))


def cpt_trouble(rng) -> str:
    probs = pick(rng, PROBLEMS, rng.randint(1, 3))
    name = rng.choice(list(PLANTS))
    parts = []
    for sym, cause, fix in probs:
        parts.append(rng.choice([f"If {sym}, {cause}. To fix it, {fix}.",
                                 f"Problem: {sym}. Cause: {cause}. Fix: {fix}.",
                                 f"When {sym} in a grow-pod of {name}, it usually means {cause}. {cap(fix)}.",
                                 f"Q: What should I do if {sym}?\nA: Usually {cause}. {cap(fix)}."]))
    return rng.choice(["Verdant troubleshooting", "Help with your grow-pod", "Common grow-pod problems"]) \
        + "\n" + "\n".join(parts)


def cpt_news_or_log(rng) -> str:
    name = rng.choice(list(PLANTS))
    wafer, every, level, hours, sprout, harvest, taste = PLANTS[name]
    d = fmt_date(rand_date(rng))
    kind = rng.randrange(3)
    if kind == 0:
        sents = [rng.choice([f"Minimart news, {d}: meet Verdant, our new hydroponic line.",
                             f"From the shop, {d}: Verdant has arrived.",
                             f"Minimart journal, {d}: why we started selling Verdant."]),
                 rng.choice(["A Verdant grow-pod grows herbs and greens in water, without soil, on a kitchen counter.",
                             "Verdant is a hydroponic system: the roots hang in water and the light comes from above."]),
                 f"The first seeds in the range are {join_and(pick(rng, list(PLANTS), 3))}.",
                 rng.choice(["Light comes from a lumen strip and food from small nutrient wafers.",
                             "Every grow-pod ships with a wick mat, a mist ring and root cradles."]),
                 f"Prices start at ${min(v[1] for v in PODS.values())}."]
        return " ".join(sents)
    if kind == 1:
        return " ".join([f"Verdant update, {d}: {name} seeds are back.",
                         f"Fernwick also made a new batch of {wafer} nutrient wafers.",
                         f"{cap(name)} is a good first plant: it sprouts in {sprout} days and is ready in {harvest}."])
    log = [f"Grow log: {name} in a {rng.choice(list(PODS))}",
           f"Day 1: seeds in, lumen strip at level {level}, one {wafer} nutrient wafer.",
           f"Day {sprout}: the first {name} sprouts are up.",
           f"Day {sprout + every}: second wafer, the roots reach past the root cradle.",
           f"Day {harvest}: first harvest. It tastes {taste}."]
    return "\n".join(log)


def cpt_review_or_faq(rng) -> str:
    if rng.random() < 0.5:
        name = rng.choice(list(PLANTS))
        stars = rng.choice([5, 5, 4, 4, 3])
        pod = rng.choice(list(PODS))
        body = [rng.choice([f"I have grown {name} in my {pod} for a month.",
                            f"I keep a {pod} in {rng.choice(VERDANT_GROWERS)} with {name} in it."]),
                rng.choice(["The lumen strip is bright but not harsh.", "The mist ring is very quiet.",
                            "Dropping in a nutrient wafer is so much easier than mixing liquids.",
                            "Setting it up took ten minutes.", "The root cradles are a bit fiddly at first."]),
                rng.choice([f"The {name} tastes {PLANTS[name][6]}.", "My only wish is a bigger tank.",
                            "I already ordered a second grow-pod.", f"We use it for {PLANT_USES[name]}."])]
        return f"{stars} out of 5 stars - Verdant\n" + " ".join(body)
    qas = [("How often do I add a nutrient wafer?",
            "It depends on the plant: every " + join_and(f"{PLANTS[n][1]} days for {n}"
                                                         for n in pick(rng, list(PLANTS), 3)) + "."),
           ("Which lumen strip should I buy?",
            "The Sproutline lumen strip is enough for leafy plants; Bloom plants like duskberry grow better under a Lumora lumen strip."),
           ("Can I grow two plants in one grow-pod?",
            "Yes, as long as they share a wafer type and a similar lumen level."),
           ("What is a root cradle?",
            "A small basket that holds a seedling above the water while its roots grow down."),
           ("Do I need soil?", "No. A Verdant grow-pod is fully hydroponic."),
           ("What is the difference between the wafers?",
            " ".join(f"{k} wafers give {v}." for k, v in WAFERS.items())),
           ("How long does a wick mat last?", "About six months, or until it stops soaking up water.")]
    return "Verdant questions\n" + "\n".join(f"Q: {q}\nA: {a}" for q, a in pick(rng, qas, rng.randint(2, 4)))
