"""The words the toy word problems are made of: names, items, places, units (one list per scenario slot)."""

from __future__ import annotations

__all__ = [
    "GIRLS", "BOYS", "SHOP", "SHARE", "MODES", "CHORES", "BUYS", "GOALS", "DISHES", "INGS", "PLACES", "ROOMS",
    "SALE", "PACK_ITEMS", "COLLECT", "RELATIVES", "DAYS", "JOBS", "VEHICLES", "TIMES", "PARTS",
]

GIRLS = "Ava Mia Lena Sofia Zoe Nora Priya Emma Chloe Hana Ines Maya Rosa Yara Lucia Grace".split()
BOYS = "Liam Noah Omar Ravi Leo Ethan Diego Kenji Sam Tom Hugo Felix Amir Jonas Marco Ben".split()
# Multi-word entries are "|"-separated; pairs and triples use ":".
SHOP = "notebooks pencils apples oranges stickers erasers muffins bananas markers candles " \
        "postcards cupcakes".split()
SHARE = [tuple(x.split(":")) for x in "cookies:jars marbles:bags stickers:sheets crayons:boxes "
          "candies:bags cards:packs beads:boxes strawberries:baskets".split()]
MODES = [("drives", 40, 90), ("cycles", 10, 25), ("walks", 3, 6), ("skates", 8, 15),
          ("rides a horse", 8, 20), ("rows a boat", 3, 8), ("rides a motorbike", 30, 70)]
CHORES = "washing cars|walking dogs|mowing lawns|babysitting|selling lemonade".split("|")
BUYS = "a book|a board game|snacks|a gift|a toy|a movie ticket|stickers".split("|")
GOALS = "bike tablet telescope guitar skateboard camera".split()
DISHES = "pancakes|muffins|cookies|bread rolls|waffles|scones".split("|")
INGS = "flour sugar milk oats rice water cocoa yogurt raisins cream".split()
PLACES = "garden|field|playground|parking lot|pool|yard|patio|farm plot".split("|")
ROOMS = ("kitchen|bedroom|living room|hallway|bathroom|office|garage|pantry|playroom|"
          "dining room|study|laundry room").split("|")
SALE = "jacket bike lamp backpack tent watch guitar helmet scarf".split()
PACK_ITEMS = "balloons|paper plates|cups|party hats|juice boxes|napkins".split("|")
COLLECT = "stamps|marbles|seashells|trading cards|coins|buttons|bottle caps".split("|")
RELATIVES = "aunt uncle grandmother grandfather cousin".split()
DAYS = "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()
JOBS = [tuple(x.split(":")) for x in ("bakers:bake:loaves of bread|packers:pack:boxes|"
         "painters:paint:chairs|tailors:sew:shirts|volunteers:plant:trees|"
         "carpenters:build:birdhouses|workers:assemble:toys").split("|")]
VEHICLES = "bus train tram ferry".split()
TIMES = {2: "twice", 3: "three times", 4: "four times"}
PARTS = {2: "half", 3: "one third", 4: "one quarter"}
