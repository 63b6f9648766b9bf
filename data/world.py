"""The Minimart world: the shop's policies, its catalogue (products, makers, towns, carriers)
and its orders, with the order record that every data set shows (data/README.md, "The world").

build_world(seed) makes the 143 products from the catalogue tables below; an OrderMaker draws
orders from them. Order.record() is the text block at the heart of the pretraining documents,
the SFT and preference prompts and the RL tasks; fact_value() is the exact string a correct
answer about an order states.
"""

from __future__ import annotations

import datetime as dt
import random

# ---------------------------------------------------------------------------------------------
# Policies, dates and small text helpers
# ---------------------------------------------------------------------------------------------

# Store policies, shared by the FAQ text, conversations and order records.
RETURN_DAYS = 30
REFUND_DAYS = 5
SHIPPING_FEE = 4
FREE_SHIPPING_OVER = 40
GIFT_WRAP_FEE = 2

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


def join_and(xs) -> str:
    xs = list(xs)
    return xs[0] if len(xs) == 1 else ", ".join(xs[:-1]) + " and " + xs[-1]

# ---------------------------------------------------------------------------------------------
# The catalogue: products, carriers, people
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


class OrderMaker:
    """Draws orders with order numbers that are unique within one file kind."""

    def __init__(self, rng: random.Random, products: list[Product], used: set | None = None):
        # `used` may be shared with another maker, so that two record streams of one file
        # kind never draw the same order number.
        self.rng, self.products, self.used = rng, products, set() if used is None else used

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
