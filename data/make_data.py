"""Generate the built-in "Minimart" data set of minipost (see data/README.md).

Minimart is a small fictional online shop. From a fixed seed this script builds its world
(products, prices, carriers, makers, customers, policies) and writes, into data/minimart/:

    pretrain_{train,val}.jsonl  {"text"}                      general shop English
    cpt_{train,val}.jsonl       {"text"}                      the new "Verdant" hydroponics line
    sft_{train,val}.jsonl       {"messages", "meta"}          support tickets, mixed reply styles
    pref_{train,val}.jsonl      {"prompt", "chosen", "rejected", "meta"}
    rl_{train,val}.jsonl        {"prompt", "answer"}          order totals, checked by rewards.py
    intent_{train,val}.jsonl    {"text", "label"}             + intent_labels.json

Only the standard library is used. Every file draws from its own random.Random seeded with
"<seed>/<file kind>", so the same arguments always give the same bytes, and the RL flags
change only the RL files. Val records are never copies of train records.

    python data/make_data.py [--out DIR] [--seed N] [--rl-items 1] [--rl-max-price N]
                             [--rl-max-qty N] [--scale F]
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import random
import sys
import time
from pathlib import Path

# ---------------------------------------------------------------------------------------------
# Public constants
# ---------------------------------------------------------------------------------------------

SYSTEM_PROMPT = "You are the support assistant of Minimart."
SHOP_OPENING = "Hi there!"  # same strings as minipost/rewards.py
SHOP_SIGNOFF = "Happy shopping! - the Minimart team"
VOICES = ("shop", "terse", "formal", "casual")

# Labels of the intent classification task (index = label).
INTENTS = ["where_is_my_order", "refund_or_return", "cancel_order", "product_question", "complaint"]

# SFT / preference question types; "total" is asked only about orders with one or two items.
SFT_INTENTS = ("delivery_date", "status", "carrier", "tracking", "item_price", "item_count",
               "return_deadline", "total")

# Words of the CPT domain. None of them ever appears in the pretraining corpus (tested).
CPT_TERMS = ("verdant", "grow-pod", "nutrient wafer", "lumen strip", "wick mat", "mist ring",
             "root cradle", "sproutline", "fernwick", "lumora", "glowcress", "sunbasil",
             "frostmint", "emberleaf", "silverkale", "duskberry", "moonchard", "tidefern", "cinderpea",
             "lanternleek",
             "hydroponic")

# Store policies, shared by the FAQ text, conversations and order records.
RETURN_DAYS = 30
REFUND_DAYS = 5
SHIPPING_FEE = 4
FREE_SHIPPING_OVER = 40
GIFT_WRAP_FEE = 2

DEFAULT_OUT = Path(__file__).resolve().parent / "minimart"  # git-ignored; made on first use

# Sizes at scale 1.0: bytes for text corpora, records for the rest.
SIZES = {
    "pretrain": (3_000_000, 100_000), "cpt": (1_000_000, 50_000),
    "sft": (4000, 200), "pref": (2000, 200), "rl": (2000, 200), "intent": (2000, 400),
}

# ---------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------

MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December"]
YEAR = 2024  # never printed; only used to do date arithmetic


def fmt_date(d: dt.date) -> str:
    return f"{MONTHS[d.month - 1]} {d.day}"


def rand_date(rng: random.Random) -> dt.date:
    return dt.date(YEAR, 1, 1) + dt.timedelta(days=rng.randrange(366))


def is_plural(word: str) -> bool:
    return word.endswith("s") and not word.endswith("ss")  # "Socks", "Garden Gloves"


def an(word: str) -> str:
    if is_plural(word):
        return "some " + word
    return ("an " if word[0].lower() in "aeiou" else "a ") + word


def plural(word: str) -> str:
    return word if is_plural(word) else word + "s"


def cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def pick(rng: random.Random, seq, k: int):
    return rng.sample(list(seq), k)


def fill(rng: random.Random, template: str, **slots) -> str:
    """Format `template`; a slot given as a list or tuple is replaced by a random element."""
    vals = {k: (rng.choice(v) if isinstance(v, (list, tuple)) else v) for k, v in slots.items()}
    return template.format(**vals)


def words(text: str) -> int:
    return len(text.split())

# ---------------------------------------------------------------------------------------------
# The world: products, carriers, people
# ---------------------------------------------------------------------------------------------

# noun: (category, base price in $, materials it comes in, uses)
NOUNS = {
    "Tray": ("kitchen", 9, ["Oak", "Walnut", "Bamboo", "Enamel"],
             ["serving breakfast in bed", "carrying tea to the garden", "keeping keys and coins in one place"]),
    "Mug": ("kitchen", 7, ["Ceramic", "Enamel", "Stoneware", "Glass"],
            ["a slow morning coffee", "hot chocolate on cold evenings", "tea at the office"]),
    "Bowl": ("kitchen", 8, ["Ceramic", "Walnut", "Stoneware", "Bamboo"],
             ["soup and noodles", "a fruit display on the table", "mixing salad dressings"]),
    "Kettle": ("kitchen", 24, ["Copper", "Steel", "Enamel"],
               ["boiling water on a gas stove", "making tea for a crowd", "camping trips"]),
    "Teapot": ("kitchen", 18, ["Ceramic", "Glass", "Stoneware", "Cast Iron"],
               ["loose leaf tea", "a calm afternoon tea", "serving four cups at once"]),
    "Cutting Board": ("kitchen", 16, ["Oak", "Walnut", "Bamboo", "Maple"],
                      ["chopping vegetables", "serving bread and cheese", "slicing fruit"]),
    "Spoon Set": ("kitchen", 11, ["Birch", "Bamboo", "Steel", "Olive Wood"],
                  ["stirring sauces", "everyday cooking", "serving salads"]),
    "Apron": ("kitchen", 14, ["Linen", "Canvas", "Cotton", "Denim"],
              ["baking on weekends", "work in a busy kitchen", "pottery classes"]),
    "Jar": ("kitchen", 6, ["Glass", "Ceramic", "Stoneware"],
            ["storing rice and oats", "homemade jam", "keeping cookies fresh"]),
    "Colander": ("kitchen", 13, ["Enamel", "Steel", "Ceramic"],
                 ["draining pasta", "washing berries", "rinsing beans"]),
    "Frying Pan": ("kitchen", 29, ["Cast Iron", "Steel", "Copper"],
                   ["searing vegetables", "pancakes on Sunday", "cooking eggs"]),
    "Tea Towel": ("kitchen", 5, ["Linen", "Cotton", "Waffle Cotton"],
                  ["drying dishes", "covering rising dough", "wrapping warm bread"]),
    "Lamp": ("home", 32, ["Brass", "Ceramic", "Oak", "Glass"],
             ["reading in bed", "a warm corner in the living room", "a tidy desk"]),
    "Blanket": ("home", 36, ["Wool", "Cotton", "Linen", "Alpaca"],
                ["cold nights on the sofa", "picnics in the park", "the foot of the bed"]),
    "Cushion": ("home", 15, ["Linen", "Velvet", "Wool", "Cotton"],
                ["a reading chair", "the window seat", "a plain sofa that needs colour"]),
    "Vase": ("home", 17, ["Glass", "Ceramic", "Stoneware", "Brass"],
             ["fresh tulips", "dried flowers", "a single branch on the shelf"]),
    "Candle": ("home", 9, ["Beeswax", "Soy Wax", "Rapeseed Wax"],
               ["long dinners", "a quiet bath", "dark winter evenings"]),
    "Basket": ("home", 19, ["Willow", "Seagrass", "Rattan", "Jute"],
               ["laundry", "storing blankets", "carrying things to the market"]),
    "Wall Clock": ("home", 27, ["Oak", "Brass", "Birch", "Steel"],
                   ["a kitchen wall", "the hallway", "a study"]),
    "Rug": ("home", 44, ["Wool", "Jute", "Cotton"],
            ["a bedside floor", "the hallway", "a reading corner"]),
    "Mirror": ("home", 38, ["Oak", "Brass", "Rattan"],
               ["the entrance hall", "a small bathroom", "a dressing table"]),
    "Picture Frame": ("home", 10, ["Oak", "Brass", "Walnut", "Birch"],
                      ["family photos", "a small print", "postcards from trips"]),
    "Doormat": ("home", 12, ["Coir", "Jute", "Rubber"],
                ["the front door", "a back porch", "muddy boots"]),
    "Notebook": ("office", 8, ["Leather", "Linen", "Recycled Paper", "Cork"],
                 ["daily notes", "sketching", "a travel journal"]),
    "Pen Set": ("office", 12, ["Brass", "Walnut", "Steel"],
                ["writing letters", "signing cards", "a desk at work"]),
    "Desk Organizer": ("office", 21, ["Oak", "Bamboo", "Cork", "Felt"],
                       ["pens and clips", "a neat home office", "mail and notes"]),
    "Bookend": ("office", 14, ["Marble", "Oak", "Cast Iron", "Brass"],
                ["a row of cookbooks", "a crowded shelf", "school books"]),
    "Desk Calendar": ("office", 9, ["Recycled Paper", "Oak", "Birch"],
                      ["planning the week", "counting down to holidays", "a shared office"]),
    "Watering Can": ("garden", 17, ["Zinc", "Copper", "Enamel"],
                     ["balcony plants", "a small herb bed", "indoor ferns"]),
    "Garden Kneeler": ("garden", 11, ["Cork", "Rubber", "Canvas"],
                       ["weeding flower beds", "planting bulbs", "cleaning low shelves"]),
    "Plant Pot": ("garden", 10, ["Terracotta", "Ceramic", "Stoneware", "Concrete"],
                  ["a windowsill plant", "a small lemon tree", "balcony flowers"]),
    "Bird Feeder": ("garden", 16, ["Cedar", "Copper", "Steel"],
                    ["winter birds", "a view from the kitchen window", "a small garden"]),
    "Trowel": ("garden", 9, ["Steel", "Ash", "Copper"],
               ["planting bulbs", "repotting", "digging small holes"]),
    "Scarf": ("wear", 22, ["Wool", "Linen", "Cashmere", "Cotton"],
              ["windy walks", "chilly offices", "autumn travel"]),
    "Beanie": ("wear", 12, ["Wool", "Cotton", "Alpaca"],
               ["winter walks", "cold mornings at the bus stop", "skiing trips"]),
    "Umbrella": ("wear", 20, ["Canvas", "Nylon"],
                 ["rainy commutes", "walks by the sea", "the car boot"]),
    "Backpack": ("wear", 42, ["Canvas", "Leather", "Waxed Cotton"],
                 ["day trips", "carrying a laptop", "the school run"]),
    "Tote Bag": ("wear", 13, ["Canvas", "Jute", "Cotton", "Leather"],
                 ["grocery shopping", "the library", "beach days"]),
    "Soap Bar": ("bath", 5, ["Oat", "Olive Oil", "Goat Milk", "Clay"],
                 ["sensitive skin", "washing hands after gardening", "a guest bathroom"]),
    "Bath Towel": ("bath", 18, ["Cotton", "Linen", "Waffle Cotton", "Bamboo"],
                   ["after a long bath", "the gym", "a guest room"]),
    "Toothbrush": ("bath", 4, ["Bamboo", "Beech"],
                   ["daily use", "travel", "children"]),
}

MATERIAL_NOTES = {
    "Oak": ["Oak is hard and heavy, and it slowly darkens to a warm honey colour.",
            "The oak comes from managed forests and is finished with plant oil."],
    "Walnut": ["Walnut has a deep brown grain that looks different on every piece.",
               "The walnut is cut from offcuts of furniture making, so nothing goes to waste."],
    "Bamboo": ["Bamboo grows back quickly and is light but surprisingly strong.",
               "The bamboo is pressed in layers, which keeps it from warping."],
    "Maple": ["Maple is pale, smooth and gentle on knife edges."],
    "Birch": ["Birch is light in colour and has a soft, even grain."],
    "Olive Wood": ["Olive wood has a swirling grain and a faint scent when it is new."],
    "Ash": ["Ash wood is springy, which makes it a good handle that does not crack."],
    "Cedar": ["Cedar resists rain and smells lovely on warm days."],
    "Enamel": ["The enamel is baked onto steel, so it is light and easy to clean.",
               "Enamel chips if it is dropped hard, but a small chip does not affect use."],
    "Ceramic": ["Each ceramic piece is glazed by hand, so the colour varies a little.",
                "The ceramic is fired at a high temperature and is dishwasher safe."],
    "Stoneware": ["Stoneware is thick and keeps its warmth for a long time.",
                  "The stoneware has a speckled glaze and a raw, unglazed base."],
    "Glass": ["The glass is clear, thin and heat resistant.",
              "The glass is mouth blown, so tiny bubbles are a sign of the craft."],
    "Copper": ["Copper heats evenly and develops a soft patina over time.",
               "The copper can be polished back to a shine with lemon and salt."],
    "Steel": ["Brushed steel does not rust and hides fingerprints well.",
              "The steel is food safe and easy to wipe clean."],
    "Cast Iron": ["Cast iron is heavy and holds heat for a long time.",
                  "Cast iron needs a little oil after washing to stay smooth."],
    "Brass": ["Solid brass takes on a darker, warmer tone as it ages.",
              "The brass is left unlacquered, so it ages naturally."],
    "Linen": ["Linen gets softer with every wash and dries quickly.",
              "The linen is stonewashed, so it feels soft from the first day."],
    "Canvas": ["Heavy canvas is tough, and it only looks better when it is worn in.",
               "The canvas is woven tightly and shrugs off light rain."],
    "Cotton": ["The cotton is soft, breathable and easy to wash.",
               "The cotton is organic and dyed without harsh chemicals."],
    "Waffle Cotton": ["Waffle cotton is light, absorbent and quick to dry."],
    "Denim": ["The denim is sturdy and fades slowly with use."],
    "Wool": ["Wool is warm, breathes well and rarely needs washing.",
             "The wool comes from a small farm and is spun locally."],
    "Alpaca": ["Alpaca fibre is very soft and warmer than sheep wool."],
    "Velvet": ["Velvet catches the light and feels rich to the touch."],
    "Cashmere": ["Cashmere is light, very soft and surprisingly warm."],
    "Beeswax": ["Beeswax burns slowly and cleanly with a faint honey scent."],
    "Soy Wax": ["Soy wax burns slowly and evenly."],
    "Rapeseed Wax": ["Rapeseed wax is grown locally and burns without soot."],
    "Willow": ["Willow is woven by hand and is light but strong."],
    "Seagrass": ["Seagrass has a fresh smell and a natural sheen."],
    "Rattan": ["Rattan is flexible and light, and it keeps its shape for years."],
    "Jute": ["Jute is a rough, strong plant fibre with an earthy look."],
    "Coir": ["Coir is made from coconut husk and scrapes mud off boots well."],
    "Rubber": ["Natural rubber does not slip, even on wet tiles."],
    "Leather": ["The leather is vegetable tanned and ages beautifully.",
                "Full grain leather gets softer the more it is used."],
    "Recycled Paper": ["The recycled paper is thick enough for ink without bleeding through."],
    "Cork": ["Cork is soft, light and comes from bark that grows back."],
    "Felt": ["Thick wool felt keeps things from scratching the desk."],
    "Marble": ["Each piece of marble has its own pattern of veins."],
    "Zinc": ["Galvanised zinc keeps rain and garden water from causing rust."],
    "Terracotta": ["Terracotta breathes, which keeps plant roots healthy."],
    "Concrete": ["Concrete is heavy, so the pot will not tip over in the wind."],
    "Nylon": ["The nylon canopy dries quickly and folds small."],
    "Waxed Cotton": ["Waxed cotton keeps the rain out and can be re-waxed at home."],
    "Oat": ["Oat soap is mild and calming for dry skin."],
    "Olive Oil": ["Olive oil soap is gentle and lasts a long time."],
    "Goat Milk": ["Goat milk soap is creamy and kind to sensitive skin."],
    "Clay": ["Clay soap cleans deeply and leaves skin feeling fresh."],
    "Beech": ["Beech wood is smooth and does not splinter."],
}

CARE = {
    "kitchen": ["Wash it by hand with warm water and mild soap.", "Dry it fully before putting it away.",
                "Avoid leaving it to soak overnight."],
    "home": ["Dust it now and then with a soft dry cloth.", "Keep it out of strong direct sun.",
             "Spot clean with a damp cloth if needed."],
    "office": ["Wipe it with a dry cloth.", "Keep it away from damp corners."],
    "garden": ["Rinse off soil after use and let it dry.", "Store it in a dry shed over winter."],
    "wear": ["Wash it cold and dry it flat.", "Air it out instead of washing it too often."],
    "bath": ["Let it dry between uses.", "Keep it somewhere with good air flow."],
}

COLORS = ["sage", "slate blue", "cream", "rust", "navy", "honey", "charcoal", "sand", "forest green",
          "plum", "mustard", "natural", "white", "black", "terracotta red", "pale grey"]
MAKERS = ["Alder & Finch", "Hollow Pine Works", "Marrow Lane Studio", "Brightwater Mill",
          "Tallow Street Pottery", "Quill & Loom", "Ferris Copperworks", "Old Quay Weavers",
          "Cobble Hill Joinery", "Saltmarsh Ceramics", "Ridgeway Leather", "North Barn Candles"]
TOWNS = ["Millbrook", "Eastwater", "Harrowgate", "Pinefield", "Larkton", "Oakhurst", "Stonebridge",
         "Wrenford", "Ashcombe", "Fallowmere", "Duncliff", "Braxley", "Corwen Bay", "Thornby",
         "Kestle", "Marden Cross", "Hollins", "Brackenford"]
FIRST_NAMES = ["Nora", "Sam", "Priya", "Tom", "Ines", "Marcus", "Yuki", "Dana", "Leo", "Amara",
               "Felix", "Hana", "Omar", "Grace", "Ravi", "Elena", "Jonas", "Maya", "Theo", "Lucia",
               "Ben", "Chloe", "Ade", "Iris", "Pablo", "Sofia", "Kai", "Zara", "Owen", "Mina",
               "Hugo", "Lena", "Tariq", "Ruth", "Mateo", "Ella", "Sven", "Noor", "Aiden", "June",
               "Farah", "Luca", "Beatrix", "Idris", "Vera", "Rosa", "Milo", "Asha", "Ezra", "Clara"]
STAFF = ["Priya from the warehouse", "Tom in customer care", "Ines, our buyer", "Marcus from packing",
         "Yuki in the photo studio", "Dana, who runs the shop"]


class Carrier:
    def __init__(self, name: str, prefix: str, days: tuple[int, int]):
        self.name, self.prefix, self.days = name, prefix, days


CARRIERS = [Carrier("ParcelCo", "PC", (2, 4)), Carrier("Swift Post", "SP", (1, 3)),
            Carrier("NorthLine", "NL", (3, 6)), Carrier("Bluebird Express", "BE", (1, 2))]
STATUSES = ["shipped", "in transit", "out for delivery", "delivered", "delayed"]


class Product:
    def __init__(self, name, noun, material, category, price, color, maker, town, uses, size):
        self.name, self.noun, self.material, self.category = name, noun, material, category
        self.price, self.color, self.maker, self.town, self.uses = price, color, maker, town, uses
        self.size = size


def build_world(seed: int) -> list[Product]:
    rng = random.Random(f"{seed}/world")
    products = []
    for noun, (cat, base, mats, uses) in NOUNS.items():
        for mat in mats:
            price = max(2, base + rng.randint(-3, 6) + (4 if mat in ("Walnut", "Copper", "Brass",
                                                                      "Cashmere", "Leather") else 0))
            size = rng.choice(["small", "medium", "large", "one size"])
            products.append(Product(f"{mat} {noun}", noun, mat, cat, price, rng.choice(COLORS),
                                    rng.choice(MAKERS), rng.choice(TOWNS), uses, size))
    return products

# ---------------------------------------------------------------------------------------------
# Orders and the order record (shared by pretraining narratives, SFT, preferences and RL)
# ---------------------------------------------------------------------------------------------


class Order:
    def __init__(self, number, status, carrier, tracking, placed, delivery, items):
        self.number, self.status, self.carrier, self.tracking = number, status, carrier, tracking
        self.placed, self.delivery, self.items = placed, delivery, items  # items: [(qty, Product, price)]
        self.return_by = delivery + dt.timedelta(days=RETURN_DAYS)

    @property
    def total(self) -> int:
        return sum(q * p for q, _, p in self.items)

    @property
    def n_units(self) -> int:
        return sum(q for q, _, _ in self.items)

    def record(self) -> str:
        lines = [f"Order #{self.number}", f"Status: {self.status}", f"Carrier: {self.carrier.name}",
                 f"Tracking: {self.tracking}", f"Delivery date: {fmt_date(self.delivery)}",
                 f"Return by: {fmt_date(self.return_by)}", "Items:"]
        lines += [f"{q} x {prod.name} at ${p}" for q, prod, p in self.items]
        return "\n".join(lines)


class OrderMaker:
    """Draws orders with order numbers that are unique within one file kind."""

    def __init__(self, rng: random.Random, products: list[Product]):
        self.rng, self.products, self.used = rng, products, set()

    def make(self, n_items: int, max_qty: int = 3, max_price: int | None = None) -> Order:
        rng = self.rng
        number = rng.randrange(10000, 100000)
        while number in self.used:
            number = rng.randrange(10000, 100000)
        self.used.add(number)
        carrier = rng.choice(CARRIERS)
        # Three digits: the small default model copies a 3-digit code from the record, but
        # copied 5-digit codes with 0% accuracy after SFT (other digits of the record interfere).
        tracking = f"{carrier.prefix}-{rng.randrange(100, 1000)}"
        placed = rand_date(rng)
        delivery = placed + dt.timedelta(days=rng.randint(*carrier.days) + rng.randint(0, 2))
        items = []
        for prod in pick(rng, self.products, n_items):
            if max_price is None:  # a few customers buy two or three
                qty = 1 if max_qty == 1 or rng.random() < 0.7 else rng.randint(2, max_qty)
                # The price paid varies with sales and coupons, so a reply about an order has
                # to read it from the order's record: a model cannot answer from memory of
                # the catalogue.
                price = rng.randint(max(1, prod.price // 2), prod.price + 5)
            else:  # RL task: the difficulty flags set the ranges
                qty = rng.randint(1, max_qty)
                price = rng.randint(1, max_price)
            items.append((qty, prod, price))
        return Order(number, rng.choice(STATUSES), carrier, tracking, placed, delivery, items)

# ---------------------------------------------------------------------------------------------
# Pretraining corpus: general Minimart English (never mentions the CPT domain)
# ---------------------------------------------------------------------------------------------

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
# CPT corpus: the Verdant hydroponics line (a domain the pretraining corpus never shows)
# ---------------------------------------------------------------------------------------------

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


def join_and(xs) -> str:
    xs = list(xs)
    return xs[0] if len(xs) == 1 else ", ".join(xs[:-1]) + " and " + xs[-1]


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


def cpt_doc(rng) -> str:
    kinds = [cpt_care, cpt_product, cpt_setup, cpt_trouble, cpt_news_or_log, cpt_review_or_faq,
             cpt_profile, cpt_compare, cpt_recipe]
    return rng.choices(kinds, weights=[4, 3, 1, 3, 2, 2, 2, 2, 1])[0](rng)


# ---------------------------------------------------------------------------------------------
# Support replies in four styles (SFT, preferences) and the questions that prompt them
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


def fact_value(intent: str, o: Order, item) -> str:
    """The exact string a correct reply must contain (meta["fact"])."""
    if intent == "delivery_date":
        return fmt_date(o.delivery)
    if intent == "status":
        return o.status
    if intent == "carrier":
        return o.carrier.name
    if intent == "tracking":
        return o.tracking
    if intent == "item_price":
        return f"${item[2]}"
    if intent == "item_count":
        return f"{o.n_units} item{'s' if o.n_units != 1 else ''}"
    if intent == "return_deadline":
        return fmt_date(o.return_by)
    if intent == "total":
        return f"Total: ${o.total}"
    raise ValueError(intent)


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
    style = "neutral" if voice in ("shop", "formal") else voice
    cores = ANSWERS[intent][style]
    if not allow_work:
        cores = [c for c in cores if "{work}" not in c]
    arrive = {"delivered": "was delivered on", "delayed": "is now expected on"}.get(
        o.status, rng.choice(["should arrive on", "is expected on"]))
    work = " + ".join(f"${q * p}" for q, _, p in o.items) + f" = ${o.total}"
    core = rng.choice(cores).format(v=v, V=cap(v), item=item[1].name if item else "",
                                    each=" each" if item and item[0] > 1 else "", arrive=arrive, work=work)
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


def rl_record(rng, orders, rl_items, max_price, max_qty) -> dict:
    o = orders.make(rng.choice(rl_items), max_qty=max_qty, max_price=max_price)
    prompt = [{"role": "system", "content": SYSTEM_PROMPT},
              {"role": "user", "content": user_message(o, question("total", rng), rng)}]
    return {"prompt": prompt, "answer": str(o.total)}


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
# Writing the files
# ---------------------------------------------------------------------------------------------


def _key(rec: dict) -> str:
    """What must not repeat between (and within) splits: the text, or the prompt."""
    if "text" in rec:
        return rec["text"]
    msgs = rec["messages"][:-1] if "messages" in rec else rec["prompt"]
    return json.dumps(msgs)


def _split(make, n_train: int, n_val: int, by_bytes: bool = False):
    """Draw unique records (by _key) until each split reaches its count or byte size."""
    seen: set[str] = set()
    out = []
    for target in (n_train, n_val):
        recs, size, tries = [], 0, 0
        while (size if by_bytes else len(recs)) < target:
            tries += 1
            if tries > 50 * target + 1000:
                raise RuntimeError("make_data: could not draw enough distinct records")
            rec = make()
            k = _key(rec)
            if k in seen:
                continue
            seen.add(k)
            recs.append(rec)
            size += len(json.dumps(rec, ensure_ascii=False)) + 1
        out.append(recs)
    return out


def _write_jsonl(path: Path, recs: list[dict]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for r in recs:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


# Default difficulty of the RL task: one-item orders, 1..4 units at $1..$9, so the total is a
# product (qty x price) from a small times table. The default SFT model gets about half of
# them right (quantity 1 is a copy; 2-4 it often copies the price instead of multiplying),
# which leaves RL both a signal and something to learn. Sums of two items are much harder for
# the small model (0-3% after SFT): raise --rl-items for that.
RL_ITEMS, RL_MAX_PRICE, RL_MAX_QTY = (1,), 9, 4


def generate(out_dir, seed: int = 1234, rl_items=RL_ITEMS, rl_max_price: int = RL_MAX_PRICE, rl_max_qty: int = RL_MAX_QTY,
             scale: float = 1.0, verbose: bool = False) -> dict[str, Path]:
    """Write the Minimart files into `out_dir` and return {name: path}.

    Names: pretrain_train, pretrain_val, cpt_train, cpt_val, sft_train, sft_val, pref_train,
    pref_val, rl_train, rl_val, intent_train, intent_val (JSONL), intent_labels (JSON list of
    label names) and manifest (JSON: the arguments and each file's size; written last).
    `scale` multiplies every size (bytes for pretrain/cpt, record counts otherwise).
    The RL flags set the task's difficulty: items per order drawn from `rl_items`, unit
    prices 1..rl_max_price dollars, quantities 1..rl_max_qty.
    """
    rl_items = tuple(int(n) for n in rl_items)
    if not rl_items or min(rl_items) < 1 or rl_max_price < 1 or rl_max_qty < 1 or scale <= 0:
        raise ValueError("make_data: rl_items, rl_max_price, rl_max_qty and scale must be positive")
    world = build_world(seed)
    if max(rl_items) > len(world):
        raise ValueError(f"make_data: at most {len(world)} items per RL order")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    def n(kind, i):
        return max(1, round(SIZES[kind][i] * scale))

    def rng_for(kind):
        return random.Random(f"{seed}/{kind}")

    r = rng_for("pretrain")
    om = OrderMaker(r, world)
    splits = {"pretrain": _split(lambda: {"text": pretrain_doc(r, world, om)},
                                 n("pretrain", 0), n("pretrain", 1), by_bytes=True)}
    r_c = rng_for("cpt")
    splits["cpt"] = _split(lambda: {"text": cpt_doc(r_c)}, n("cpt", 0), n("cpt", 1), by_bytes=True)
    r_s = rng_for("sft")
    om_s = OrderMaker(r_s, world)
    splits["sft"] = _split(lambda: sft_record(r_s, om_s), n("sft", 0), n("sft", 1))
    r_p = rng_for("pref")
    om_p = OrderMaker(r_p, world)
    splits["pref"] = _split(lambda: pref_record(r_p, om_p), n("pref", 0), n("pref", 1))
    r_r = rng_for("rl")
    om_r = OrderMaker(r_r, world)
    splits["rl"] = _split(lambda: rl_record(r_r, om_r, rl_items, rl_max_price, rl_max_qty),
                          n("rl", 0), n("rl", 1))
    r_i = rng_for("intent")
    splits["intent"] = _split(lambda: intent_record(r_i, world), n("intent", 0), n("intent", 1))

    paths: dict[str, Path] = {}
    for kind, (train, val) in splits.items():
        for split, recs in (("train", train), ("val", val)):
            p = out / f"{kind}_{split}.jsonl"
            _write_jsonl(p, recs)
            paths[f"{kind}_{split}"] = p
            if verbose:
                print(f"{p.name}: {len(recs)} records, {p.stat().st_size} bytes")
    p = out / "intent_labels.json"
    with open(p, "w", encoding="utf-8", newline="\n") as f:
        f.write(json.dumps(INTENTS) + "\n")
    paths["intent_labels"] = p
    if verbose:
        print(f"{p.name}: {len(INTENTS)} labels, {p.stat().st_size} bytes")
    # Which generator made these files: minipost.data.builtin() rebuilds them when it changes.
    (out / "GENERATOR_SHA256").write_text(hashlib.sha256(Path(__file__).read_bytes()).hexdigest() + "\n")
    # Written last: its presence means a complete set of files made with these arguments.
    manifest = {"args": _args(seed, rl_items, rl_max_price, rl_max_qty, scale),
                "files": {name: {"file": q.name, "bytes": q.stat().st_size} for name, q in paths.items()}}
    p = out / "manifest.json"
    with open(p, "w", encoding="utf-8", newline="\n") as f:
        f.write(json.dumps(manifest, indent=1) + "\n")
    paths["manifest"] = p
    return paths


def _args(seed, rl_items, rl_max_price, rl_max_qty, scale) -> dict:
    return {"seed": int(seed), "rl_items": [int(n) for n in rl_items], "rl_max_price": int(rl_max_price),
            "rl_max_qty": int(rl_max_qty), "scale": float(scale)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="Generate the Minimart data set (see data/README.md).")
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--rl-items", default=",".join(map(str, RL_ITEMS)), help="comma-separated item counts for RL orders")
    ap.add_argument("--rl-max-price", type=int, default=RL_MAX_PRICE)
    ap.add_argument("--rl-max-qty", type=int, default=RL_MAX_QTY)
    ap.add_argument("--scale", type=float, default=1.0)
    a = ap.parse_args(argv)
    try:
        items = tuple(int(x) for x in a.rl_items.split(",") if x.strip())
    except ValueError:
        ap.error(f"--rl-items must be comma-separated integers, got {a.rl_items!r}")
    t0 = time.time()
    generate(a.out, seed=a.seed, rl_items=items, rl_max_price=a.rl_max_price, rl_max_qty=a.rl_max_qty,
             scale=a.scale, verbose=True)
    print(f"wrote {a.out} in {time.time() - t0:.1f}s", file=sys.stderr)


if __name__ == "__main__":
    main()
